"""``convrate defend`` / ``convrate attack`` (convrate.cli_models) through typer's CliRunner.

The release is the reparameterized model (record.inverse() restores the input to <= 8
float64 roundings per entry: S2 scalings, see test_models_symmetry), the record lives outside
it, and the attack's recoveries behave as R1/R2 state: R1 gives the undefended step count,
R2 the same count at every strength. Bad input prints one line "error: ..." on stderr, exits 2
and writes nothing.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from convrate.cli import app
from convrate.models.checks import gamma
from convrate.models.io import load_model, save_model
from convrate.models.symmetry import TorchReparameterization
from convrate.models.testing import mlp_arch, random_zoo




runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _tree(path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def digits_like(tmp_path):
    """A random float64 ReLU MLP 64 -> 8 -> 10 saved in the zoo format (fits the digits task)."""
    m = random_zoo(mlp_arch([64, 8, 10]), 3)
    src = save_model(m, tmp_path / "model")
    return m, src


def test_defend_writes_release_and_separate_record(digits_like, tmp_path):
    m, src = digits_like
    before = _tree(src)
    r = invoke("defend", src, "--strength", 100, "--out", tmp_path / "rel", "--json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert _tree(src) == before, "the input checkpoint changed"
    rel, rec_dir = tmp_path / "rel", tmp_path / "rel-reparameterization"
    assert sorted(p.name for p in rel.iterdir()) == ["arch.json", "model.safetensors"]
    assert sorted(p.name for p in rec_dir.iterdir()) == ["reparameterization.json", "reparameterization.safetensors"]
    assert info["groups"] == {"relu-linear": 1} and info["method"] == "specdef"
    # SpecDef's kappa(A) is the strength (geometric profile from theory.bounds, float64)
    assert abs(info["kappa_A"] - 100) <= 1e-12 * 100
    assert all(v["ok"] for d, v in info["preservation"].items() if d in ("float64", "float32"))
    record = TorchReparameterization.load(rec_dir)
    restored = record.inverse().apply_to_module(load_model(rel).module)
    for (n, p), q in zip(m.module.named_parameters(), restored.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=gamma(8), atol=0), n
    r = invoke("defend", src, "--strength", 10, "--method", "diagonal", "--out", tmp_path / "rel2",
               "--record", tmp_path / "secret")
    assert r.exit_code == 0, r.stderr
    assert "kappa(T)" in r.stdout and (tmp_path / "secret" / "reparameterization.json").is_file()


def _attack(*args) -> dict:
    r = invoke("attack", *args, "--json")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_attack_recoveries(digits_like, tmp_path):
    """R1 with the record gives the undefended count; R2 gives one count for every K."""
    _, src = digits_like
    for K in (10, 1000):
        assert invoke("defend", src, "--strength", K, "--out", tmp_path / f"rel{K}").exit_code == 0
    common = ("--optimizer", "sgd", "--lr", "0.5", "--budget", "80", "--target", "1.5")
    base = _attack(src, *common)
    assert base["reached"] and base["recovery"] == "none" and base["task"].startswith("digits-relabel")
    r1 = _attack(tmp_path / "rel1000", *common, "--recovery", "r1")  # default record location
    assert r1["steps"] == base["steps"]
    assert r1["extra_parameters"] == 2 * 8 and r1["within_bound"]
    r2 = {K: _attack(tmp_path / f"rel{K}", *common, "--recovery", "r2")["steps"] for K in (10, 1000)}
    assert r2[10] == r2[1000] == _attack(src, *common, "--recovery", "r2")["steps"]
    adam = ("--optimizer", "adam", "--lr", "0.01", "--budget", "80", "--target", "1.5")
    assert (_attack(tmp_path / "rel1000", *adam, "--recovery", "r1", "--record", tmp_path / "rel1000-reparameterization")
            ["steps"] == _attack(src, *adam)["steps"])


def test_attack_lr_sweep(digits_like):
    _, src = digits_like
    res = _attack(src, "--optimizer", "sgd", "--lr-sweep", "--budget", "5", "--target", "2.0")
    tried = [row for row in res["lr_table"] if row["steps"] is not None]
    assert res["lr_sweep"] and res["lr_table"]
    if tried:  # the reported lr has the fewest steps among those tried
        assert res["steps"] == min(row["steps"] for row in tried)


# ---------------------------------------------------------------- bad input
def _assert_refused(r, tmp_path, before: dict, match: str) -> None:
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert match in lines[0], lines[0]
    assert _tree(tmp_path) == before, "something was written"


@pytest.mark.parametrize("K,match", [(1, "strength K"), (0.5, "strength K"), (-3, "strength K"),
                                     ("nan", "strength K"), ("inf", "strength K")])
def test_defend_refuses_bad_strength(digits_like, tmp_path, K, match):
    _, src = digits_like
    before = _tree(tmp_path)
    _assert_refused(invoke("defend", src, "--strength", K, "--out", tmp_path / "rel"), tmp_path, before, match)


def test_defend_refuses_bad_input(digits_like, tmp_path):
    m, src = digits_like
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    nan_dir = save_model(m, tmp_path / "nan")
    state = load_file(str(nan_dir / "model.safetensors"))
    state["0.weight"][0, 0] = math.nan
    save_file(state, str(nan_dir / "model.safetensors"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "arch.json").write_text((src / "arch.json").read_text())
    before = _tree(tmp_path)
    cases = [
        (("defend", src, "--strength", 10, "--out", tmp_path / "full"), "not an empty directory"),
        (("defend", nan_dir, "--strength", 10, "--out", tmp_path / "o1"), "non-finite"),
        (("defend", tmp_path / "absent", "--strength", 10, "--out", tmp_path / "o2"), "neither an existing"),
        (("defend", broken, "--strength", 10, "--out", tmp_path / "o3"), "missing weights file"),
        (("defend", src, "--strength", 10, "--method", "rotate", "--out", tmp_path / "o4"), "unknown defense method"),
        (("defend", src, "--strength", 10, "--out", tmp_path / "o5", "--record", tmp_path / "o5" / "r"), "must not be inside"),
        (("defend", src, "--strength", 10, "--out", src / "sub"), "input directory"),
        (("attack", nan_dir, "--lr", 0.1), "non-finite"),
        (("attack", tmp_path / "absent", "--lr", 0.1), "neither an existing"),
        (("attack", src, "--lr", 0.1, "--lr-sweep"), "either --lr or --lr-sweep"),
        (("attack", src, "--lr", 0.1, "--recovery", "r1"), "needs the secret reparameterization record"),
        (("attack", src, "--lr", 0.1, "--record", tmp_path / "full"), "--record applies to --recovery r1"),
        (("attack", src, "--lr", "nan"), "--lr must be positive"),
        (("attack", src, "--lr", 0.1, "--optimizer", "bfgs"), "unknown optimizer"),
    ]
    for args, match in cases:
        _assert_refused(invoke(*args), tmp_path, before, match)


def test_defend_refuses_a_strength_that_breaks_the_function(tmp_path):
    """A float16 release cannot hold K = 1e12 (scales 1e6 overflow 65504): the precision check names
    the largest safe K."""
    m = random_zoo({**mlp_arch([64, 8, 10]), "dtype": "float16"}, 1)
    src = save_model(m, tmp_path / "half")
    before = _tree(tmp_path)
    r = invoke("defend", src, "--strength", "1e12", "--out", tmp_path / "rel")
    _assert_refused(r, tmp_path, before, "largest safe K")
