"""`fitloop train ... --nproc N`: the same command on N processes, started by torch's own launcher.

    fitloop train data.csv --target y --nproc 2                        # one machine, 2 processes (DDP)
    fitloop train data.csv --target y --nproc 2 --strategy fsdp        # FSDP instead of DDP
    fitloop train data.csv --target y --nproc 2 --max-restarts 1       # a failed job restarts and resumes
    # two machines (run on each; node 0's address as the endpoint):
    fitloop train data.csv --target y --out runs/y --nproc 4 --nnodes 2 --node-rank 0 --rdzv-endpoint node0:29400
    fitloop train data.csv --target y --out runs/y --nproc 4 --nnodes 2 --node-rank 1 --rdzv-endpoint node0:29400

The launcher is `torch.distributed.run` (torchrun) called in-process: no `torchrun` binary needs to be on
PATH. Each worker runs `python -m fitloop train ...` with the same arguments (without the launch flags,
with the run directory fixed up front so every rank, and a restart, uses the same one). A restarted
worker (`--max-restarts`) resumes the run directory from its latest checkpoint. When a worker fails, the
error names the rank that failed first.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .argtypes import whole_number

__all__ = ["add_launch_options", "wants_launch", "launch", "LAUNCH_FLAGS", "restarted_run", "print_user_error"]

# flags the launcher consumes (with a value each); the workers get the rest of the command line
LAUNCH_FLAGS = ("--nproc", "--nnodes", "--node-rank", "--rdzv-endpoint", "--max-restarts")
LAUNCHED_ENV = "FITLOOP_LAUNCHED"  # set for the workers `launch` starts: the launcher prints their user errors


def add_launch_options(p: argparse.ArgumentParser, config: bool = True) -> None:
    """The "scaling out" options of `fitloop train` (and, without `config`'s --strategy/--dist-timeout, of
    `fitloop resume`, whose settings come from the run)."""
    g = p.add_argument_group("scaling out (torch.distributed)")
    g.add_argument("--nproc", type=whole_number(1), metavar="N", help="processes on this machine (DDP; gloo on CPU, "
                   "nccl on CUDA); batch-size is per process")
    g.add_argument("--nnodes", type=whole_number(1), metavar="N", help="machines in the job (default 1)")
    g.add_argument("--node-rank", type=whole_number(0), metavar="R", help="this machine's index, 0..nnodes-1")
    g.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="rendezvous address (node 0), for --nnodes > 1")
    g.add_argument("--max-restarts", type=whole_number(0), metavar="K", help="restart failed workers up to K "
                   "times; they resume from the latest checkpoint (default 0)")
    if not config:
        return
    g.add_argument("--strategy", choices=("ddp", "fsdp"), help="DDP (default) or FSDP (fully_shard) sharding")
    g.add_argument("--dist-timeout", type=float, metavar="S", help="seconds a process waits for another "
                   "before the job stops, naming it (default 60)")


def wants_launch(args: argparse.Namespace) -> bool:
    """Whether this command should start workers (and is not one already).

    Raises:
        ValueError: --node-rank without --nnodes, or not below it.
    """
    nnodes, node_rank = getattr(args, "nnodes", None), getattr(args, "node_rank", None)
    if node_rank is not None and node_rank >= (nnodes or 1):
        raise ValueError(f"--node-rank {node_rank}: machines are numbered 0..nnodes-1"
                         + (f" (--nnodes {nnodes})" if nnodes else "; pass --nnodes N with it") + ".")
    several = (getattr(args, "nproc", None) or 1) > 1 or (nnodes or 1) > 1
    return several and "TORCHELASTIC_RUN_ID" not in os.environ and "LOCAL_RANK" not in os.environ


def _worker_argv(argv: list[str], out: str | None) -> list[str]:
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in LAUNCH_FLAGS:
            skip = True
            continue
        if a.split("=", 1)[0] in LAUNCH_FLAGS:
            continue
        rest.append(a)
    if out is None or any(a in ("--out", "-o") or a.startswith("--out=") for a in rest):
        return rest
    return [*rest, "--out", out]


def launch(args: argparse.Namespace, argv: list[str], out: str) -> int:
    """Start the workers through `torch.distributed.run` and wait for them; returns the exit code.

    Args:
        args: the parsed `fitloop train` arguments (`nproc`, `nnodes`, `node_rank`, `rdzv_endpoint`,
            `max_restarts`).
        argv: the command line, passed on to the workers without the launch flags.
        out: the run directory every worker uses (resolved once here).
    """
    # torch's launcher: imported when the workers start, never on `fitloop --help`'s start-up path
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    nproc, nnodes = args.nproc or 1, args.nnodes or 1
    targs = _torchrun_args(args, out)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # what torchrun would pick, without its banner
    again = f"fitloop resume {out} --nproc {nproc}" + (f" --nnodes {nnodes} ..." if nnodes > 1 else "")
    os.environ[LAUNCHED_ENV] = "1"  # the workers leave printing user errors to this process
    try:
        resuming = "resume" in argv[:1]
        run(parse_args([*targs, "--module", "fitloop", *_worker_argv(argv, None if resuming else out)]))
    except SignalException as e:  # Ctrl-C or a SIGTERM to the job: the workers got it too and checkpointed
        name = signal.Signals(e.sigval).name
        print(f"fitloop: the job was interrupted by {name}; the workers wrote a checkpoint at the step they "
              f"stopped at: `{again}` continues it.", file=sys.stderr, flush=True)
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        return _job_failed(e, out, again)
    finally:
        os.environ.pop(LAUNCHED_ENV, None)  # this process prints its own errors again (a later in-process call)
    return 0


def _torchrun_args(args: argparse.Namespace, out: str) -> list[str]:
    """torchrun's own arguments: processes, restarts, and the rendezvous (standalone on one machine).

    Raises:
        ValueError: a count below 1, or several machines without --rdzv-endpoint.
    """
    nproc, nnodes = args.nproc or 1, args.nnodes or 1
    if nproc < 1 or nnodes < 1:
        raise ValueError(f"--nproc/--nnodes: got {nproc}/{nnodes}; pass whole numbers >= 1.")
    targs = ["--nproc-per-node", str(nproc), "--max-restarts", str(args.max_restarts or 0),
             "--monitor-interval", "0.2"]
    if nnodes == 1 and not args.rdzv_endpoint:
        return [*targs, "--standalone"]
    if not args.rdzv_endpoint:
        raise ValueError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the address of node 0, the same "
                         "on every machine).")
    # with --node-rank the machines' ranks are fixed (static rendezvous), else they join in any order (c10d)
    backend = "c10d" if args.node_rank is None else "static"
    targs += ["--nnodes", str(nnodes), "--rdzv-backend", backend, "--rdzv-endpoint", args.rdzv_endpoint,
              "--rdzv-id", f"fitloop-{Path(out).name}"]
    if args.node_rank is not None:
        targs += ["--node-rank", str(args.node_rank)]
    return targs


def _job_failed(e: Any, out: str, again: str) -> int:
    """Say which rank failed first and what is left to resume (a `ChildFailedError`); returns the exit code:
    2 when the workers refused the input, 3 for a failure during the run."""
    from ..checkpoint_format import find_checkpoints  # torch: only once a job failed

    rank, first = e.get_first_failure()
    how = f"was killed by {first.signal_name()}" if first.exitcode < 0 else f"exited with code {first.exitcode}"
    others = sorted(r for r in e.failures if r != rank)
    also = f" (then rank(s) {', '.join(map(str, others))} stopped too)" if others else ""
    codes = {f.exitcode for f in e.failures.values()}
    # a worker refused the input (its error is printed above), and the others refused it too or were
    # stopped by the agent after it (a signal): nothing ran, nothing to resume
    if first.exitcode == 2 and all(c == 2 or c < 0 for c in codes):
        for message in _worker_errors(e):
            print(message, file=sys.stderr, flush=True)
        print("fitloop: the job stopped: the workers refused the command (the error above); fix it and "
              "run it again.", file=sys.stderr, flush=True)
        return 2
    kept = (f"The run directory {out} keeps its last checkpoint: `{again}` continues it."
            if Path(out).is_dir() and find_checkpoints(Path(out)) else
            f"No checkpoint was written yet, so `{again}` starts the run again from the beginning.")
    print(f"fitloop: the job failed: rank {rank} (local rank {first.local_rank}) {how}{also}. {kept}",
          file=sys.stderr, flush=True)
    return 3


def print_user_error(message: str) -> None:
    """Print a user error (``fitloop: error: ...``) once per job.

    A worker writes it to its torchelastic error file. Under `fitloop train --nproc` (`LAUNCHED_ENV`) the
    workers print nothing and the launcher prints each distinct error once, from the files: a worker that
    printed itself could be stopped by the agent before or after printing, as another rank failed first, so
    the launcher could not tell whether to print it again. Under a plain `torchrun`, local rank 0 prints it
    (every worker reads the same input and meets the same error). Outside a launched job it is printed as it is.
    """
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        with open(error_file, "w") as f:  # the format torchelastic's ProcessFailure reads
            json.dump({"message": message, "timestamp": int(time.time())}, f)
        if os.environ.get(LAUNCHED_ENV) == "1":
            return
    if os.environ.get("LOCAL_RANK", "0") == "0":
        print(message, file=sys.stderr, flush=True)


def _worker_errors(e: Any) -> list[str]:
    """The user errors the workers met (from their error files), each once, in rank order (a
    `ChildFailedError`)."""
    errors: list[str] = []
    for _, f in sorted(e.failures.items()):
        if f.exitcode == 2 and f.message.startswith("fitloop: error:") and f.message not in errors:
            errors.append(f.message)
    return errors


def restarted_run(out: str | None) -> Path | None:
    """In a worker that torchrun restarted (`--max-restarts`): the run directory to resume, if it has a
    checkpoint."""
    from ..distributed import restart_count  # torch: only in a worker, not on the start-up path

    if not out or restart_count() == 0:
        return None
    path = Path(out)
    return path if (path / "checkpoints" / "latest").is_file() else None
