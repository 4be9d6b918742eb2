"""``convrate audit`` / ``defend`` on decoder LLMs, end to end (the issue's acceptance), and the
float64 / release-dtype paths the audit relies on.

The model is ``tiny_decoder("llama", 0, layers=2)`` (GQA 4/2 heads, RoPE, SwiGLU, RMSNorm, float64)
saved as a Hugging Face directory. Reparameterized in one group kind (or in QK, V/O and SwiGLU
together) at kappa(A) = 50 with ``convrate defend --groups``: those groups act on disjoint
tensors, so kappa(T) = kappa(A) = 50 exactly; with the RMSNorm groups too, the norm's c scales the
columns of q/k/v/gate/up whose rows the other groups scale, and kappa(T) = 50^2.

Tolerances. kappa(T) of the inferred T is compared with the record's to 1e-6 relative: every element
is recovered to ~kappa(A) u relative (the a-posteriori bound of ``test_llm_groups`` asserts 1e-9),
and kappa(T) is a ratio of products of the elements' extreme singular values. The function deviation
is decided by the audit against its own float64 tolerance 1e-8 (``defense.PRESERVATION_TOLERANCE``),
which holds only on the exact float64 path: transformers' float32 RMSNorm and softmax put ~1e-7 into
a float64 decoder's logits.
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
from convrate.models import elements
from convrate.models.audit import PROFILES, audit, load_for_audit
from convrate.models.checks import gamma, reduction_length
from convrate.models.curvature import Objective
from convrate.models.defense import SpecDef, release_cast
from convrate.models.families import discover_symmetries
from convrate.models.io import load_model, save_model
from convrate.models.recovery import r1_module
from convrate.models.symmetry import TorchReparameterization
from convrate.models.tasks import NextTokenLM, next_token_targets
from convrate.models.testing import decoder_inputs, tiny_decoder

runner = CliRunner()
K = 50.0
#: audit() at a tiny size: the class and kappa(T) come from stages 1-2; one optimizer, 12 steps
TINY_LM = replace(PROFILES["quick"], name="test-tiny-lm", budget=12, optimizers=("sgd",),
                  lr_ranges=(("lm", "sgd", 1.0, 10.0),), refine=0, lanczos_steps=6, trace_samples=2, probes=4,
                  text_max_length=8)
GROUPS = {"rope-qk": "rope-qk", "gqa-vo": "gqa-vo", "swiglu": "swiglu", "three": "rope-qk,gqa-vo,swiglu"}


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    """{name: (release dir, record dir or None)} and the reference dir: each group kind and the three
    together by ``convrate defend --groups -K 50``; permuted SwiGLU units; a QK map that does not
    commute with RoPE (the same slots, any A: q -> A q, k -> A^-T k)."""
    root = tmp_path_factory.mktemp("decoders")
    m = tiny_decoder("llama", 0, layers=2)
    ref = save_model(m, root / "ref")
    out = {}
    for name, kinds in GROUPS.items():
        rel, rec = root / name, root / f"{name}-record"
        r = runner.invoke(app, ["defend", str(ref), "-K", str(K), "--groups", kinds, "--out", str(rel),
                                "--record", str(rec), "--json"])
        assert r.exit_code == 0, r.output
        summary = json.loads(r.stdout)
        assert set(summary["groups"]) == set(kinds.split(",")) and summary["preservation"]["float64"]["ok"]
        out[name] = (rel, rec)
    syms = discover_symmetries(m, permutations=True)
    s = next(s for s in syms if s.kind == "mlp-permutation")
    P = elements.random("permutation", s.width, torch.Generator().manual_seed(1))
    assert not torch.equal(P, torch.eye(s.width, dtype=P.dtype))
    out["perm"] = (save_model(m.with_module(TorchReparameterization([(s, P)]).apply_to_module(m.module)),
                              root / "perm"), P)
    q = next(s for s in syms if s.kind == "rope-qk")
    A = elements.random("gl", q.width, torch.Generator().manual_seed(1), 0.5)
    gl = replace(q, element="gl")
    out["noncomm"] = (save_model(m.with_module(TorchReparameterization([(gl, A)]).apply_to_module(m.module)),
                                 root / "noncomm"), None)
    return ref, out


def _kappa_ok(measured: float, true: float) -> bool:
    return abs(math.log(measured / true)) <= 1e-6


# ---------------------------------------------------------------- acceptance
def test_cli_quick_audit_of_the_three_groups_together(decoders, tmp_path):
    ref, d = decoders
    rel, rec = d["three"]
    r = runner.invoke(app, ["audit", str(rel), "--reference", str(ref), "--quick", "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "a" / "audit.json").read_text())
    record = TorchReparameterization.load(rec)
    assert _kappa_ok(record.kappa_T(), K)  # disjoint tensors: kappa(T) = kappa(A)
    assert res["class"] == "fplr" and res["function_deviation"] <= res["function_tolerance"] == 1e-8
    assert _kappa_ok(res["kappa_T"], K) and K / 2 <= res["kappa_T"] <= 2 * K
    assert all(_kappa_ok(res["kappa_A"][k], K) for k in ("rope-qk", "gqa-vo", "swiglu"))
    assert _kappa_ok(res["kappa_A"]["rmsnorm"], 1.0)
    assert "kappa(A) per group kind: " in " ".join(res["evidence"]) and "multiply" not in " ".join(res["evidence"])
    assert res["task"]["kind"] == "lm-tokens" and res["architecture"]["n_layers"] == 2  # decoders are not truncated
    for opt, s in res["recovered_slowdown"]["R1"].items():  # R1 replays the reference's runs (float64)
        assert s["ratio"] == 1.0, (opt, s)
    assert "kappa(A) per group kind" in (tmp_path / "a" / "audit.md").read_text()
    grid = [t["lr"] for t in res["attacks"]["adam"]["searches"]["reference"]["table"] if t["stage"] == "grid"]
    assert max(grid) == pytest.approx(0.1) and min(grid) == pytest.approx(1e-4)  # the quick profile's "lm" range
    assert res["wall_seconds"] < 60, res["wall_seconds"]  # the issue: --quick under a minute on 2 cores


@pytest.mark.parametrize("name", ["rope-qk", "gqa-vo", "swiglu"])
def test_audit_finds_each_group_at_kappa_50(decoders, name):
    ref, d = decoders
    rel, rec = d[name]
    res = audit(load_for_audit(rel), load_for_audit(ref), profile=TINY_LM)
    assert res["class"] == "fplr", res["evidence"]
    assert list(res["attacks"]) == ["sgd"]  # the profile's "lm" range applies to decoders
    assert _kappa_ok(res["kappa_T"], TorchReparameterization.load(rec).kappa_T()) and _kappa_ok(res["kappa_T"], K)
    assert _kappa_ok(res["kappa_A"][name], K)
    assert all(_kappa_ok(v, 1.0) for k, v in res["kappa_A"].items() if k != name)


def test_permuted_swiglu_units_are_fplr_with_kappa_one(decoders):
    ref, d = decoders
    rel, P = d["perm"]
    res = audit(load_for_audit(rel), load_for_audit(ref), profile=TINY_LM)
    assert res["class"] == "fplr" and abs(res["kappa_T"] - 1.0) <= 1e-12, (res["class"], res["kappa_T"])
    assert res["kappa_A"]["mlp-permutation"] == 1.0
    assert any(g["kind"] == "mlp-permutation" and g["side"] == "assignment" for g in res["fplr"]["group_fits"])


def test_noncommuting_qk_map_is_outside_the_class(decoders):
    ref, d = decoders
    res = audit(load_for_audit(d["noncomm"][0]), load_for_audit(ref), profile=TINY_LM)
    assert res["class"] == "outside-class" and res["verdict"] == "outside-class"
    assert not res["fplr"]["found"] and res["kappa_T"] is None and res["kappa_A"] is None
    assert res["function_deviation"] > 1e3 * res["function_tolerance"]


def test_all_groups_multiply_row_and_column_strengths(decoders, tmp_path):
    """SpecDef on every group: kappa(A) = 50 per kind, kappa(T) = 50^2 (RMSNorm columns x row groups)."""
    ref, _ = decoders
    rel, rec = tmp_path / "all", tmp_path / "all-record"
    r = runner.invoke(app, ["defend", str(ref), "-K", str(K), "--out", str(rel), "--record", str(rec)])
    assert r.exit_code == 0, r.output
    res = audit(load_for_audit(rel), load_for_audit(ref), profile=TINY_LM)
    assert res["class"] == "fplr" and _kappa_ok(res["kappa_T"], K * K), res["kappa_T"]
    assert set(res["kappa_A"]) >= {"rmsnorm", "rope-qk", "gqa-vo", "swiglu"}
    assert all(_kappa_ok(res["kappa_A"][k], K) for k in ("rmsnorm", "rope-qk", "gqa-vo", "swiglu"))
    assert any("multiply" in e and "kappa(A) per group kind" in e for e in res["evidence"])


def test_defend_groups_bad_input(decoders, tmp_path):
    ref, _ = decoders
    for bad in ("relu-linear", "", "swiglu,foo"):
        r = runner.invoke(app, ["defend", str(ref), "-K", "5", "--groups", bad, "--out", str(tmp_path / "o")])
        assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and "--groups" in r.stderr, r.output
        assert not (tmp_path / "o").exists()
    r = runner.invoke(app, ["defend", str(ref), "--form", "inserted", "-k", "1", "--alpha", "2", "--groups", "swiglu",
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and not (tmp_path / "o").exists()


# ---------------------------------------------------------------- the paths under the audit
def test_r1_on_tied_decoders_computes_the_defended_function():
    """R1's skeleton keeps the lm_head tied to the embedding (``.to("meta")`` unties it)."""
    for mt in ("qwen2", "llama"):
        m = tiny_decoder(mt, 1, layers=2, tie_embeddings=True)
        res = SpecDef(20).apply(m)
        x = decoder_inputs(m, 2, 6, 0)
        with torch.no_grad():
            a, b = res.model.module(**x).logits, r1_module(res.model.module, res.record)(**x).logits
        assert float((a - b).abs().max() / a.abs().max()) <= 1e-12, mt


def test_r1_gradient_is_the_undefended_one_in_exact_float64():
    """grad_phi L(T phi) = grad L(phi) (T1 through R1) on the float64 objective, which runs RMSNorm and
    softmax in float64 inside R1's skeleton too. Allowance 2 gamma_m kappa(T)^2 relative (the logits'
    first-order bound of ``test_llm_groups``, T applied forward and T^T backward); the float32 islands
    would leave ~1e-7."""
    m = tiny_decoder("qwen2", 2, layers=2, tie_embeddings=True)
    res = SpecDef(10).apply(m)
    x = decoder_inputs(m, 2, 6, 0)
    y = next_token_targets(x["input_ids"])
    base = Objective(NextTokenLM(m.module), x, y, loss="cross_entropy", device="cpu")
    rec = Objective(NextTokenLM(r1_module(res.model.module, res.record)), x, y, loss="cross_entropy", device="cpu")
    g0, g1 = base.gradient(), rec.gradient()
    assert [n.replace("encoder.phi.", "encoder.") for n in rec.names] == base.names
    allowance = 2 * gamma(reduction_length(base)) * res.record.kappa_T() ** 2
    assert allowance < 1e-8
    assert float((g1 - g0).norm() / g0.norm()) <= allowance


def test_preservation_casts_a_decoder_as_its_release_loads(tmp_path):
    """The bf16 deviation is measured on the model a bf16 release loads as: parameters in bf16, the
    rotary inv_freq in float32 (``module.to(bf16)`` would round it: another function)."""
    m = tiny_decoder("llama", 3, layers=1, hidden=32, heads=2, kv_heads=1, max_len=64)  # 8 frequencies
    x = decoder_inputs(m, 2, 32, 0)
    cast = release_cast(copy.deepcopy(m.module), torch.bfloat16)
    loaded = load_model(save_model(m.with_module(cast), tmp_path / "bf16"))
    assert loaded.dtype == torch.bfloat16
    with torch.no_grad():
        want = loaded.module(**x).logits
        assert torch.equal(cast(**x).logits, want)
        assert not torch.equal(copy.deepcopy(m.module).to(torch.bfloat16)(**x).logits, want)


def test_the_float64_release_path_is_float64_throughout():
    """``release_cast(., float64)`` (the audit's function deviation, the float64 preservation check)
    runs RMSNorm in float64: equal to the formula to a few ulp, where transformers' own path rounds
    to float32 (~6e-8 relative)."""
    m = tiny_decoder("llama", 4, layers=1)
    norm = release_cast(copy.deepcopy(m.module), torch.float64).model.norm
    x = torch.randn(3, 5, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    want = norm.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    with torch.no_grad():
        assert float(((norm(x) - want).abs() / want.abs()).max()) <= 8 * 2.0 ** -53
        assert float(((type(norm).forward(norm, x) - want).abs() / want.abs()).max()) > 1e-9


def test_a_derived_release_keeps_the_tokenizer(tmp_path):
    from convrate.cli_models import checkpoint_dir
    from convrate.models import zoo
    from convrate.models.tasks import task_name_for

    llama = zoo.llama_tiny()
    assert checkpoint_dir("llama-tiny") == Path(llama.source)
    derived = llama.with_module(copy.deepcopy(llama.module))
    assert derived.source is None and task_name_for(derived) == "lm-text"
    out = save_model(derived, tmp_path / "r")
    assert (out / "tokenizer.json").is_file() and task_name_for(load_model(out)) == "lm-text"


def test_r1_with_lora_replays_the_peft_run():
    """R1's in-project LoRA sits on peft's projections (q k v o gate up down: not lm_head) with the same
    A draws, so R1 + LoRA on the defended decoder replays peft LoRA on the undefended one (float64,
    exact path on both; allowance 1e-10 relative for round-off growing over 6 steps)."""
    from convrate.models.attacks import make_attack
    from convrate.models.tasks import task_for

    m = tiny_decoder("llama", 5, layers=2)
    res = SpecDef(20).apply(m)
    task = task_for(m, "lm-tokens", 0, max_length=8, sequences=8)
    runs = [make_attack("lora-adam", 0.01, 6, None, seed=0, device="cpu").run(task.head(release_cast(mod, torch.float64)),
                                                                             task)
            for mod in (copy.deepcopy(m.module), r1_module(res.model.module, res.record))]
    assert runs[0].trainable_parameters == runs[1].trainable_parameters
    assert max(abs(a - b) / abs(b) for a, b in zip(runs[1].losses, runs[0].losses)) <= 1e-10


def test_a_grown_decoder_is_cast_as_a_decoder():
    """Inserted layers replace projections of a decoder (no longer a plain Llama layout): its float64
    evaluation still runs RMSNorm and softmax in float64, so the chain C W' = W keeps the logits at
    float64 round-off, u alpha = 1e-13 at alpha = 1000 (allowance 1e-12; transformers' float32 islands
    alone leave ~1e-8 and more)."""
    from convrate.models.experiments_inserted import error_vs_alpha

    m = tiny_decoder("llama", 6, layers=1)
    r = error_vs_alpha(m, (10.0, 1000.0), k=2, layers="*.self_attn.v_proj", dtypes=(torch.float64,), alpha_max=1e6)
    assert r["layers"] == ["model.layers.0.self_attn.v_proj"]
    assert all(c["deviation"] <= 1e-12 for c in r["curve"]["float64"]), r["curve"]
