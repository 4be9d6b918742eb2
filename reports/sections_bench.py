"""The benchmarks against the anchors (PyHessian, power iteration, naive iteration), as last
measured by ``python benchmarks/run.py`` and committed in ``benchmarks/results/benchmarks.json``.

The report does not re-run them (they build their own environment and take tens of minutes);
it includes the committed table with the commit and date it was measured at, and every number
shown here is copied into results.json from that file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convrate.reports.document import Section

if TYPE_CHECKING:
    from convrate.reports.builder import Context

#: the benchmarks' results in a checkout (reports/ sits next to benchmarks/)
RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "benchmarks.json"


def bench_section(ctx: "Context") -> Section:
    s = Section("Benchmarks against the anchors")
    if not RESULTS.is_file():
        s.para(f"No benchmark results at {RESULTS} (this is not a source checkout); run "
               "`python benchmarks/run.py` in one to measure them.")
        s.data = {"available": False}
        return s
    res = json.loads(RESULTS.read_text())
    meta = res.get("meta", {})
    s.para(f"From `{res.get('command', 'python benchmarks/run.py')}` at commit {meta.get('commit')} on "
           f"{meta.get('date')} ({meta.get('machine')}, {meta.get('cpus')} CPUs, torch {meta.get('torch')} with "
           f"{meta.get('torch_threads')} thread(s); PyHessian {meta.get('pyhessian')}). Ratios are taken within that "
           "one run; the full tables are in benchmarks/results/benchmarks.md.")
    s.table(["target", "instance", "statement", "measured", "threshold", "met", "why (when missed)"],
            [[t["id"], t["instance"], t["statement"], t["measured"], t["threshold"], "yes" if t["met"] else "NO",
              t.get("why", "")] for t in res.get("targets", [])])
    s.data = {"available": True, "source": str(RESULTS.relative_to(RESULTS.parents[2])), "meta": meta,
              "targets": res.get("targets", [])}
    return s


SECTIONS: list[tuple[str, Any]] = [("benchmarks", bench_section)]
