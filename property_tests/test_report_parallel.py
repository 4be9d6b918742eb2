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


def test_inserted_section_jobs_equal_serial(tmp_path):
    """The inserted-layer section as one job per search (and per precision curve): the 2-worker
    build gives the serial numbers; every (alpha, variant, optimizer) search ran, the absorbed
    pair the slowdown sweep lacked (the spike profile) was filled in, and statement M's check
    (merged steps = undefended steps, float64) was recorded and holds."""
    from dataclasses import replace

    from convrate.reports.profiles import InsertedProfile

    prof = replace(TINY, inserted=InsertedProfile(k=2, mlp_alphas=(10.0,), mlp_optimizers=("sgd",), minilm_alphas=(),
                                                  minilm_layers="*.attention.self.value", precision_alphas=(1.0, 1e4),
                                                  minilm_precision=False))
    only = ("slowdown", "inserted")
    serial = builder.build_report(tmp_path / "serial", seed=1, jobs=1, report_profile=prof, only=only)
    parallel = builder.build_report(tmp_path / "parallel", seed=1, jobs=2, report_profile=prof, only=only)
    a, b = builder.without_timings(serial), builder.without_timings(parallel)
    assert a == b
    (sec,) = [v for k, v in a.items() if k.startswith("SpecDef with an inserted layer")]
    runs = sec["networks"]["digits MLP"]["runs"]
    assert [(r["defense"], r["K"]) for r in runs] == [("none", 1.0), ("specdef", 10.0), ("specdef:spike", 10.0),
                                                      ("inserted", 10.0), ("inserted:C-frozen", 10.0),
                                                      ("inserted:merge", 10.0)]
    assert all(r["slowdown"] is not None for r in runs)
    (m,) = sec["checks"]
    assert m["statement"] == "M" and m["holds"]
    assert set(sec["precision"]["real"]) == {"digits MLP"} and sec["precision"]["exact"]["table"]


def test_every_timing_compare_ignores_is_a_timing_key():
    """The keys ``convrate compare`` never compares because they are timings (not the machine
    description) are all stripped by ``without_timings``: the derivations' ``seconds`` were not,
    so the full report's serial and parallel results.json could never compare equal."""
    from convrate.reports.compare import IGNORED

    timings = IGNORED - {"platform", "device", "versions"}
    assert timings <= set(builder.TIMING_KEYS), timings - set(builder.TIMING_KEYS)
    doc = {"derive": [{"id": "T1", "seconds": 1.5, "status": "proved"}], "jobs": 2}
    assert builder.without_timings(doc) == {"derive": [{"id": "T1", "status": "proved"}]}


_FAULTS = """
import ctypes, resource, sys, torch
from convrate.models import runtime
if sys.argv[1] == "keep":
    print(runtime.keep_freed_memory())
else:  # every block above glibc's initial 128 KiB threshold mapped afresh, freed blocks unmapped
    print(bool(ctypes.CDLL("libc.so.6").mallopt(runtime._M_MMAP_THRESHOLD, 128 << 10)))
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():
    held = [torch.ones(3 << 20, dtype=torch.float64) for _ in range(3)]  # three 24 MiB blocks at once
step()
before = faults()
for _ in range(40):
    step()
print(faults() - before)
"""


def test_building_processes_keep_freed_memory():
    """``runtime.keep_freed_memory`` (called by the builder in every building process): three
    24 MiB tensors allocated together and freed, forty times, reuse the same pages: fewer page
    faults in all than one round's 18432 pages of 4 KiB. The contrast, each block mapped afresh
    (glibc's initial 128 KiB mmap threshold held fixed), faults every page in every round. (Left
    to glibc's adaptive defaults the count depends on what the process allocated before: 24525
    and about 496000 were seen here for the same loop.)"""
    import inspect
    import subprocess
    import sys
    from pathlib import Path

    import pytest

    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not thp.exists() or "[always]" in thp.read_text():
        pytest.skip("the fault counts assume 4 KiB pages (Linux, transparent huge pages not always on)")
    out = {}
    for mode in ("keep", "mmap"):
        res = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
        applied, faults = res.stdout.split()
        out[mode] = (applied, int(faults))
    assert out["keep"][0] == out["mmap"][0] == "True"
    assert out["keep"][1] < 18432 and out["mmap"][1] >= 40 * 18432 * 9 // 10
    # the builder applies it in its workers (and in this process for a serial build)
    assert "keep_freed_memory()" in inspect.getsource(builder._worker_init)
    assert "keep_freed_memory()" in inspect.getsource(builder.build_report)
