"""The Celsius/Fahrenheit "temperature" fit, autograd style: a plain function w * x + b with a
parameter tensor, SGD at lr 1e-2 for 5000 full-batch epochs, the input normalized as 0.1 * t_u.

It must land on w = 5.3671, b = -17.3012 (4 decimals), as the original tutorial does. Then the
same fit with a validation split and Adam. Exits non-zero when a result misses.
"""

import sys

import torch

import fitloop as fl

t_c = torch.tensor([0.5, 14.0, 15.0, 28.0, 11.0, 8.0, 3.0, -4.0, 6.0, 13.0, 21.0])
t_u = torch.tensor([35.7, 55.9, 58.2, 81.9, 56.3, 48.9, 33.9, 21.8, 48.4, 60.4, 68.4])
t_un = 0.1 * t_u


def model(t_u, w, b):
    return w * t_u + b


params = torch.tensor([1.0, 0.0], requires_grad=True)
trainer = fl.Trainer(model, params=params, loss="mse", optimizer="sgd", lr=1e-2, epochs=5000,
                     batch_size=None, print_every=500)
trainer.fit((t_un, t_c))
w, b = params.tolist()
print(f"w = {w:.4f}, b = {b:.4f}")
if round(w, 4) != 5.3671 or round(b, 4) != -17.3012:
    sys.exit(f"FAIL: expected w = 5.3671, b = -17.3012, got {w:.4f}, {b:.4f}")

# The same model with a validation split (9 train / 2 validation points) and Adam.
train, val = fl.split(t_un, t_c, fractions=(0.8, 0.2), seed=0)
params = torch.tensor([1.0, 0.0], requires_grad=True)
trainer = fl.Trainer(model, params=params, loss="mse", optimizer="adam", lr=1e-1, epochs=3000,
                     batch_size=None, print_every=500)
history = trainer.fit(train, val)
w, b = params.tolist()
print(f"Adam with validation: w = {w:.4f}, b = {b:.4f}, "
      f"train loss {history[-1]['loss']:.3f}, val loss {history[-1]['val_loss']:.3f}")
if not (4.5 < w < 6.5 and -25 < b < -12) or history[-1]["loss"] > 3.0:
    sys.exit(f"FAIL: Adam fit is off: w = {w:.4f}, b = {b:.4f}")
