"""Train, save, load in a fresh process, and get predictions equal to the saved model's.

The bundle is model.safetensors + fitloop.json: no pickle anywhere.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import fitloop as fl

if len(sys.argv) == 3 and sys.argv[1] == "--load":  # the fresh process
    bundle = Path(sys.argv[2])
    model = fl.load(bundle)
    X = torch.load(bundle / "inputs.pt", weights_only=True)
    with torch.inference_mode():
        torch.save(model(X), bundle / "reloaded.pt")
    sys.exit(0)

g = torch.Generator().manual_seed(0)
X = torch.randn(300, 4, generator=g)
y = (X[:, 0] * X[:, 1] > 0).long()
train, val, test = fl.split(X, y, seed=0, stratify=True)
fl.seed_everything(0)
trainer = fl.Trainer(fl.build_mlp(fl.MLPSpec(4, [32, 16], 2)), loss="cross_entropy", lr=1e-2, epochs=40,
                     print_every=10)
trainer.fit(train, val)
print("test:", {k: round(v, 4) for k, v in trainer.evaluate(test).items() if isinstance(v, float)})

with tempfile.TemporaryDirectory() as d:
    bundle = Path(trainer.save(Path(d) / "model"))
    print("saved:", sorted(p.name for p in bundle.iterdir()))
    expected = trainer.predict(test.X)
    torch.save(test.X, bundle / "inputs.pt")
    subprocess.run([sys.executable, __file__, "--load", str(bundle)], check=True)
    got = torch.load(bundle / "reloaded.pt", weights_only=True)
if not torch.equal(got, expected):
    sys.exit("FAIL: predictions of the reloaded model differ from the saved model's")
print("reloaded in a fresh process: predictions are equal")
