"""Second-order and preconditioned attackers on real torch networks (statements SO-*).

Tiny float64 networks, seconds each. Every attacker reduces the loss and is deterministic
under a seed; Newton-CG, Gauss-Newton and K-FAC satisfy their exact statements on the real
loss under a hidden-unit scaling T = D (S2) or an S1 pair; the library Shampoo with the
exponent override, torch's L-BFGS and Sophia follow the exact rules of ``numerics`` / the
published rule. Tolerances are float64 round-off allowances argued per test.
"""
from __future__ import annotations

import copy
import math
from fractions import Fraction

import mpmath
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from flint import fmpq
from torch import nn

from convrate.errors import InvalidInputError
from convrate.models.attacks import OPTIMIZERS, REGISTRY, Attack, make_attack
from convrate.models.attacks.gauss_newton import KFAC
from convrate.models.attacks.preconditioned import SOPHIA_BETAS, SOPHIA_EPS, SOPHIA_GAMMA, SOPHIA_PERIOD
from convrate.models.attacks.registry import StepContext, flat, unflat
from convrate.models.attacks.second_order import truncated_cg
from convrate.models.tasks import tensor_task
from convrate.models.testing import mlp_arch, random_zoo
from convrate.numerics.optimizers_second_order import LBFGS, MatrixQuadratic, Muon, Shampoo, ball_iterates, exact_iterates
from convrate.numerics.quadratic import Quadratic, fmpq_to_fraction
from convrate.numerics.steps import steps_to
from convrate.theory.statements import REGISTRY as STATEMENTS

NEW = ("lbfgs", "lbfgs-wolfe", "newton-cg", "gauss-newton", "kfac", "shampoo", "soap", "sophia", "muon")
#: a knob value at which each attacker makes progress on the tiny tasks below
KNOB = {"lbfgs": 0.3, "lbfgs-wolfe": 1.0, "newton-cg": 0.1, "gauss-newton": 0.1, "kfac": 0.1, "shampoo": 0.05,
        "soap": 0.05, "sophia": 0.05, "muon": 0.05}


def mlp(seed: int, widths: tuple[int, ...] = (3, 5, 2)) -> nn.Sequential:
    """A float64 ReLU MLP (``models.testing.random_zoo``)."""
    return random_zoo(mlp_arch(list(widths)), seed).module


def classification(seed: int, n: int = 16, d: int = 3, classes: int = 2):
    g = torch.Generator().manual_seed(100 + seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).long()
    return tensor_task(X, y, loss="cross_entropy")


def regression(seed: int, n: int = 12, d: int = 3, out: int = 2):
    g = torch.Generator().manual_seed(200 + seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    Y = torch.randn(n, out, generator=g, dtype=torch.float64)
    return tensor_task(X, Y, loss="squared")


def scaled(net: nn.Sequential, D: torch.Tensor) -> tuple[nn.Sequential, torch.Tensor]:
    """The S2 element D on the hidden units of a 2-layer MLP and T's diagonal on the flat vector."""
    out = copy.deepcopy(net)
    with torch.no_grad():
        out[0].weight.mul_(D[:, None])
        out[0].bias.mul_(D)
        out[2].weight.div_(D[None, :])
    t = torch.cat([D[:, None].expand_as(net[0].weight).reshape(-1), D, (1 / D)[None, :].expand_as(net[2].weight).reshape(-1),
                   torch.ones_like(net[2].bias)])
    return out, t


# ---------------------------------------------------------------- every attacker
def test_registry_names_statements() -> None:
    """Every attacker is registered with a statement of the registry (N, A, SO-*, ...)."""
    assert set(NEW) <= set(OPTIMIZERS)
    for name, spec in REGISTRY.items():
        for sid in (s.strip() for s in spec.statement.split(",")):
            assert sid in STATEMENTS, f"{name} names unknown statement {sid}"


@pytest.mark.parametrize("optimizer", NEW)
def test_attacker_reduces_loss_and_is_deterministic(optimizer: str) -> None:
    """Loss after 15 steps below the start on a tiny float64 ReLU MLP; two runs with one seed are
    bit-identical (losses and counted costs); the counts obey the accounting (one gradient per
    step at least, curvature products only for the attackers that use them)."""
    net, task = mlp(1), classification(1)
    a = make_attack(optimizer, KNOB[optimizer], 15, seed=3, device="cpu")
    t1, t2 = a.run(net, task), a.run(net, task)
    assert not t1.diverged and t1.final_loss < t1.initial_loss, (optimizer, t1.losses)
    assert t1.losses == t2.losses and [c.to_dict() for c in t1.costs] == [c.to_dict() for c in t2.costs]
    last = t1.costs[-1]
    assert last.gradients >= t1.steps
    spec = REGISTRY[optimizer]
    assert (last.hvps > 0) == ("hvp" in spec.uses) and (last.gnvps > 0) == ("gnvp" in spec.uses)
    assert (last.backwards > 0) == ("backward" in spec.uses)
    if "hvp" in spec.uses:
        assert last.hvps <= a.inner_steps * t1.steps
    c = t1.cost_at(t1.steps)
    assert c["grad_equivalents"] >= c["gradients"] and c["wall_s"] >= 0


# ---------------------------------------------------------------- Newton-CG and Gauss-Newton: exact statements
def _contexts(net: nn.Module, task) -> StepContext:
    params = [p for p in net.parameters()]
    return StepContext(net, params, task)


@given(seed=st.integers(0, 30), k=st.integers(1, 6), lam=st.sampled_from([1e-3, 0.1, 1.0]),
       kind=st.sampled_from(["hessian", "gauss-newton"]))
@settings(max_examples=12)
def test_newton_cg_and_gn_on_defended_equal_preconditioned_undefended(seed: int, k: int, lam: float, kind: str) -> None:
    """SO-NEWTON-CG / SO-GN on the real loss: k CG steps on (M' + lambda I) p' = -g' at T theta
    (M = H or G), mapped back by T^-1, equal k steps of CG preconditioned by P = T^-1 T^-T on
    (M + lambda T^T T) p = -g (the attackers' own truncated_cg and curvature products). float64:
    relative 1e-8 allows CG's round-off growth over k <= 6 steps at kappa(T) <= 8."""
    net, task = mlp(seed), classification(seed)
    D = torch.tensor([1.0, 2.0, 0.5, 4.0, 0.25], dtype=torch.float64)[: net[0].out_features]
    dnet, t = scaled(net, D)
    cu, cd = _contexts(net, task), _contexts(dnet, task)
    prod_u = cu.hvp if kind == "hessian" else cu.gnvp
    prod_d = cd.hvp if kind == "hessian" else cd.gnvp
    g, gd = flat(cu.gradient()), flat(cd.gradient())
    assert torch.allclose(gd, g / t, rtol=1e-12, atol=1e-14)  # T1 at the start
    pd, used_d, neg_d = truncated_cg(lambda v: prod_d(v) + lam * v, -gd, k)
    pu, used_u, neg_u = truncated_cg(lambda v: prod_u(v) + lam * t**2 * v, -g, k, precondition=lambda r: r / t**2)
    assert (used_d, neg_d) == (used_u, neg_u)
    assert torch.allclose(pd / t, pu, rtol=1e-8, atol=1e-10 * float(pu.norm())), (pd / t - pu).abs().max()


def test_newton_cg_with_exact_inner_solve_is_invariant_where_hessian_positive_definite() -> None:
    """SO-NEWTON-CG with lambda -> 0 and CG converged is exact Newton (N) where H > 0: on the deep
    linear pair f(x) = b a x (S1, r = 1: (a, b) -> (s a, b / s)) started at a b = 1 below the
    least-squares product p* ~ 2 (H > 0 iff p* in (a b, 3 a b), checked by the dense Hessian) the
    attacker's first step gives the same loss for s = 1, 3, 1/5 (relative 1e-10). The first step
    overshoots into a region with an indefinite Hessian (checked), where CG stops at negative
    curvature in a T-dependent way, and the second losses differ: the statement's condition H > 0
    is needed, as the derivation says (CG on L' is PCG with P = T^-1 T^-T on L)."""
    from convrate.models.curvature import Objective, dense_hessian

    X = torch.tensor([[1.0], [2.0], [-1.0], [0.5]], dtype=torch.float64)
    Y = 2 * X + torch.tensor([[0.1], [-0.2], [0.05], [0.0]], dtype=torch.float64)
    task = tensor_task(X, Y, loss="squared")

    def pair(a: float, b: float) -> nn.Sequential:
        net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)).double()
        with torch.no_grad():
            net[0].weight.fill_(a)
            net[1].weight.fill_(b)
        return net

    def lam_min(net: nn.Module) -> float:
        obj = Objective(net, X, Y, loss="squared", params=["0.weight", "1.weight"])
        return float(torch.linalg.eigvalsh(dense_hessian(obj)).min())

    assert lam_min(pair(1.0, 1.0)) > 0.1
    a = Attack("newton-cg", 1.0, 2, damping=1e-14, inner_steps=10, seed=0, device="cpu", stop_at_target=False)
    runs = [a.run(pair(s, 1 / s), task).losses for s in (1.0, 3.0, 0.2)]
    for r in runs[1:]:
        assert abs(r[1] - runs[0][1]) <= 1e-10 * runs[0][1], runs
    one = Attack("newton-cg", 1.0, 1, damping=1e-14, inner_steps=10, seed=0, device="cpu", stop_at_target=False)
    first = pair(1.0, 1.0)
    c = StepContext(first, list(first.parameters()), task)
    c.set_step(0)
    stepper = REGISTRY["newton-cg"].build(list(first.parameters()), one, first)
    stepper.step(c)
    assert lam_min(first) < 0  # after the first step H is indefinite
    assert max(abs(r[2] - runs[0][2]) for r in runs[1:]) > 1e-6 * runs[0][2]


def test_gauss_newton_minimum_norm_step_is_invariant_only_in_function_space() -> None:
    """SO-GN (corrected) on the real loss: the undamped (tiny lambda) GN step on the defended
    net changes the outputs by the same J p to first order as on the undefended one, while the
    parameter steps mapped back differ (G is singular: the S2 orbit tangents lie in null(J))."""
    net, task = mlp(2, (3, 4, 2)), regression(2, n=3, d=3, out=2)  # 6 outputs < 26 parameters
    D = torch.tensor([4.0, 0.5, 2.0, 0.25], dtype=torch.float64)
    dnet, t = scaled(net, D)
    steps = []
    for m in (net, dnet):
        c = _contexts(m, task)
        g = flat(c.gradient())
        p, _, _ = truncated_cg(lambda v: c.gnvp(v) + 1e-9 * v, -g, 200)
        steps.append(p)
    pu, pd = steps[0], steps[1] / t
    theta = flat([p.detach() for p in net.parameters()])

    def f(th: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(net, dict(zip([n for n, _ in net.named_parameters()], unflat(th, list(net.parameters())))),
                                          (task.X_train,))

    _, Ju = torch.func.jvp(f, (theta,), (pu,))
    _, Jd = torch.func.jvp(f, (theta,), (pd,))
    assert torch.allclose(Ju, Jd, rtol=1e-5, atol=1e-7 * float(Ju.abs().max()))
    assert float((pu - pd).norm()) > 1e-2 * float(pu.norm())


# ---------------------------------------------------------------- K-FAC
def test_kfac_refuses_a_trained_layer_that_never_runs() -> None:
    """A trained Linear layer outside the forward pass has no factors: a clear error, not a
    KeyError (R1's phi layers are the case that does get factors, through ``through_phi``)."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(3, 2).double(), nn.Linear(3, 2).double()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    g = torch.Generator().manual_seed(0)
    task = tensor_task(torch.randn(8, 3, generator=g, dtype=torch.float64),
                       torch.randn(8, 2, generator=g, dtype=torch.float64))
    with pytest.raises(InvalidInputError, match="1 trained layer.*do not run"):
        Attack("kfac", 1.0, 2, device="cpu").run(Net(), task)


def test_kfac_exact_factors_invariant_under_s2() -> None:
    """SO-KFAC on the real loss: one K-FAC step with exact factors and damping 1e-30 (gamma = 1e-15)
    on the D-scaled net is T times the step on the original, for 3 seeds (squared loss, N = 40
    examples, so every factor is invertible; the output factor is I). Allowance (relative):
    1e3 u kappa_max kappa(D)^2 for the round-off of the solves (kappa_max the largest condition
    number of the factors, measured) plus 4 gamma kappa(D)^2 / lambda_min for what the damping
    itself changes (lambda_min the smallest factor eigenvalue). With damping 1 the steps differ
    (LM-like damping gamma A^T A)."""
    from convrate.models.attacks.gauss_newton import kfac_factors

    D = torch.tensor([1.0, 3.0, 0.5, 2.0, 0.25], dtype=torch.float64)
    for seed in (4, 5, 6):
        net, task = mlp(seed, (3, 5, 2)), regression(seed, n=40)
        dnet, t = scaled(net, D)
        steps, kmax, lmin = [], 1.0, math.inf
        for m in (net, dnet):
            ctx = StepContext(m, list(m.parameters()), task)
            _, factors = kfac_factors(ctx, [m[0], m[2]])
            kmax = max([kmax] + [float(torch.linalg.cond(F)) for pair in factors.values() for F in pair])
            lmin = min([lmin] + [float(torch.linalg.eigvalsh(F).min()) for pair in factors.values() for F in pair])
            before = flat([p.detach() for p in m.parameters()]).clone()
            KFAC(m, list(m.parameters()), 1.0, 1e-30).step(StepContext(m, list(m.parameters()), task))
            steps.append(flat([p.detach() for p in m.parameters()]) - before)
        kd2 = float(D.max() / D.min()) ** 2
        tol = 1e3 * 2.0**-52 * kmax * kd2 + 4 * 1e-15 * kd2 / lmin
        rel = float((steps[1] / t - steps[0]).norm() / steps[0].norm())
        assert rel <= tol, (seed, rel, tol)
    a = Attack("kfac", 0.3, 2, damping=1.0, seed=0, device="cpu", stop_at_target=False)
    assert abs(a.run(net, task).final_loss - a.run(dnet, task).final_loss) > 1e-6


# ---------------------------------------------------------------- library and published rules vs exact versions
def _matrix_task() -> tuple[nn.Module, object, MatrixQuadratic, torch.Tensor]:
    """Linear map W (2x2, no bias), squared loss with realizable targets Y = X W*^T: L(W) =
    1/2 tr((W - W*) S (W - W*)^T), S = X^T X / N exact in float64 (small integers, N = 4)."""
    X = torch.tensor([[1.0, 2.0], [0.0, 1.0], [2.0, -1.0], [1.0, 1.0]], dtype=torch.float64)
    Ws = torch.tensor([[1.0, -1.0], [2.0, 0.5]], dtype=torch.float64)
    W0 = torch.tensor([[0.0, 1.0], [-1.0, 2.0]], dtype=torch.float64)
    lin = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(W0)
    S = X.T @ X / 4
    prob = MatrixQuadratic([[Fraction(float(v)) for v in r] for r in S.tolist()],
                           [[Fraction(float(v)) for v in r] for r in (W0 - Ws).T.tolist()])
    return lin, tensor_task(X, X @ Ws.T, loss="squared"), prob, Ws


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_library_shampoo_with_exponent_follows_exact_rule(p: float) -> None:
    """SO-SHAMPOO's rule W <- W - lr L^-p G R^-p (L = eps I + sum G G^T, eps = 1e-6 as the library
    initializes it) in arb balls equals pytorch-optimizer's Shampoo with the exponent override
    within 1e-9 relative over 5 steps (float64 SVD roots); the other exponent differs by far
    more, so a wrong exponent fails."""
    lin, task, prob, Ws = _matrix_task()
    lr = 0.1
    traj = Attack("shampoo", lr, 5, seed=0, device="cpu", exponent=p, stop_at_target=False).run(lin, task)
    for q, expect_equal in ((p, True), (0.75 - p, False)):
        balls = ball_iterates(prob, Shampoo(Fraction(lr), Fraction(q), Fraction(1, 10**6)), 5)
        exact = [float(prob.loss(E).mid()) for E in balls]
        gap = max(abs(a - b) / b for a, b in zip(traj.losses, exact))
        assert (gap < 1e-9) == expect_equal, (q, gap, traj.losses, exact)


def test_torch_lbfgs_follows_exact_rule() -> None:
    """SO-LBFGS: torch.optim.LBFGS (fixed step, memory 3, one iteration per step) on a quadratic
    1/2 (w - w*)^T S (w - w*) follows numerics' exact L-BFGS (ball arithmetic, torch's first-step
    scaling and y^T s > 1e-10 rule) within 1e-10 relative over 12 steps."""
    X = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 1.0], [1.0, 1.0, 0.0], [2.0, 0.0, 1.0]], dtype=torch.float64)
    ws = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    lin = nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        lin.weight.zero_()
    task = tensor_task(X, X @ ws.T, loss="squared")
    S = X.T @ X / 4
    prob = Quadratic([[Fraction(float(v)) for v in r] for r in S.tolist()], [Fraction(float(-v)) for v in ws[0]])
    traj = Attack("lbfgs", 0.2, 12, seed=0, device="cpu", lbfgs_memory=3, stop_at_target=False).run(lin, task)
    exact = [float(prob.loss(e).mid()) for e in exact_iterates(prob, LBFGS(3, step=Fraction(1, 5)), 12)]
    assert max(abs(a - b) / b for a, b in zip(traj.losses, exact)) < 1e-10, (traj.losses, exact)


@pytest.mark.parametrize("gamma", [SOPHIA_GAMMA, 1.0])
def test_sophia_follows_published_rule(gamma: float) -> None:
    """The Sophia stepper equals a direct transcription of Liu et al. (2023), Algorithm 3 (GNB
    estimator h = b2 h + (1 - b2) B g^ (.) g^, theta -= lr clip(m / max(gamma h, eps), 1)) driven
    by the same seeded label samples, to round-off, over 23 steps (three Hessian refreshes);
    with gamma = 1 some coordinates are unclipped (counted), so the curvature estimate matters."""
    from convrate.models.attacks.preconditioned import Sophia

    net, task = mlp(5), classification(5, n=64)
    lr = 0.05
    run = copy.deepcopy(net)
    ctx = StepContext(run, list(run.parameters()), task)
    stepper = Sophia(list(run.parameters()), lr, gamma=gamma)
    ref = copy.deepcopy(net)
    params = list(ref.parameters())
    m = [torch.zeros_like(p) for p in params]
    h = [torch.zeros_like(p) for p in params]
    b1, b2 = SOPHIA_BETAS
    unclipped, got, want = 0, [], []
    for t in range(23):
        with torch.random.fork_rng():
            torch.manual_seed(t)
            ctx.set_step(t)
            got.append(ctx.record())
            stepper.step(ctx)
        with torch.random.fork_rng():
            torch.manual_seed(t)
            loss = task.loss_fn(ref(task.X_train), task.y_train)
            want.append(float(loss.detach()))
            g = torch.autograd.grad(loss, params)
            if t % SOPHIA_PERIOD == 0:
                z = ref(task.X_train)
                y_hat = torch.multinomial(torch.softmax(z.detach(), -1), 1)[:, 0]
                gh = torch.autograd.grad(task.loss_fn(z, y_hat), params)
                h = [b2 * hh + (1 - b2) * task.n_train * gg * gg for hh, gg in zip(h, gh)]
        with torch.no_grad():
            for i, p in enumerate(params):
                m[i] = b1 * m[i] + (1 - b1) * g[i]
                ratio = m[i] / torch.clamp(gamma * h[i], min=SOPHIA_EPS)
                unclipped += int((ratio.abs() < 1).sum())
                p -= lr * torch.clamp(ratio, -1, 1)
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-12, (got, want)
    assert got[-1] < got[0]
    if gamma == 1.0:
        assert unclipped > 0


def test_muon_orthogonally_equivariant_on_real_net() -> None:
    """SO-MUON: torch's Muon on a bias-free linear pair under an orthogonal S1 element Q gives the
    same losses up to its bfloat16 Newton-Schulz (torch runs the orthogonalization in bfloat16,
    unit round-off 2^-8, whatever the parameter dtype: a relative change below 2e-3 per loss
    over 6 steps), and under a non-orthogonal A (kappa = 6) a change ten times larger."""
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False)).double()
    with torch.no_grad():
        for lin in net:
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g, dtype=torch.float64))
    task = regression(6, n=10, d=3, out=2)
    Q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    A = torch.diag(torch.tensor([3.0, 1.0, 0.5, 2.0], dtype=torch.float64)) @ Q

    def moved(M: torch.Tensor) -> nn.Sequential:
        out = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False)).double()
        with torch.no_grad():
            out[0].weight.copy_(M @ net[0].weight)
            out[1].weight.copy_(net[1].weight @ torch.linalg.inv(M))
        return out

    a = Attack("muon", 0.05, 6, seed=0, device="cpu", stop_at_target=False)
    base = a.run(net, task).losses
    rot = max(abs(x - y) / abs(x) for x, y in zip(base, a.run(moved(Q), task).losses))
    skew = max(abs(x - y) / abs(x) for x, y in zip(base, a.run(moved(A), task).losses))
    assert rot < 2e-3 and skew > 10 * rot, (rot, skew)


# ---------------------------------------------------------------- certified counts vs independent iterations
def _mp(x) -> mpmath.mpf:
    f = fmpq_to_fraction(x) if isinstance(x, fmpq) else Fraction(x)
    return mpmath.mpf(f.numerator) / f.denominator


def _mp_count(prob: MatrixQuadratic, update, tol: Fraction, horizon: int) -> tuple[int | None, mpmath.mpf]:
    """First t <= horizon with q_t <= tol q_0 along an independent mpmath iteration at 200 digits
    (eigsy / svd_r, not the closed forms of ``numerics``), and min_s |q_s - tol q_0| / q_0 over
    s <= t: a gap above 1e-100 makes each comparison immune to the iteration's ~1e-190 error."""
    with mpmath.workdps(200):
        M = mpmath.matrix([[_mp(prob.M[i, j]) for j in range(prob.M.ncols())] for i in range(prob.M.nrows())])
        E = mpmath.matrix([[_mp(prob.E0[i, j]) for j in range(prob.E0.ncols())] for i in range(prob.E0.nrows())])
        q = lambda E: sum((E.T * M * E)[i, i] for i in range(E.cols)) / 2  # noqa: E731
        q0, state, gap = q(E), {}, mpmath.inf
        target = _mp(tol) * q0
        for t in range(horizon + 1):
            gap = min(gap, abs(q(E) - target) / q0)
            if q(E) <= target:
                return t, gap
            E = update(M, E, state)
    return None, gap


def _mp_power(A: mpmath.matrix, p) -> mpmath.matrix:
    """A^-p of a symmetric positive definite A by its eigendecomposition."""
    ev, Q = mpmath.eigsy(A)
    return Q * mpmath.diag([x ** -p for x in ev]) * Q.T


def _mp_shampoo(lr, p, eps, swapped: bool = False):
    """W -= lr L^-p G R^-p (L = eps I + sum G G^T, R = eps I + sum G^T G); swapped: R^-p G L^-p."""
    def step(M, E, st):
        G = M * E
        st["L"] = st.get("L", _mp(eps) * mpmath.eye(E.rows)) + G * G.T
        st["R"] = st.get("R", _mp(eps) * mpmath.eye(E.cols)) + G.T * G
        left, right = (st["R"], st["L"]) if swapped else (st["L"], st["R"])
        return E - _mp(lr) * _mp_power(left, _mp(p)) * G * _mp_power(right, _mp(p))
    return step


def _mp_muon(lr, beta, transposed: bool = False):
    """m = beta m + G, W -= lr U V^T (m = U S V^T); transposed: W -= lr (U V^T)^T."""
    def step(M, E, st):
        st["m"] = _mp(beta) * st.get("m", 0 * E) + M * E
        U, _, V = mpmath.svd_r(st["m"])
        O = U * V
        return E - _mp(lr) * (O.T if transposed else O)
    return step


def _float_count(losses: list[float], tol: float) -> int | None:
    return next((t for t, q in enumerate(losses) if q <= tol * losses[0]), None)


def _check_counts(prob: MatrixQuadratic, opt, reference, mutants: dict, tol: Fraction, float_losses: list[float]) -> None:
    """certified count == the independent 200-digit count; every mutant reference (wrong exponent,
    side, transpose) gives another count on this instance; the float64 library count agrees where
    its losses are within 1e-9 relative of the certified balls and every q_t (t <= count) is more
    than 1e-6 q_0 from the target, so float rounding cannot move a crossing."""
    N = steps_to(prob, opt, tol, 500)
    ref, gap = _mp_count(prob, reference, tol, 500)
    assert ref == N and gap > mpmath.mpf(10) ** -100, (N, ref, gap)
    for name, mutant in mutants.items():
        assert _mp_count(prob, mutant, tol, N + 20)[0] != N, name
    balls = ball_iterates(prob, opt, N)
    exact = [float(prob.loss(E).mid()) for E in balls]
    assert len(float_losses) > N
    assert max(abs(a - b) / b for a, b in zip(float_losses, exact)) < 1e-9, (float_losses[:N + 1], exact)
    assert min(abs(q - float(tol) * exact[0]) for q in exact) > 1e-6 * exact[0]
    assert _float_count(float_losses, float(tol)) == N


@pytest.mark.parametrize("p, lr", [(Fraction(1, 4), Fraction(1, 10)), (Fraction(1, 2), Fraction(2))])
def test_shampoo_certified_count_equals_independent_and_library_counts(p: Fraction, lr: Fraction) -> None:
    """SO-SHAMPOO count (steps_to's arb-ball scan) on the non-symmetric matrix task, tol 1/2: equals
    a 200-digit mpmath iteration built on eigendecompositions, and pytorch-optimizer's Shampoo
    with the exponent override in float64; with the other exponent, or L and R swapped (the
    preconditioner on the wrong sides), the reference count differs, so a wrong exponent or side
    in the certified iteration fails this test."""
    lin, task, prob, _ = _matrix_task()
    eps, tol = Fraction(1, 10**6), Fraction(1, 2)
    N = steps_to(prob, Shampoo(lr, p, eps), tol, 500)
    traj = Attack("shampoo", float(lr), N + 2, seed=0, device="cpu", exponent=float(p), stop_at_target=False).run(lin, task)
    _check_counts(prob, Shampoo(lr, p, eps), _mp_shampoo(lr, p, eps), {
        "other exponent": _mp_shampoo(lr, Fraction(3, 4) - p, eps), "sides swapped": _mp_shampoo(lr, p, eps, True)},
        tol, traj.losses)


@pytest.mark.parametrize("beta", [Fraction(0), Fraction(9, 10)])
def test_muon_certified_count_equals_independent_and_torch_counts(beta: Fraction, monkeypatch) -> None:
    """SO-MUON count on the non-symmetric matrix task (lr 1/20, tol 1/10): equals a 200-digit
    mpmath iteration with the polar factor from svd_r, and torch.optim.Muon in float64 with its
    Newton-Schulz orthogonalization replaced by the float64 SVD polar factor U V^T (unpatched,
    torch runs five quintic Newton-Schulz steps in bfloat16, whose output singular values spread
    over about [0.35, 1.21] for 2x2 inputs with kappa <= 1e3 rather than sitting at 1: another
    iteration, so its count is not comparable).
    torch's EMA momentum (1 - beta) sum beta^s G has the polar factor of sum beta^s G (the polar
    factor ignores positive scale). A transposed update (U V^T)^T gives another reference count."""
    import torch.optim._muon as tmuon

    def polar64(grad, *args):
        U, _, Vh = torch.linalg.svd(grad.double(), full_matrices=False)
        return U @ Vh

    monkeypatch.setattr(tmuon, "_zeropower_via_newtonschulz", polar64)
    _, _, prob, _ = _matrix_task()
    lr, tol = Fraction(1, 20), Fraction(1, 10)
    N = steps_to(prob, Muon(lr, beta), tol, 500)
    M = torch.tensor([[float(_mp(prob.M[i, j])) for j in range(2)] for i in range(2)], dtype=torch.float64)
    W = nn.Parameter(torch.tensor([[float(_mp(prob.E0[i, j])) for j in range(2)] for i in range(2)], dtype=torch.float64))
    opt = torch.optim.Muon([W], lr=float(lr), weight_decay=0.0, momentum=float(beta), nesterov=False)
    losses = []
    for _ in range(N + 2):
        opt.zero_grad()
        loss = 0.5 * torch.trace(W.T @ M @ W)
        losses.append(float(loss.detach()))
        loss.backward()
        opt.step()
    _check_counts(prob, Muon(lr, beta), _mp_muon(lr, beta), {"transposed update": _mp_muon(lr, beta, True)}, tol, losses)


def test_second_order_counts_refuse_mismatched_problems() -> None:
    """steps_to counts Shampoo and Muon on a MatrixQuadratic only, and nothing else there: an
    InvalidInputError naming both sides, not a count."""
    from convrate.errors import InvalidInputError
    from convrate.numerics.optimizers import GD

    _, _, prob, _ = _matrix_task()
    vec = Quadratic([[2, 0], [0, 3]], [1, 1])
    for p, o in ((vec, Shampoo(Fraction(1, 10))), (vec, Muon(Fraction(1, 10))), (prob, GD(Fraction(1, 10))),
                 (prob, LBFGS(2, step=Fraction(1, 2)))):
        with pytest.raises(InvalidInputError, match="MatrixQuadratic"):
            steps_to(p, o, Fraction(1, 2))


# ---------------------------------------------------------------- CLI
def test_cli_attack_second_order_cost_and_bad_input(tmp_path) -> None:
    """``convrate attack --optimizer kfac`` reports the knob (damping) and the cost to the target;
    Newton-CG's cost counts HVPs with their measured ratio; a bad --exponent / --inner-steps is one
    line on stderr, exit 2."""
    import json

    from typer.testing import CliRunner

    from convrate.cli import app
    from convrate.models.io import save_model

    src = save_model(random_zoo(mlp_arch([64, 8, 10]), 3), tmp_path / "model")
    runner = CliRunner()
    r = runner.invoke(app, ["attack", str(src), "--optimizer", "kfac", "--lr", "0.1", "--budget", "3", "--target", "0.1",
                            "--json"])
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["knob"] == "damping" and d["cost"] is None and set(d["cost_ratios"]) == {"backward"}
    r = runner.invoke(app, ["attack", str(src), "--optimizer", "newton-cg", "--lr", "1.0", "--budget", "8",
                            "--inner-steps", "3", "--json"])
    d = json.loads(r.stdout)
    if d["reached"]:
        c = d["cost"]
        assert c["steps"] == d["steps"] and c["gradients"] == d["steps"] and 0 < c["hvps"] <= 3 * d["steps"]
        assert c["grad_equivalents"] == pytest.approx(c["gradients"] + d["cost_ratios"]["hvp"] * c["hvps"])
    for bad in (["--optimizer", "shampoo", "--exponent", "0"], ["--optimizer", "newton-cg", "--inner-steps", "0"]):
        r = runner.invoke(app, ["attack", str(src), "--lr", "0.1", *bad])
        assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1, (bad, r.stderr)


# ---------------------------------------------------------------- report section
def test_second_order_report_section_at_tiny_size() -> None:
    """The report's second-order section on the digits MLP at a tiny size: every run has its cost
    to the target and its prediction, the table lists the first-order rows too when that sweep ran,
    both figures are PNGs, and the real-loss checks of SO-NEWTON-CG and SO-GN hold."""
    import dataclasses

    from convrate.models.experiments import SearchProfile
    from convrate.reports.builder import Context
    from convrate.reports.profiles import QUICK, NetSweep
    from convrate.reports.sections_slowdown import SweepRecord, second_order_section

    tiny = dataclasses.replace(QUICK, cnn_so=None, minilm_so=None, mlp_so=NetSweep(
        (10,), ("kfac", "muon"), ("diagonal",), 1.0, SearchProfile(15, (0.01, 0.1), refine=0, grids=(("kfac", (1.0,)),))))
    ctx = Context(True, 0, tiny)
    ctx.shared["sweeps"] = {"digits MLP": SweepRecord("digits MLP", None, tiny, 0, [])}
    s = second_order_section(ctx)
    runs = s.data["networks"]["digits MLP"]["runs"]
    assert {(d["optimizer"], d["defense"]) for d in runs} == {(o, d) for o in ("kfac", "muon") for d in ("none", "diagonal")}
    for d in runs:
        assert d["knob"] == ("damping" if d["optimizer"] == "kfac" else "lr")
        assert d["reached"] == (d["cost"] is not None)
        if d["reached"]:
            assert d["cost"]["steps"] == d["steps"] and d["grad_equivalents"] >= d["steps"]
    assert all(c["holds"] for c in s.data["real_network_checks"])
    figs = [b for kind, b in s.blocks if kind == "figure"]
    assert [f.name for f in figs] == ["so_slowdown_digits_mlp.png", "so_curves_digits_mlp.png"]
    assert all(f.png.startswith(b"\x89PNG") for f in figs)


def test_every_attacker_runs_on_a_tiny_decoder_lm() -> None:
    """Every second-order / preconditioned attacker trains a tiny Llama on next-token prediction
    (logits of the kept rows, flattened token targets): 3 steps lower the loss."""
    from convrate.cli_models import _attack_network
    from convrate.models.tasks import task_for
    from convrate.models.testing import tiny_decoder

    m = tiny_decoder("llama", 0, vocab=16, layers=1)
    task = task_for(m, "lm-tokens", 0)
    net, _ = _attack_network(m, "none", None, task, 0)
    knob = {**KNOB, "newton-cg": 1.0, "gauss-newton": 1.0, "kfac": 1.0, "shampoo": 0.01, "soap": 0.01, "sophia": 0.01,
            "muon": 0.01, "lbfgs": 0.1}
    for o in NEW:
        t = make_attack(o, knob[o], 3, seed=0, device="cpu", stop_at_target=False).run(net, task)
        assert t.final_loss < t.initial_loss, (o, t.losses)
