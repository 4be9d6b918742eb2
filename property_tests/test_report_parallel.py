"""The parallel report builder gives the serial build's numbers.

``build_report(jobs=2)`` runs sections and their parts in spawned worker processes as soon as
the sections they require are built; ``jobs=1`` builds everything in order in this process.
Every job starts from RNGs seeded with the report's seed and with the same torch thread count,
and a part's result depends on its arguments only, so results.json must be equal key by key
except the timings, the date and what is derived from measured timings (``builder.TIMING_KEYS``). On the tiny profile with the
slowdown sweep (searches as separate jobs) and the recoveries (which require it).
"""
from __future__ import annotations

import json

from convrate.reports import builder
from convrate.reports.profiles import TINY


def test_parallel_build_equals_serial(tmp_path):
    only = ("slowdown", "recovery")
    serial = builder.build_report(tmp_path / "serial", seed=1, jobs=1, report_profile=TINY, only=only)
    parallel = builder.build_report(tmp_path / "parallel", seed=1, jobs=2, report_profile=TINY, only=only)
    assert serial["Provenance"]["jobs"] == 1 and parallel["Provenance"]["jobs"] == 2
    a, b = builder.without_timings(serial), builder.without_timings(parallel)
    assert list(a) == list(b) and a == b
    runs = a["Slowdown vs defense strength on real networks"]["networks"]
    assert sum(len(n["runs"]) for n in runs.values()) == 2 * 2 + 2 + 2  # every search ran
    assert a["Recoveries on real networks (R1, R2) and their cost"]["runs"]
    # the same files (the Markdown's cells include wall seconds, so its text is not compared)
    assert sorted(x.name for x in (tmp_path / "serial").iterdir()) == sorted(x.name for x in (tmp_path / "parallel").iterdir())
    assert json.loads((tmp_path / "parallel" / "results.json").read_text())["Provenance"]["jobs"] == 2
