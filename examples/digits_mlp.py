"""An MLP classifier on scikit-learn's bundled 8x8 digit images (no download).

Shows early stopping (with the best weights restored), a learning-rate schedule, the metrics
every epoch and on the test set, and an extra torchmetrics metric. Exits with status 1 if the test
accuracy is below 0.95.

    python examples/digits_mlp.py
"""

import sys
import time

import torch
from sklearn.datasets import load_digits

import fitloop as fl


def main() -> int:
    t0 = time.perf_counter()
    X, y = load_digits(return_X_y=True)  # 1797 images, 64 pixels in 0..16, 10 classes
    X = torch.tensor(X, dtype=torch.float32) / 16.0  # scale to [0, 1]
    y = torch.tensor(y)
    train, val, test = fl.split(X, y, fractions=(0.7, 0.15, 0.15), seed=0, stratify=True)

    model = fl.build_mlp(fl.MLPSpec(64, hidden=[128, 64], out_features=10, dropout=0.1))
    stopper = fl.EarlyStopping(monitor="val_loss", patience=8, min_delta=1e-4)  # restores the best weights
    trainer = fl.Trainer(
        model,
        loss="cross_entropy",
        optimizer="adam",
        lr=3e-3,
        epochs=60,
        batch_size=64,
        scheduler=("plateau", {"monitor": "val_loss", "factor": 0.5, "patience": 3}),
        callbacks=[stopper],
        seed=0,
        print_every=10,
    )
    history = trainer.fit(train, val)

    metrics = trainer.evaluate(test)
    print(f"\nTrained {len(history)} epochs in {time.perf_counter() - t0:.1f}s; "
          f"best epoch {stopper.best_epoch} (val_loss {stopper.best:.4f}); final lr {history[-1]['lr']:.2g}")
    print("Test metrics:")
    for name in ("loss", "accuracy", "f1", "precision", "recall"):
        print(f"  {name:<10} {metrics[name]:.4f}")
    print("  confusion matrix (rows: true digit, columns: predicted):")
    for row in metrics["confusion_matrix"]:
        print("   " + " ".join(f"{v:3d}" for v in row))

    if metrics["accuracy"] < 0.95:
        print(f"FAIL: test accuracy {metrics['accuracy']:.4f} < 0.95", file=sys.stderr)
        return 1
    print(f"OK: test accuracy {metrics['accuracy']:.4f} >= 0.95")
    return 0


if __name__ == "__main__":
    sys.exit(main())
