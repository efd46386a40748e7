"""Data: seeded splits, batching for the training loop, and tables (read, infer, preprocess).

    fitloop.data.splitting    split, Split, as_tensor, split_indices
    fitloop.data.fractions    check_fractions (plain Python, no torch)
    fitloop.data.batches      TensorBatches, LoaderBatches
    fitloop.data.reading      read_table, TableError
    fitloop.data.table        Table (column kinds and task inferred, splits encoded)
    fitloop.data.preprocess   Preprocessor, transform_table, TableSplit, PreparedTable

The names below are imported on first use (PEP 562): `import fitloop.data` imports neither torch
nor pyarrow, so the torch-free parts (`fitloop.data.fractions`) stay cheap for the command line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "Split": "splitting", "split": "splitting", "as_tensor": "splitting",
    "TensorBatches": "batches", "LoaderBatches": "batches",
    "Table": "table", "TableError": "reading", "read_table": "reading",
    "Preprocessor": "preprocess", "transform_table": "preprocess",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # for type checkers and IDEs
    from .batches import LoaderBatches, TensorBatches  # noqa: F401
    from .preprocess import Preprocessor, transform_table  # noqa: F401
    from .reading import TableError, read_table  # noqa: F401
    from .splitting import Split, as_tensor, split  # noqa: F401
    from .table import Table  # noqa: F401
