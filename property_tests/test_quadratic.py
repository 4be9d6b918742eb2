"""Tests of the quadratic model, its optimizers and exact step counting that are not "a battery
result holds": error handling, closed form == brute-force iteration on irrational spectra,
CG == polynomial minimum, the kappa = 1e10 worst case against the bound, adaptive / cubic
iterations against independent implementations."""
from __future__ import annotations

import math
from fractions import Fraction as F

import mpmath
import numpy as np
import pytest
from flint import arb, arb_mat, fmpq, fmpq_mat
from hypothesis import assume, example, given
from hypothesis import strategies as st

from convrate.errors import (DivergenceError, InvalidInputError, NoConvergenceError, NotPositiveDefiniteError,
                             NotSymmetricError, SingularReparameterizationError, ToleranceError)
from convrate.numerics.krylov import cg_losses, cg_polynomial_minimum
from convrate.numerics.optimizers import (CG, GD, LM, Adam, CubicNewton, GDSchedule, HeavyBall, Nesterov, Newton,
                                          PreconditionedGD, RMSprop, run_ball, run_exact)
from convrate.numerics.quadratic import Quadratic, arb_prec
from convrate.numerics.steps import (best_fixed_step, brute_force_steps, closed_form_loss, iterate, measure_for,
                                     steps_to, trajectory)
from convrate.theory import bounds, bounds_optim


# ---------------------------------------------------------------- bad input
def test_non_symmetric_H() -> None:
    with pytest.raises(NotSymmetricError, match=r"H\[0,1\] = 2 != H\[1,0\] = 3"):
        Quadratic([[1, 2], [3, 4]], [1, 1])


def test_non_square_H() -> None:
    with pytest.raises(NotSymmetricError, match="square"):
        Quadratic([[1, 2, 3], [2, 1, 0]], [1, 1])


def test_indefinite_H_names_eigenvalue() -> None:
    with pytest.raises(NotPositiveDefiniteError, match=r"smallest eigenvalue is -1\b") as exc:
        Quadratic([[1, 2], [2, 1]], [1, 1])  # eigenvalues -1, 3
    assert "\n" not in str(exc.value)


def test_singular_psd_H_is_not_pd() -> None:
    with pytest.raises(NotPositiveDefiniteError):
        Quadratic([[1, 1], [1, 1]], [1, 0])


def test_nearly_singular_pd_H_is_accepted() -> None:
    tiny = F(1, 10**40)
    p = Quadratic([[1, 1], [1, 1 + tiny]], [1, 0])  # det = 1e-40 > 0: positive definite, exactly
    assert p.q0 == fmpq(1, 2)


def test_from_spectrum_negative_eigenvalue() -> None:
    with pytest.raises(NotPositiveDefiniteError, match=r"lambdas\[1\] = -2"):
        Quadratic.from_spectrum([1, -2, 3], [1, 1, 1])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_entries(bad: float) -> None:
    with pytest.raises(InvalidInputError, match=r"H\[0,1\]"):
        Quadratic([[1, bad], [bad, 1]], [1, 1])
    with pytest.raises(InvalidInputError, match=r"e0\[1\]"):
        Quadratic([[1, 0], [0, 1]], [1, bad])


def test_e0_length_mismatch() -> None:
    with pytest.raises(InvalidInputError, match="length 3"):
        Quadratic([[2, 0], [0, 1]], [1, 2, 3])


def test_singular_reparameterization_exact() -> None:
    p = Quadratic([[2, 1], [1, 2]], [1, 0])
    with pytest.raises(SingularReparameterizationError, match="rank 1 < 2"):
        p.reparameterize([[1, 2], [2, 4]])
    # nearly singular but invertible: accepted, and exact
    T = [[1, 1], [1, 1 + F(1, 10**30)]]
    q = p.reparameterize(T)
    assert q.q0 == p.q0  # the loss is invariant under reparameterization


@pytest.mark.parametrize("tol", [0, 1, -1, 2, float("nan"), float("inf"), F(0), "abc"])
def test_tolerance_outside_unit_interval(tol: object) -> None:
    p = Quadratic.from_spectrum([1, 2], [1, 1])
    with pytest.raises(ToleranceError):
        steps_to(p, GD(F(1, 2)), tol)


@pytest.mark.parametrize("make", [lambda: GD(0), lambda: GD(-1), lambda: GD(float("nan")),
                                  lambda: HeavyBall(1, 1), lambda: Nesterov(1, F(-1, 2)), lambda: LM(0),
                                  lambda: GDSchedule(()), lambda: GDSchedule((1, 0)), lambda: CubicNewton(0),
                                  lambda: Adam(1, beta2=0), lambda: Adam([1, -1])])
def test_bad_optimizer_parameters(make) -> None:
    with pytest.raises(InvalidInputError):
        make()


def test_bad_preconditioner() -> None:
    p = Quadratic.from_spectrum([1, 2], [1, 1])
    with pytest.raises(NotPositiveDefiniteError):
        steps_to(p, PreconditionedGD(F(1, 2), [[1, 0], [0, -1]]), F(1, 10))
    with pytest.raises(InvalidInputError, match="2x2"):
        steps_to(p, PreconditionedGD(F(1, 2), [[1]]), F(1, 10))


# ---------------------------------------------------------------- divergence and stalls
def test_divergence_names_eigenvalue_and_factor() -> None:
    p = Quadratic.from_spectrum([1, 3, 10], [1, 1, 1])
    with pytest.raises(DivergenceError) as exc:
        steps_to(p, GD(F(1, 4)), F(1, 100))  # 1 - 10/4 = -3/2
    assert exc.value.eigenvalue == 10 and exc.value.factor == F(-3, 2)
    assert "eigenvalue 10" in str(exc.value)


def test_divergence_irrational_eigenvalue() -> None:
    p = Quadratic([[2, 1], [1, 3]], [1, 1])  # eigenvalues (5 +- sqrt 5) / 2
    with pytest.raises(DivergenceError) as exc:
        steps_to(p, GD(1), F(1, 100))  # 1 - 1 * 3.618... < -1
    with mpmath.workdps(40):
        top = (5 + mpmath.sqrt(5)) / 2
        assert abs(exc.value.eigenvalue - top) < mpmath.mpf(10) ** -30
        assert abs(exc.value.factor - (1 - top)) < mpmath.mpf(10) ** -30


def test_inactive_component_cannot_diverge() -> None:
    p = Quadratic.from_spectrum([1, 3, 10], [1, 1, 0])  # no weight on 10
    N = steps_to(p, GD(F(1, 4)), F(1, 100))
    assert N == brute_force_steps(p, GD(F(1, 4)), F(1, 100), 200)


def test_stalled_component_heavy() -> None:
    p = Quadratic.from_spectrum([1, 4], [1, 1])  # eta = 1/2: 1 - 4/2 = -1 on lambda = 4
    with pytest.raises(NoConvergenceError, match="never decays"):
        steps_to(p, GD(F(1, 2)), F(1, 10))


def test_stalled_component_light_still_converges() -> None:
    # the neutral component carries 1/2 * 4 * (1/100)^2 of loss, below tol * q0
    p = Quadratic.from_spectrum([1, 4], [1, F(1, 100)])
    tol = F(1, 100)
    N = steps_to(p, GD(F(1, 2)), tol)
    assert N == brute_force_steps(p, GD(F(1, 2)), tol, 100)


def test_stalled_irrational_explicit() -> None:
    # H = [[2, 1], [1, 2]] has eigenvalues 1, 3; eta = 2/3 makes lambda = 3 neutral, found exactly
    p = Quadratic([[2, 1], [1, 2]], [1, 0])
    with pytest.raises(NoConvergenceError):
        steps_to(p, GD(F(2, 3)), F(1, 10))


def test_heavy_ball_divergence() -> None:
    p = Quadratic.from_spectrum([1, 10], [1, 1])
    with pytest.raises(DivergenceError):
        steps_to(p, HeavyBall(F(1, 2), F(1, 2)), F(1, 100))  # eta lambda = 5 > 2 (1 + beta) = 3


def test_exact_tie_is_decided_exactly() -> None:
    """q_t / q_0 = (1/3)^(2t) equals tol = 3^-10 exactly at t = 5: no ball can decide the
    comparison, the exact rational fallback does (and an inactive mode changes nothing)."""
    tol = F(1, 3**10)
    assert steps_to(Quadratic.from_spectrum([F(2, 3)], [1]), GD(1), tol) == 5
    assert steps_to(Quadratic.from_spectrum([F(2, 3), 5], [1, 0]), GD(1), tol) == 5
    assert brute_force_steps(Quadratic.from_spectrum([F(2, 3)], [1]), GD(1), tol, 10) == 5
    # the scanned methods: q_t / q_0 = (1/3)^(2t) hits 3^-6 exactly at t = 3
    one = Quadratic.from_spectrum([1], [1])
    assert steps_to(one, GDSchedule((F(2, 3),) * 10), F(1, 3**6)) == 3
    assert steps_to(one, HeavyBall(F(2, 3), 0), F(1, 3**6)) == 3


@pytest.mark.parametrize("opt", [GD(F(1, 4)), LM(F(1, 2)), LM(F(1, 3), D=[[1, 0], [0, 2]]),
                                 PreconditionedGD(F(1, 5), [[1, 0], [0, 3]])])
@pytest.mark.parametrize("t", [1, 3])
def test_exact_tie_on_an_irrational_spectrum(opt, t) -> None:
    """H = [[2, 1], [1, 1]] has eigenvalues (3 +- sqrt 5)/2: the spectral measure holds balls, yet
    q_t is rational, so tol = q_t / q_0 is an exact tie no ball decides; the count must be t,
    decided by the exact rational iterate (it raised PrecisionError before)."""
    p = Quadratic(fmpq_mat([[2, 1], [1, 1]]), fmpq_mat([[1], [0]]))
    assert not measure_for(p, opt).is_exact
    qs = [p.loss(e) for e in run_exact(p, opt, t)]
    tol = F(int((qs[t] / qs[0]).p), int((qs[t] / qs[0]).q))
    assert steps_to(p, opt, tol) == t == brute_force_steps(p, opt, tol, t + 1)
    # one ulp-sized step either side of the tie moves the count by one or not at all, as exact iteration says
    below = tol * (1 - F(1, 2**200))
    assert steps_to(p, opt, below) == t + 1 == brute_force_steps(p, opt, below, t + 2)


def test_lm_tie_counterexample_from_the_battery() -> None:
    """The recorded counterexample (SO battery instance seed 0, n 2, kappa(H) = kappa(T) = 3,
    reparameterized by its T; LM damping 1/32; tol = q_1 / q_0 exactly): the count is 1."""
    from convrate.numerics.checks_second_order import _instance

    p, T, *_ = _instance({"seed": 0, "n": 2, "a": 3, "aT": 3, "tm": 1, "tk": 1})
    q = p.reparameterize(T)
    tol = F(18993329, 53358155217)
    assert steps_to(q, LM(F(1, 32)), tol) == 1 == brute_force_steps(q, LM(F(1, 32)), tol, 5)


def test_max_steps_exceeded() -> None:
    p = Quadratic.from_spectrum([1, 100], [1, 1])
    with pytest.raises(NoConvergenceError, match="max_steps"):
        steps_to(p, GD(F(1, 100)), F(1, 10**6), max_steps=10)


def test_zero_start_needs_no_step() -> None:
    p = Quadratic.from_spectrum([1, 2], [0, 0])
    for opt in (GD(1), CG(), Newton(), LM(1), HeavyBall(F(1, 2), F(1, 2)), Adam(F(1, 10))):
        assert steps_to(p, opt, F(1, 2)) == 0


# ---------------------------------------------------------------- exactness cross-checks
def _random_spd(seed: int, n: int) -> tuple[fmpq_mat, list[int]]:
    rng = np.random.default_rng(seed)
    A = fmpq_mat([[int(x) for x in row] for row in rng.integers(-3, 4, (n, n))])
    H = A.transpose() * A
    for i in range(n):
        H[i, i] += 1
    e0 = [int(x) or 1 for x in rng.integers(-3, 4, n)]
    return H, e0


@given(st.integers(0, 10**6), st.integers(2, 6), st.integers(1, 4))
def test_closed_form_equals_iteration_irrational_spectrum(seed: int, n: int, tk: int) -> None:
    """Dense integer H (irrational eigenvalues: certified balls from exact Lanczos): the certified
    counts of GD, preconditioned GD, LM, heavy ball and Nesterov equal exact rational iteration."""
    H, e0 = _random_spd(seed, n)
    p = Quadratic(H, e0)
    tr = sum(H[i, i] for i in range(n))
    eta = 1 / tr  # < 2 / lambda_max
    tol = F(1, 10**tk)
    P = fmpq_mat(n, n)
    for i in range(n):
        P[i, i] = fmpq(1, i + 1)
    for opt in (GD(eta), PreconditionedGD(eta, P), LM(F(1, 2)), HeavyBall(eta, F(1, 2)), Nesterov(eta, F(1, 3))):
        N = steps_to(p, opt, tol)
        assert N == brute_force_steps(p, opt, tol, N + 1), type(opt).__name__


@given(st.integers(0, 10**6), st.integers(2, 6))
def test_closed_form_loss_contains_iterated_loss(seed: int, n: int) -> None:
    H, e0 = _random_spd(seed, n)
    p = Quadratic(H, e0)
    eta = 1 / sum(H[i, i] for i in range(n))
    q_iter = iterate(p, GD(eta), 6)
    for t, q in enumerate(q_iter):
        ball = closed_form_loss(p, GD(eta), t, prec=256)
        if isinstance(ball, arb):  # irrational spectrum: the exact q_t lies in the certified ball
            with arb_prec(256):
                assert ball.overlaps(arb(q))
                assert ball.rad() <= abs(ball.mid()) * 2.0**-150
        else:
            assert ball == q


@given(st.lists(st.integers(1, 10**4), min_size=2, max_size=9, unique=True),
       st.lists(st.integers(-9, 9).filter(bool), min_size=9, max_size=9))
def test_cg_equals_polynomial_minimum(lams: list[int], cs: list[int]) -> None:
    """q_t of exact CG == min over p(0) = 1, deg p <= t of 1/2 sum lambda_i c_i^2 p(lambda_i)^2."""
    n = len(lams)
    lam = [F(x, 7) for x in lams]
    p = Quadratic.from_spectrum(lam, cs[:n])
    meas = measure_for(p, GD(1))
    q_cg = cg_losses(p.H, p.e0, n)
    for t in range(n + 1):
        assert q_cg[t] == cg_polynomial_minimum(meas, t)
    assert q_cg[n] == 0


def test_worst_case_kappa_1e10_n50() -> None:
    """kappa = 1e10, n = 50, tol = 1e-12, eta* = 2/(1 + kappa), e0 on lambda_min and lambda_max only:
    steps_to equals the bound formula evaluated independently (theory.bounds at 60 digits and its
    exactly decided version); with all 50 components active the count is at most that."""
    kappa, n, tol = 10**10, 50, F(1, 10**12)
    lam = [F(1)] + [F(round(10 ** (10 * k / (n - 1)))) for k in range(1, n - 1)] + [F(kappa)]
    eta = F(2, 1 + kappa)
    two = Quadratic.from_spectrum(lam, [1] + [0] * (n - 2) + [F(-3, 7)])
    with mpmath.workdps(60):
        expected = bounds.gd_worst_case_steps(kappa, tol)
    assert expected == bounds_optim.gd_worst_case_steps_certified(kappa, tol)
    assert steps_to(two, GD(eta), tol) == expected
    full = Quadratic.from_spectrum(lam, [F(k % 7 + 1, 3) for k in range(n)])
    assert steps_to(full, GD(eta), tol) <= expected


def test_best_fixed_step_not_worse_than_candidates() -> None:
    p = Quadratic.from_spectrum([1, F(5, 2), 7, 40], [3, -1, 2, 1])
    tol = F(1, 10**5)
    eta, N = best_fixed_step(p, tol)
    assert N == steps_to(p, GD(eta), tol)
    assert N <= steps_to(p, GD(F(2, 41)), tol)  # eta* = 2 / (lambda_min + lambda_max)
    assert N <= steps_to(p, GD(F(1, 40)), tol)


def test_newton_one_step_and_cg_at_most_n() -> None:
    H, e0 = _random_spd(7, 5)
    p = Quadratic(H, e0)
    assert steps_to(p, Newton(), F(1, 10**9)) == 1
    assert steps_to(p, CG(), F(1, 10**9)) <= 5


# ---------------------------------------------------------------- adaptive and cubic iterations
def test_adam_matches_torch_semantics() -> None:
    """Our Adam (ball arithmetic) against torch.optim.Adam in float64 on the same quadratic: the
    float64 run may differ only by rounding (10 steps, relative 1e-9 is generous)."""
    torch = pytest.importorskip("torch")
    H = [[3, 1, 0], [1, 2, 0], [0, 0, 5]]
    e0 = [1, -2, F(1, 2)]
    p = Quadratic(H, e0)
    opt = Adam(F(1, 10), F(9, 10), F(999, 1000), F(1, 10**8))
    balls = run_ball(p, opt, 10)
    x = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    Ht = torch.tensor(H, dtype=torch.float64)
    o = torch.optim.Adam([x], lr=0.1, betas=(0.9, 0.999), eps=1e-8)
    for t in range(1, 11):
        o.zero_grad()
        (0.5 * x @ Ht @ x).backward()
        o.step()
        for i in range(3):
            ref = float(balls[t][i, 0].mid())
            assert math.isclose(x[i].item(), ref, rel_tol=1e-9, abs_tol=1e-12)


def test_rmsprop_matches_torch_semantics() -> None:
    torch = pytest.importorskip("torch")
    H = [[3, 1], [1, 2]]
    p = Quadratic(H, [1, -2])
    balls = run_ball(p, RMSprop(F(1, 100), F(99, 100), F(1, 10**8)), 10)
    x = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    Ht = torch.tensor(H, dtype=torch.float64)
    o = torch.optim.RMSprop([x], lr=0.01, alpha=0.99, eps=1e-8)
    for t in range(1, 11):
        o.zero_grad()
        (0.5 * x @ Ht @ x).backward()
        o.step()
        for i in range(2):
            assert math.isclose(x[i].item(), float(balls[t][i, 0].mid()), rel_tol=1e-9, abs_tol=1e-12)


@given(st.integers(0, 10**6), st.integers(2, 4), st.integers(1, 50))
def test_cubic_step_is_stationary(seed: int, n: int, m: int) -> None:
    """Each cubic-Newton step s satisfies g + H s + (M/2) ||T s|| T^T T s = 0: the residual ball,
    evaluated rigorously, contains 0."""
    H, e0 = _random_spd(seed, n)
    rng = np.random.default_rng(seed + 1)
    T = fmpq_mat([[int(x) for x in row] for row in rng.integers(-2, 3, (n, n))])
    for i in range(n):
        T[i, i] += 5  # diagonally dominant: invertible
    p = Quadratic(H, e0)
    M = F(m, 10)
    traj = run_ball(p, CubicNewton(M, T=T), 3)
    with arb_prec(256):
        Ha, D = arb_mat(H), arb_mat(T.transpose() * T)
        for a, b in zip(traj, traj[1:]):
            s = b - a
            g = Ha * a
            r = (s.transpose() * D * s)[0, 0].sqrt()
            res = g + Ha * s + D * s * (arb(fmpq(M.numerator, M.denominator)) * r / 2)
            for i in range(n):
                assert res[i, 0].contains(0)
                assert res[i, 0].rad() < 1e-40 * (1 + abs(float(g[i, 0].mid())))


def test_cubic_newton_converges_and_counts() -> None:
    p = Quadratic([[4, 1], [1, 3]], [2, -1])
    N = steps_to(p, CubicNewton(1), F(1, 10**10))
    assert 1 <= N <= 10
    losses = iterate(p, CubicNewton(1), N)
    with arb_prec(256):
        assert losses[N] <= arb(fmpq(1, 10**10)) * arb(p.q0)
        assert losses[N - 1] > arb(fmpq(1, 10**10)) * arb(p.q0)


@pytest.mark.parametrize("method", ["heavy", "nesterov", "schedule"])
@pytest.mark.parametrize("below", [False, True])
@given(seed=st.integers(0, 2**16), n=st.integers(1, 4), b=st.integers(1, 7), t_tie=st.integers(1, 6))
def test_scanned_counts_equal_exact_iteration_at_ties(method, below, seed, n, b, t_tie):
    """Heavy ball, Nesterov and step schedules (momentum on): the count of ``steps_to`` equals
    the exact rational iteration's, with tol set to q_t/q_0 of an iterate -- an exact tie that no
    ball decides -- or 1e-400 below it (undecided even at 1024 bits), so the exact fallback
    (``_exact_poly_sum``) decides both ways."""
    from convrate.numerics.optimizers import run_exact

    rng = np.random.default_rng(seed)
    lam = sorted({F(int(v), 4) for v in rng.integers(1, 17, size=n)})
    c = [F(int(v), 3) for v in rng.integers(1, 7, size=len(lam))]
    p = Quadratic.from_spectrum(lam, c)
    lmax = lam[-1]
    beta = F(b, 8)
    eta = F(1, 2) / lmax
    opt = {"heavy": HeavyBall(eta, beta), "nesterov": Nesterov(eta, beta),
           "schedule": GDSchedule(tuple(F(int(k), 4) / lmax for k in rng.integers(1, 8, size=40)))}[method]
    qs = [p.loss(e) for e in run_exact(p, opt, t_tie)]
    tol = qs[t_tie] / p.q0  # exact (fmpq)
    if below:
        tol -= fmpq(1, 10**400)
    assume(0 < tol < 1)
    want = brute_force_steps(p, opt, tol, 40)
    assert want <= t_tie or below
    assert steps_to(p, opt, tol) == want


def test_divergence_messages_show_the_eigenvalue() -> None:
    """The eigenvalue in a DivergenceError: an integer as is, another rational to 8 significant
    digits, an irrational one (a ball) by its midpoint to 8 digits; ``eigenvalue`` holds it."""
    with pytest.raises(DivergenceError) as exc:
        steps_to(Quadratic.from_spectrum([1, F(7, 2)], [1, 1]), HeavyBall(1, F(1, 4)), F(1, 100))
    assert exc.value.eigenvalue == F(7, 2) and "at eigenvalue 3.5 " in str(exc.value)
    with pytest.raises(DivergenceError) as exc:
        steps_to(Quadratic.from_spectrum([1, F(7, 3)], [1, 1]), Nesterov(1, F(1, 4)), F(1, 100))
    assert exc.value.eigenvalue == F(7, 3) and "at eigenvalue 2.3333333 " in str(exc.value)
    with pytest.raises(DivergenceError) as exc:
        steps_to(Quadratic([[2, 1], [1, 3]], [1, 1]), HeavyBall(1, F(1, 4)), F(1, 100))
    assert "at eigenvalue 3.618034 " in str(exc.value)  # (5 + sqrt 5) / 2 = 3.6180339887...
    with mpmath.workdps(30):
        assert abs(exc.value.eigenvalue - (5 + mpmath.sqrt(5)) / 2) < mpmath.mpf(10) ** -20


# ---------------------------------------------------------------- stability, adaptive counts, closed forms
_JURY_EDGES = [(F(-3), F(2)), (F(0), F(1)), (F(2), F(1)), (F(-2), F(1)), (F(0), F(-1)), (F(1), F(-2)),
               (F(-5, 2), F(1)), (F(-2), F(99, 100)), (F(201, 100), F(1)), (F(0), F(101, 100)), (F(3, 2), F(1, 2))]


@example(*_JURY_EDGES[0])
@example(*_JURY_EDGES[1])
@example(*_JURY_EDGES[2])
@example(*_JURY_EDGES[3])
@example(*_JURY_EDGES[4])
@example(*_JURY_EDGES[5])
@example(*_JURY_EDGES[6])
@example(*_JURY_EDGES[7])
@example(*_JURY_EDGES[8])
@example(*_JURY_EDGES[9])
@example(*_JURY_EDGES[10])
@given(a1=st.fractions(-3, 3, max_denominator=12), a0=st.fractions(-2, 2, max_denominator=12))
def test_jury_criterion_against_the_roots(a1, a0):
    """z^2 + a1 z + a0 has a root of modulus > 1 iff steps._jury_unstable(a1, a0), for exact
    rationals (boundary |root| = 1 included: not unstable) and for balls around them (None only
    when the ball straddles the boundary)."""
    from convrate.numerics.steps import _jury_unstable

    A1, A0 = fmpq(a1.numerator, a1.denominator), fmpq(a0.numerator, a0.denominator)
    import sympy as sp

    z = sp.Symbol("z")
    roots = sp.Poly(z**2 + sp.Rational(a1.numerator, a1.denominator) * z + sp.Rational(a0.numerator, a0.denominator),
                    z).all_roots()  # exact quadratic surds
    unstable = any(bool(sp.Abs(r) > 1) for r in roots)
    assert _jury_unstable(A1, A0) is unstable
    with arb_prec(128):
        ball = _jury_unstable(arb(A1), arb(A0))
    assert ball in (unstable, None)


@given(lam=st.fractions(F(1, 4), 8, max_denominator=8), eta=st.fractions(F(1, 16), 2, max_denominator=16),
       beta=st.fractions(0, F(15, 16), max_denominator=16), nesterov=st.booleans())
def test_momentum_divergence_iff_a_mode_root_leaves_the_unit_disc(lam, eta, beta, nesterov):
    """Heavy ball / Nesterov on one mode lambda: DivergenceError iff the mode's recurrence
    (z^2 - (1 + beta - eta lambda) z + beta, resp. z^2 - (1 - eta lambda)(1 + beta) z + (1 - eta lambda) beta)
    has a root of modulus > 1 (numpy roots, decided away from the unit circle)."""
    if nesterov:
        c = [1, -(1 - eta * lam) * (1 + beta), (1 - eta * lam) * beta]
        opt = Nesterov(eta, beta)
    else:
        c = [1, -(1 + beta - eta * lam), beta]
        opt = HeavyBall(eta, beta)
    rho = max(abs(z) for z in np.roots([float(x) for x in c]))
    assume(abs(rho - 1) > 1e-3 and rho < 0.97 or rho > 1.03)
    p = Quadratic.from_spectrum([lam], [1])
    if rho > 1:
        with pytest.raises(DivergenceError):
            steps_to(p, opt, F(1, 100))
    else:
        assert steps_to(p, opt, F(1, 100)) == brute_force_steps(p, opt, F(1, 100), 2000)


@given(seed=st.integers(0, 2**16), method=st.sampled_from(["adam", "rmsprop", "adagrad"]), u=st.integers(1, 8))
def test_adaptive_counts_equal_the_certified_iteration(seed, method, u):
    """steps_to for Adam / RMSprop / Adagrad = the first t whose certified loss ball lies below
    tol q_0 along run_ball's iterates (q_0 != 1, so the threshold's scale matters)."""
    from convrate.numerics.optimizers import Adagrad, RMSprop

    rng = np.random.default_rng(seed)
    lam = [F(int(v), 2) for v in rng.integers(1, 9, size=2)]
    p = Quadratic.from_spectrum(lam, [F(int(v), 1) for v in rng.integers(2, 6, size=2)])
    opt = {"adam": Adam(F(u, 16)), "rmsprop": RMSprop(F(u, 64)), "adagrad": Adagrad(F(u, 4))}[method]
    from convrate.errors import PrecisionError
    from convrate.numerics.optimizers import iter_ball

    tol = F(1, 5)
    first = None
    try:
        for t, e in enumerate(iter_ball(p, opt, 256)):
            if t > 200:
                break
            with arb_prec(256):
                q, T = p.loss(e), arb(fmpq(tol.numerator, tol.denominator)) * p.q0
                if q <= T:
                    first = t
                    break
                assert q > T  # decided: no tie
    except PrecisionError:
        first = None
    assume(first is not None)
    assert steps_to(p, opt, tol) == first


@given(seed=st.integers(0, 2**16), damping=st.fractions(F(1, 8), 8, max_denominator=8), rotate=st.booleans())
def test_lm_closed_form_equals_exact_iteration(seed, damping, rotate):
    """closed_form_loss for LM (rate lambda / (mu + lambda) per mode) equals the loss of the exact
    rational LM iterates, t = 0..4 (spectral and rotated problems)."""
    from convrate.numerics.optimizers import run_exact

    rng = np.random.default_rng(seed)
    lam = sorted({F(int(v), 3) for v in rng.integers(1, 30, size=3)})
    c = [F(int(v), 2) for v in rng.integers(1, 7, size=len(lam))]
    p = Quadratic.from_spectrum(lam, c)
    if rotate:
        from convrate.numerics.checks_quadratic import _rotated

        p = _rotated(rng, lam, c)
    exact = [p.loss(e) for e in run_exact(p, LM(damping), 4)]
    for t in range(5):
        got = closed_form_loss(p, LM(damping), t)
        if isinstance(got, fmpq):
            assert got == exact[t]
        else:
            with arb_prec(256):
                assert (got - exact[t]).contains(0)


@pytest.mark.parametrize("opt", [HeavyBall(F(1, 2), F(1, 2)), Nesterov(F(1, 2), F(1, 2)), GDSchedule((F(1, 2),) * 5)])
def test_zero_start_scanned_methods(opt):
    assert steps_to(Quadratic.from_spectrum([1, 2], [0, 0]), opt, F(1, 10)) == 0


def test_trajectory_precision_is_the_one_asked_for():
    """Ball iterates carry the precision they are computed at: radii shrink from 64 to 512 bits."""
    p = Quadratic.from_spectrum([1, 3], [1, 2])
    lo, hi = (trajectory(p, Adam(F(1, 10)), 5, prec) for prec in (64, 512))
    rad = [max(float(e[i, 0].rad()) for i in range(2)) for e in (lo[-1], hi[-1])]
    assert rad[0] > 1e-25 > 1e-100 > rad[1] > 0 or rad[1] == 0 < rad[0]
    q_lo, q_hi = iterate(p, Adam(F(1, 10)), 5, 64), iterate(p, Adam(F(1, 10)), 5, 512)
    assert float(q_lo[-1].rad()) > float(q_hi[-1].rad())


@pytest.mark.parametrize("H, e0", [([[2, 1], [1, 3]], [1, 1]),  # irrational eigenvalues, lambda_min + lambda_max = 5
                                   ([[4, 1], [1, 2]], [2, -1]),
                                   (None, None)])  # exact spectrum [1, 6] (eta* = 2/7 is off the grid k/144)
@pytest.mark.parametrize("tol", [F(1, 10**3), F(1, 10**9)])
def test_best_fixed_step_prefers_eta_star_and_never_loses_to_it(H, e0, tol):
    """best_fixed_step returns a step at least as good as eta* = 2/(lambda_min + lambda_max) (exact
    here: lambda_min + lambda_max = trace H), and eta* itself when it ties for the fewest steps;
    a zero start needs no step."""
    p = Quadratic(H, e0) if H is not None else Quadratic.from_spectrum([1, 6], [1, 1])
    trace = sum(p.H[i, i] for i in range(2))
    star = F(2) / F(int(trace.p), int(trace.q))
    eta, N = best_fixed_step(p, tol)
    n_star = steps_to(p, GD(star), tol)
    assert N == steps_to(p, GD(eta), tol) <= n_star
    assert N <= steps_to(p, GD(star / 2), tol) and N <= steps_to(p, GD(star * F(3, 4)), tol)
    if N == n_star:
        assert eta == star
    assert best_fixed_step(Quadratic.from_spectrum([1, 2], [0, 0]), tol) == (F(0), 0)
