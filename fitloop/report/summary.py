"""`fl.summary(model, input_shape)`: layers, output shapes and parameter counts, from one dummy forward pass.

    >>> s = fl.summary(model, (8,))        # prints the table; one sample's shape, without the batch
    >>> s.total, s.trainable, s.frozen
    (3075, 3075, 0)
"""

from __future__ import annotations

import numbers
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, TYPE_CHECKING, Any

# torch is imported inside the functions: `fitloop.report` re-exports `summary`, and `fitloop runs` and
# `fitloop report` import that package to read a run's JSON files without paying for torch.
if TYPE_CHECKING:
    import torch

__all__ = ["ModelSummary", "LayerRow", "summary"]


@dataclass
class LayerRow:
    """One module of the model: its qualified name, class, output shape and the parameters it owns."""

    name: str
    kind: str
    output_shape: str
    params: int
    trainable: int
    depth: int


@dataclass
class ModelSummary:
    """The table `summary` prints; `str()` renders it, `to_dict()` gives plain data (for JSON)."""

    model: str
    input_shape: list[int]
    rows: list[LayerRow] = field(default_factory=list)
    total: int = 0
    trainable: int = 0
    frozen: int = 0
    output_shape: str = "-"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> list[tuple[str, str, str, str]]:
        """The rows as strings: (layer, type, output shape, parameters)."""
        return [("  " * (r.depth - 1) + r.name, r.kind, r.output_shape,
                 f"{r.params:,}" + ("" if r.trainable == r.params else f" ({r.params - r.trainable:,} frozen)"))
                for r in self.rows]

    def __str__(self) -> str:
        head = ("layer", "type", "output shape", "parameters")
        body = self.table()
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        line = "  ".join("-" * w for w in widths)

        def fmt(cells: Sequence[str]) -> str:
            return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        shape = ", ".join(["N", *map(str, self.input_shape)])
        out = [f"{self.model}: input [{shape}] -> output {self.output_shape}", fmt(head), line,
               *map(fmt, body), line,
               f"parameters: {self.total:,} total, {self.trainable:,} trainable, {self.frozen:,} frozen"]
        return "\n".join(out)


def _shape(out: Any) -> str:
    """`[N, 64]` for a tensor (N: the batch), a list of them for tuple outputs."""
    import torch

    if isinstance(out, torch.Tensor):
        return "[" + ", ".join(["N", *map(str, out.shape[1:])]) + "]" if out.ndim else "[]"
    if isinstance(out, (tuple, list)):
        return "(" + ", ".join(_shape(o) for o in out) + ")"
    if isinstance(out, dict):
        return "{" + ", ".join(f"{k}: {_shape(v)}" for k, v in out.items()) + "}"
    return type(out).__name__


def summary(model: Any, input_shape: Sequence[int] | None = None, *, input: Any = None, dtype: Any = None,
            batch_size: int = 2, verbose: bool = True, stream: IO[str] | None = None) -> ModelSummary:
    """Layers, output shapes and parameter counts (trainable and frozen) of `model`.

    The output shapes come from forward hooks on one forward pass of a dummy batch (zeros), in eval
    mode under `torch.no_grad()`; the model's mode and weights are left as they were. Each row counts
    the parameters the module owns itself, so the rows add up to the total (shared ones counted once).

    Args:
        model: any `nn.Module` (a compiled or DDP-wrapped one is summarised through its module).
        input_shape: one sample's shape, without the batch dimension, e.g. `(8,)` for 8 features.
        input: a real input batch instead of `input_shape` (e.g. token ids for an embedding).
        dtype: the dummy input's dtype (default: the model's floating-point dtype).
        batch_size: rows of the dummy batch.
        verbose: print the table (to `stream`, default stdout).

    Returns:
        A `ModelSummary`; `str()` of it is the printed table.

    Raises:
        ValueError: neither `input_shape` nor `input`, or the forward pass failed on that shape.
    """
    import torch

    from .._fastpath import unwrap_model
    from ..distributed.fsdp import plain_class  # imports torch

    net = unwrap_model(model)
    params = list(net.parameters())
    if input is None:
        shape = _sample_shape(input_shape)
        float_dtype = next((p.dtype for p in params if p.is_floating_point()), torch.float32)
        device = params[0].device if params else torch.device("cpu")
        input = torch.zeros(batch_size, *shape, dtype=dtype or float_dtype, device=device)
    else:
        shape = list(input.shape[1:])
    shapes, out = _output_shapes(net, input, batch_size, shape)
    unique = {id(p): p for p in params}.values()
    total = sum(p.numel() for p in unique)
    trainable = sum(p.numel() for p in unique if p.requires_grad)
    result = ModelSummary(plain_class(net).__name__, shape, _layer_rows(net, shapes), total, trainable,
                          total - trainable, _shape(out))
    if verbose:
        print(str(result), file=stream or sys.stdout, flush=True)
    return result


def _sample_shape(input_shape: Sequence[int] | int | None) -> list[int]:
    """`input_shape` checked: one sample's shape, positive whole numbers."""
    if input_shape is None:
        raise ValueError("summary: pass input_shape (one sample's shape, e.g. (8,) for 8 features) or input=.")
    dims = [input_shape] if isinstance(input_shape, int) else input_shape
    if isinstance(dims, (str, bytes)) or not all(isinstance(s, numbers.Integral) and s > 0 for s in dims):
        raise ValueError(f"summary: input_shape must be positive whole numbers, one sample's shape without "
                         f"the batch dimension, e.g. (8,) for 8 features; got {input_shape!r}.")
    return [int(s) for s in dims]


def _output_shapes(net: torch.nn.Module, input: Any, batch_size: int, shape: list[int]) -> tuple[dict[str, str], Any]:
    """Every module's output shape (by qualified name) and the model's output, from one forward pass in eval
    mode without gradients; the model's mode is put back."""
    import torch

    shapes: dict[str, str] = {}
    hooks = []
    for name, mod in net.named_modules():
        def hook(m: Any, args: Any, out: Any, name: str = name) -> None:
            shapes.setdefault(name, _shape(out))
        hooks.append(mod.register_forward_hook(hook))
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            out = net(input)
    except Exception as e:  # noqa: BLE001 - a shape mismatch, named for the user
        raise ValueError(f"summary: the forward pass failed on a dummy input of shape {list(input.shape)} "
                         f"(batch {batch_size} + input_shape {shape}): {type(e).__name__}: {e}. Pass the shape "
                         "of one sample without the batch dimension, or a real batch as input=.") from None
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)
    return shapes, out


def _layer_rows(net: torch.nn.Module, shapes: dict[str, str]) -> list[LayerRow]:
    """A row per leaf module and per container that owns parameters (the model itself included, named by its
    own parameters, e.g. TabM's `r, head_weight, head_bias`); shared parameters counted once."""
    from ..distributed.fsdp import plain_class  # imports torch

    seen: set[int] = set()
    rows = []
    for name, mod in net.named_modules():
        if not name:
            top = [(key, p) for key, p in mod.named_parameters(recurse=False)]
            if top:
                seen.update(id(p) for _, p in top)
                rows.append(LayerRow(", ".join(key for key, _ in top), f"{plain_class(mod).__name__} (own)", "-",
                                     sum(p.numel() for _, p in top),
                                     sum(p.numel() for _, p in top if p.requires_grad), 1))
            continue
        own = [p for p in mod.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        n, trainable = sum(p.numel() for p in own), sum(p.numel() for p in own if p.requires_grad)
        if next(mod.children(), None) is None or n:  # leaves, and containers that own parameters
            rows.append(LayerRow(name, plain_class(mod).__name__, shapes.get(name, "-"), n, trainable,
                                 name.count(".") + 1))
    return rows
