"""nn.Sequential(Linear, ReLU, Linear, Sigmoid, Linear) on scikit-learn's bundled diabetes table,
standardized features (statistics from the training rows only), MSE and Adam.

Test R2 must be at least 0.40; exits non-zero when it misses.
"""

import sys

import torch
from sklearn.datasets import load_diabetes
from torch import nn

import fitloop as fl

data = load_diabetes()
X = torch.tensor(data.data, dtype=torch.float32)
y = torch.tensor(data.target, dtype=torch.float32)

train, val, test = fl.split(X, y, fractions=(0.7, 0.15, 0.15), seed=0)
mean, std = train.X.mean(0), train.X.std(0)  # fitted on the training rows only
y_mean, y_std = train.y.mean(), train.y.std()
train, val, test = (fl.Split((p.X - mean) / std, (p.y - y_mean) / y_std, p.indices) for p in (train, val, test))

fl.seed_everything(0)
model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 10), nn.Sigmoid(), nn.Linear(10, 1))
trainer = fl.Trainer(model, loss="mse", optimizer="adam", lr=3e-3, epochs=150, batch_size=32, print_every=25,
                     callbacks=[fl.EarlyStopping(patience=20)])
trainer.fit(train, val)
metrics = trainer.evaluate(test)
print(f"test R2 {metrics['r2']:.3f}, RMSE {metrics['rmse'] * y_std:.1f} (disease progression units)")
if metrics["r2"] < 0.40:
    sys.exit(f"FAIL: test R2 {metrics['r2']:.3f} < 0.40")
