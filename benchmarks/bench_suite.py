#!/usr/bin/env python
"""Benchmark: wall time of the verification suite a user runs in CI, and of the quick report.

- CI tests: the command ``make test`` runs (``.ci/run`` sets HYPOTHESIS_PROFILE=ci):
  ``python -m pytest -n 2 -p no:cacheprovider property_tests``, with this interpreter;
- ``convrate report --quick --out <temporary directory>`` (removed afterwards).
Each is run once from the repository root; the exit status and pytest's summary line are
kept. Target (the project's CI budget): the test command under 15 minutes.

Usage: python benchmarks/bench_suite.py [--skip-report] [--json OUT]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench_common import REPO, fmt, main, progress

CI_BUDGET_S = 15 * 60.0
JOBS = 2


def timed(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    tail = [line for line in (p.stdout + p.stderr).splitlines() if line.strip()][-3:]
    return {"command": " ".join(cmd), "seconds": wall, "returncode": p.returncode, "tail": tail}


def run(args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "HYPOTHESIS_PROFILE": "ci"}
    rows = []
    with progress() as prog:
        task = prog.add_task("suite: CI tests", total=1 if args.skip_report else 2)
        tests = timed([sys.executable, "-m", "pytest", "-n", str(JOBS), "-p", "no:cacheprovider", "-q",
                       "property_tests"], env)
        m = [ln for ln in tests["tail"] if re.search(r"\d+ (passed|failed|error)", ln)]
        tests["summary"] = m[-1].strip("= ") if m else None
        rows.append({"what": "CI tests (HYPOTHESIS_PROFILE=ci)", **tests})
        prog.advance(task)
        if not args.skip_report:
            prog.update(task, description="suite: convrate report --quick")
            with tempfile.TemporaryDirectory(prefix="convrate-bench-report-") as tmp:  # shown as <tmp>
                rep = timed([sys.executable, "-m", "convrate", "report", "--quick", "--out", os.path.join(tmp, "rep")],
                            env)
            rows.append({"what": "convrate report --quick", **rep})
            prog.advance(task)
    return {"benchmark": "suite", "jobs": JOBS, "ci_budget_s": CI_BUDGET_S, "rows": rows}


def markdown(res: dict[str, Any]) -> str:
    lines = ["| what | command | wall (s) | exit | result |", "|---|---|---:|---:|---|"]
    for r in res["rows"]:
        result = r.get("summary") or (r["tail"][-1] if r["tail"] else "")
        cmd = re.sub(r"\S*convrate-bench-report-[^/\s]+/rep", "<tmp>", r["command"].replace(sys.executable, "python"))
        lines.append(f"| {r['what']} | `{cmd}` | {fmt(r['seconds'])} | {r['returncode']} | "
                     f"{result.replace('|', '/')[:160]} |")
    return "\n".join(lines)


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    r = res["rows"][0]
    ok = r["returncode"] == 0
    met = ok and r["seconds"] <= res["ci_budget_s"]
    return [{"id": "T-suite", "instance": "CI tests", "statement": "the CI test command passes within 15 minutes",
             "measured": f"{fmt(r['seconds'])} s, exit {r['returncode']}", "ratio": r["seconds"] / res["ci_budget_s"],
             "threshold": "<= 1", "met": met,
             "why": "" if met else ("tests failed: " + (r.get("summary") or "") if not ok else "over the budget")}]


def _add(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--skip-report", action="store_true", help="time only the CI tests")


if __name__ == "__main__":
    sys.exit(main(__doc__.splitlines()[0], run, markdown, _add))
