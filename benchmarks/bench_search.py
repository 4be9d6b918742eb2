#!/usr/bin/env python
"""Benchmark: the learning-rate search's work under its three schedules, on report searches.

Each case is one search of the report's sweeps (its network, defense, K, optimizer, target,
budget, grid and refinement from ``reports.profiles``; the CNN at K = 1000 and LoRA-SGD are in
``--profile extended``), run three times on the same released model (``attacks.lr_search``):

- ``descending``: every grid lr once, largest first, capped by the incumbent's count;
- ``rerun``: successive halving, each round rerunning its rates from the start (``pause_bytes=0``);
- ``paused``: successive halving, each round continuing the runs the previous one paused (the default).

Reported per schedule: optimizer steps executed (``LRSearchResult.steps_run``, exact) and CPU
seconds of the process (``time.process_time``; less disturbed by other processes than wall
time, still machine-dependent). The three must return the same best lr, step count and loss
curve (``same``: checked, a failed check fails the benchmark). ``--quick``: the undefended
digits-MLP Adam search only (seconds).

Usage: python benchmarks/bench_search.py [--quick] [--json OUT]
"""
from __future__ import annotations

import argparse
import time
from typing import Any

from bench_common import fmt, main, progress

SCHEDULES = {"descending": {"schedule": "descending"}, "rerun": {"pause_bytes": 0}, "paused": {}}
#: (profile, network, defense, K, optimizer)
CASES = (("full", "digits MLP", "none", 1.0, "sgd"), ("full", "digits MLP", "none", 1.0, "adam"),
         ("full", "digits MLP", "specdef:spike", 1000.0, "adam"),
         ("extended", "digits MLP", "diagonal", 10000.0, "lora-sgd"),
         ("full", "digits CNN", "none", 1.0, "adam"), ("extended", "digits CNN", "specdef", 1000.0, "sgd"))


def search_case(profile: str, label: str, defense: str, K: float, optimizer: str, seed: int) -> dict[str, Any]:
    """The three schedules on one report search: steps run, CPU seconds, and whether they agree."""
    from convrate.models.attacks import lr_search
    from convrate.reports import sections_slowdown as ss
    from convrate.reports.profiles import PROFILES

    p = PROFILES[profile]
    cfg = dict(ss.network_labels(p))[label]
    _, task, _ = ss.network(p, seed, label)
    attacked, _ = ss._attacked(p, seed, label, defense, K)
    row: dict[str, Any] = {"profile": profile, "network": label, "defense": defense, "K": K, "optimizer": optimizer,
                           "budget": cfg.search.budget_for(optimizer)}
    found = set()
    for name, options in SCHEDULES.items():
        t0 = time.process_time()
        res = lr_search(attacked, task, optimizer, cfg.target, row["budget"], seed=seed, device="cpu",
                        **cfg.search.search_options(optimizer), **options)
        row[name] = {"steps_run": res.steps_run, "cpu_s": time.process_time() - t0}
        found.add((res.best_lr, res.best_steps, res.best_losses))
        row["best_lr"], row["best_steps"], row["trials"] = res.best_lr, res.best_steps, len(res.table)
    row["same"] = len(found) == 1
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    from convrate.models.runtime import single_thread

    cases = CASES[1:2] if args.quick else CASES
    rows = []
    with progress() as prog, single_thread():
        task = prog.add_task("search", total=len(cases))
        for case in cases:
            prog.update(task, description=f"search: {case[1]} {case[2]} K={case[3]:g} {case[4]}")
            rows.append(search_case(*case, seed=args.seed))
            prog.advance(task)
    return {"benchmark": "search", "quick": args.quick, "seed": args.seed, "rows": rows,
            "failed": not all(r["same"] for r in rows)}


def markdown(res: dict[str, Any]) -> str:
    lines = ["Learning-rate searches of the report (optimizer steps run; CPU seconds), per schedule:", "",
             "| network | defense | K | optimizer | budget | best lr | best steps | descending | rerun rounds | "
             "paused rounds | paused / rerun | same result |", "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in res["rows"]:
        cells = [f"{r[s]['steps_run']} ({fmt(r[s]['cpu_s'], 3)} s)" for s in SCHEDULES]
        ratio = r["paused"]["steps_run"] / r["rerun"]["steps_run"] if r["rerun"]["steps_run"] else None
        lines.append(f"| {r['network']} | {r['defense']} | {r['K']:g} | {r['optimizer']} | {r['budget']} | "
                     f"{r['best_lr']:.3g} | {'-' if r['best_steps'] is None else r['best_steps']} | "
                     + " | ".join(cells) + f" | {fmt(ratio, 3)} | {fmt(r['same'])} |")
    total = {s: sum(r[s]["steps_run"] for r in res["rows"]) for s in SCHEDULES}
    lines.append(f"\nAll cases: descending {total['descending']}, rerun {total['rerun']}, paused {total['paused']} steps.")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    sys.exit(main(__doc__.splitlines()[0], run, markdown))
