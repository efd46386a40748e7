"""`gather_rows`: the rows of a tensor in a given order, as a new tensor (the shuffles' one copy per epoch or
window: `TensorBatches`, `ShardedBatches`, the streamed windows of `fitloop.data.stream`)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["gather_rows"]


def gather_rows(x: torch.Tensor, order: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Rows `order` of `x` (a 1-D index of row numbers), a new tensor: exactly `x[order]`.

    A row-major CPU tensor goes through `np.take(axis=0)`, which copies whole rows: on a window of 262,144 x 16
    float32 rows it took 5-9 ms where torch's indexing took 36 ms and numpy's fancy indexing 26 ms
    (bench/STREAM.md). Anything else (another device, a strided view or a sparse tensor, a conjugate view, a
    dtype numpy lacks such as bfloat16) is indexed by torch.
    """
    if x.device.type == "cpu" and x.layout == torch.strided and x.is_contiguous() and not x.requires_grad:
        try:
            values = x.numpy()
        except (TypeError, RuntimeError):  # bfloat16 and the other dtypes numpy lacks; a conjugate view
            pass
        else:
            index = order.numpy() if isinstance(order, torch.Tensor) else order
            return torch.from_numpy(np.take(values, index, axis=0))
    index_t = torch.from_numpy(order) if isinstance(order, np.ndarray) else order
    return x[index_t.to(x.device)]
