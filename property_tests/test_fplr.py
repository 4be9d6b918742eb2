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
from dataclasses import replace

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


# ---------------------------------------------------------------- the tolerance and the distances
def test_unit_roundoff_and_default_rtol():
    """u = eps / 2 (float64 2^-53, float32 2^-24, float16 2^-11, bfloat16 2^-8); rtol = sqrt(u)
    of the coarser dtype, whichever side it is on, and that is the rtol a fit uses."""
    from convrate.models.fplr import default_rtol, unit_roundoff

    assert [unit_roundoff(d) for d in (torch.float64, torch.float32, torch.float16, torch.bfloat16)] == \
        [2.0 ** -53, 2.0 ** -24, 2.0 ** -11, 2.0 ** -8]
    assert default_rtol(torch.float64) == math.sqrt(2.0 ** -53)
    assert default_rtol(torch.float64, torch.float32) == default_rtol(torch.float32, torch.float64) == 2.0 ** -12
    m = random_zoo(mlp_arch([5, 4, 3]), 2)
    m32 = m.with_module(copy.deepcopy(m.module).float())
    assert infer_reparameterization(m, m32).rtol == infer_reparameterization(m32, m).rtol == 2.0 ** -12
    assert infer_reparameterization(m, m).rtol == 2.0 ** -26.5


def test_parameter_distance_is_relative_unless_the_target_is_zero():
    """||a - b||_F / ||b||_F by hand: a - b = (3, 4) has norm 5; ||b|| = 2 and 1/2 (relative, on
    both sides of 1), and b = 0 (absolute); float32 inputs are measured in float64 (the norm of
    (3e38, 3e38) overflows float32)."""
    from convrate.models.fplr import parameter_distance

    t = lambda *v, dt=torch.float64: torch.tensor(v, dtype=dt)  # noqa: E731
    a = {"p": t(5.0, 4.0), "q": t(3.5, 4.0), "z": t(3.0, 4.0), "f": t(3e38, 3e38, dt=torch.float32)}
    b = {"p": t(2.0, 0.0), "q": t(0.5, 0.0), "z": t(0.0, 0.0), "f": t(0.0, 0.0, dt=torch.float32)}
    d = parameter_distance(a, b)
    assert {n: d[n] for n in "pqz"} == {"p": 2.5, "q": 10.0, "z": 5.0}
    x = float(a["f"][0])  # float32(3e38), exact in float64; the norm is x sqrt(2) to a few u
    assert abs(d["f"] / (x * math.sqrt(2)) - 1) <= 4 * U
    assert parameter_distance({"f": torch.zeros(2, dtype=torch.float32)}, {"f": a["f"]}) == {"f": 1.0}  # d = s


def test_float64_parameters_are_detached_float64_copies():
    from convrate.models.fplr import float64_parameters

    m = random_zoo(mlp_arch([3, 2]), 0)
    net = copy.deepcopy(m.module).float()
    got = float64_parameters(m.with_module(net))
    assert list(got) == ["0.weight", "0.bias"] and all(t.dtype == torch.float64 for t in got.values())
    assert all(torch.equal(got[n], p.detach().double()) for n, p in net.named_parameters())
    got["0.bias"].add_(1.0)  # a copy: the model is untouched
    assert not torch.equal(got["0.bias"], net[0].bias.detach().double())


# ---------------------------------------------------------------- architecture comparison
def test_architecture_signature_lists_modules_then_parameters():
    """Every module (containers by type, leaves by repr, the root as "<root>"), then every
    parameter with its shape; no dtype."""
    from convrate.models.fplr import architecture_signature

    net = nn.Sequential(nn.Linear(2, 3), nn.LeakyReLU(0.25))
    sig = [("<root>", "Sequential"), ("0", "Linear(in_features=2, out_features=3, bias=True)"),
           ("1", "LeakyReLU(negative_slope=0.25)"), ("0.weight", "parameter [3, 2]"), ("0.bias", "parameter [3]")]
    assert architecture_signature(net) == sig
    assert architecture_signature(net.double()) == sig
    with pytest.raises(ConvrateError, match="expected a LoadedModel or torch.nn.Module, got str"):
        architecture_signature("net")


def _with_extra_parameter(m: LoadedModel) -> LoadedModel:
    """The same modules, one more parameter registered on the last Linear (its repr unchanged)."""
    net = copy.deepcopy(m.module)
    net[-1].register_parameter("extra", nn.Parameter(torch.ones(3, dtype=torch.float64)))
    return m.with_module(net)


def test_architecture_differences_that_only_a_repr_kind_or_count_shows():
    m = random_zoo(mlp_arch([5, 4, 3]), 0)
    cases = [  # (reference, claimed, the message names)
        (m, m.with_module(nn.Sequential(*[nn.LeakyReLU(0.5) if isinstance(l, nn.ReLU) else l for l in m.module])),
         "'1': ReLU()"),                                        # same types' shapes, another leaf module
        (m, replace(m, kind="cnn"), "the reference is a mlp, the claimed model a cnn"),  # only the kind
        (_with_extra_parameter(m), m, "only the reference has '2.extra': parameter [3]"),
        (m, _with_extra_parameter(m), "only the claimed model has '2.extra': parameter [3]"),
    ]
    for ref, cl, says in cases:
        with pytest.raises(ArchitectureMismatchError) as e:
            infer_reparameterization(ref, cl)
        assert says in str(e.value) and "\n" not in str(e.value), str(e.value)
    infer_reparameterization(m, replace(m, kind="mlp", fmt="hf"))  # the format is not the architecture
    assert infer_reparameterization(m.module, replace(m, kind="cnn")).found  # a bare module has no kind


# ---------------------------------------------------------------- the JSON of a fit
GROUP_KEYS = ["name", "family", "kind", "width", "kappa", "side", "conditioning", "residual", "note"]


def test_fit_json_found_and_not_found():
    """The documented keys with the fit's values; worst_parameters = the 5 largest parameter
    residuals, largest first; kappa_A only with a record. Through json (plain types)."""
    import json

    m = random_zoo(mlp_arch([5, 4, 3, 2]), 6)  # 6 parameter tensors: the list is cut at 5
    rec = _random_record(m, 6, 1.0)
    ft = _fine_tuned(m, 2, 0.5, 6)
    for claimed in (_defended(m, rec), ft):
        fit = infer_reparameterization(m, claimed)
        js = json.loads(json.dumps(fit.to_json()))
        assert list(js) == ["found", "residual", "rtol", "kappa_T", "kappa_A_max", "kappa_A_by_kind", "groups",
                            "sign_mismatches", "reason", "worst_parameters", "group_fits"]
        assert (js["found"], js["residual"], js["rtol"], js["kappa_T"], js["sign_mismatches"], js["reason"]) == \
            (fit.found, fit.residual, fit.rtol, fit.kappa_T, fit.sign_mismatches, fit.reason)
        assert js["groups"] == len(fit.groups) == len(js["group_fits"]) == 4  # P and S2 on two hidden layers
        if fit.found:
            assert js["kappa_A_max"] == fit.record.kappa_A() and abs(js["kappa_A_max"] / rec.kappa_A() - 1) <= 1e-8
            assert js["kappa_A_by_kind"] == {"relu-linear": js["kappa_A_max"]} and js["kappa_A_max"] > 1.5
            # each group's kappa is its solved element's; the permutations (solved as I) have none: 1
            kap = {s.name: s.kappa(e) for s, e in fit.record.items}
            assert [s.kind for s, _ in fit.record.items] == ["relu-linear"] * 2 and min(kap.values()) > 1
            assert {g.name: g.kappa for g in fit.groups} == {**kap, **{g.name: 1.0 for g in fit.groups if g.family == "P"}}
        else:
            assert js["kappa_A_max"] is None and js["kappa_A_by_kind"] is None
            rank = sorted(fit.param_residuals.values(), reverse=True)
            assert rank[0] > rank[4] > rank[5]  # distinct residuals: the order and the cut are visible
            assert [w["residual"] for w in js["worst_parameters"]] == rank[:5]
            assert all(fit.param_residuals[w["name"]] == w["residual"] for w in js["worst_parameters"])
        for gf, g in zip(js["group_fits"], fit.groups):
            assert list(gf) == GROUP_KEYS and gf == {k: getattr(g, k) for k in GROUP_KEYS}
            assert gf["kind"] in ("relu-permutation", "relu-linear") and gf["width"] in (4, 3)


# ---------------------------------------------------------------- bare modules
def _permuted_and_scaled(m: LoadedModel, seed: int) -> TorchReparameterization:
    g = torch.Generator().manual_seed(seed)
    return TorchReparameterization([(s, random_element(s, g, 1.0)) for s in discover_symmetries(m, permutations=True)])


def test_bare_modules_and_mixed_arguments():
    """The groups come from whichever argument is a LoadedModel (a CNN's input shape is only
    there), else from the bare reference (an MLP's input shape read from its first Linear, a
    BERT needing none), permutations included; two bare CNNs cannot be solved."""
    c = random_zoo(cnn_arch([2, 3], side=4), 1)
    rec = _permuted_and_scaled(c, 1)
    assert any(s.family == "P" and not torch.equal(e, s.identity()) for s, e in rec.items)
    cl = rec.apply_to_module(c.module)
    for ref, claimed in ((c, cl), (c.module, c.with_module(cl))):
        fit = infer_reparameterization(ref, claimed)
        assert fit.found and abs(math.log(fit.kappa_T / rec.kappa_T(list(dict(c.module.named_parameters()))))) \
            <= 1e-8, fit.reason
    with pytest.raises(ConvrateError, match="input_shape"):
        infer_reparameterization(c.module, cl)
    m = random_zoo(mlp_arch([4, 5, 3]), 2)
    p = torch.tensor([4, 0, 3, 1, 2])
    perm = copy.deepcopy(m.module)
    with torch.no_grad():
        perm[0].weight.copy_(m.module[0].weight[p])
        perm[0].bias.copy_(m.module[0].bias[p])
        perm[2].weight.copy_(m.module[2].weight[:, p])
    fit = infer_reparameterization(m.module, perm)
    assert fit.found and [s.kind for s, _ in fit.record.items][0] == "relu-permutation", fit.reason
    assert torch.equal(fit.record.items[0][1].argmax(dim=1), p)
    b = tiny_bert(1, hidden=6, heads=3, intermediate=6)
    fit = infer_reparameterization(b.module, _permuted_and_scaled(b, 1).apply_to_module(b.module))
    assert fit.found and fit.record.items[0][0].kind == "attention-head-permutation", fit.reason


# ---------------------------------------------------------------- the contract of infer_reparameterization
def test_rtol_and_weights_are_validated():
    m = random_zoo(mlp_arch([5, 4, 3]), 3)
    for bad in (0.0, -1e-8, math.nan, math.inf):
        with pytest.raises(ConvrateError, match="rtol must be a finite number > 0"):
            infer_reparameterization(m, m, rtol=bad)
    for rtol in (2.0 ** -60, 0.5, 1.0, 3.0):  # any finite rtol > 0 is used as given
        assert infer_reparameterization(m, m, rtol=rtol).rtol == rtol
    for name, side in (("0.bias", 0), ("2.weight", 1)):
        net = copy.deepcopy(m.module)
        with torch.no_grad():
            dict(net.named_parameters())[name][0] = math.nan if side == 0 else math.inf
        args = (m.with_module(net), m) if side == 0 else (m, m.with_module(net))
        with pytest.raises(ConvrateError, match=f"parameter '{name}' has non-finite"):
            infer_reparameterization(*args)


def test_acceptance_is_residual_at_most_rtol():
    """found <=> residual <= rtol, the boundary included; without a record: kappa_T None, the
    candidate kept, the reason naming the residual, rtol and the worst parameter."""
    m = random_zoo(mlp_arch([5, 4, 3]), 5)
    ft = _fine_tuned(m, 1, 0.1, 5)
    r = infer_reparameterization(m, ft).residual
    at = infer_reparameterization(m, ft, rtol=r)
    assert at.found and at.record is at.candidate and at.residual == r and at.reason == ""
    assert at.record.meta == {"defense": "inferred"}
    assert at.kappa_T == at.record.kappa_T(list(dict(m.module.named_parameters()))) > 1.0
    below = infer_reparameterization(m, ft, rtol=r * (1 - 2.0 ** -40))
    worst = max(below.param_residuals, key=lambda n: below.param_residuals[n])
    assert below.param_residuals[worst] == r == below.residual
    assert not below.found and below.kappa_T is None and below.candidate is not None
    assert below.reason == f"residual {r:.3e} > rtol {below.rtol:.3e} (worst parameter {worst!r})"
    assert below.param_residuals == at.param_residuals  # same solve, only the verdict differs


def test_identity_fit_has_no_permutation_factor_and_exact_group_fits():
    """A model against itself: permutations solved as the identity leave no factor in T (their
    fit: kappa 1, note "...; identity"), the diagonal group is solved as exactly 1, every
    residual is 0 and no sign differs."""
    m = random_zoo(mlp_arch([5, 4, 3, 2]), 7)
    fit = infer_reparameterization(m, m)
    assert [g.name for g in fit.groups] == [s.name for s in discover_symmetries(m, permutations=True)]
    assert [s.kind for s, _ in fit.record.items] == ["relu-linear", "relu-linear"]
    assert all(torch.equal(e, torch.ones_like(e)) for _, e in fit.record.items)
    assert fit.sign_mismatches == 0 and fit.kappa_T == 1.0
    assert [(g.kind, g.kappa, g.residual) for g in fit.groups] == [
        ("relu-permutation", 1.0, 0.0), ("relu-linear", 1.0, 0.0)] * 2
    for g in fit.groups:  # conditioning: sigma_min / sigma_max, or the smallest matched similarity (1: self-match)
        assert 0 < g.conditioning <= 1.0 + 1e-12 and g.width == (4 if g.name.endswith("0->2") else 3)
        assert abs(g.conditioning - 1) <= 1e-12 if g.family == "P" else True
        assert g.note.endswith("; identity") if g.family == "P" else g.note == ""
        assert g.note.startswith("smallest matched similarity") if g.family == "P" else True


def test_group_residual_is_the_worst_of_its_tensors():
    """In a one-hidden-layer MLP the S2 group and the hidden permutation act on all of W1, b1
    and W2 (the whole tensors are their slot blocks), so each group's residual is the largest
    of those three parameter residuals: relative where the claimed block is nonzero (weights
    of norm < 1 here, so relative != absolute), absolute (0 here) where it is zero (b1 = 0)."""
    m = random_zoo(mlp_arch([5, 4, 3]), 8)
    net = copy.deepcopy(m.module)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.05)
        net[0].bias.zero_()
    small = m.with_module(net)
    ft = _fine_tuned(small, 1, 0.5, 8)
    with torch.no_grad():
        ft.module[0].bias.zero_()
    fit = infer_reparameterization(small, ft)
    assert not fit.found and fit.param_residuals["0.bias"] == 0.0
    assert all(float(p.detach().norm()) < 1 for p in ft.module.parameters())
    want = max(fit.param_residuals[n] for n in ("0.weight", "0.bias", "2.weight"))
    assert want > 0 and [g.residual for g in fit.groups] == [want, want]


def _zero_head0(module: nn.Module, which: tuple[str, ...]) -> nn.Module:
    net = copy.deepcopy(module)
    att = net.encoder.layer[0].attention.self
    with torch.no_grad():
        for w in which:  # head 0 = the first 2 rows (head width 6 / 3)
            getattr(att, w).weight[:2] = 0
            getattr(att, w).bias[:2] = 0
    return net


def test_unsolvable_group_stops_the_inference():
    """S1 QK of head 0: with the reference's query rows and the claimed key rows zero, neither
    side determines A (no T, "not identifiable"); with the claimed query and key rows zero the
    producer side gives A = 0, not in GL (no T, "not in its group"). Either way the groups
    after it are not solved: one group fit, residual inf, no candidate."""
    b = tiny_bert(1, hidden=6, heads=3, intermediate=6)
    syms = [s for s in discover_symmetries(b) if s.name in ("layer0.head0.qk", "layer0.head0.vo", "layer0.head1.qk")]
    assert [s.name for s in syms] == ["layer0.head0.qk", "layer0.head0.vo", "layer0.head1.qk"]
    for ref_zero, cl_zero, says in (
            (("query",), ("key",), "group layer0.head0.qk not identifiable (both sides rank-deficient"),
            ((), ("query", "key"), "the solved element of layer0.head0.qk is not in its group (")):
        fit = infer_reparameterization(b.with_module(_zero_head0(b.module, ref_zero)),
                                       b.with_module(_zero_head0(b.module, cl_zero)), symmetries=syms, rtol=0.25)
        assert fit.reason.startswith(says), fit.reason
        assert not fit.found and fit.candidate is None and fit.kappa_T is None and fit.residual == math.inf
        assert fit.rtol == 0.25 and fit.sign_mismatches == 0 and fit.param_residuals == {}
        assert [g.name for g in fit.groups] == ["layer0.head0.qk"] and fit.groups[0].residual is None
        g = fit.groups[0]  # zero blocks have conditioning 0; the producer side is the reference's query block
        assert (g.side, g.conditioning == 0.0) == (("none", True) if ref_zero else ("producer", False))


@pytest.mark.parametrize("permutations", [True, False])
def test_sign_mismatches_count_every_flipped_entry(permutations):
    """Flipping hidden unit 1 (its input row, bias and output column) of a layer with fan-in n
    and fan-out k changes the sign of n + 1 + k entries, each counted once whether the two
    S2 groups are solved jointly (permutations=False) or in separate stages between the
    permutations: 5 + 1 + 3 in the first hidden layer, 4 + 1 + 2 in the second; both:
    9 + 7 - 2 = 14 (W2[1, 1] is flipped twice, its sign restored)."""
    m = random_zoo(mlp_arch([5, 4, 3, 2]), 4)
    for layers, want in (((0,), 9), ((2,), 7), ((0, 2), 14)):
        flip = copy.deepcopy(m.module)
        with torch.no_grad():
            for i in layers:
                flip[i].weight[1] *= -1
                flip[i].bias[1] *= -1
                flip[i + 2].weight[:, 1] *= -1
        fit = infer_reparameterization(m, m.with_module(flip), permutations=permutations)
        assert not fit.found and fit.sign_mismatches == want, (layers, fit.sign_mismatches)
        assert [g.side for g in fit.groups] == ["assignment", "log-ratios"] * 2 if permutations else \
            ["log-ratios"] * 2


def test_element_beyond_float64_is_not_in_its_group():
    """Unit 1 of the first hidden layer scaled by 1e-200 in the reference and by 1e110 in the
    claimed model: the exact S2 element 1e310 exceeds float64 (max ~1.8e308), so the solved
    element is non-finite, not in the group: no T. Both groups of the joint diagonal stage
    (permutations=False) are still reported, the failing one first, and so are the sign
    mismatches of unit 2, flipped in the claimed model (5 + 1 + 3 entries, as above)."""
    m = random_zoo(mlp_arch([5, 4, 3, 2]), 4)

    def scaled(s: float) -> LoadedModel:
        net = copy.deepcopy(m.module)
        with torch.no_grad():
            net[0].weight[1] *= s
            net[0].bias[1] *= s
            net[2].weight[:, 1] /= s
        return m.with_module(net)

    claimed = scaled(1e110)
    with torch.no_grad():
        claimed.module[0].weight[2] *= -1
        claimed.module[0].bias[2] *= -1
        claimed.module[2].weight[:, 2] *= -1
    with np.errstate(over="ignore"):
        fit = infer_reparameterization(scaled(1e-200), claimed, permutations=False)
    assert fit.sign_mismatches == 9
    assert not fit.found and fit.candidate is None and fit.residual == math.inf
    assert fit.reason.startswith("the solved element of relu-linear:0->2 is not in its group"), fit.reason
    assert [g.name for g in fit.groups] == ["relu-linear:0->2", "relu-linear:2->4"]


@pytest.mark.parametrize("e", [200, -200])
def test_log_ratios_beyond_float64_quotients_are_solved(e):
    """The S2 element d1 = (10^-e, 1, 1, 1), d2 = (10^e, 1, 1): W2[0, 0] is scaled by
    d2[0] / d1[0] = 10^(2e), beyond float64 (e = 200: the quotient overflows; e = -200: it
    underflows to 0, and the first layer's row 0 holds weights ~1e199, whose squares overflow
    unless the residual's norms are scaled), although both elements and every weight are finite
    (W2[0, 0] = 10^-(3e/2) in the reference, 10^(e/2) claimed). The equation's log-ratio is then formed
    as log|c| - log|r| (each log within u |log| of exact), so T is found, the elements within the
    S2 tolerance of the module doc with that per-equation error, and kappa(T) = 1e400 rounds to inf."""
    m = random_zoo(mlp_arch([5, 4, 3, 2]), 4)
    ref = copy.deepcopy(m.module).double()
    with torch.no_grad():
        ref[2].weight[0, 0] = 10.0 ** (-3 * e // 2)
    d1 = torch.tensor([10.0 ** -e, 1.0, 1.0, 1.0], dtype=torch.float64)
    d2 = torch.tensor([10.0 ** e, 1.0, 1.0], dtype=torch.float64)
    cl = copy.deepcopy(ref)
    with torch.no_grad():
        cl[0].weight.mul_(d1[:, None])
        cl[0].bias.mul_(d1)
        w2 = ref[2].weight * d2[:, None] / d1[None, :]  # inf or 0 at [0, 0]; set below
        w2[0, 0] = 10.0 ** (e // 2)
        cl[2].weight.copy_(w2)
        cl[2].bias.mul_(d2)
        cl[4].weight.div_(d2[None, :])
    assert torch.isfinite(cl[2].weight).all()
    fit = infer_reparameterization(m.with_module(ref), m.with_module(cl), permutations=False)
    assert fit.found, fit.reason
    assert fit.kappa_T == math.inf
    params = dict(ref.named_parameters())
    A = _incidence(discover_symmetries(m.with_module(ref)), params)
    sv = np.linalg.svd(A, compute_uv=False)
    smin, smax = float(sv[-1]), float(sv[0])
    a = np.log(np.concatenate([d1.numpy(), d2.numpy()]))
    a_hat = np.concatenate([el.log().numpy() for _, el in fit.record.items])
    y = A @ a
    logs = max(abs(math.log(10.0 ** (-3 * e // 2))), abs(math.log(10.0 ** (e // 2))), float(np.abs(y).max()))
    delta = 4.01 * U + 3 * U * logs  # log|c| - log|r| : two logs and a subtraction
    m_eq, n = A.shape
    tol = (math.sqrt(m_eq) * delta / smin + gamma(m_eq) * smax * float(np.linalg.norm(y)) / smin**2
           + 10 * n * U * (smax / smin) ** 2 * float(np.linalg.norm(a)) + U * float(np.linalg.norm(a)))
    assert float(np.linalg.norm(a_hat - a)) <= tol, (float(np.linalg.norm(a_hat - a)), tol)


def test_log_ratio_outside_the_normal_range_is_a_difference_of_logs():
    """``fplr_solve._log_ratio``: log(num / den) from the quotient where it is a normal float64
    (one division, one log: within 2 u |y| + u of exact), else log num - log den: a quotient
    that overflows (1e200 / 1e-200), underflows to 0 (1e-100 / 1e300) or is subnormal
    (1e-160 / 1e160, ~1e-320, which has lost most of its digits) still gives the exact
    log-ratio within a few ulp of the logs."""
    from convrate.models.fplr_solve import _log_ratio

    num = np.array([1e200, 1e-100, 1e-160, 3.0, 1e-300])
    den = np.array([1e-200, 1e300, 1e160, 7.0, 1e-300])
    want = [400 * math.log(10), -400 * math.log(10), -320 * math.log(10), math.log(3 / 7), 0.0]
    got = _log_ratio(num, den)
    for g, w, a, b in zip(got, want, num, den):
        assert abs(g - w) <= 4 * U * (abs(math.log(a)) + abs(math.log(b))) + 2 * U * abs(w) + U, (a, b, g, w)


def test_relative_distance_scales_its_norms():
    """``fplr._relative_distance`` = ||a - b|| / ||b|| (||a - b|| when b = 0): by hand, 1 for
    a = 2b whatever the magnitude of b (1e-200: squares underflow; 1e200: they overflow unless
    the tensors are scaled first), 5 for a - b = (3, 4) at b = 0, inf for an infinite a against a
    finite b, and 0 for empty tensors (a zero-size parameter)."""
    from convrate.models.fplr import _relative_distance

    for x in (1e-200, 1.0, 1e200):
        b = torch.tensor([x, -x], dtype=torch.float64)
        assert _relative_distance(2 * b, b) == 1.0, x
    assert _relative_distance(torch.tensor([3.0, 4.0]), torch.zeros(2)) == 5.0
    assert _relative_distance(torch.tensor([math.inf, 1.0]), torch.tensor([1.0, 1.0])) == math.inf
    assert _relative_distance(torch.empty(0), torch.empty(0)) == 0.0
