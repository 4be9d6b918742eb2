"""T1, T2 and W on tiny torch models against dense derivatives (torch.func.hessian).

With T the dense matrix of the record on the selected parameters (column j = T e_j), the laws
are checked in the inversion-free form

    T1:  T^T grad L'(T theta)     = grad L(theta)
    T2:  T^T H'(T theta) T        = H(theta)

Tolerance (float64, first-order forward-error estimate, computed per instance): each column
of a dense Hessian / gradient from automatic differentiation carries <= gamma_m ||H||_2
(m = ``reduction_length``); the two dense products add gamma_n each; T itself is exact
for diagonal groups and carries the backward error of a linear solve, <= gamma_r kappa(A),
on A^-T blocks. Frobenius norms of n columns add sqrt(n). So
    ||T^T H' T - H||_F <= sqrt(n) [gamma_m (||T||^2 ||H'|| + ||H||) + 2 (gamma_n + gamma_r kappa_A) ||T||^2 ||H'||].
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from convrate.models.checks import (
    check_t1,
    check_t2,
    check_w,
    dense_reparameterization,
    gamma,
    reduction_length,
)
from convrate.models.curvature import Objective, dense_hessian, extreme_eigenvalues
from convrate.models.defense import SpecDef
from convrate.models.symmetry import TorchReparameterization, random_element
from convrate.models.families import discover_symmetries
from convrate.models.testing import bert_inputs, mlp_arch, random_zoo, tiny_bert
from convrate.theory.bounds import lambda_max_lower_bound_hidden, lambda_max_lower_bound_relu




U = 2.0**-53


def _random_record(model, seed, log_scale, **kw):
    g = torch.Generator().manual_seed(seed)
    return TorchReparameterization([(s, random_element(s, g, log_scale)) for s in discover_symmetries(model, **kw)])


def _mlp_instance(widths, seed, loss, n=12):
    m = random_zoo(mlp_arch(widths), seed)
    g = torch.Generator().manual_seed(seed + 1)
    X = torch.randn(n, widths[0], generator=g, dtype=torch.float64)
    if loss == "squared":
        Y = torch.randn(n, widths[-1], generator=g, dtype=torch.float64)
    else:
        Y = torch.randint(0, widths[-1], (n,), generator=g)
    return m, X, Y


def _dense_laws(m, rec, X, Y, loss, names):
    obj = Objective(m.module, X, Y, loss=loss, params=names, device="cpu")
    theta_p = obj.flatten(rec.apply(obj.unflatten(obj.theta)))
    H = dense_hessian(obj)
    Hp = torch.func.hessian(obj.loss)(theta_p)
    g, gp = obj.gradient(), obj.gradient(theta_p)
    T = dense_reparameterization(obj, rec)
    n, mm = obj.n, reduction_length(obj)
    r = max(s.width for s, _ in rec.items)
    kA = rec.kappa_A()
    nT = float(torch.linalg.matrix_norm(T, 2))
    nH, nHp = float(torch.linalg.matrix_norm(H, 2)), float(torch.linalg.matrix_norm(Hp, 2))
    err2 = math.sqrt(n) * (gamma(mm) * (nT**2 * nHp + nH) + 2 * (gamma(n) + gamma(r) * kA) * nT**2 * nHp)
    res2 = float(torch.linalg.matrix_norm(T.T @ Hp @ T - H))
    err1 = gamma(mm) * (nT * float(gp.norm()) + float(g.norm())) + (gamma(n) + gamma(r) * kA) * nT * float(gp.norm())
    res1 = float((T.T @ gp - g).norm())
    return (res1, err1), (res2, err2), (H, Hp, T)


@given(widths=st.lists(st.integers(1, 5), min_size=3, max_size=4), seed=st.integers(0, 2**20),
       log_scale=st.floats(0.05, 2.5), loss=st.sampled_from(["squared", "cross_entropy"]))
def test_t1_t2_dense_mlp(widths, seed, log_scale, loss):
    if loss == "cross_entropy" and widths[-1] < 2:
        widths = [*widths[:-1], 2]
    m, X, Y = _mlp_instance(widths, seed, loss)
    rec = _random_record(m, seed, log_scale)
    names = [n for n, _ in m.module.named_parameters()]
    (res1, err1), (res2, err2), (H, Hp, T) = _dense_laws(m, rec, X, Y, loss, names)
    assert res1 <= err1, (res1, err1)
    assert res2 <= err2, (res2, err2)
    # Sylvester: the inertia of H' equals that of H. An eigenvalue counts when it clears its
    # error: eigvalsh backward error 8 n u ||A|| plus the dense-derivative error sqrt(n) gamma_m ||A||.
    mm = reduction_length(Objective(m.module, X, Y, loss=loss, device="cpu"))
    counts = []
    for A in (H, Hp):
        ev = torch.linalg.eigvalsh(0.5 * (A + A.T))
        tol = (8 * A.shape[0] * U + math.sqrt(A.shape[0]) * gamma(mm)) * float(ev.abs().max())
        counts.append((int((ev > tol).sum()), int((ev < -tol).sum()), int((ev.abs() <= tol).sum())))
    if counts[0][2] == 0 and counts[1][2] == 0:
        assert counts[0] == counts[1], counts
    # the HVP-based real-loss checks agree
    for r in (check_t1(m, rec, X, Y, loss=loss, device="cpu"), check_t2(m, rec, X, Y, loss=loss, device="cpu")):
        assert r.holds, r


@settings(max_examples=6)
@given(seed=st.integers(0, 2**20), log_scale=st.floats(0.05, 1.2),
       kinds=st.sampled_from([("attention-qk",), ("attention-vo",), ("attention-qk", "attention-vo")]))
def test_t1_t2_dense_attention(seed, log_scale, kinds):
    pytest.importorskip("transformers")
    m = tiny_bert(seed, hidden=4, heads=2)
    x = bert_inputs(m, 2, 3, seed)
    Y = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    rec = _random_record(m, seed, log_scale, kinds=kinds)
    (res1, err1), (res2, err2), _ = _dense_laws(m, rec, x, Y, "squared", rec.param_names)
    assert res1 <= err1, (res1, err1)
    assert res2 <= err2, (res2, err2)
    r = check_t2(m, rec, x, Y, device="cpu")
    assert r.holds, r


@given(widths=st.lists(st.integers(2, 6), min_size=3, max_size=4), seed=st.integers(0, 2**20),
       K=st.sampled_from([1.0, 3.0, 10.0, 100.0, 1000.0]), profile=st.sampled_from(["geometric", "spike"]))
def test_w_dense_mlp(widths, seed, K, profile):
    m, X, Y = _mlp_instance(widths, seed, "squared", n=16)
    rec = SpecDef(K, profile).reparameterization(m) if K > 1 else _random_record(m, seed, 0.0)
    obj = Objective(m.module, X, Y, device="cpu")
    theta_p = obj.flatten(rec.apply(obj.unflatten(obj.theta)))
    Hp = torch.func.hessian(obj.loss)(theta_p)
    lam = float(torch.linalg.eigvalsh(0.5 * (Hp + Hp.T))[-1])
    # bounds of theory.bounds from the activations entering the last layer
    net = obj.module
    defended = rec.apply_to_module(net)
    with torch.no_grad():
        h = net[:-1](X)
        hp = defended[:-1](X)
    lam_S = float(torch.linalg.eigvalsh(hp.T @ hp / X.shape[0])[-1])
    b_last = len(net) - 1
    D = torch.ones(h.shape[1], dtype=torch.float64)
    for s, e in rec.items:
        if any(sl.param == f"{b_last}.weight" and sl.op == "A_invT" for sl in s.slots):
            D = e
    b1 = float(lambda_max_lower_bound_hidden(lam_S))
    b2 = float(lambda_max_lower_bound_relu(D.tolist(), (h**2).mean(0).tolist()))
    n, mm = obj.n, reduction_length(obj)
    err = math.sqrt(n) * gamma(mm) * abs(lam) + 8 * n * U * abs(lam) + 2 * gamma(X.shape[0] + mm) * b1
    assert lam >= b1 - err, (lam, b1)
    assert b1 >= b2 * (1 - 2 * gamma(X.shape[0] + mm)), (b1, b2)
    # the Lanczos-based check on the same instance, and Lanczos vs the dense eigenvalue
    for r in check_w(m, rec, X, Y, device="cpu"):
        assert r.holds, r
    obj_p = Objective(defended, X, Y, device="cpu")
    for method in ("eigsh", "lanczos"):
        est = extreme_eigenvalues(obj_p, "LA", method=method, max_steps=n)[0]
        evs = torch.linalg.eigvalsh(0.5 * (Hp + Hp.T))
        nearest = float((evs - est.value).abs().min())
        assert nearest <= est.residual + err, (method, est.value, lam, est.residual)
