"""O(n)-memory Lanczos, micro-batched and finite-difference products, SLQ density, memory meter.

Tolerances: a reported pair (lambda, y) has an eigenvalue of H within its fresh residual r
(H symmetric), up to dense eigvalsh's own error 8 n u ||H||. Micro-batching only reorders
float64 sums: 1e-12 relative (>> gamma_m for these sizes, << any wrong scaling). The
central difference's error eps^2/6 ||D^4 L|| + 2 u ||g|| / eps is ~1e-10 relative at
eps = u^(1/3) ||theta|| on these O(1) networks: 1e-6 leaves four orders of magnitude.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from convrate.errors import InvalidInputError
from convrate.models.curvature import (FINITE_DIFFERENCE, HVP_METHODS, MemoryMeter, NondeterministicLossError,
                                       Objective, dense_hessian, lanczos_run)
from convrate.models.curvature.density import slq_density
from convrate.models.testing import mlp_arch, random_zoo

U = 2.0**-53


def _mlp_obj(widths, seed, n=13, **kw):
    m = random_zoo(mlp_arch(widths), seed)
    g = torch.Generator().manual_seed(seed + 1)
    X = torch.randn(n, widths[0], generator=g, dtype=torch.float64)
    Y = torch.randn(n, widths[-1], generator=g, dtype=torch.float64)
    return Objective(m.module, X, Y, device="cpu", **kw)


widths_st = st.lists(st.integers(2, 6), min_size=3, max_size=4)


@given(widths=widths_st, seed=st.integers(0, 2**20), top=st.integers(1, 3), bottom=st.integers(0, 2),
       basis=st.sampled_from(["none", "full"]))
def test_lanczos_extremes_against_dense(widths, seed, top, bottom, basis):
    obj = _mlp_obj(widths, seed)
    ev = torch.linalg.eigvalsh(dense_hessian(obj)).numpy()
    scale = float(np.abs(ev).max())
    err = 8 * obj.n * U * scale
    run = lanczos_run(obj.hvp, obj.n, 3 * obj.n, top=top, bottom=bottom, tol=1e-12, basis=basis, seed=seed)
    # distinct eigenvalues (a cluster within 1e-9 ||H|| counts once, as Lanczos sees one copy)
    def distinct(values):
        out = [values[0]]
        for x in values[1:]:
            if abs(out[-1] - x) > 1e-9 * scale:
                out.append(x)
        return out

    tops, bottoms = distinct(ev[::-1]), distinct(ev)
    # fewer pairs only when the Krylov space holds fewer independent directions (near copies)
    assert len(run.top) <= top and len(run.bottom) <= bottom
    if run.converged:
        assert len(run.top) == min(top, len(tops)) and len(run.bottom) == min(bottom, len(bottoms))
    for i, p in enumerate(run.top):
        assert float(np.abs(ev - p.value).min()) <= p.residual + err  # the certificate
        if run.converged and i < len(tops):
            assert abs(p.value - tops[i]) <= max(p.residual, 1e-9 * scale) + err
        assert math.isclose(float(p.vector.norm()), 1.0, rel_tol=1e-12)
    for i, p in enumerate(run.bottom):
        assert float(np.abs(ev - p.value).min()) <= p.residual + err
        if run.converged and i < len(bottoms):
            assert abs(p.value - bottoms[i]) <= max(p.residual, 1e-9 * scale) + err


def test_no_basis_memory_does_not_grow_with_steps():
    obj = _mlp_obj([6, 8, 5], 3, n=20)
    a = lanczos_run(obj.hvp, obj.n, 10, top=2, bottom=1, basis="none")
    b = lanczos_run(obj.hvp, obj.n, 40, top=2, bottom=1, basis="none")
    c = lanczos_run(obj.hvp, obj.n, 40, top=2, bottom=1, basis="full")
    assert a.steps < b.steps and a.vector_bytes == b.vector_bytes == (4 + 2 * 3) * obj.n * 8  # no ghosts: tol 0
    assert c.vector_bytes > b.vector_bytes
    # the second pass costs the first pass again, less one product (the price of O(n) memory);
    # the Rayleigh-Ritz refinement one product per vector, the residuals one per pair
    assert b.refine_products == c.refine_products == 3 + 3
    assert b.matvecs == 2 * b.steps - 1 + b.refine_products and c.matvecs == c.steps + c.refine_products


def test_regeneration_detects_a_nondeterministic_operator():
    obj = _mlp_obj([4, 5, 3], 1)
    g = torch.Generator().manual_seed(0)

    def noisy(v):
        return obj.hvp(v) + 1e-3 * torch.randn(obj.n, generator=g, dtype=torch.float64)

    with pytest.raises(NondeterministicLossError, match="regenerated"):
        lanczos_run(noisy, obj.n, 20, top=1, bottom=1, basis="none")


@given(widths=widths_st, seed=st.integers(0, 2**20), micro=st.integers(1, 6))
def test_micro_batches_equal_full_batch(widths, seed, micro):
    full = _mlp_obj(widths, seed)
    part = _mlp_obj(widths, seed, micro_batch=micro)
    v = torch.randn(full.n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def rel(a, b):
        return float((a - b).norm() / max(float(b.norm()), 1e-300))

    assert abs(float(full.loss()) - float(part.loss())) <= 1e-12 * abs(float(full.loss()))
    assert rel(part.gradient(), full.gradient()) <= 1e-12
    for m in HVP_METHODS:
        assert rel(part.hvp(v, method=m), full.hvp(v, method=m)) <= 1e-12
    assert rel(part.gnvp(v), full.gnvp(v)) <= 1e-12


@settings(max_examples=5)
@given(widths=widths_st, seed=st.integers(0, 2**20))
def test_finite_difference_hvp(widths, seed):
    obj = _mlp_obj(widths, seed)
    v = torch.randn(obj.n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    exact = obj.hvp(v, method="double_backward")
    fd = obj.hvp(v, method=FINITE_DIFFERENCE)
    assert float((fd - exact).norm()) <= 1e-6 * float(exact.norm()) + 1e-12


def test_next_token_loss_and_gauss_newton_with_micro_batches():
    """A causal-LM objective (``tasks.NextTokenLM`` + next-token ids, one position masked): L is
    the mean over the predicted tokens; micro-batches of sequences flatten their own targets and
    give the same loss and Gauss-Newton product, equal to J^T (diag p - p p^T) J v / C computed
    densely (a token-wise float64 model, so the comparison is at round-off)."""
    from convrate.models.tasks import NextTokenLM, next_token_targets, token_targets

    class TinyLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.out = torch.nn.Embedding(6, 4), torch.nn.Linear(4, 6)

        def forward(self, input_ids, attention_mask=None):
            return self.out(torch.tanh(self.emb(input_ids)))

    torch.manual_seed(0)
    net = NextTokenLM(TinyLM().double())
    ids = torch.randint(0, 6, (3, 4), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 4, dtype=torch.long)
    mask[0, 3] = 0
    x = {"input_ids": ids, "attention_mask": mask}
    y = next_token_targets(ids, mask)
    obj = Objective(net, x, y, loss="cross_entropy", device="cpu")
    part = Objective(net, x, y, loss="cross_entropy", device="cpu", micro_batch=2)
    assert obj.n_terms == part.n_terms == obj.n_examples == 3 * 3 - 1 and obj.n_rows == 3
    z = obj.outputs(obj.theta).detach()
    yt = token_targets(y)
    ref = torch.nn.functional.cross_entropy(z, yt)
    assert abs(float(obj.loss()) - float(ref)) <= 1e-13 and abs(float(part.loss()) - float(ref)) <= 1e-13
    J = torch.func.jacrev(obj.outputs)(obj.theta).detach()  # (M, V, n)
    v = torch.randn(obj.n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    jv = J @ v
    p = torch.softmax(z, -1)
    gv = torch.einsum("mv,mvk->k", p * jv - p * (p * jv).sum(-1, keepdim=True), J) / len(yt)
    for o in (obj, part):
        assert float((o.gnvp(v) - gv).norm()) <= 1e-12 * float(gv.norm())


def test_slq_density_integrates_to_one_and_its_trace_is_hutchinson():
    obj = _mlp_obj([5, 6, 3], 2)
    d = slq_density(obj.hvp, obj.n, steps=obj.n, probes=3, seed=0)
    grid, dens = np.asarray(d.grid), np.asarray(d.density)
    assert abs(np.trapezoid(dens, grid) - 1.0) <= 1e-6  # Gaussian tails beyond 5 sigma: < 1e-6
    assert all(abs(sum(w) - 1.0) <= 1e-12 for w in d.weights)
    # the quadrature of f(t) = t is exact: n sum tau theta = z^T H z for the same probes
    g = torch.Generator().manual_seed(0 + 1_000_003)
    zs = [(torch.randint(0, 2, (obj.n,), generator=g) * 2 - 1).double() for _ in range(3)]
    direct = np.mean([float(z @ obj.hvp(z)) for z in zs])
    assert abs(d.trace - direct) <= 1e-10 * max(1.0, abs(direct))
    # all nodes lie in [lambda_min, lambda_max] (Ritz values of a symmetric operator)
    ev = torch.linalg.eigvalsh(dense_hessian(obj)).numpy()
    slack = 8 * obj.n * U * float(np.abs(ev).max())
    assert all(ev[0] - slack <= t <= ev[-1] + slack for th in d.nodes for t in th)


def test_memory_meter_sees_torch_allocations():
    with MemoryMeter() as outer:
        with MemoryMeter() as inner:
            x = torch.ones(40_000_000, dtype=torch.float64)  # 320 MB, touched
            del x
        with MemoryMeter() as later:
            y = torch.ones(1000)
            del y
    assert inner.report()["added_at_peak"] >= 300e6
    assert outer.peak_rss >= inner.peak_rss  # the inner reset does not hide the outer peak
    assert later.report()["added_at_peak"] < 300e6


def test_bad_input():
    obj = _mlp_obj([3, 4, 2], 0)
    with pytest.raises(InvalidInputError, match="basis"):
        lanczos_run(obj.hvp, obj.n, 5, basis="some")
    with pytest.raises(InvalidInputError, match="tolerance"):
        lanczos_run(obj.hvp, obj.n, 5, tol=float("nan"))
    with pytest.raises(InvalidInputError, match="start vector"):
        lanczos_run(obj.hvp, obj.n, 5, v0=torch.zeros(obj.n))
    with pytest.raises(InvalidInputError, match="HVP method"):
        _mlp_obj([3, 4, 2], 0, hvp_method="magic")
    with pytest.raises(InvalidInputError, match="micro-batch"):
        _mlp_obj([3, 4, 2], 0, micro_batch=0)
