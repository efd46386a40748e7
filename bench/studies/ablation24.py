"""The ablation of issue 24's default model: each arm's `fitloop` results (a `tables24 --json` run with one recipe
piece changed by `--set`) swapped into the main run's results, so every arm is scored against the same anchors
on the same rows by tables24's own rules (win/tie/loss against CatBoost, mean normalized score and rank, the
tables below max(linear, HGB), the median time ratio to CatBoost).

Run: python -m bench.studies.ablation24 MAIN.json NAME=ARM.json [NAME=ARM.json ...] [--markdown OUT.md]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path
from typing import Any

from bench.studies.tables import TOLERANCE
from bench.studies.tables24 import _floor_check, aggregate, load_results, summarize_tables


def swap_arm(main: list[dict[str, Any]], arm: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`main`'s results with the fitloop arm of `arm` (same table and seed; tables the arm lacks are left out)."""
    by_key = {(r["table"], r["seed"]): r for r in arm}
    out = []
    for r in main:
        other = by_key.get((r["table"], r["seed"]))
        if other is not None:
            swapped = copy.deepcopy(r)
            swapped["arms"]["fitloop"] = other["arms"]["fitloop"]
            out.append(swapped)
    return out


def arm_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The numbers of one arm: tables, CatBoost win/tie/loss, mean normalized score and rank, the floor, the
    median ratio of fitloop's training time to CatBoost's fit time, and how often the linear start was kept."""
    rows = summarize_tables(results)
    agg = aggregate(rows)
    cb = agg["wtl"].get("catboost", {})
    floor = _floor_check(rows)
    ratios = [r["train_seconds"]["fitloop"] / r["seconds"]["catboost"] for r in rows
              if "fitloop" in r["train_seconds"] and r["seconds"].get("catboost")]
    kept_start = sum(1 for r in rows for b in r["best_epochs"] if b == 0)
    return {"tables": len(rows), "wins": cb.get("wins"), "ties": cb.get("ties"), "losses": cb.get("losses"),
            "win_rate": cb.get("win_rate"), "normalized": agg["means"].get("fitloop", {}).get("normalized"),
            "catboost_normalized": agg["means"].get("catboost", {}).get("normalized"),
            "rank": agg["means"].get("fitloop", {}).get("rank"), "floor": floor[2],
            "time_ratio": statistics.median(ratios) if ratios else None, "kept_start": kept_start,
            "scores": {r["table"]: r["score"]["fitloop"] for r in rows}}


def markdown(arms: dict[str, dict[str, Any]], main_rows: list[dict[str, Any]]) -> str:
    """The ablation table, then each table's fitloop score per arm next to CatBoost's."""
    lines = ["| arm | tables | vs CatBoost W/T/L | win rate | mean normalized (CatBoost) | mean rank | below "
             "max(linear, HGB) | train time / CatBoost (median) | kept the linear start |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, s in arms.items():
        lines.append(f"| {name} | {s['tables']} | {s['wins']}/{s['ties']}/{s['losses']} | {s['win_rate']:.0%} | "
                     f"{s['normalized']:.3f} ({s['catboost_normalized']:.3f}) | {s['rank']:.2f} | {s['floor']} | "
                     f"{s['time_ratio']:.1f}x | {s['kept_start']} |")
    names = list(arms)
    lines += ["", "| table | metric | " + " | ".join(names) + " | CatBoost | linear | HGB |",
              "|---|---|" + "---|" * (len(names) + 3)]
    for row in main_rows:
        cells = [f"{arms[n]['scores'].get(row['table'], float('nan')):.3f}" for n in names]
        s = row["score"]
        lines.append(f"| {row['table']} | {row['metric']} (tie {TOLERANCE[row['metric']]:g}) | " + " | ".join(cells)
                     + f" | {s.get('catboost', float('nan')):.3f} | {s.get('linear', float('nan')):.3f} | "
                       f"{s.get('hgb', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("main", help="the main run's --json (fitloop's defaults and the anchors)")
    ap.add_argument("arms", nargs="*", help="NAME=ARM.json: an arm's --json (its fitloop results)")
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args()
    main_results = load_results([Path(args.main)])
    arms = {"default": arm_summary(main_results)}
    for spec in args.arms:
        name, _, path = spec.partition("=")
        arms[name] = arm_summary(swap_arm(main_results, load_results([Path(path)])))
    text = markdown(arms, summarize_tables(main_results))
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "scores"} for k, v in arms.items()}, indent=1))


if __name__ == "__main__":
    main()
