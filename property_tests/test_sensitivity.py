"""Step-count sensitivity (models.sensitivity), its place in the sweeps, and the report comparison
(reports.compare, ``convrate compare``, ``convrate report --compare``) on a tiny profile.

Exact facts asserted: the perturbation is of the stated size (|theta'/theta - 1| <= ulps u, u the
dtype's unit roundoff, up to one rounding of the product); the unperturbed count is the attack's
own count; the range contains every run's count; a slowdown's range contains the slowdown; a
report compared with itself or a copy passes, and a copy with one count moved outside its range,
a flipped verdict or a changed exact integer is flagged with exit code 1.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from convrate.cli import app
from convrate.errors import InvalidInputError
from convrate.models.attacks import Attack
from convrate.models.experiments import SearchProfile, slowdown_sweep
from convrate.models.sensitivity import (count_range, overlap, perturb_start, ratio_range, step_sensitivity,
                                         within)
from convrate.models.tasks import tensor_task
from convrate.models.testing import mlp_arch, random_zoo
from convrate.reports import builder
from convrate.reports.compare import compare_results
from convrate.reports.document import Section

runner = CliRunner()


def _tiny(seed: int = 0):
    m = random_zoo(mlp_arch([3, 4, 2]), seed)
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(16, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (16,), generator=g)
    return m, tensor_task(X, y, loss="cross_entropy")


@settings(max_examples=30)
@given(ulps=st.floats(2, 64), seed=st.integers(0, 2**16))
def test_perturbation_has_the_stated_size(ulps, seed):
    m, _ = _tiny()
    p = perturb_start(m.module, ulps, seed)
    u = torch.finfo(torch.float64).eps / 2
    for a, b in zip(m.module.parameters(), p.parameters(), strict=True):
        rel = ((b - a) / a).detach().abs()[a != 0]
        assert float(rel.max()) <= ulps * u * (1 + 4 * u) + 2 * u  # (1 + delta) and the product each round once
    assert any(not torch.equal(a, b) for a, b in zip(m.module.parameters(), p.parameters()))  # |delta| > u: visible
    q = perturb_start(m.module, ulps, seed)  # seeded: the same perturbation again
    assert all(torch.equal(a, b) for a, b in zip(p.parameters(), q.parameters()))


def test_step_sensitivity_range_contains_every_count():
    m, task = _tiny()
    target = 0.5
    s = step_sensitivity(m.module, task, "sgd", 0.5, target, 200, runs=3, seed=0)
    assert s.nominal == Attack("sgd", 0.5, 200, target, seed=0).steps_to(m.module, task)
    assert s.nominal is not None and len(s.perturbed) == 3
    lo, hi = s.range
    assert all(within(n, s.range) for n in (s.nominal, *s.perturbed)) and lo <= s.nominal <= hi
    # far from the edge of stability a rounding-level start does not move the count
    assert s.range == [s.nominal, s.nominal]
    d = s.to_dict()
    assert d["range"] == s.range and "4 u" in d["method"]
    with pytest.raises(InvalidInputError):
        step_sensitivity(m.module, task, "sgd", 0.5, target, 200, runs=0)


def test_range_algebra():
    assert count_range([5, None, 3]) == [3, None] and within(None, [3, None]) and not within(None, [3, 7])
    assert overlap([3, 5], [5, 9]) and not overlap([3, 4], [5, 9]) and overlap([3, None], [100, 200])
    assert ratio_range([10, 12], [4, 5]) == [2.0, 3.0] and ratio_range([10, None], [4, 5]) == [2.0, None]
    assert ratio_range([10, 12], [0, 5]) is None and ratio_range([10, 12], [4, None]) is None


def test_sweep_records_carry_ranges():
    m, task = _tiny()
    prof = SearchProfile(150, (0.05, 0.5, 5.0), refine=0, sensitivity=2)
    runs = slowdown_sweep(m, task, defenses=["diagonal"], Ks=[10.0], optimizers=["sgd"], target=0.5, search=prof,
                          device="cpu")
    base, defended = (r.to_dict() for r in runs)
    for d in (base, defended):
        assert len(d["sensitivity"]["perturbed"]) == 2 and within(d["steps"], d["steps_range"])
    if defended["slowdown"] is not None and defended["slowdown_range"] is not None:
        lo, hi = defended["slowdown_range"]
        assert lo <= defended["slowdown"] <= (hi if hi is not None else float("inf"))
    off = slowdown_sweep(m, task, defenses=[], Ks=[], optimizers=["sgd"], target=0.5,
                         search=SearchProfile(150, (0.5,), refine=0), device="cpu")
    assert "steps_range" not in off[0].to_dict()  # sensitivity 0: nothing added


def test_recovery_rows_judge_r1_and_r2_against_ranges():
    """The recovery section's rows (tiny MLP, one diagonal defense): every count carries a range,
    R1's count lies in the undefended run's range and R2's in the canonical run's."""
    from convrate.reports.profiles import QUICK, NetSweep
    from types import SimpleNamespace

    from convrate.reports.sections_recovery import _network

    m, task = _tiny()
    cfg = NetSweep((10.0,), ("sgd",), ("diagonal",), 0.5, SearchProfile(150, (0.05, 0.5, 5.0), refine=0, sensitivity=2))
    runs = slowdown_sweep(m, task, defenses=cfg.defenses, Ks=cfg.Ks, optimizers=cfg.optimizers, target=cfg.target,
                          search=cfg.search, device="cpu")
    # a sweep record as the recovery job reads it (the report's SweepRecord rebuilds its zoo network)
    rec = SimpleNamespace(label="tiny MLP", cfg=cfg, model=m, task=task, wrap=None, runs=runs)
    rows, checks = _network(0, rec)
    (row,) = rows
    assert row["r1_within_range"] and row["r2_within_range"] and all(c.holds for c in checks)
    for k in ("undefended_steps", "r1_steps", "r2_steps", "r2_canonical_undefended_steps", "defended_best_steps"):
        assert f"{k}_range" in row, k
    for k in ("undefended_steps", "r2_canonical_undefended_steps", "defended_best_steps"):  # their own runs' ranges
        assert within(row[k], row[f"{k}_range"]), k
    assert len(row["undefended_sensitivity"]["perturbed"]) == 2
    # the float64 release's undefended range is the sweep's own: the same as computing it afresh
    base = next(r for r in runs if r.defense == "none")
    fresh = step_sensitivity(m.module, task, "sgd", base.search.best_lr, cfg.target, cfg.search.budget, runs=2,
                             seed=0, device="cpu")
    assert row["undefended_sensitivity"] == fresh.to_dict()


# ---------------------------------------------------------------- comparison of reports
def _section(steps: int, rng: list, holds: bool = True, extra: int = 64, loss: float = 0.25):
    def build(ctx: builder.Context) -> Section:
        s = Section("Recoveries")
        s.data = {"runs": [{"defense": "specdef", "steps": steps, "steps_range": rng, "r1_within_range": holds,
                            "extra_parameters": extra, "loss": loss, "search_seconds": 1.0}]}
        return s
    return build


def _stmts(ctx: builder.Context) -> Section:
    s = Section("Statements")
    s.data = {"check": []}
    return s


def _report(tmp_path, monkeypatch, name: str, **kw):
    monkeypatch.setattr(builder, "sections", lambda: [("counts", _section(**kw)), ("statements", _stmts)])
    out = tmp_path / name
    builder.build_report(out, quick=True, seed=0)
    return out


def test_compare_flags_what_moved(tmp_path, monkeypatch):
    old = _report(tmp_path, monkeypatch, "old", steps=46, rng=[45, 47])
    same = _report(tmp_path, monkeypatch, "same", steps=45, rng=[44, 46], loss=0.2500001)  # overlapping ranges
    moved = _report(tmp_path, monkeypatch, "moved", steps=60, rng=[59, 61])
    flipped = _report(tmp_path, monkeypatch, "flipped", steps=46, rng=[45, 47], holds=False, extra=65)
    ok = compare_results(json.loads((same / "results.json").read_text()), json.loads((old / "results.json").read_text()))
    assert ok["ok"] and ok["ranged_compared"] == 1 and ok["exact_compared"] >= 2
    assert [i["path"] for i in ok["informational"]] == ["/Recoveries/runs[0]/loss"]  # not judged; timings ignored
    r = runner.invoke(app, ["compare", str(same), str(old)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["compare", str(moved), str(old), "--json"])
    assert r.exit_code == 1
    res = json.loads(r.stdout[r.stdout.index("{"):r.stdout.rindex("}") + 1])
    assert [m["path"] for m in res["moved"]] == ["/Recoveries/runs[0]/steps"]
    r = runner.invoke(app, ["compare", str(flipped), str(old), "--json"])
    res = json.loads(r.stdout[r.stdout.index("{"):r.stdout.rindex("}") + 1])
    assert r.exit_code == 1 and sorted(m["path"].rsplit("/", 1)[1] for m in res["moved"]) == [
        "extra_parameters", "r1_within_range"]
    # a hand-perturbed copy of results.json: one count moved beyond its range
    copy = tmp_path / "copy"
    shutil.copytree(old, copy)
    data = json.loads((copy / "results.json").read_text())
    assert runner.invoke(app, ["compare", str(copy), str(old)]).exit_code == 0  # unperturbed copy passes
    data["Recoveries"]["runs"][0]["steps"], data["Recoveries"]["runs"][0]["steps_range"] = 50, [50, 50]
    (copy / "results.json").write_text(json.dumps(data))
    assert runner.invoke(app, ["compare", str(copy), str(old)]).exit_code == 1


def test_compare_refuses_bad_input(tmp_path, monkeypatch):
    old = _report(tmp_path, monkeypatch, "old", steps=46, rng=[45, 47])
    r = runner.invoke(app, ["compare", str(tmp_path / "nowhere"), str(old)])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert runner.invoke(app, ["compare", str(bad), str(old)]).exit_code == 2
    other = json.loads((old / "results.json").read_text())
    other["Provenance"]["seed"] = 1
    (tmp_path / "seed1.json").write_text(json.dumps(other))
    r = runner.invoke(app, ["compare", str(tmp_path / "seed1.json"), str(old)])
    assert r.exit_code == 2 and "seed" in r.stderr


def test_report_compare_option(tmp_path, monkeypatch):
    old = _report(tmp_path, monkeypatch, "old", steps=46, rng=[45, 47])
    monkeypatch.setattr(builder, "sections", lambda: [("counts", _section(steps=70, rng=[70, 70])),
                                                      ("statements", _stmts)])
    r = runner.invoke(app, ["report", "--quick", "--jobs", "1", "--out", str(tmp_path / "new"), "--compare", str(old)])
    assert r.exit_code == 1 and "1 value(s) moved beyond their stated sensitivity" in r.stderr
    r = runner.invoke(app, ["report", "--quick", "--jobs", "1", "--out", str(tmp_path / "new2"),
                              "--compare", str(tmp_path / "none")])
    assert r.exit_code == 2 and not (tmp_path / "new2").exists()
