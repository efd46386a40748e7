"""`fitloop export RUN_DIR --format onnx|torch-export [--out PATH]`: the parser and the command.

The work is `fitloop.integrations.export.export` (also `fl.export`); this module turns its result into
a few lines on the terminal and its errors into exit codes: 2 for a missing extra or a bad path, 1 when
the exported model disagrees with fitloop (a bug; nothing is left behind).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable

__all__ = ["add_export_parser", "cmd_export"]

EXPORT_EXAMPLES = """\
examples:
  fitloop export runs/price                               # ONNX: runs/price/export/model.onnx (+ .json)
  fitloop export runs/price --format torch-export          # runs/price/export/model.pt2 (+ .json)
  fitloop export runs/price --format onnx --out price.onnx --overwrite

The exported graph includes the numeric preprocessing (imputation, standardization): raw column
values go in, predictions come out. Categorical columns go in as integer codes; the mapping, the
column order and the outputs are in the JSON file next to the model. Every export is verified on the
run's test rows against `fitloop predict` (max abs difference <= 1e-5) before it is kept.
"""


def add_export_parser(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register `fitloop export` on the `fitloop` subparsers (`common` adds --quiet/--debug)."""
    x = sub.add_parser("export", help="export a run as ONNX or torch.export, verified",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXPORT_EXAMPLES,
                       description="Export a trained run (preprocessing included) as ONNX or a torch.export "
                                   ".pt2, verified against fitloop's own predictions on the run's test rows.")
    x.add_argument("run_dir", metavar="RUN_DIR")
    x.add_argument("--format", "-f", choices=("onnx", "torch-export"), default="onnx",
                   help="onnx (needs pip install 'fitloop[export]') or torch-export (.pt2); default onnx")
    x.add_argument("--out", "-o", metavar="PATH", default=None,
                   help="file (.onnx / .pt2) or directory; default RUN_DIR/export/model.onnx|.pt2")
    x.add_argument("--overwrite", action="store_true", help="replace an existing export")
    common(x)
    x.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    from ..integrations.export import ExportMismatchError, MissingExtraError, export  # torch: not at start-up

    debug = getattr(args, "debug", False) or os.environ.get("FITLOOP_DEBUG") == "1"  # as `main` decides
    try:
        res = export(args.run_dir, args.format, args.out, overwrite=args.overwrite, debug=debug)
    except (MissingExtraError, FileExistsError) as e:
        return _fail(e, 2, debug)
    except ExportMismatchError as e:
        return _fail(e, 1, debug)
    if getattr(args, "quiet", False):
        print(res.path)
        return 0
    schema = json.loads(res.schema_path.read_text(encoding="utf-8"))
    cols = schema["input"]["columns"]
    n_cat = sum(c["kind"] == "categorical" for c in cols)
    outs = ", ".join(f"{o['name']} ({o['dtype']})" for o in schema["outputs"])
    kb = res.path.stat().st_size / 1024
    what = "probabilities" if schema["task"] == "classification" else \
        f"predictions, in target standard deviations; {res.max_abs_diff_target_units:.3g} in {schema['target']!r} units"
    print(f"exported {args.run_dir} -> {res.path} ({'ONNX' if res.format == 'onnx' else 'torch.export'}, "
          f"{kb:.0f} KiB) in {res.seconds:.1f}s\n"
          f"  input   features: float64 [batch, {len(cols)}]: {len(cols) - n_cat} numeric columns (raw values, NaN = "
          f"missing), {n_cat} categorical (integer codes)\n"
          f"  outputs {outs}\n"
          f"  layout  {res.schema_path} (column order, category codes, classes)\n"
          f"verified with {res.runtime} on {res.source}: max abs difference {res.max_abs_diff:.3g} "
          f"({what}; tolerance {res.tolerance:g})")
    for note in res.notes:
        print(f"note: {note}")
    return 0


def _fail(e: BaseException, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"fitloop: error: {e}", file=sys.stderr)
    return code
