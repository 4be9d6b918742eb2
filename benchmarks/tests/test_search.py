"""bench_search on its quick case, for real: the three schedules agree, and the paused halving
rounds run fewer steps than rerunning them and than the descending schedule."""
from __future__ import annotations

import argparse

from bench_search import SCHEDULES, markdown, run


def test_quick_search_benchmark():
    res = run(argparse.Namespace(quick=True, seed=0))
    (row,) = res["rows"]
    assert (row["network"], row["defense"], row["optimizer"]) == ("digits MLP", "none", "adam")
    assert row["same"] and not res["failed"] and row["best_steps"] is not None
    steps = {s: row[s]["steps_run"] for s in SCHEDULES}
    assert steps["paused"] < steps["rerun"] < steps["descending"]
    assert steps["paused"] >= row["best_steps"]
    doc = markdown(res)
    assert f"| {steps['paused']} (" in doc and "| yes |" in doc
