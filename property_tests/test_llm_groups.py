"""Decoder LLM symmetry groups (THEORY.md S4-S7, permutations, O) on tiny random transformers
decoders (Llama, Qwen2, Mistral; GQA; with and without attention bias; tied and untied
embeddings; explicit head_dim), their inference, recoveries and the Adam measurement.

Tolerances. Every decoder forward runs in float64 throughout (``decoder_float64.exact_float64``:
transformers' eager decoder otherwise rounds RMSNorm outputs and attention probabilities to
float32 even in a float64 model, a 1e-7 effect unrelated to the groups). Logits under a group
element: the first-order estimate of the BERT attention test, relative deviation <= 2 gamma_m
kappa(T)^2 with m the forward's reduction length (``checks.reduction_length``): each group
computes A x and A^-T y (or W A^-1) whose roundings are relative to ||A|| ||x||, ||A^-1|| ||y||,
and every other operation is the same float64 computation on inputs that agree to that
rounding. A map that changes the function (a QK map not commuting with RoPE) moves the logits
by O(1), beyond 1e6 times that allowance. Recovered elements are compared with the true ones
through the a-posteriori bound ||A_hat - A||_F sigma_min(X) <= ||(A_hat - A) X||_F <=
||A_hat X - X'||_F + ||A X - X'||_F (+ the float64 rounding of evaluating those residuals,
gamma_(r+1) (||A_hat|| ||X|| + ||A|| ||X|| + 2 ||X'||)) (X the group's producer block of the reference carrying the
stages solved before it, X' the claimed block; per unit for a diagonal group), and that bound
is asserted below 1e-9 ||A||: both residuals are float64 round-off of chains of a few products
(1e-13 relative at most here) and sigma_min(X) / sigma_max(X) >= 1e-4 (asserted) for these
random weights.
"""
from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from convrate.errors import InvalidInputError, SingularReparameterizationError
from convrate.models import elements, rope
from convrate.models.audit_verdict import classify
from convrate.models.canonical import canonical_agreement, canonicalize
from convrate.models.checks import check_t1, check_t2, gamma, reduction_length
from convrate.models.curvature import Objective
from convrate.models.families import discover_symmetries, llama
from convrate.models.fplr import infer_reparameterization
from convrate.models.families.decoder_float64 import exact_float64
from convrate.models.llm_rotation import adam_under_rotation, folded
from convrate.models.tasks import NextTokenLM, next_token_targets
from convrate.models.recovery import r1_module
from convrate.models.symmetry import TorchReparameterization, random_element
from convrate.models.testing import decoder_inputs, mlp_arch, random_zoo, tiny_bert, tiny_decoder
from convrate.theory import bounds_llm

configs = st.fixed_dictionaries({
    "model_type": st.sampled_from(["llama", "qwen2", "mistral"]), "kv_heads": st.sampled_from([1, 2, 4]),
    "head_dim": st.sampled_from([None, 6]), "tie_embeddings": st.booleans(), "attention_bias": st.booleans(),
    "layers": st.integers(1, 2), "seed": st.integers(0, 2**16)})


def _model(cfg: dict):
    """A tiny random decoder, float64 throughout (copies made from it keep that)."""
    kw = dict(cfg)
    seed = kw.pop("seed")
    m = tiny_decoder(kw.pop("model_type"), seed, hidden=16, heads=4, intermediate=10, vocab=20, **kw)
    exact_float64(m.module)
    return m


def _logits(model, x, module=None):
    with torch.no_grad():
        return model.output(x, module)


def _reduction(model, x) -> int:
    return reduction_length(Objective(model.module, x, _logits(model, x), device="cpu"))


def _allowance(model, x, record: TorchReparameterization, m: int | None = None) -> float:
    return 2 * gamma(_reduction(model, x) if m is None else m) * record.kappa_T() ** 2


def _deviation(model, x, module) -> float:
    f, fT = _logits(model, x), _logits(model, x, module)
    return float((fT - f).abs().max() / f.abs().max())


def _fold_ready(model):
    """The model with a tied lm_head's final norm set to 1 (the tied final norm has no S7 group)."""
    if model.config.get("tie_embeddings") or model.module.config.tie_word_embeddings:
        module = copy.deepcopy(model.module)
        with torch.no_grad():
            module.model.norm.weight.fill_(1.0)
        return model.with_module(module)
    return model


# ---------------------------------------------------------------- function preservation
@settings(max_examples=8)
@given(cfg=configs, log_scale=st.floats(0.05, 1.0))
def test_every_group_preserves_logits(cfg, log_scale):
    m = _model(cfg)
    x = decoder_inputs(m, 2, 6, cfg["seed"])
    syms = discover_symmetries(m, permutations=True)
    kinds = {s.kind for s in syms}
    expected = {"rope-qk", "gqa-vo", "swiglu", "rmsnorm", "mlp-permutation"}
    expected |= {"kv-permutation"} if cfg["kv_heads"] > 1 else set()
    expected |= {"head-permutation"} if cfg["kv_heads"] < 4 else set()
    assert expected <= kinds and "residual-rotation" not in kinds  # gamma != 1: no rotation group
    assert sum(s.kind == "rmsnorm" for s in syms) == 2 * cfg["layers"] + (0 if cfg["tie_embeddings"] else 1)
    g = torch.Generator().manual_seed(cfg["seed"])
    red = _reduction(m, x)
    for s in syms:
        rec = TorchReparameterization([(s, random_element(s, g, log_scale))])
        dev = _deviation(m, x, rec.apply_to_module(m.module))
        assert dev <= _allowance(m, x, rec, red), (s.name, dev)
    base = _fold_ready(m)
    module, fold = folded(base)
    rot = llama.residual_rotation(module)
    rec = TorchReparameterization(fold.items + [(rot, random_element(rot, g))])
    assert _deviation(base, x, rec.apply_to_module(base.module)) <= _allowance(base, x, rec, red)
    assert [s.kind for s in discover_symmetries(base.with_module(module))].count("residual-rotation") == 1


def test_rotation_needs_folded_norms_and_tied_embeddings_work():
    m = tiny_decoder("qwen2", 3, tie_embeddings=True, hidden=16, heads=4, kv_heads=2, intermediate=10, vocab=20)
    exact_float64(m.module)
    rot = llama.residual_rotation(m.module)
    Q = elements.random("orthogonal", rot.width, torch.Generator().manual_seed(1))
    with pytest.raises(InvalidInputError, match="fold the RMSNorm weights"):
        TorchReparameterization([(rot, Q)]).apply_to_module(m.module)
    with pytest.raises(InvalidInputError, match="tied lm_head"):
        folded(m)  # the tied final norm cannot be folded
    base = _fold_ready(m)
    module, _ = folded(base)
    assert "lm_head.weight" not in dict(module.named_parameters())  # one tensor, E -> E Q^T serves both roles
    x = decoder_inputs(m, 2, 5, 0)
    rec = TorchReparameterization([(rot, Q)])
    assert _deviation(base.with_module(module), x, rec.apply_to_module(module)) <= _allowance(base, x, rec)


@pytest.mark.parametrize("bad", [0.0, float("nan"), float("inf")])
def test_fold_refuses_a_zero_or_non_finite_norm_weight(bad):
    """Folding divides by gamma: a zero, NaN or infinite entry of a covered RMSNorm weight is
    refused, and with a tied lm_head a NaN in the uncovered final norm is not taken for 1."""
    m = tiny_decoder("llama", 3, hidden=16, heads=4, kv_heads=2, intermediate=10, vocab=20)
    exact_float64(m.module)
    with torch.no_grad():
        m.module.model.layers[0].input_layernorm.weight[3] = bad
    with pytest.raises(InvalidInputError, match="zero or non-finite"):
        folded(m)
    t = tiny_decoder("qwen2", 3, tie_embeddings=True, hidden=16, heads=4, kv_heads=2, intermediate=10, vocab=20)
    exact_float64(t.module)
    t = _fold_ready(t)
    folded(t)  # every norm weight foldable: no error
    with torch.no_grad():
        t.module.model.norm.weight[0] = float("nan")
    with pytest.raises(InvalidInputError, match="tied lm_head"):
        folded(t)


def test_rope_classes_of_real_rotary_embeddings():
    """Partial rotary (transformers' proportional rope: zero frequencies) gives GL on the
    unrotated pairs; coinciding frequencies give GL(m, C): elements beyond per-pair scaled
    rotations keep the logits exactly where RoPE allows them."""
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=20, hidden_size=16, intermediate_size=10, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=16,
                                   rope_parameters={"rope_type": "proportional", "rope_theta": 100.0,
                                                    "partial_rotary_factor": 0.5}, attn_implementation="eager")
    torch.manual_seed(0)
    from convrate.models.io import LoadedModel

    lm = exact_float64(transformers.LlamaForCausalLM(cfg).double().eval())
    m = LoadedModel(lm, "llama", "hf", lm.config.to_dict(), None, None, {})
    freqs = llama.rotary_frequencies(lm)
    assert [c.kind for c in rope.rope_classes(freqs)] == ["rotary", "rotary", "unrotated"]
    (s,) = [s for s in discover_symmetries(m) if s.kind == "rope-qk"]
    x = decoder_inputs(m, 2, 7, 1)
    A = torch.eye(8, dtype=torch.float64)
    A[2:4, 2:4] = torch.tensor([[1.0, 2.0], [0.5, 3.0]], dtype=torch.float64)  # mixes the unrotated x-coordinates
    A[[2, 6], [6, 2]] = 0.7
    rec = TorchReparameterization([(s, A)])
    assert _deviation(m, x, rec.apply_to_module(lm)) <= _allowance(m, x, rec)
    with torch.no_grad():  # coinciding frequencies: pairs 0 and 1 rotate alike
        lm.model.rotary_emb.inv_freq.copy_(torch.tensor([0.3, 0.3, 0.0, 0.0]))
    with pytest.raises(InvalidInputError, match="change at run time"):
        discover_symmetries(m)  # original_inv_freq splits the pairs differently: no group exact at every length
    with torch.no_grad():
        lm.model.rotary_emb.original_inv_freq.copy_(lm.model.rotary_emb.inv_freq)
    (s2,) = [s for s in discover_symmetries(m) if s.kind == "rope-qk"]
    assert [c.kind for c in rope.rope_classes(s2.structure)] == ["coinciding", "unrotated"]
    swap = torch.eye(8, dtype=torch.float64)[[1, 0, 2, 3, 5, 4, 6, 7]]  # exchanges pairs 0 and 1
    rec = TorchReparameterization([(s2, swap)])
    assert _deviation(m, x, rec.apply_to_module(lm)) <= _allowance(m, x, rec)
    with pytest.raises(InvalidInputError, match="does not commute with RoPE"):
        s.validate(swap)  # with distinct frequencies the swap is outside the group


# ---------------------------------------------------------------- a non-commuting QK map
@settings(max_examples=5)
@given(cfg=configs)
def test_noncommuting_qk_map_changes_logits_and_is_rejected(cfg):
    m = _model(cfg)
    x = decoder_inputs(m, 2, 6, cfg["seed"])
    s = next(s for s in discover_symmetries(m) if s.kind == "rope-qk")
    A = elements.random("gl", s.width, torch.Generator().manual_seed(cfg["seed"]), 0.5)
    assert rope.commutator_distance(A, s.structure) > 1e-3
    with pytest.raises(InvalidInputError, match="does not commute with RoPE"):
        s.validate(A)
    gl = replace(s, element="gl")  # the same slots, any A: q -> A q, k -> A^-T k
    rec = TorchReparameterization([(gl, A)])
    module = rec.apply_to_module(m.module)
    dev = _deviation(m, x, module)
    assert dev > 1e6 * _allowance(m, x, rec)
    fit = infer_reparameterization(m, m.with_module(module))
    assert not fit.found and fit.residual > 1e3 * fit.rtol
    note = next(gf.note for gf in fit.groups if gf.name == s.name)
    assert "commutant" in note and float(note.split()[-1]) > 1e-3
    assert classify(has_reference=True, function_deviation=dev, function_tolerance=1e-8, weight_distance=1.0,
                    fplr_found=fit.found, rtol=fit.rtol) == "outside-class"


# ---------------------------------------------------------------- T1 / T2 on the real loss
@settings(max_examples=3)
@given(cfg=configs, log_scale=st.floats(0.05, 0.5))
def test_t1_t2_hold_on_the_next_token_loss(cfg, log_scale):
    m = _fold_ready(_model(cfg))
    x = decoder_inputs(m, 2, 5, cfg["seed"])
    y = next_token_targets(x["input_ids"])
    g = torch.Generator().manual_seed(cfg["seed"])
    lm = NextTokenLM(m.module)  # parameters encoder.<name>; the groups discovered on it carry those names
    rec = TorchReparameterization([(s, random_element(s, g, log_scale)) for s in discover_symmetries(lm)])
    module, _ = folded(m)
    rot = llama.residual_rotation(NextTokenLM(module))
    rrec = TorchReparameterization([(rot, random_element(rot, g))])
    free = [n for n, _ in NextTokenLM(module).named_parameters() if n not in rot.domain_params]  # its FPLR space
    for f in (check_t1, check_t2):
        r = f(lm, rec, x, y, loss="cross_entropy", device="cpu")
        assert r.holds, r
        r = f(NextTokenLM(module), rrec, x, y, loss="cross_entropy", params=free, device="cpu")
        assert r.holds, r


# ---------------------------------------------------------------- inference
def _posterior_ok(sym, A_hat, A, ref, cl) -> None:
    """A_hat against A by the a-posteriori bound of the module doc, and that bound small."""
    from convrate.models.fplr import slot_block

    r = sym.width
    A_slots = [s for s in sym.acting_slots if s.op == "A"]
    X = torch.cat([slot_block(ref[s.param], s, r) for s in A_slots], 1)
    Xc = torch.cat([slot_block(cl[s.param], s, r) for s in A_slots], 1)
    if sym.element_kind in elements.VECTOR_KINDS:
        nx = X.norm(dim=1)
        ev = 2 * gamma(2) * ((A_hat.abs() + A.abs()) * nx + 2 * Xc.norm(dim=1))  # evaluating the residuals
        bound = ((A_hat[:, None] * X - Xc).norm(dim=1) + (A[:, None] * X - Xc).norm(dim=1) + ev) / nx
        assert bool(((A_hat - A).abs() <= bound * (1 + 1e-12)).all()), sym.name
        assert bool((bound <= 1e-9 * A.abs()).all()), (sym.name, float((bound / A.abs()).max()))
        return
    sv = torch.linalg.svdvals(X)
    assert float(sv[-1] / sv[0]) >= 1e-4, sym.name  # random tiny weights: well conditioned blocks
    ev = 2 * gamma(r + 1) * ((float(A_hat.norm()) + float(A.norm())) * float(X.norm()) + 2 * float(Xc.norm()))
    bound = (float((A_hat @ X - Xc).norm()) + float((A @ X - Xc).norm()) + ev) / float(sv[-1])
    assert float((A_hat - A).norm()) <= bound * (1 + 1e-12), (sym.name, float((A_hat - A).norm()), bound)
    assert bound <= 1e-9 * float(A.norm()), (sym.name, bound / float(A.norm()))


@settings(max_examples=6)
@given(cfg=configs, log_scale=st.floats(0.05, 1.0), rotate=st.booleans())
def test_inference_recovers_every_element_and_permutation(cfg, log_scale, rotate):
    m = _fold_ready(_model(cfg))
    g = torch.Generator().manual_seed(cfg["seed"])
    syms = discover_symmetries(m, permutations=True)
    items = [(s, random_element(s, g, log_scale)) for s in syms]
    if rotate:  # fold, rotate the residual stream, then the rest
        module, fold = folded(m)
        rot = llama.residual_rotation(module)
        items = fold.items + [(rot, random_element(rot, g))] + [(s, e) for s, e in items if s.kind != "rmsnorm"]
    rec = TorchReparameterization(items)
    claimed = m.with_module(rec.apply_to_module(m.module))
    fit = infer_reparameterization(m, claimed)
    assert fit.found, fit.reason
    assert abs(math.log(fit.kappa_T / rec.kappa_T())) <= 1e-6, (fit.kappa_T, rec.kappa_T())
    true = {s.name: e for s, e in rec.items}
    ref = {n: p.detach().double() for n, p in m.module.named_parameters()}
    work = dict(ref)
    for s, e in fit.record.items:  # the stages: each element against the truth, on what it acted on
        if s.element_kind == "permutation":
            assert torch.equal(e, true[s.name]), s.name
        elif s.element_kind == "orthogonal":
            assert float((e - true[s.name]).norm()) <= 1e-9, s.name
        else:
            _posterior_ok(s, e, true[s.name], work, {n: p.detach().double() for n, p in claimed.module.named_parameters()})
        work.update(s.apply(work, e))
    missing = {n for n, e in true.items() if n not in {s.name for s, _ in fit.record.items}}
    assert all(torch.equal(true[n], torch.eye(true[n].shape[0], dtype=torch.float64)) for n in missing)


def test_folded_reference_has_one_rotation_group():
    """A folded reference already carries the residual rotation among its groups: inference of a
    rotated copy solves that one group (no second one added for the folded claimed model), by
    orthogonal Procrustes, and recovers Q (float64 round-off: within 1e-9, as above)."""
    m = tiny_decoder("llama", 3, hidden=16, heads=4, kv_heads=2, intermediate=10, vocab=20)
    exact_float64(m.module)
    module, _ = folded(m)
    ref = m.with_module(module)
    rot = llama.residual_rotation(module)
    Q = random_element(rot, torch.Generator().manual_seed(3))
    fit = infer_reparameterization(ref, ref.with_module(TorchReparameterization([(rot, Q)]).apply_to_module(module)))
    assert fit.found, fit.reason
    (gf,) = [g for g in fit.groups if g.kind == "residual-rotation"]
    assert gf.side == "procrustes" and gf.kappa == 1.0 and gf.residual <= fit.rtol
    (Q_hat,) = [e for s, e in fit.record.items if s.kind == "residual-rotation"]
    assert float((Q_hat - Q).norm()) <= 1e-9


@settings(max_examples=5)
@given(cfg=configs)
def test_permuted_swiglu_units_have_kappa_one(cfg):
    m = _model(cfg)
    (s,) = [s for s in discover_symmetries(m, permutations=True) if s.kind == "mlp-permutation"][:1]
    P = elements.random("permutation", s.width, torch.Generator().manual_seed(cfg["seed"]))
    claimed = m.with_module(TorchReparameterization([(s, P)]).apply_to_module(m.module))
    fit = infer_reparameterization(m, claimed)
    # the other groups are solved as the identity up to round-off (each element within ~10 u of 1, at most
    # two groups per tensor), so kappa(T) = 1 to 1e-12
    assert fit.found and 1.0 <= fit.kappa_T <= 1.0 + 1e-12, (fit.reason, fit.kappa_T)
    (Ph,) = [e for t, e in fit.record.items if t.name == s.name]
    assert torch.equal(Ph, P) or torch.equal(P, torch.eye(s.width, dtype=torch.float64))


@given(widths=st.lists(st.integers(2, 6), min_size=3, max_size=5), seed=st.integers(0, 2**16),
       log_scale=st.floats(0.05, 2.0))
def test_zoo_units_permuted_and_scaled_are_recovered(widths, seed, log_scale):
    m = random_zoo(mlp_arch(widths), seed)
    g = torch.Generator().manual_seed(seed)
    rec = TorchReparameterization([(s, random_element(s, g, log_scale))
                                   for s in discover_symmetries(m, permutations=True)])
    claimed = m.with_module(rec.apply_to_module(m.module))
    fit = infer_reparameterization(m, claimed)
    assert fit.found, fit.reason
    assert not infer_reparameterization(m, claimed, permutations=False).found or all(
        torch.equal(e, torch.eye(e.shape[0], dtype=torch.float64)) for s, e in rec.items if s.family == "P")
    true = {s.name: e for s, e in rec.items}
    for s, e in fit.record.items:
        if s.family == "P":
            assert torch.equal(e, true[s.name])
    assert abs(math.log(fit.kappa_T / rec.kappa_T(list(dict(m.module.named_parameters()))))) <= 1e-8


def test_bert_heads_permuted_are_recovered():
    m = tiny_bert(4, hidden=6, heads=3, layers=1, intermediate=6)
    g = torch.Generator().manual_seed(4)
    syms = discover_symmetries(m, permutations=True)
    assert syms[0].kind == "attention-head-permutation"
    P = torch.eye(3, dtype=torch.float64)[[2, 0, 1]]
    rec = TorchReparameterization([(syms[0], P)] + [(s, random_element(s, g, 0.5)) for s in syms[1:]])
    fit = infer_reparameterization(m, m.with_module(rec.apply_to_module(m.module)))
    assert fit.found, fit.reason
    assert torch.equal(fit.record.items[0][1], P)


# ---------------------------------------------------------------- the group machinery
def test_elements_outside_their_group_are_rejected():
    m = _model({"model_type": "llama", "kv_heads": 2, "head_dim": None, "tie_embeddings": False,
                "attention_bias": False, "layers": 1, "seed": 0})
    by_kind = {s.kind: s for s in discover_symmetries(m, permutations=True)}
    rot = llama.residual_rotation(m.module)
    r = by_kind["swiglu"].width
    with pytest.raises(SingularReparameterizationError):
        by_kind["swiglu"].validate(torch.zeros(r, dtype=torch.float64))
    by_kind["swiglu"].validate(-torch.ones(r, dtype=torch.float64))  # signs allowed (S6)
    with pytest.raises(InvalidInputError, match="not orthogonal"):
        rot.validate(2 * torch.eye(rot.width, dtype=torch.float64))
    with pytest.raises(InvalidInputError, match="permutation element"):
        by_kind["mlp-permutation"].validate(torch.full((r, r), 1.0 / r, dtype=torch.float64))
    with pytest.raises(InvalidInputError, match="does not commute"):
        by_kind["rope-qk"].validate(torch.eye(by_kind["rope-qk"].width, dtype=torch.float64)[[1, 0, 2, 3]])
    with pytest.raises(SingularReparameterizationError):
        by_kind["gqa-vo"].validate(torch.zeros(by_kind["gqa-vo"].width, by_kind["gqa-vo"].width, dtype=torch.float64))


def test_records_of_every_kind_save_load_and_measure(tmp_path):
    m = _fold_ready(_model({"model_type": "qwen2", "kv_heads": 2, "head_dim": 6, "tie_embeddings": False,
                            "attention_bias": False, "layers": 1, "seed": 5}))
    g = torch.Generator().manual_seed(5)
    module, fold = folded(m)
    rot = llama.residual_rotation(module)
    items = fold.items + [(rot, random_element(rot, g))] + [
        (s, random_element(s, g, 0.7)) for s in discover_symmetries(m, permutations=True) if s.kind != "rmsnorm"]
    rec = TorchReparameterization(items, {"defense": "test"})
    rec.save(tmp_path)
    back = TorchReparameterization.load(tmp_path)
    assert [(s, bool(torch.equal(e, f))) for (s, e), (_, f) in zip(rec.items, back.items)] == \
           [(s, True) for s, _ in rec.items]
    names = list(dict(m.module.named_parameters()))
    assert back.kappa_T(names) == rec.kappa_T(names)
    # kappa(T) by the dense axis operators equals the per-kind rules on this record
    dense = {s.name: s for s, _ in rec.items}
    assert rec.extra_parameters() == sum(2 * elements.stored_numbers(s.element_kind, s.width) for s in dense.values())
    r1 = r1_module(rec.apply_to_module(m.module), rec)
    assert r1.extra_parameters == rec.extra_parameters()
    x = decoder_inputs(m, 2, 5, 0)
    with torch.no_grad():
        f, fr = m.output(x), r1(**x).logits
    assert float((fr - f).abs().max() / f.abs().max()) <= _allowance(m, x, rec)


@settings(max_examples=4)
@given(cfg=configs, log_scale=st.floats(0.1, 1.0))
def test_r2_canonical_point_is_shared_by_the_orbit(cfg, log_scale):
    m = _model(cfg)
    syms = discover_symmetries(m, permutations=True)
    g = torch.Generator().manual_seed(cfg["seed"])
    cont = [s for s in syms if s.family != "P"]
    rec = TorchReparameterization([(s, random_element(s, g, log_scale)) for s in cont])
    claimed = m.with_module(rec.apply_to_module(m.module))
    c0, r0 = canonicalize(m, syms)
    c1, r1 = canonicalize(claimed, syms)
    assert {d["kind"] for d in r0.meta["skipped"]} == {"permutation"}
    ref = {n: p.detach().double() for n, p in m.module.named_parameters()}
    versions = [ref, {n: p.detach().double() for n, p in claimed.module.named_parameters()}]
    for row in canonical_agreement(cont, c0.module, c1.module, r0.meta, r1.meta, ref, versions):
        assert row["measured"] <= row["allowance"], row


# ---------------------------------------------------------------- statement O on a decoder
def test_adam_under_rotation_agrees_with_statement_o():
    m = tiny_decoder("llama", 2, layers=1, hidden=16, heads=4, kv_heads=2, intermediate=10, vocab=20)
    x = decoder_inputs(m, 3, 6, 1)
    res = adam_under_rotation(m, x, rotations=3, steps=4)
    lo, hi = res["ratio_bounds"]
    assert lo <= res["haar_mean_ratio"] <= hi
    for r in res["per_rotation"]:
        assert r["first_step_excess"] <= 0, r["first_step_excess"]  # -lr f(T g), exactly (float64)
        assert lo <= r["ratio"] <= hi
        assert r["gd_excess"] <= 0, r["gd_excess"]  # GD commutes with T
        assert max(abs(a - b) for a, b in zip(r["adam_losses"], res["adam_reference_losses"])) > \
            1e3 * max(res["gd_allowance"])  # Adam does not
    assert bounds_llm.is_signed_permutation([[0, -1], [1, 0]])
    off = adam_under_rotation(m, x, rotations=1, steps=3, train_norms=True)  # leaving the domain gamma = 1
    assert off["per_rotation"][0]["gd_excess"] > 0
