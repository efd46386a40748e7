"""`fitloop serve RUN_DIR`: the parser entry and the command; the server is `fitloop.integrations.serve`."""

from __future__ import annotations

import argparse
import os
import sys

from .argtypes import whole_number

__all__ = ["add_serve_parser", "cmd_serve"]

SERVE_EXAMPLES = """\
examples:
  fitloop serve runs/price                          # http://127.0.0.1:8000, loopback only
  fitloop serve runs/price --port 9000 --workers 4
  FITLOOP_API_KEY=s3cret fitloop serve runs/price --host 0.0.0.0
  curl -s localhost:8000/predict -d '[{"area": 70, "rooms": 3}]'
  curl -s 'localhost:8000/predict_csv?proba=true' --data-binary @new.csv

Each request writes one JSON line to stderr (--quiet: only the start, stop and error lines).
endpoints: POST /predict (JSON records), POST /predict_csv (CSV), GET /health, /schema, /metrics, /version.
Bad requests get a 4xx with a JSON body naming the column and the row. SIGTERM or Ctrl-C stop it
gracefully: requests in flight finish first.
"""

MIB = 1024 * 1024


def _size(text: str) -> int:
    """A byte count: 1048576, 512k, 10m (k/m/g are powers of 1024)."""
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    scale = {"k": 1024, "m": MIB, "g": 1024 * MIB}.get(t[-1:], 1)
    try:
        n = int(float(t[:-1] if scale > 1 else t) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; use bytes, or a number with k, m or g "
                                         f"(e.g. 10m)") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the size must be at least 1 byte")
    return n


def add_serve_parser(sub: argparse._SubParsersAction, common: object) -> None:
    """Add `serve` to the `fitloop` subcommands; `common` adds the shared --quiet/--debug options."""
    from ..integrations.serve import DEFAULT_MAX_BODY, DEFAULT_MAX_ROWS  # the server's own defaults, for --help

    s = sub.add_parser("serve", help="serve a run's model over HTTP", epilog=SERVE_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Serve a finished run's model over HTTP (FastAPI + uvicorn; "
                                   "pip install 'fitloop[serve]'), with the answers `fitloop predict` gives.")
    s.add_argument("run_dir", metavar="RUN_DIR")
    s.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for all)")
    s.add_argument("--port", type=whole_number(0, 65535, "a TCP port is 0-65535 (0 picks a free one)"), default=8000,
                   help="TCP port (default 8000; 0 picks a free one)")
    s.add_argument("--workers", type=whole_number(1), default=1,
                   help="worker processes, each with its own copy of the model (default 1)")
    s.add_argument("--max-rows", type=whole_number(1), default=DEFAULT_MAX_ROWS, metavar="N",
                   help=f"most rows per request; more get 413 (default {DEFAULT_MAX_ROWS:,})")
    s.add_argument("--max-body", type=_size, default=DEFAULT_MAX_BODY, metavar="SIZE",
                   help=f"largest request body, e.g. 512k or 10m; larger gets 413 (default {DEFAULT_MAX_BODY // MIB}m)")
    s.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on every endpoint but /health (default: the "
                        "FITLOOP_API_KEY environment variable, if set; prefer it: flags show up in `ps`)")
    common(s)  # type: ignore[operator]
    s.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """Run the server until SIGTERM/Ctrl-C; exit 0 after a graceful stop, 2 when the extra is missing."""
    from ..integrations.serve import require_serve_extra, serve  # the server: not on the start-up path

    try:
        require_serve_extra()
    except ImportError as e:
        print(f"fitloop: error: {e}", file=sys.stderr)
        return 2
    api_key = args.api_key if args.api_key is not None else os.environ.get("FITLOOP_API_KEY")
    if api_key is not None and not api_key.strip():  # e.g. FITLOOP_API_KEY=$UNSET_VARIABLE: never serve open
        where = "--api-key" if args.api_key is not None else "FITLOOP_API_KEY"
        raise ValueError(f"{where} is empty; pass a secret (or unset it to serve without one).")
    serve(args.run_dir, host=args.host, port=args.port, workers=args.workers, max_rows=args.max_rows,
          max_body=args.max_body, api_key=api_key, access_log=not getattr(args, "quiet", False))
    return 0
