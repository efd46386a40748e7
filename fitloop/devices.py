"""Where a run computes: the device choice and the CPU thread policy."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

__all__ = ["pick_device", "available_devices", "thread_policy", "SMALL_MODEL_PARAMS"]

# Models with fewer parameters than this run with one intra-op thread on CPU (see BENCHMARKS.md).
SMALL_MODEL_PARAMS = 100_000


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """`"auto"` picks cuda, then mps, then cpu; anything else must name a device this machine has.

    Raises:
        ValueError: an unknown device name, or one this machine lacks (CUDA, an index past its GPUs,
            MPS), or `meta` (it holds no data to compute on); the message lists `available_devices()`.
    """
    if str(device) != "auto":
        return _checked_device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def available_devices() -> list[str]:
    """The device names this machine can train on: `auto`, `cpu`, then `cuda`, `cuda:N` and `mps` when present."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    return names


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def _checked_device(device: str | torch.device) -> torch.device:
    """`device` as a `torch.device`, when this machine has it (see `pick_device`)."""
    def refuse(why: str) -> ValueError:
        return ValueError(f"device (--device, train.device): got {str(device)!r}, {why}; this machine has: "
                          f"{', '.join(available_devices())}.")

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):  # torch's message lists every device type it knows
        raise refuse("which is not a device name") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: got {device!r} but CUDA is not available here; use device='auto' or 'cpu' "
                         f"(this machine has: {', '.join(available_devices())}).")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise refuse(f"but this machine has {torch.cuda.device_count()} GPU(s)")
    if dev.type == "mps" and not _mps_available():
        raise refuse("but MPS (Apple's GPU) is not available here")
    if dev.type == "meta":
        raise refuse("which holds no data to compute on (it is for shapes only)")
    return dev


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
