"""``convrate audit`` (models.audit, models.audit_verdict, convrate.cli_audit) on real networks.

The cases of issue 4 ("must show"): the undefended digits MLP against itself (``no-defense``),
the SpecDef-defended digits MLP and a 1-layer MiniLM at K = 100 made with ``convrate defend``
(class ``fplr``, kappa(T) matching the defense's secret record, verdict consistent with the
measured slowdowns), a model fine-tuned for a few steps (``outside-class``), and the branch
without a reference. The digits cases run the CLI with ``--quick``; MiniLM, R1 and the
no-reference branch call ``models.audit.audit`` with the smaller profile ``TINY`` below (the
class and kappa(T) do not depend on the attack budgets; ``--quick`` on MiniLM takes minutes).

Exact identities asserted: a model against itself is attacked by the same deterministic runs
(same weights, seed, task, grid), so every step count and every loss of the curves is equal
(ratio exactly 1); R1 replays the undefended run up to round-off (THEORY.md R1, corrected:
recovered slowdown exactly 1 in exact arithmetic), checked on the loss curves with the
tolerance argued in ``test_r1_replays_reference``.
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from convrate.cli import app
from convrate.errors import ConvrateError
from convrate.models.audit import PROFILES, audit, load_for_audit, pilot_target
from convrate.models.audit_verdict import RECOVERY_THRESHOLD, SLOWDOWN_THRESHOLD, VERDICTS
from convrate.models.fplr import ArchitectureMismatchError, slot_block
from convrate.models.io import save_model
from convrate.models.symmetry import TorchReparameterization
from convrate.models.tasks import digits_relabel_task
from convrate.models.zoo import digits_mlp

U64 = 2.0 ** -53
TINY = replace(PROFILES["quick"], name="test-tiny", budget=24,
               lr_ranges=(("zoo", "sgd", 0.1, 1.0), ("zoo", "adam", 1e-2, 0.1),
                          ("hf", "sgd", 0.1, 1.0), ("hf", "adam", 1e-4, 1e-3)),
               refine=0, lanczos_steps=8, trace_samples=2, probes=4, text_per_class=4, text_max_length=8)
runner = CliRunner()




@pytest.fixture(scope="module")
def mlp():
    return digits_mlp()


@pytest.fixture(scope="module")
def defended_mlp(tmp_path_factory, mlp):
    """``convrate defend`` on the digits MLP at K = 100: (release dir, record dir)."""
    d = tmp_path_factory.mktemp("defend")
    rel, rec = d / "release", d / "record"
    r = runner.invoke(app, ["defend", str(mlp.source), "-K", "100", "--out", str(rel), "--record", str(rec)])
    assert r.exit_code == 0, r.output
    return rel, rec


def _cli_audit(*args: str) -> tuple[int, dict | None, str]:
    r = runner.invoke(app, ["audit", *args])
    out = Path(args[args.index("--out") + 1])
    data = json.loads((out / "audit.json").read_text()) if r.exit_code in (0, 1) else None
    return r.exit_code, data, r.stderr


def _consistent_verdict(res: dict) -> None:
    """The verdict follows from the reported numbers by the thresholds of audit_verdict."""
    assert res["verdict"] in VERDICTS
    slowed = [o for o, s in res["slowdown"].items() if s["ratio"] is not None and s["ratio"] >= SLOWDOWN_THRESHOLD]
    if res["class"] == "fplr":
        if not slowed:
            assert res["verdict"] == "fplr-no-slowdown"
        else:
            ok = any(all(d[o]["ratio"] is not None and not d[o]["lower_bound"] and d[o]["ratio"] <= RECOVERY_THRESHOLD
                         for o in slowed) for d in res["recovered_slowdown"].values())
            assert res["verdict"] == ("fplr-defeated" if ok else "fplr-not-recovered")
    for o, s in res["slowdown"].items():  # every ratio is the ratio of the reported step counts
        if s["ratio"] is not None and not s["lower_bound"]:
            assert s["ratio"] == s["steps"] / s["reference_steps"]


def _work_meets_the_minimum(res: dict, profile) -> None:
    """``AuditProfile.minimum_work`` is a lower bound of what the audit ran, and the pilot runs
    exactly G * pilot_budget steps when none of its trials diverged (fewer when one did)."""
    least = profile.minimum_work(res["architecture"]["format"])
    pilot = res["work"]["pilot_steps_run"]
    assert pilot == sum(a["target"]["pilot_steps_run"] for a in res["attacks"].values())
    assert least["pilot_steps"] <= pilot <= least["pilot_steps_without_divergence"]
    diverged = sum(a["target"]["pilot_trials_diverged"] for a in res["attacks"].values())
    assert (pilot == least["pilot_steps_without_divergence"]) == (diverged == 0)
    curv = [c for c in res["curvature"].values() if "products" in c]
    assert len(curv) == 2
    # each model: the determinism check's two products, every Lanczos step's, the Hutchinson samples
    assert all(c["products"] >= 2 + c["lanczos_steps"] + profile.trace_samples for c in curv)
    assert sum(c["products"] for c in curv) >= least["hvps"]


# ---------------------------------------------------------------- must show (CLI, --quick)
def test_undefended_against_itself(tmp_path, mlp):
    src = str(mlp.source)
    before = sorted(p.name for p in mlp.source.iterdir())
    code, res, err = _cli_audit(src, "--reference", src, "--out", str(tmp_path / "a"), "--quick", "--seed", "0")
    assert code == 0, err
    assert res["class"] == "identical" and res["verdict"] == "no-defense"
    assert res["function_deviation"] == 0.0 and res["weight_distance"] == 0.0
    for opt, a in res["attacks"].items():  # the same deterministic runs: exactly equal
        s = a["searches"]
        assert s["claimed"]["best_steps"] == s["reference"]["best_steps"] and res["slowdown"][opt]["ratio"] == 1.0
        assert a["curves"]["claimed"]["losses"] == a["curves"]["reference"]["losses"]
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["audit.html", "audit.json", "audit.md", "loss_curves.png", "spectra.png"]
    html = (tmp_path / "a" / "audit.html").read_text()
    assert "no-defense" in html and "src='data:image/png;base64," in html and "src='loss_curves" not in html
    md = (tmp_path / "a" / "audit.md").read_text()
    assert "Verdict: no-defense" in md
    w = res["work"]
    assert f"Work: {w['pilot_steps_run']} pilot steps and {w['attack_steps_run']} search steps run, of at most " in md
    assert sorted(p.name for p in mlp.source.iterdir()) == before  # nothing written next to the input


def test_specdef_digits_is_fplr(tmp_path, mlp, defended_mlp):
    rel, rec_dir = defended_mlp
    code, res, err = _cli_audit(str(rel), "--reference", str(mlp.source), "--out", str(tmp_path / "a"), "--quick",
                                "--json")
    assert code in (0, 1), err
    assert res["class"] == "fplr"
    record = TorchReparameterization.load(rec_dir)
    names = [n for n, _ in mlp.module.named_parameters()]
    k_true = record.kappa_T(names)
    # One S2 group (64 -> 32 -> 10): every equation of the log-ratio solve involves one unknown,
    # so A^T A = c I with c = 64 + 1 + 10 equations per unit (test_fplr's bound in closed form):
    # ||a_hat - a||_2 <= sqrt(m) (4.01 + |y|max) u / sqrt(c) + sqrt(r) gamma_c (|y|max) + 10 r u ||a||,
    # |y| <= log(sqrt(K)); |log kappa_hat - log kappa| <= 4 ||a_hat - a||_inf + 16 u.
    c, r, m = 64 + 1 + 10, 32, 64 * 32 + 32 + 10 * 32
    ymax = 0.5 * math.log(100)
    g = c * U64 / (1 - c * U64)
    err_a = (math.sqrt(m) * (4.01 + ymax) * U64 / math.sqrt(c) + math.sqrt(r) * g * ymax
             + 10 * r * U64 * math.sqrt(r) * ymax)
    assert abs(math.log(res["kappa_T"] / k_true)) <= 4 * err_a + 16 * U64, (res["kappa_T"], k_true)
    assert res["fplr"]["residual"] <= res["fplr"]["rtol"]
    assert res["extra_parameters"]["R2"] == 0 and res["extra_parameters"]["R1"] == record.extra_parameters()
    assert res["canonical"]["gap"] <= 1e-12  # R2: both canonical points coincide (round-off of ~kappa u)
    _consistent_verdict(res)


# ---------------------------------------------------------------- audit() with the tiny profile
def test_r1_replays_reference(mlp):
    """R1 on the SpecDef model: the loss curve at the reference's best lr equals the
    reference's. Round-off: phi_0 = T^-1 (T theta) and the recovered gradient each carry
    ~ r u kappa(A) = 32 * 1.1e-16 * 100 ~ 4e-13 relative per step (recovery module doc); 1e-8
    leaves five orders of magnitude for growth over the <= 24 steps of this profile."""
    from convrate.models.defense import SpecDef

    d = SpecDef(100).apply(mlp)
    res = audit(d.model, mlp, profile=TINY, device="cpu")
    assert res["class"] == "fplr"
    for opt, a in res["attacks"].items():
        ref, r1 = a["curves"]["reference"], a["curves"]["R1"]
        assert a["searches"]["R1"]["best_steps"] == a["searches"]["reference"]["best_steps"]
        assert r1["lr"] == ref["lr"] and len(r1["losses"]) == len(ref["losses"])
        assert all(abs(x - y) <= 1e-8 * abs(y) for x, y in zip(r1["losses"], ref["losses"]))
    _consistent_verdict(res)
    _work_meets_the_minimum(res, TINY)


def test_pilot_counts_the_steps_of_diverging_trials(mlp):
    """A pilot trial that diverges stops early: the pilot's step count falls below G * budget
    but stays >= one step per trial (``AuditProfile.minimum_work``), and each trajectory's steps
    are counted."""
    task = digits_relabel_task(0, standardize=False)
    runs: dict = {}
    tgt = pilot_target(mlp.module, task, "sgd", [1e4, 0.1], 6, 0, "cpu", runs=runs)
    assert runs[1e4].diverged and not runs[0.1].diverged and runs[1e4].steps < 6 == runs[0.1].steps
    assert tgt["pilot_trials_diverged"] == 1
    assert 2 <= tgt["pilot_steps_run"] == runs[0.1].steps + runs[1e4].steps < 2 * 6


def test_every_default_attacker_runs_on_every_variant(mlp):
    """The default profile's attackers each attack the reference, the claimed model, R2 and R1
    (K-FAC on R1 takes its factors from phi's own forward, ``recovery.through_phi``), at the
    least work (``shape_of``: one knob value each, at the mild end of its range, two steps)."""
    from convrate.models.audit import DEFAULT_ATTACKERS, shape_of
    from convrate.models.defense import SpecDef

    default = PROFILES["default"]
    shape = shape_of(default)
    for o in shape.optimizers_for("zoo"):
        (x,) = shape.grid(o, "zoo")
        assert x == default.grid(o, "zoo")[-1 if o in ("newton-cg", "gauss-newton", "kfac") else 0]
    res = audit(SpecDef(100).apply(mlp).model, mlp, profile=shape, device="cpu")
    assert res["class"] == "fplr" and tuple(res["attacks"]) == DEFAULT_ATTACKERS
    for a in res["attacks"].values():
        assert {v: len(s["table"]) for v, s in a["searches"].items()} == {"reference": 1, "claimed": 1, "R2": 1, "R1": 1}
    assert all(c["lanczos_steps"] == 8 for c in res["curvature"].values() if "lanczos_steps" in c)
    _work_meets_the_minimum(res, shape)


def _fine_tuned(model, steps: int, lr: float):
    net = copy.deepcopy(model.module)
    task = digits_relabel_task(0, standardize=False)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(task.X_train), task.y_train).backward()
        opt.step()
    return model.with_module(net)


def test_fine_tuned_is_outside_class(tmp_path, mlp):
    save_model(_fine_tuned(mlp, 3, 0.1), tmp_path / "ft")
    code, res, err = _cli_audit(str(tmp_path / "ft"), "--reference", str(mlp.source), "--out", str(tmp_path / "a"),
                                "--quick")
    assert code == 0, err
    assert res["function_deviation"] > res["function_tolerance"]
    assert res["class"] == "outside-class" and res["verdict"] == "outside-class"
    assert res["kappa_T"] is None and "R1" not in res["extra_parameters"]
    assert set(res["slowdown"]) == {"sgd", "adam"}  # the empirical attacks still stand


def test_without_reference(defended_mlp):
    res = audit(load_for_audit(defended_mlp[0]), None, profile=TINY, device="cpu")
    assert res["class"] == "unreferenced" and res["reference"] is None and res["kappa_T"] is None
    assert res["verdict"] in ("no-defense", "fplr-defeated")
    assert res["canonical"]["claimed"]["norm_ratio"] >= 1 - 1e-12  # the canonical point minimizes sum ||W||^2
    assert set(res["attacks"]["sgd"]["searches"]) == {"R2", "claimed"}
    slowed = any(s["ratio"] is not None and s["ratio"] >= SLOWDOWN_THRESHOLD for s in res["slowdown"].values())
    assert res["verdict"] == ("fplr-defeated" if slowed else "no-defense")
    _work_meets_the_minimum(res, TINY)


def test_minilm_specdef_is_fplr(tmp_path):
    """1-layer MiniLM (float32), SpecDef K = 100 via ``convrate defend``. The release stores
    fl32(A X): a-posteriori, with E = X' - A X computed in float64 from the stored data, the
    producer least-squares solution obeys ||A_hat - A||_2 <= ||E||_2 / sigma_min(X) (+ the float64
    solve, ~ u64 kappa(X) ||A||); the consumer side likewise with E = Y'^T A - Y^T and Y'. By
    Weyl, |kappa_hat / kappa - 1| <= 5 eps with eps = max_g ||A_hat - A|| / sigma_min(A)."""
    rel, rec_dir = tmp_path / "release", tmp_path / "record"
    r = runner.invoke(app, ["defend", "minilm", "--layers", "1", "-K", "100", "--out", str(rel), "--record", str(rec_dir)])
    assert r.exit_code == 0, r.output
    from convrate.models.zoo import minilm

    ref = minilm(n_layers=1)
    claimed = load_for_audit(rel, TINY)
    res = audit(claimed, ref, profile=TINY, device="cpu")
    assert res["class"] == "fplr", res["fplr"]["reason"]
    record = TorchReparameterization.load(rec_dir)
    P = {n: p.detach() for n, p in ref.module.named_parameters()}
    C = {n: p.detach() for n, p in claimed.module.named_parameters()}
    sides = {g["name"]: g["side"] for g in res["fplr"]["group_fits"]}
    eps = 0.0
    for sym, A in record.items:
        rr = sym.width
        if sides[sym.name] == "producer":
            X = torch.cat([slot_block(P[s.param], s, rr) for s in sym.slots if s.op == "A"], 1)
            Xc = torch.cat([slot_block(C[s.param], s, rr) for s in sym.slots if s.op == "A"], 1)
            E, M = Xc - A @ X, X
        else:
            Y = torch.cat([slot_block(P[s.param], s, rr) for s in sym.slots if s.op == "A_invT"], 1)
            Yc = torch.cat([slot_block(C[s.param], s, rr) for s in sym.slots if s.op == "A_invT"], 1)
            E, M = Yc.T @ A - Y.T, Yc
        sm = torch.linalg.svdvals(M)
        sa = torch.linalg.svdvals(A)
        bound = float(torch.linalg.matrix_norm(E, ord=2)) / float(sm[-1]) + 10 * max(M.shape) * U64 * float(sm[0] / sm[-1]) * float(sa[0])
        eps = max(eps, bound / float(sa[-1]))
    k_true = record.kappa_T([n for n, _ in ref.module.named_parameters()])
    assert eps < 0.05
    assert abs(res["kappa_T"] / k_true - 1) <= 5 * eps, (res["kappa_T"], k_true, eps)
    assert res["function_deviation"] <= res["function_tolerance"]
    _consistent_verdict(res)


# ---------------------------------------------------------------- bad input (CLI)
def _corrupt(tmp_path: Path, mlp, how: str) -> Path:
    d = tmp_path / f"bad-{how}"
    save_model(mlp, d)
    w = d / "model.safetensors"
    if how == "truncated":
        w.write_bytes(w.read_bytes()[:100])
    elif how == "garbage":
        w.write_bytes(b"\x00" * 64 + b"not a safetensors file")
    elif how == "nan":
        net = copy.deepcopy(mlp.module)
        with torch.no_grad():
            net[0].weight[0, 0] = float("nan")
        w.unlink()
        (d / "arch.json").unlink()
        save_model(mlp.with_module(net), d)
    elif how == "unsupported":
        arch = json.loads((d / "arch.json").read_text())
        (d / "arch.json").write_text(json.dumps({**arch, "kind": "rnn"}))
    elif how == "hf-unsupported":
        w.unlink()
        (d / "arch.json").unlink()
        (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "num_hidden_layers": 1}))
    elif how == "missing-weights":
        w.unlink()
    return d


BAD = {"truncated": "not a valid safetensors file", "garbage": "not a valid safetensors file",
       "nan": "non-finite (NaN/Inf) entries", "unsupported": "unsupported architecture kind",
       "hf-unsupported": "unsupported architecture model_type", "missing-weights": "missing weights file",
       "missing-dir": "does not exist", "other-architecture": "architectures differ", "bad-task": "unknown task",
       "out-is-input": "overlaps the input", "out-foreign": "not a convrate audit"}


def _bad_case(tmp_path: Path, mlp, how: str) -> tuple[str, Path, list[str]]:
    """(MODEL, --out, extra options) for one bad-input case."""
    out, extra = tmp_path / "out", []
    if how == "missing-dir":
        return str(tmp_path / "nope"), out, extra
    if how == "other-architecture":
        return str(digits_mlp(hidden=(16,)).source), out, extra
    if how in ("out-is-input", "out-foreign", "bad-task"):
        model = str(_corrupt(tmp_path, mlp, "copy"))
        if how == "out-is-input":
            out = Path(model)
        elif how == "out-foreign":
            out.mkdir()
            (out / "notes.txt").write_text("mine")
        else:
            extra = ["--task", "sentiment"]
        return model, out, extra
    return str(_corrupt(tmp_path, mlp, how)), out, extra


@pytest.mark.parametrize("how", list(BAD))
def test_bad_input_exit_2_nothing_written(tmp_path, mlp, how):
    model, out, extra = _bad_case(tmp_path, mlp, how)
    listing = {p: sorted(q.name for q in p.iterdir()) for p in (tmp_path, mlp.source)}
    foreign = sorted(q.name for q in out.iterdir()) if out.is_dir() else None
    r = runner.invoke(app, ["audit", model, "--reference", str(mlp.source), "--out", str(out), "--quick", *extra])
    assert r.exit_code == 2, (r.exit_code, r.output)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and BAD[how] in lines[0], r.stderr
    assert {p: sorted(q.name for q in p.iterdir()) for p in (tmp_path, mlp.source)} == listing  # nothing new anywhere
    assert (sorted(q.name for q in out.iterdir()) if out.is_dir() else None) == foreign


def test_architecture_mismatch_api(mlp):
    with pytest.raises(ArchitectureMismatchError) as e:
        audit(digits_mlp(hidden=(16,)), mlp, profile=TINY)
    assert isinstance(e.value, ConvrateError)
