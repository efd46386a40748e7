"""The process group: set up from the torchrun environment, bound to a device, destroyed at the end.

    with fitloop.distributed.group.session(timeout=60):   # RANK / LOCAL_RANK / WORLD_SIZE from torchrun
        trainer.fit(train, val)                            # (fl.Trainer starts a session by itself too)

* **Backend**: nccl when the process trains on CUDA, gloo on the CPU (and for the small side channel that
  objects and the dead-rank diagnosis use with nccl).
* **Device**: rank ``LOCAL_RANK`` binds to ``cuda:LOCAL_RANK`` when CUDA is used.
* **Timeout**: every collective gives up after `timeout` seconds (default 60, `TrainConfig.dist_timeout`,
  `fitloop train --dist-timeout`). When a collective fails (a peer died, or hangs), `diagnose` asks the
  rendezvous store which ranks still answer and raises `RankFailure` naming the others: nothing hangs.
* **Lifetime**: a group fitloop created is destroyed at the end of `session()` (on error too) or at exit;
  a group the user created is left alone.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import itertools
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from . import restart_count

__all__ = ["init_from_env", "session", "destroy", "barrier", "Collective", "RankFailure", "diagnose",
           "is_collective_error", "DEFAULT_TIMEOUT", "env_world_size"]

DEFAULT_TIMEOUT = 60.0  # seconds a collective waits for a silent peer
EXIT_PEER_FAILED = 3  # the exit code of a rank that gives up because another one is gone
_DRAIN_SECONDS = 0.2  # how long `destroy` releases the GIL for gloo's worker threads

_owned = False  # fitloop created the default group (and destroys it)
_store: Any = None  # the rendezvous store, for the dead-rank diagnosis
_side: Any = None  # a gloo group for objects when the main backend is nccl
_timeout = DEFAULT_TIMEOUT
_generation = itertools.count()
_prefix = "fitloop"


class RankFailure(SystemExit):
    """A collective failed because another rank died or stopped answering; `ranks` names them.

    A `SystemExit` with code 3: the process ends without a traceback after the message (printed to
    stderr), and torchrun sees a failed worker.
    """

    def __init__(self, message: str, ranks: list[int]):
        super().__init__(EXIT_PEER_FAILED)
        self.message, self.ranks = message, ranks

    def __str__(self) -> str:
        return self.message


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _device(requested: str) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` when CUDA is asked for (or `auto` finds it), else the CPU."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise ValueError(f"device: this machine has {torch.cuda.device_count()} CUDA device(s), and local rank "
                             f"{local} would need cuda:{local}; start at most that many processes per machine "
                             "(--nproc), or pass device='cpu'.")
        return torch.device("cuda", local)
    if requested == "cuda":
        raise ValueError("device: got 'cuda', but CUDA is not available on this machine; pass device='cpu' "
                         "(or 'auto', which picks CUDA where it is).")
    if requested.startswith("cuda"):
        raise ValueError(f"device: got {requested!r} in a distributed run; pass device='cuda' (each rank uses "
                         f"cuda:LOCAL_RANK) or 'cpu'.")
    if requested not in ("auto", "cpu"):
        raise ValueError(f"device: {requested!r} is not supported in a distributed run; use 'cuda' or 'cpu'.")
    return torch.device("cpu")


def init_from_env(timeout: float = DEFAULT_TIMEOUT, device: str = "auto") -> torch.device | None:
    """Join the process group torchrun describes (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT``) and bind this rank to its device; idempotent.

    Returns:
        This rank's device, or None when the job has one process (nothing to set up).

    Raises:
        ValueError: a device that cannot be used by every rank, or a missing torchrun variable.
    """
    global _owned, _store, _side, _timeout, _prefix
    if dist.is_available() and dist.is_initialized():
        dev = _device(device)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return dev if dist.get_world_size() > 1 else None
    ws = env_world_size()
    if ws <= 1:
        return None
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(f"distributed: WORLD_SIZE={ws} but {', '.join(missing)} not set; start the job with "
                         "torchrun (or `fitloop train ... --nproc N`), which sets them.")
    dev = _device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    rank = int(os.environ["RANK"])
    _timeout = float(timeout)
    delta = datetime.timedelta(seconds=_timeout)
    # The store is made here (not by init_method="env://") so that the diagnosis can use it. Under torchrun
    # the agent hosts it; otherwise rank 0 does, as env:// would.
    host_it = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    _store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), ws, is_master=host_it,
                           timeout=delta)
    if not host_it and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # the agent's store outlives a restart: each attempt its own keys (as torch's env:// does)
        _store = dist.PrefixStore(f"/worker/attempt_{restart_count()}", _store)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=_store, rank=rank, world_size=ws, timeout=delta,
                            device_id=dev if backend == "nccl" else None)
    _side = dist.new_group(backend="gloo", timeout=delta) if backend == "nccl" else None
    _prefix = f"fitloop/{restart_count()}/{next(_generation)}"
    _owned = True
    atexit.register(destroy)
    return dev


def destroy() -> None:
    """Destroy the process group if fitloop created it (a no-op otherwise, and when called twice)."""
    global _owned, _store, _side
    if _owned and dist.is_initialized():
        with contextlib.suppress(Exception):  # a broken group (a dead peer) still gets torn down locally
            dist.destroy_process_group()
        # Gloo's worker threads outlive destroy_process_group while a module (DDP, FSDP) still holds the
        # group, and a worker that drops a finished collective's tensors needs the GIL to do it. At exit,
        # a worker still waiting for the GIL when the interpreter finalizes aborts the process ("terminate
        # called without an active exception"). Releasing the GIL for a moment lets those drops finish.
        time.sleep(_DRAIN_SECONDS)
    _owned, _store, _side = False, None, None


@contextlib.contextmanager
def session(timeout: float = DEFAULT_TIMEOUT, device: str = "auto") -> Iterator[torch.device | None]:
    """Set up the process group for the block (see `init_from_env`) and destroy it after, on error too.
    A collective that fails inside raises `RankFailure` naming the ranks that are gone."""
    dev = init_from_env(timeout, device)
    try:
        yield dev
    except BaseException as e:
        failure = diagnose(e, "running") if is_collective_error(e) else None
        if failure is not None:
            raise failure from e
        raise
    finally:
        destroy()


def barrier() -> None:
    """Wait for every rank (no-op in one process); used around checkpoint writes and reads."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier(group=_side)


def is_collective_error(e: BaseException) -> bool:
    """Whether `e` is a failed collective (a peer died: connection closed, or it timed out)."""
    if isinstance(e, RankFailure) or not isinstance(e, RuntimeError):
        return False
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e)
    return any(s in text for s in ("Gloo", "gloo", "NCCL", "Connection closed", "Connection reset",
                                   "Timed out", "timed out", "Broken pipe", "peer"))


def diagnose(error: BaseException, doing: str, grace: float | None = None) -> RankFailure | None:
    """After a failed collective: which ranks no longer answer? Every rank that is still alive leaves a mark
    in the rendezvous store; the ranks whose mark is missing after `grace` seconds are named.

    Returns:
        The `RankFailure` to raise (its message is printed to stderr here), or None outside a group.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return None
    me, ws = dist.get_rank(), dist.get_world_size()
    grace = min(5.0, _timeout) if grace is None else grace
    others = [r for r in range(ws) if r != me]
    try:
        _store.set(f"{_prefix}/alive/{me}", "1")
        deadline = time.monotonic() + grace
        missing = others
        while missing and time.monotonic() < deadline:
            missing = [r for r in missing if not _store.check([f"{_prefix}/alive/{r}"])]
            if missing:
                time.sleep(0.1)
        who = missing or others
        what = f"rank{'s' if len(who) > 1 else ''} {', '.join(map(str, who))}"
    except Exception:  # noqa: BLE001 - the store itself is gone: its host (rank 0 or the agent) died
        who = [0] if me != 0 else others
        what = f"rank {who[0]} (the host of the rendezvous store)" if me != 0 else "the torchrun agent"
    first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    msg = (f"fitloop: rank {me} of {ws}: {what} stopped responding (died or hangs) while {doing}; the collective "
           f"failed after at most {_timeout:g} s (dist_timeout): {first}. Rank {me} exits with code "
           f"{EXIT_PEER_FAILED}.")
    print(msg, file=sys.stderr, flush=True)
    return RankFailure(msg, who)


class Collective:
    """The few collectives fitloop's loop needs: global weighted means, agreed flags, gathered rows and
    objects. Every method is a no-op shortcut in one process; in a group, every rank must call it."""

    def __init__(self, device: torch.device):
        self.device = device
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of `values` over the ranks (float64 for exact row counts)."""
        if self.world == 1:
            return values
        out = values.to(self.device, torch.float64).clone()
        dist.all_reduce(out)
        return out

    def flags(self, *flags: bool) -> list[bool]:
        """For each flag: true on every rank when it is true on any of them (one all-reduce for all)."""
        if self.world == 1:
            return list(flags)
        t = torch.tensor([1.0 if f else 0.0 for f in flags], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's rows of `t` concatenated in rank order (the ranks may hold different row counts)."""
        if self.world == 1:
            return t
        n = torch.tensor([t.shape[0]], device=t.device, dtype=torch.int64)
        sizes = [torch.zeros_like(n) for _ in range(self.world)]
        dist.all_gather(sizes, n)
        counts = [int(s.item()) for s in sizes]
        pad = t.new_zeros((max(counts) - t.shape[0], *t.shape[1:]))
        padded = torch.cat([t, pad]).contiguous() if pad.shape[0] else t.contiguous()
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:c] for p, c in zip(parts, counts)])

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (picklable), in rank order."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=_side)
        return out

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Rank `src`'s `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src, group=_side)
        return box[0]
