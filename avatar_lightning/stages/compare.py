"""``python -m avatar_lightning compare RUN...``: one table and plots of animator runs beside their baselines.

Reads the ``scores.json`` every animator test writes (a run folder, a grid folder searched recursively, or the
file itself) and writes into ``--out``: ``scores.md`` (the table, best values in bold), ``scores.csv`` (every
metric, machine-readable), one bar chart per metric and one per-frame plot per metric with per-frame data
(:mod:`avatar_lightning.evaluation.tables`, :mod:`~avatar_lightning.evaluation.report`). Every file is written
under a temporary name and renamed, so a crash never leaves a table that looks complete.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from avatar_lightning.evaluation.run import compare_runs
from avatar_lightning.evaluation.tables import DEFAULT_METRICS, SCORES, collect_rows, find_scores


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avatar_lightning compare",
        description="Compare animator runs and their baselines: a markdown table, a CSV and plots.",
    )
    parser.add_argument("runs", nargs="+", help=f"run folders (searched recursively for {SCORES}) or {SCORES} files")
    parser.add_argument("--out", required=True, type=Path, help="folder for scores.md, scores.csv and the plots")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                        help="comma-separated metrics for the table and plots (default: %(default)s)")
    parser.add_argument("--drivers", nargs="+", metavar="VIDEO",
                        help="real driving videos: also score every run's transfer on them (transfer_grid.md, .json, "
                             ".png; FaceMesh on the driver vs the run's decoded mesh)")
    parser.add_argument("--synthetic-drivers", nargs="+", metavar="CACHE",
                        help="synthetic driver caches (`synth --identity K --style S`): also score every run and "
                             "baseline driven by these identities of known expression (cross_identity.md, a "
                             "per-shape heat map, column xid_relative_error)")
    parser.add_argument("--cache", help="with --drivers / --synthetic-drivers: the actor's cache the runs trained on "
                                        "(default: from each run's config.yaml)")
    parser.add_argument("--work", type=Path, help="with --drivers: where driving caches are kept (default "
                                                  "<out>/drivers)")
    args = parser.parse_args(argv)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if not metrics:
        parser.error("--metrics names no metric")
    rows = collect_rows(find_scores(args.runs), metrics[0])
    known = {m for row in rows for m in row.metrics}
    if unknown := [m for m in metrics if m not in known]:
        parser.error(f"unknown metric(s) {', '.join(unknown)}; the scores have {', '.join(sorted(known))}")
    table, written = compare_runs(rows, args.runs, metrics, args.out, args.drivers or (), args.synthetic_drivers or (),
                                  args.cache, args.work)
    print(table)
    print("wrote:")
    for path in written:
        print(f"  {path}")
    return 0
