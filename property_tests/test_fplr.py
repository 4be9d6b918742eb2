"""Inferring T from a reference and a claimed model (``convrate.models.fplr``).

Properties, float64 throughout:

* random elements of every S2 group (zoo MLP/CNN) and S1 group (BERT heads) are recovered,
  the element within a tolerance argued from the rounding of T theta and of the solve (below),
  and kappa(T) within the tolerance that element error implies;
* a fine-tuned model and a sign-flipped unit give no T; a permuted hidden layer gives T = P
  (without the permutation search, no T);
* mismatched architectures (widths, activation, family) raise ArchitectureMismatchError.

Tolerance for S2 (log-scales a = log d; A the +-1 incidence matrix of the equations, built
here independently through ``TorchSymmetry.apply`` on an all-ones model, m equations, n
unknowns). Each claimed entry is fl(r d_row / d_col) (``symmetry._act``: at most 3 roundings,
the reciprocal included) and ``fplr`` forms y = log(fl(|c| / |r|)) (one division, one log), so
every equation is off by at most delta = 4.01 u + u |y|. The exact least-squares solution of
the perturbed system is then within ||A^+|| ||delta||_2 <= sqrt(m) delta / sigma_min(A) of a;
the float64 normal equations add ||fl(A^T y) - A^T y|| / sigma_min(A)^2 <= gamma_m sigma_max(A)
||y|| / sigma_min(A)^2 and a backward-stable n x n solve 10 n u kappa(A)^2 ||a||; the float64
reference value log(d) carries u |a| per entry.

Tolerance for S1 (first-order estimate of the standard least-squares kind, as in
``models.checks``): A_hat solves a full-rank least-squares problem with matrix X^T (producer,
X = [W_a | b_a]) or Y'^T (consumer). The data were formed as fl(A X) or by a linear solve
with A^T, whose relative error is <= gamma_{3r} r kappa(A); the SVD least-squares solver is
backward stable with relative backward error ~ 10 p u (p rows). So
||A_hat - A|| / ||A|| <= 2 kappa_side (gamma_{3r} r kappa(A) + 10 p u) with kappa_side the
larger of kappa(X), kappa(Y') (an upper bound whichever side ``fplr`` picked).
kappa(T): by Weyl each singular value moves by <= ||A_hat - A||, so with
eps = ||A_hat - A|| / sigma_min(A), |kappa_hat / kappa - 1| <= 5 eps (eps << 1); for S2,
|log kappa_hat - log kappa| <= 4 ||a_hat - a||_inf + 16 u (an entry's scale is a_row - a_col,
kappa is a ratio of two entries' scales, each formed with <= 4 roundings).
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from convrate.errors import ConvrateError
from convrate.models.checks import gamma
from convrate.models.fplr import ArchitectureMismatchError, infer_reparameterization, slot_block
from convrate.models.io import LoadedModel
from convrate.models.symmetry import TorchReparameterization, random_element
from convrate.models.families import discover_symmetries
from convrate.models.testing import cnn_arch, mlp_arch, random_zoo, tiny_bert

U = 2.0 ** -53




zoo_archs = st.one_of(
    st.builds(lambda w: mlp_arch(w), st.lists(st.integers(1, 6), min_size=3, max_size=5)),
    st.builds(lambda c: cnn_arch(c, side=4), st.lists(st.integers(1, 3), min_size=1, max_size=2)),
)


def _random_record(model, seed: int, log_scale: float) -> TorchReparameterization:
    g = torch.Generator().manual_seed(seed)
    return TorchReparameterization([(s, random_element(s, g, log_scale)) for s in discover_symmetries(model)])


def _defended(model: LoadedModel, record: TorchReparameterization) -> LoadedModel:
    return model.with_module(record.apply_to_module(model.module))


def _incidence(syms, params) -> np.ndarray:
    """Column (group g, unit i) = log of T(e^1 on that unit) applied to all-ones parameters."""
    names = list(dict.fromkeys(n for s in syms for n in s.params))
    ones = {n: torch.ones_like(params[n], dtype=torch.float64) for n in names}
    cols = []
    for s in syms:
        for i in range(s.width):
            e = torch.ones(s.width, dtype=torch.float64)
            e[i] = math.e
            moved = {**ones, **s.apply(ones, e)}
            cols.append(torch.cat([moved[n].log().reshape(-1) for n in names]).numpy())
    return np.stack(cols, axis=1)


# ---------------------------------------------------------------- S2: zoo MLP / CNN
@given(arch=zoo_archs, seed=st.integers(0, 2**20), log_scale=st.floats(0.05, 2.5))
def test_s2_elements_recovered(arch, seed, log_scale):
    m = random_zoo(arch, seed)
    rec = _random_record(m, seed, log_scale)
    fit = infer_reparameterization(m, _defended(m, rec), permutations=False)  # the joint S2 solve
    assert fit.found, fit.reason
    params = dict(m.module.named_parameters())
    syms = [s for s, _ in rec.items]
    A = _incidence(syms, params)
    sv = np.linalg.svd(A, compute_uv=False)
    smin, smax = float(sv[-1]), float(sv[0])
    a = np.concatenate([e.log().numpy() for _, e in rec.items])
    a_hat = np.concatenate([e.log().numpy() for _, e in fit.record.items])
    y = A @ a  # the exact-data right-hand side (|y| enters the rounding of the log)
    m_eq, n = A.shape
    delta = 4.01 * U + U * float(np.abs(y).max())
    tol = (math.sqrt(m_eq) * delta / smin + gamma(m_eq) * smax * float(np.linalg.norm(y)) / smin**2
           + 10 * n * U * (smax / smin) ** 2 * float(np.linalg.norm(a)) + U * float(np.linalg.norm(a)))
    err = float(np.linalg.norm(a_hat - a))
    assert err <= tol, (err, tol)
    k_true = rec.kappa_T(list(params))
    # kappa from the elements: each diagonal entry of T is formed with <= 3 roundings, and the
    # ratio with one more, on both sides: <= 8 u relative each
    assert abs(math.log(fit.kappa_T / k_true)) <= 4 * float(np.abs(a_hat - a).max()) + 16 * U, (fit.kappa_T, k_true)


# ---------------------------------------------------------------- S1: BERT heads
@given(seed=st.integers(0, 2**20), log_scale=st.floats(0.05, 1.5), heads=st.sampled_from([1, 2]))
def test_s1_elements_recovered(seed, log_scale, heads):
    m = tiny_bert(seed, hidden=8, heads=heads, intermediate=8)
    rec = _random_record(m, seed, log_scale)
    fit = infer_reparameterization(m, _defended(m, rec), permutations=False)
    assert fit.found, fit.reason
    ref = {n: p.detach() for n, p in m.module.named_parameters()}
    cl = {n: p.detach() for n, p in rec.apply_to_module(m.module).named_parameters()}
    worst_eps = 0.0
    for (s, A), (_, A_hat) in zip(rec.items, fit.record.items):
        r = s.width
        X = torch.cat([slot_block(ref[sl.param], sl, r) for sl in s.slots if sl.op == "A"], 1)
        Yc = torch.cat([slot_block(cl[sl.param], sl, r) for sl in s.slots if sl.op == "A_invT"], 1)
        k_side = max(float(torch.linalg.cond(X)), float(torch.linalg.cond(Yc)))
        p = max(X.shape[1], Yc.shape[1])
        sa = torch.linalg.svdvals(A)
        tol_rel = 2 * k_side * (gamma(3 * r) * r * float(sa[0] / sa[-1]) + 10 * p * U)
        err = float(torch.linalg.matrix_norm(A_hat - A, ord=2))
        assert err <= tol_rel * float(sa[0]), (s.name, err / float(sa[0]), tol_rel)
        worst_eps = max(worst_eps, err / float(sa[-1]))
    k_true = rec.kappa_T(list(ref))
    assert worst_eps < 0.1
    assert abs(fit.kappa_T / k_true - 1) <= 5 * worst_eps + 4 * U, (fit.kappa_T, k_true)


def test_identity_and_plain_modules():
    """The model against itself: T = I exactly (residual 0, kappa 1); bare nn.Modules work too
    (the contract the pytest plugin uses), the S2 input shape read from the first Linear."""
    m = random_zoo(mlp_arch([5, 4, 3]), 1)
    fit = infer_reparameterization(m, m)
    assert fit.found and fit.residual == 0.0 and fit.kappa_T == 1.0
    rec = _random_record(m, 3, 1.0)
    fit2 = infer_reparameterization(m.module, rec.apply_to_module(m.module), symmetries=None)
    assert fit2.found and fit2.record is not None and fit2.residual <= fit2.rtol


# ---------------------------------------------------------------- no T
def _fine_tuned(m: LoadedModel, steps: int, lr: float, seed: int) -> LoadedModel:
    net = copy.deepcopy(m.module)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, *m.input_shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, net[-1].out_features, (16,), generator=g)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return m.with_module(net)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fine_tuned_model_has_no_T(seed):
    """A few SGD steps move the weights off the orbit: the best fit leaves a residual of the
    size of the update (relative ~1e-2 here), far above rtol = sqrt(u) = 1.5e-8."""
    m = random_zoo(mlp_arch([6, 5, 4, 3]), seed)
    ft = _fine_tuned(m, 3, 0.5, seed)
    moved = max(float((a.detach() - b.detach()).norm() / b.detach().norm())
                for a, b in zip(ft.module.parameters(), m.module.parameters()))
    assert moved > 1e3 * math.sqrt(U)  # the precondition of the claim: the update is not round-off
    for claimed in (ft, _defended(ft, _random_record(ft, seed, 1.0))):
        fit = infer_reparameterization(m, claimed)
        assert fit.record is None and fit.kappa_T is None
        assert fit.residual > fit.rtol and "residual" in fit.reason


def test_sign_flip_has_no_T_and_permutation_is_found():
    m = random_zoo(mlp_arch([5, 4, 3]), 4)
    flip = copy.deepcopy(m.module)
    with torch.no_grad():  # relu(-z) != -relu(z): not a symmetry, and not an S2 element
        flip[0].weight[1] *= -1
        flip[0].bias[1] *= -1
        flip[2].weight[:, 1] *= -1
    fit = infer_reparameterization(m, m.with_module(flip))
    assert not fit.found and fit.sign_mismatches > 0
    perm = copy.deepcopy(m.module)
    p = torch.tensor([1, 0, 3, 2])
    with torch.no_grad():  # a permutation of the hidden units preserves the function exactly
        perm[0].weight.copy_(m.module[0].weight[p])
        perm[0].bias.copy_(m.module[0].bias[p])
        perm[2].weight.copy_(m.module[2].weight[:, p])
    x = m.probe_inputs(4)
    assert torch.equal(m.output(x), m.output(x, perm)) or torch.allclose(m.output(x), m.output(x, perm), rtol=1e-14)
    assert not infer_reparameterization(m, m.with_module(perm), permutations=False).found
    fit = infer_reparameterization(m, m.with_module(perm))  # T = P (D = 1)
    assert fit.found and fit.kappa_T is not None and abs(fit.kappa_T - 1) <= 1e-12, fit.reason
    P = next(e for s, e in fit.record.items if s.element_kind == "permutation")
    assert torch.equal(P.argmax(dim=1), p)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("other", [
    lambda: random_zoo(mlp_arch([5, 6, 3]), 0),                   # another width
    lambda: random_zoo(mlp_arch([5, 4, 3], "leaky_relu"), 0),     # same shapes, another activation
    lambda: random_zoo(mlp_arch([5, 4, 4, 3]), 0),                # another depth
    lambda: tiny_bert(0),                                         # another family
])
def test_mismatched_architectures(other):
    m = random_zoo(mlp_arch([5, 4, 3]), 0)
    with pytest.raises(ArchitectureMismatchError) as e:
        infer_reparameterization(m, other())
    assert isinstance(e.value, ConvrateError) and "\n" not in str(e.value) and "architectures differ" in str(e.value)
