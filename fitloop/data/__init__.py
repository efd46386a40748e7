"""Data: seeded splits and batching for the training loop (tensors and batches; tables are `fitloop.tabular`).

    fitloop.data.splitting    split, Split, as_tensor, split_indices
    fitloop.data.fractions    check_fractions (plain Python, no torch)
    fitloop.data.batches      TensorBatches, LoaderBatches
    fitloop.data.sharding     ShardedBatches: one process's share of in-memory batches
    fitloop.data.stream       ParquetSource, StreamBatches: Parquet files read block by block (larger than memory)

Reading, inferring and preprocessing tables (`Table`, `read_table`, `Preprocessor`, `transform_table`,
`TableError`) is `fitloop.tabular`.

The names below are imported on first use (PEP 562): `import fitloop.data` does not import torch,
so the torch-free parts (`fitloop.data.fractions`) stay cheap for the command line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "Split": "splitting", "split": "splitting", "as_tensor": "splitting",
    "TensorBatches": "batches", "LoaderBatches": "batches",
    "ParquetSource": "stream", "StreamBatches": "stream",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # for type checkers and IDEs
    from .batches import LoaderBatches, TensorBatches  # noqa: F401
    from .splitting import Split, as_tensor, split  # noqa: F401
    from .stream import ParquetSource, StreamBatches  # noqa: F401
