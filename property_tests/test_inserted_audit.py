"""``convrate defend --form inserted`` and ``convrate audit`` of releases that grew (issue acceptance).

* the acceptance command: ``defend digits-mlp --form inserted -k 4 --alpha 1000`` then ``audit D
  --reference <zoo dir> --quick``: class fplr, every inserted layer listed, merge recovery within
  1.2x of the undefended step count. The merged model equals the reference up to float64 round-off
  of C W' (PREC-ALPHA / M: ~ (s + 2) u alpha ||W|| ~ 1e-12 relative here), so its attack is the
  reference's deterministic run: the same step counts (ratio exactly 1);
* a release built outside convrate in the Hugging Face convention (1-layer MiniLM, float32) audits
  the same way;
* a float32 release whose alpha exceeds the safe limit is reported not function-preserving in
  float32, with the limit; without a reference the merged model is the baseline;
* bad input: one line on stderr, exit 2, nothing written.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from convrate.cli import app
from convrate.models.audit import PROFILES, audit, load_for_audit
from convrate.models.audit_verdict import RECOVERY_THRESHOLD
from convrate.models.inserted import InsertedSpecDef
from convrate.models.io import save_model
from convrate.models.testing import mlp_arch, random_zoo
from convrate.models.zoo import digits_mlp
from inserted_helpers import external_hf_release

runner = CliRunner()
TINY = replace(PROFILES["quick"], name="test-tiny", budget=24,
               lr_ranges=(("zoo", "sgd", 0.1, 1.0), ("zoo", "adam", 1e-2, 0.1),
                          ("hf", "sgd", 0.1, 1.0), ("hf", "adam", 1e-4, 1e-3)),
               refine=0, lanczos_steps=8, trace_samples=2, probes=4, text_per_class=4, text_max_length=8)


def _tree(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _merge_recovers(res: dict) -> None:
    for opt, r in res["recovered_slowdown"]["merge"].items():
        assert r["ratio"] is not None and not r["lower_bound"] and r["ratio"] <= RECOVERY_THRESHOLD, (opt, r)
        assert r["steps"] == r["reference_steps"], (opt, r)  # the same deterministic run


def test_acceptance_digits_mlp_cli(tmp_path):
    mlp = digits_mlp()
    D, O = tmp_path / "D", tmp_path / "O"
    r = runner.invoke(app, ["defend", "digits-mlp", "--form", "inserted", "-k", "4", "--alpha", "1000", "--out", str(D),
                            "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["n_layers"] == 2 and info["inserted_parameters"] == 32 * 32 + 10 * 10
    assert sorted(p.name for p in D.iterdir()) == ["arch.json", "model.safetensors"]
    assert not (tmp_path / "D-reparameterization").exists()  # no secret record for the inserted form
    r = runner.invoke(app, ["audit", str(D), "--reference", str(mlp.source), "--quick", "--out", str(O)])
    assert r.exit_code == 0, r.output
    res = json.loads((O / "audit.json").read_text())
    assert res["class"] == "fplr"
    assert [(x["layer"], x["inserted"]) for x in res["inserted"]["layers"]] == [("0", ["1"]), ("2", ["4"])]
    assert all(abs(x["kappa_C"] / 1000 - 1) < 1e-9 and abs(x["amplification"] / 1000 - 1) < 1e-9 and x["k"] == 4
               and x["matches_reference"] for x in res["inserted"]["layers"])
    assert res["extra_parameters"]["merge"] == -info["inserted_parameters"]
    _merge_recovers(res)
    assert set(res["slowdown_C_frozen"]) == set(res["slowdown"]) == {"sgd", "adam"}
    assert res["inserted"]["preservation"]["ok"] and not res["inserted"]["exceeds_safe_alpha"]
    assert res["inserted"]["safe_alpha"] > 1000  # float64 tolerates alpha = 1000 (PREC-ALPHA: u alpha ~ 1e-13)
    assert "Inserted layers" in (O / "audit.md").read_text()
    # the attack stage is the plain audit's: the baseline's search reads its trials off the pilot,
    # and each best curve is the best trial's own run, which reaches the target when it counts
    assert res["work"]["trials_from_pilot"] >= len(res["attacks"]) and res["work"]["best_curves_rerun"] == 0
    for opt, a in res["attacks"].items():
        ref = a["searches"]["reference"]
        if ref["reached"]:
            curve = a["curves"]["reference"]["losses"]
            assert len(curve) == ref["best_steps"] + 1 and curve[-1] <= a["target"]["target"], opt


def test_external_hf_release_audits_the_same_way(tmp_path):
    from convrate.models.zoo import minilm

    ref = minilm(n_layers=1)
    names = ["encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.value"]
    external_hf_release(ref, tmp_path / "ext", names, 100.0, 4)
    claimed = load_for_audit(tmp_path / "ext", TINY)
    res = audit(claimed, ref, profile=TINY, device="cpu")
    assert res["class"] == "fplr", res["evidence"]
    assert sorted(x["layer"] for x in res["inserted"]["layers"]) == sorted(names)
    assert all(abs(x["kappa_C"] / 100 - 1) < 1e-3 for x in res["inserted"]["layers"])  # float32 storage of C
    assert res["extra_parameters"]["merge"] == -2 * 384 * 384
    _merge_recovers(res)


def _float32_release(tmp_path: Path, alpha: float):
    m = random_zoo(mlp_arch([64, 16, 10]), 5)
    m32 = m.with_module(m.module.to(torch.float32))
    ref = save_model(m32, tmp_path / "ref32")
    grown = InsertedSpecDef(4, alpha).apply(m32, check=False).model
    return save_model(grown, tmp_path / f"rel-{alpha:g}"), ref


def test_alpha_beyond_the_float32_limit_is_reported(tmp_path):
    """The digits MLP in float32 grown at an alpha whose weights, read in float64, still compute the
    function within the float32 tolerance, while the release evaluated in float32 does not (its
    forward pass rounds with u32 rho, rho = alpha, on top of the storage): the audit reports it not
    function-preserving in float32, with the limit, as class outside-class. alpha is chosen by
    measuring both deviations on the audit's own probes (first of a grid in that window)."""
    from convrate.models.audit import function_deviation
    from convrate.models.defense import PRESERVATION_TOLERANCE, _reference
    from convrate.models.inserted import preservation

    m = digits_mlp()
    m32 = m.with_module(m.module.to(torch.float32))
    probes = m32.probe_inputs(n=TINY.probes, seed=0)
    ref64 = _reference(m32, probes)
    for alpha in (5e3, 1e4, 2e4, 4e4):
        g = InsertedSpecDef(4, alpha).apply(m32, check=False).model
        p = preservation(g.module, m32.module, probes, ref64, torch.float32, dict(PRESERVATION_TOLERANCE))
        if function_deviation(m32, g, TINY.probes, 0) <= PRESERVATION_TOLERANCE[torch.float32] and not p.ok:
            break
    else:
        pytest.fail("no alpha of the grid lies between the storage and the evaluation limits")
    ref, rel = save_model(m32, tmp_path / "ref32"), save_model(g, tmp_path / "rel")
    res = audit(load_for_audit(rel), load_for_audit(ref), profile=TINY, device="cpu")
    ins = res["inserted"]
    assert res["function_deviation"] <= res["function_tolerance"]  # read in float64 it would pass
    assert not ins["preservation"]["ok"] and ins["preservation"]["dtype"] == "float32"
    assert ins["safe_alpha"] is not None and ins["safe_alpha"] < alpha and ins["exceeds_safe_alpha"]
    assert res["class"] == "outside-class"
    assert any("not function-preserving in float32" in e and "largest safe alpha" in e for e in res["evidence"])
    # and defend refuses such an alpha, naming the limit
    r = runner.invoke(app, ["defend", str(ref), "--form", "inserted", "-k", "4", "--alpha", f"{alpha:g}",
                            "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "largest safe alpha for float32" in r.stderr and not (tmp_path / "x").exists()


def test_chain_that_does_not_match_its_reference_layer(tmp_path):
    """A reference whose layer differs from the chain's product (here: the grown layer of another
    seed's model in place) is reported chain by chain, and the class is not fplr."""
    rel, ref = _float32_release(tmp_path, 30.0)
    other = random_zoo(mlp_arch([64, 16, 10]), 6)
    res = audit(load_for_audit(rel), other.with_module(other.module.to(torch.float32)), profile=TINY, device="cpu")
    assert all(not x["matches_reference"] and x["product_residual"] > x["tolerance"] for x in res["inserted"]["layers"])
    assert res["class"] != "fplr"


def test_without_reference_the_merge_is_the_baseline(tmp_path):
    rel, _ = _float32_release(tmp_path, 30.0)
    res = audit(load_for_audit(rel), None, profile=TINY, device="cpu")
    assert res["class"] == "unreferenced" and res["attacks"]["sgd"]["baseline"] == "merge"
    assert set(res["attacks"]["sgd"]["searches"]) == {"merge", "claimed", "claimed-C-frozen"}
    assert res["inserted"]["preservation"]["ok"]


@pytest.mark.parametrize("args, msg", [
    (["--alpha", "0"], "alpha"), (["--alpha", "-2"], "alpha"), (["--alpha", "nan"], "alpha"),
    (["-k", "40", "--alpha", "10"], "out of range"), (["--layers", "9*", "--alpha", "10"], "matches no"),
    (["--alpha", "10", "-K", "5"], "absorbed only"), (["--alpha", "10", "--record", "REC"], "no secret record"),
    (["--alpha", "10", "--side", "up"], "side"), (["--alpha", "10", "--top", "9"], "--top"),
])
def test_defend_inserted_bad_input(tmp_path, args, msg):
    m = random_zoo(mlp_arch([64, 16, 10]), 1)
    src = save_model(m, tmp_path / "m")
    args = [a if a != "REC" else str(tmp_path / "rec") for a in args]
    if "-k" not in args:
        args = ["-k", "2", *args]
    before = _tree(src)
    r = runner.invoke(app, ["defend", str(src), "--form", "inserted", *args, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "o").exists() and _tree(src) == before


def test_defend_and_audit_refuse_nan_and_wrong_reference(tmp_path):
    from safetensors.torch import load_file, save_file

    m = random_zoo(mlp_arch([64, 16, 10]), 1)
    src = save_model(m, tmp_path / "m")
    sd = load_file(str(src / "model.safetensors"))
    sd["0.weight"][0, 0] = float("nan")
    save_file(sd, str(src / "model.safetensors"))
    r = runner.invoke(app, ["defend", str(src), "--form", "inserted", "-k", "2", "--alpha", "10",
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "non-finite" in r.stderr and not (tmp_path / "o").exists()
    good = save_model(random_zoo(mlp_arch([64, 16, 10]), 2), tmp_path / "g")
    rel = save_model(InsertedSpecDef(2, 10.0).apply(load_for_audit(good)).model, tmp_path / "rel")
    other = save_model(random_zoo(mlp_arch([64, 12, 10]), 2), tmp_path / "other")
    r = runner.invoke(app, ["audit", str(rel), "--reference", str(other), "--quick", "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and "differs from the reference" in r.stderr and not (tmp_path / "a").exists()


def test_python_api_unmarked_chain_audits_as_fplr():
    """The Python API: a user's module whose first Linear became nn.Sequential-style adjacent
    Linear(W') -> Linear(C) with no marker at all is read as a chain because the reference has one
    Linear there; the audit merges it and finds the reference."""
    from torch import nn

    ref = random_zoo(mlp_arch([64, 16, 10]), 7)
    g = InsertedSpecDef(3, 50.0, layers="0").apply(ref).model
    plain = nn.Sequential(*[m for m in g.module])  # the same maps, no arch.json marker
    res = audit(ref.with_module(plain), ref, profile=TINY, device="cpu")
    assert res["class"] == "fplr"
    (layer,) = res["inserted"]["layers"]
    assert layer["layer"] == "0" and layer["inserted"] == ["1"] and not layer["marked"]
    _merge_recovers(res)
