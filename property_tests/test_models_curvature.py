"""Curvature: HVP methods, Gauss-Newton products, Lanczos / eigsh with residuals, Hutchinson,
the determinism guard, device selection.

Tolerances: products from automatic differentiation in float64 against dense
torch.func derivatives carry <= gamma_m ||A|| ||v|| (first-order estimate, m =
``reduction_length``, see ``convrate.models.checks``). A Ritz pair (theta, y) with residual
r has an eigenvalue within r of theta (symmetric A), up to the dense eigvalsh error
8 n u ||A||.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from convrate.errors import InvalidInputError, NoConvergenceError
from convrate.models.checks import gamma, reduction_length
from convrate.models.curvature import (
    HVP_METHODS,
    NondeterministicLossError,
    Objective,
    benchmark_hvp,
    dense_hessian,
    extreme_eigenvalues,
    hutchinson_trace,
    resolve_device,
)
from convrate.models.testing import mlp_arch, random_zoo




U = 2.0**-53


def _obj(widths, seed, loss, n=10):
    m = random_zoo(mlp_arch(widths), seed)
    g = torch.Generator().manual_seed(seed + 1)
    X = torch.randn(n, widths[0], generator=g, dtype=torch.float64)
    Y = (torch.randn(n, widths[-1], generator=g, dtype=torch.float64) if loss == "squared"
         else torch.randint(0, widths[-1], (n,), generator=g))
    return m, Objective(m.module, X, Y, loss=loss, device="cpu")


def _dense_gauss_newton(obj, theta):
    """G(theta) = (1/N) sum_n J_n^T (d^2 ell) J_n from the dense Jacobian (N examples, C outputs):
    d^2 ell = I (squared), diag(p) - p p^T with p = softmax z_n (cross-entropy)."""
    J = torch.func.jacrev(obj.outputs)(theta).reshape(-1, obj.n)  # (N*C, n)
    z = obj.outputs(theta).detach()
    if obj.loss_name == "squared":
        return J.T @ J / z.shape[0]
    blocks = torch.block_diag(*[torch.diag(pi) - torch.outer(pi, pi) for pi in torch.softmax(z, -1)])
    return J.T @ blocks @ J / z.shape[0]


widths_st = st.lists(st.integers(2, 5), min_size=3, max_size=4)


@given(widths=widths_st, seed=st.integers(0, 2**20), loss=st.sampled_from(["squared", "cross_entropy"]))
def test_hvp_and_gnvp_against_dense(widths, seed, loss):
    m, obj = _obj(widths, seed, loss)
    H = dense_hessian(obj)
    nH = float(torch.linalg.matrix_norm(H, 2))
    tol = 2 * gamma(reduction_length(obj)) * max(nH, 1e-300)
    v = torch.randn(obj.n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    v = v / v.norm()
    for method in HVP_METHODS:
        assert float((obj.hvp(v, method=method) - H @ v).norm()) <= tol
    # the reused gradient graph belongs to one theta: at another theta the product is H(theta2) v
    theta2 = obj.theta + 0.1 * torch.randn(obj.n, generator=torch.Generator().manual_seed(seed + 1),
                                           dtype=torch.float64)
    H2 = torch.func.hessian(obj.loss)(theta2)
    tol2 = 2 * gamma(reduction_length(obj)) * max(float(torch.linalg.matrix_norm(H2, 2)), 1e-300)
    assert float((obj.hvp(v, theta=theta2, method="reuse") - H2 @ v).norm()) <= tol2
    assert float((obj.hvp(v, method="reuse") - H @ v).norm()) <= tol
    # Gauss-Newton: G = (1/N) sum_n J_n^T (d^2 ell) J_n from the dense Jacobian
    G = _dense_gauss_newton(obj, obj.theta)
    N, C = obj.outputs(obj.theta).shape
    nG = float(torch.linalg.matrix_norm(G, 2))
    tolG = 2 * gamma(reduction_length(obj) + N * C) * max(nG, nH, 1e-300)
    # "reuse" keeps the linearization of the last theta: several vectors through it, then the
    # same products from a fresh build per product ("double_backward") must be the same numbers
    w = torch.randn(obj.n, generator=torch.Generator().manual_seed(seed + 2), dtype=torch.float64)
    fresh = Objective(m.module, obj.inputs, obj.targets, loss=loss, device="cpu", hvp_method="double_backward")
    for u in (v, w, v):
        gu = obj.gnvp(u)
        assert float((gu - G @ u).norm()) <= tolG * float(u.norm())
        assert torch.equal(gu, fresh.gnvp(u))
    # at another theta the kept linearization is rebuilt: G(theta2) v, and G(theta) v again after it
    G2 = _dense_gauss_newton(obj, theta2)
    tolG2 = 2 * gamma(reduction_length(obj) + N * C) * max(float(torch.linalg.matrix_norm(G2, 2)), tol2, 1e-300)
    assert float((obj.gnvp(v, theta=theta2) - G2 @ v).norm()) <= tolG2
    assert torch.equal(obj.gnvp(v), fresh.gnvp(v))
    with pytest.raises(InvalidInputError, match="unknown HVP method"):
        obj.hvp(v, method="finite-difference")


def test_gnvp_builds_one_linearization_per_theta_with_reuse():
    """"reuse" runs one forward pass per theta for any number of Gauss-Newton products (the
    linearization is kept); the fresh methods run one per product."""
    m, obj = _obj([3, 4, 2], 0, "cross_entropy")
    fresh = Objective(m.module, obj.inputs, obj.targets, loss="cross_entropy", device="cpu",
                      hvp_method="double_backward")
    calls = {"reuse": 0, "fresh": 0}
    obj.module.register_forward_hook(lambda *a: calls.__setitem__("reuse", calls["reuse"] + 1))
    fresh.module.register_forward_hook(lambda *a: calls.__setitem__("fresh", calls["fresh"] + 1))
    v = torch.ones(obj.n, dtype=torch.float64)
    for o in (obj, fresh):
        o.gnvp(v), o.gnvp(2 * v), o.gnvp(v, theta=obj.theta + 0.5), o.gnvp(v, theta=obj.theta + 0.5)
    assert calls == {"reuse": 2, "fresh": 4}


@given(widths=widths_st, seed=st.integers(0, 2**20), which=st.sampled_from(["LA", "SA"]),
       method=st.sampled_from(["eigsh", "lanczos"]), operator=st.sampled_from(["hessian", "gauss_newton"]))
def test_extreme_eigenvalues_residuals(widths, seed, which, method, operator):
    m, obj = _obj(widths, seed, "squared")
    if obj.n < 3:
        return
    A = dense_hessian(obj) if operator == "hessian" else None
    if A is None:
        J = torch.func.jacrev(obj.outputs)(obj.theta).reshape(-1, obj.n)
        A = J.T @ J / obj.n_examples
    ev = torch.linalg.eigvalsh(0.5 * (A + A.T))
    try:
        est = extreme_eigenvalues(obj, which, method=method, operator=operator, max_steps=obj.n)[0]
    except NoConvergenceError as e:
        # documented refusal: ARPACK (no shift-invert) cannot always separate a bottom cluster
        # narrower than tol * |shift| (rank-deficient Gauss-Newton: many eigenvalues ~ 0);
        # it must say so in one line instead of returning an unconverged value
        assert method == "eigsh" and which == "SA" and "\n" not in str(e)
        return
    err = 8 * obj.n * U * float(ev.abs().max()) + gamma(reduction_length(obj)) * float(ev.abs().max())
    assert float((ev - est.value).abs().min()) <= est.residual + err
    if method == "lanczos":  # a full Krylov space (max_steps = n) contains the extreme eigenvector
        target = float(ev[-1] if which == "LA" else ev[0])
        assert abs(est.value - target) <= est.residual + err
    assert est.matvecs > 0 and math.isclose(float(est.vector.norm()), 1.0, rel_tol=1e-12)


def test_hutchinson_exact_on_diagonal_hessian():
    """f(x) = w * x elementwise (no mixing): H = diag(mean x_i^2) and z^T H z = tr H for every
    Rademacher z, so the estimate is exact up to round-off and its standard error ~ 0."""

    class Scale(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64))

        def forward(self, x):
            return self.w * x

    X = torch.randn(7, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    obj = Objective(Scale(), X, torch.zeros(7, 4, dtype=torch.float64), device="cpu")
    est, se = hutchinson_trace(obj, samples=8)
    tr = float((X**2).mean(0).sum())
    assert abs(est - tr) <= 64 * U * tr and se <= 64 * U * tr


@given(widths=widths_st, seed=st.integers(0, 2**20))
def test_hutchinson_unbiased(widths, seed):
    _, obj = _obj(widths, seed, "squared")
    tr = float(torch.trace(dense_hessian(obj)))
    est, se = hutchinson_trace(obj, samples=64, seed=seed)
    # a 6-sigma statistical bound (failure probability < 1e-8 per example under normality)
    assert abs(est - tr) <= 6 * se + 1e-9 * abs(tr) + 1e-12


def test_determinism_guard():
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(16, 2))
    X = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    Y = torch.randn(32, 2, generator=torch.Generator().manual_seed(1))
    noisy = Objective(net, X, Y, device="cpu", eval_mode=False)
    with pytest.raises(NondeterministicLossError, match="not deterministic.*Dropout|not deterministic.*2"):
        extreme_eigenvalues(noisy, "LA")
    quiet = Objective(net, X, Y, device="cpu")  # eval mode: dropout is the identity
    assert quiet.require_deterministic() == 0.0
    assert extreme_eigenvalues(quiet, "LA")[0].residual >= 0


def test_device_and_inputs():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidInputError, match="CUDA is not available"):
            resolve_device("cuda")
    _, obj = _obj([3, 4, 2], 0, "squared")
    with pytest.raises(InvalidInputError, match="shape"):
        obj.hvp(torch.ones(obj.n + 1))
    with pytest.raises(InvalidInputError, match="unknown loss"):
        Objective(torch.nn.Linear(2, 2), torch.ones(3, 2), torch.ones(3, 2), loss="hinge")
    with pytest.raises(InvalidInputError, match="targets shape"):
        Objective(torch.nn.Linear(2, 2), torch.ones(3, 2), torch.ones(3, 3))
    t = benchmark_hvp(obj, repeats=2)
    assert set(t) == {*HVP_METHODS, "relative_difference"} and t["relative_difference"] < 1e-10
