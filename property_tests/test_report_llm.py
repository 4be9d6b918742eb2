"""The decoder-LLM report sections (``reports.sections_llm``) on the zoo Llama at a tiny size: every
piece runs (T1/T2 per group kind, statement O, the largest safe K per kind and dtype, the first- and
second-order sweeps, the Hessian extremes, R1/R2 and R1's cost), its checks reach the statements
table through ``Context.record`` and hold, and a 2-worker build equals the serial one."""
from __future__ import annotations

from dataclasses import replace

import pytest

from convrate.models.attacks import log_grid
from convrate.models.experiments import SearchProfile
from convrate.reports import builder
from convrate.reports.profiles import TINY, LLMProfile, NetSweep
from convrate.reports.sections_llm import KINDS

LLM_TINY = replace(TINY, name="tiny-llm", llm=LLMProfile(
    sequences=8, tokens=8,
    sweep=NetSweep((10,), ("sgd", "lora-adam"), ("specdef",), 3.6, SearchProfile(12, tuple(log_grid(1e-2, 0.1, 1)), refine=0)),
    recovery_optimizers=("sgd", "lora-adam"), law_sequences=2, law_tokens=8, spectra_steps=6, spectra_probes=2,
    rotations=1, rotation_steps=2, K_max=1e4,
    so=NetSweep((10,), ("sophia",), ("specdef",), 3.6, SearchProfile(8, (1e-3, 1e-2), refine=0))))
ONLY = ("llm", "llm-recovery")


@pytest.fixture(scope="module")
def serial():
    """Both sections built in order in this process (as ``build_report(jobs=1)`` does), with their Context."""
    ctx = builder.Context(False, 0, LLM_TINY)
    secs = [builder._build_one(name, build, ctx).section for name, build in builder.sections() if name in ONLY]
    return ctx, secs


def test_every_piece_runs_and_its_checks_reach_the_statements_table(serial):
    ctx, (main_s, rec_s) = serial
    main, rec = main_s.data, rec_s.data
    laws = main["laws"]
    kinds = {d["instance"].split(", ")[1].split(" (")[0] for d in laws}
    assert kinds == {*KINDS, "residual-rotation", "permutations"}
    assert {d["statement"] for d in laws} == {"T1", "T2"} and len(laws) == 2 * len(kinds)
    checks = laws + main["rotation_checks"] + rec["checks"]
    assert all(d["holds"] for d in checks), [d["instance"] for d in checks if not d["holds"]]
    recorded = {sid: len(v) for sid, v in ctx.measured.items()}  # what the statements table counts
    assert recorded == {sid: sum(d["statement"] == sid for d in checks) for sid in ("T1", "T2", "O", "R1", "R2")}
    assert set(main["precision"]) == {*KINDS, "all"}
    assert all(set(v) == {"float64", "float32", "bfloat16", "float16"} for v in main["precision"].values())
    for key, n in (("sweep", 2 * 2), ("so", 2)):
        assert [(r["defense"], r["optimizer"]) for r in main[key]["runs"]][0][0] == "none" and len(main[key]["runs"]) == n
    assert [r["state"] for r in main["spectra"]] == ["undefended", "SpecDef K=10", "R1 of K=10", "R2 of K=10"]
    u, r1 = main["spectra"][0], main["spectra"][2]  # T2 in phi: R1's Hessian is the undefended one
    assert abs(r1["lambda_max"] - u["lambda_max"]) <= 1e-8 * abs(u["lambda_max"]) + u["lambda_max_residual"]
    assert {r["optimizer"] for r in rec["runs"]} == {"sgd", "lora-adam"}
    assert all(r["r1_steps"] == r["undefended_steps"] for r in rec["runs"])
    assert rec["cost"]["within_bound"] and rec["cost"]["extra_parameters"] > 0
    figures = {b.name for s in (main_s, rec_s) for kind, b in s.blocks if kind == "figure"}
    assert figures == {"llm_safe_K.png", "llm_slowdown_zoo_llama.png", "llm_curves_zoo_llama.png",
                       "llm_so_slowdown_zoo_llama.png", "llm_so_curves_zoo_llama.png"}


def test_parallel_build_equals_serial(serial, tmp_path):
    _, secs = serial
    par = builder.build_report(tmp_path / "parallel", seed=0, jobs=2, report_profile=LLM_TINY, only=ONLY)
    assert [builder.without_timings(s.data) for s in secs] == [builder.without_timings(par[s.title]) for s in secs]
