"""Linear regression on synthetic data: y = 0.7 x + 0.3, an 80/20 split, nn.Linear(1, 1).

Learns the weight and bias to within 0.01; exits non-zero when it misses.
"""

import sys

import torch
from torch import nn

import fitloop as fl

weight, bias = 0.7, 0.3
X = torch.arange(0, 1, 0.02).unsqueeze(1)
y = weight * X + bias

train, test = fl.split(X, y, fractions=(0.8, 0.2), seed=42)
fl.seed_everything(42)
model = nn.Linear(1, 1)
trainer = fl.Trainer(model, loss="mse", optimizer="sgd", lr=0.5, epochs=1000, batch_size=None, print_every=200)
trainer.fit(train)
print("test:", trainer.evaluate(test))

w, b = model.weight.item(), model.bias.item()
print(f"learned weight {w:.4f} (true {weight}), bias {b:.4f} (true {bias})")
if abs(w - weight) > 0.01 or abs(b - bias) > 0.01:
    sys.exit("FAIL: weight or bias is more than 0.01 away from the true value")
