"""Where a run computes: the device choice and the CPU thread policy."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

__all__ = ["pick_device", "thread_policy", "SMALL_MODEL_PARAMS"]

# Models with fewer parameters than this run with one intra-op thread on CPU (see BENCHMARKS.md).
SMALL_MODEL_PARAMS = 100_000


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """`"auto"` picks cuda, then mps, then cpu; anything else is passed to `torch.device`."""
    if str(device) != "auto":
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device: got {device!r} but CUDA is not available here; use device='auto' or 'cpu'.")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@contextlib.contextmanager
def thread_policy(device: torch.device, params: Sequence[torch.Tensor], threads: int | None) -> Iterator[None]:
    """The intra-op thread count, applied while fitloop computes and restored afterwards.

    Small models (< `SMALL_MODEL_PARAMS` parameters) on the CPU run with one thread: their ops
    are too small to split, and on a busy machine a split op waits for a descheduled thread
    (measured 5-12x slower per step on 2 shared cores; BENCHMARKS.md). `threads=N` overrides.
    """
    prev = torch.get_num_threads()
    want = threads
    if want is None and device.type == "cpu" and prev > 1 and sum(p.numel() for p in params) < SMALL_MODEL_PARAMS:
        want = 1
    if want is None or want == prev:
        yield
        return
    torch.set_num_threads(want)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
