"""Contract tests of ``numerics.steps`` beyond "the count equals exact iteration": ``max_steps``
as a cap on every method's count, input validation, the helpers that render numbers in messages,
the spectral measure of each operator (non-diagonal preconditioners, the cache), the closed
form, the brute-force iterates, and divergence / stall classification. Every expected value is
derived by hand in the docstring or computed independently (exact rational iteration)."""
from __future__ import annotations

from fractions import Fraction as F

import mpmath
import numpy as np
import pytest
from flint import arb, fmpq, fmpq_mat

from convrate.errors import DivergenceError, InvalidInputError, NoConvergenceError, PrecisionError, ToleranceError
from convrate.numerics.optimizers import (CG, GD, LM, Adagrad, Adam, CubicNewton, GDSchedule, HeavyBall, Nesterov,
                                          Newton, PreconditionedGD, RMSprop, run_exact)
from convrate.numerics.optimizers_second_order import LBFGS, MatrixQuadratic, Muon, NewtonCG, Shampoo, Sophia
from convrate.numerics.quadratic import Quadratic, arb_prec
from convrate.numerics.steps import (best_fixed_step, brute_force_steps, closed_form_loss, iterate, measure_for, steps_to,
                                     trajectory)

SPEC = Quadratic.from_spectrum([1, 4], [1, 1])  # q_0 = (1 + 4) / 2 = 5/2
TOL = F(1, 100)

_ALL = [GD(F(1, 4)), PreconditionedGD(F(1, 4), [[1, 0], [0, F(1, 2)]]), LM(1), CG(), Newton(),
        HeavyBall(F(1, 4), F(1, 4)), Nesterov(F(1, 4), F(1, 4)), GDSchedule((F(1, 4),) * 30),
        Adam(F(1, 10)), RMSprop(F(1, 20)), Adagrad(F(1, 2)), CubicNewton(1)]


def _first_certified(p: Quadratic, opt, tol: F, horizon: int) -> int:
    """First t whose certified loss ball (arb iterates at 256 bits) lies wholly <= tol q_0; every
    earlier ball lies wholly above (no tie on these instances)."""
    target = fmpq(tol.numerator, tol.denominator) * p.q0
    with arb_prec(256):
        for t, q in enumerate(iterate(p, opt, horizon)):
            if isinstance(q, fmpq):
                if q <= target:
                    return t
                continue
            if q <= arb(target):
                return t
            assert q > arb(target)
    raise AssertionError("not reached")


@pytest.mark.parametrize("opt", _ALL, ids=lambda o: type(o).__name__)
def test_max_steps_caps_the_count_of_every_method(opt) -> None:
    """The count N is independent of the iteration (exact rational iteration for the rational
    methods, certified arb iterates for Adam / RMSprop / Adagrad / cubic Newton); max_steps = N
    returns N, max_steps = N - 1 raises NoConvergenceError naming the optimizer, and an integral
    float is accepted."""
    N = steps_to(SPEC, opt, TOL)
    assert N >= 1
    assert N == _first_certified(SPEC, opt, TOL, N + 2)
    assert steps_to(SPEC, opt, TOL, max_steps=N) == N
    assert steps_to(SPEC, opt, TOL, max_steps=float(N)) == N
    assert steps_to(SPEC, opt, TOL, max_steps=N + 7) == N
    named = rf"^{type(opt).__name__}\b"
    with pytest.raises(NoConvergenceError, match=named):
        steps_to(SPEC, opt, TOL, max_steps=N - 1)
    with pytest.raises(NoConvergenceError, match=named):  # 0 is a valid cap (q_0 > tol q_0 always)
        steps_to(SPEC, opt, TOL, max_steps=0)


@pytest.mark.parametrize("opt", [GD(F(1, 4)), LM(1), HeavyBall(F(1, 4), F(1, 4)), GDSchedule((F(1, 4),) * 30),
                                 Adam(F(1, 10))], ids=lambda o: type(o).__name__)
@pytest.mark.parametrize("bad", [-1, F(3, 2), 2.5])
def test_bad_max_steps_is_refused(opt, bad) -> None:
    with pytest.raises(InvalidInputError, match="max_steps must be a nonnegative integer"):
        steps_to(SPEC, opt, TOL, max_steps=bad)


def test_schedule_shorter_than_the_count() -> None:
    """Steps 1/4 on lambda = 1, 4 (masses m = lambda c^2 = 1, 4; q_0 = 5/2): the lambda = 4 mode
    is gone after one step, so q_t = (3/4)^(2t) / 2 and q_t <= q_0 / 100 iff (3/4)^(2t) <= 1/20:
    (3/4)^10 = 0.056 > 0.05 >= (3/4)^12 = 0.032, N = 6. A schedule of 5 steps stops short whatever
    max_steps says (the horizon is the schedule's length)."""
    assert steps_to(SPEC, GDSchedule((F(1, 4),) * 30), TOL) == 6
    for ms in (None, 100):
        with pytest.raises(NoConvergenceError, match="within 5 steps"):
            steps_to(SPEC, GDSchedule((F(1, 4),) * 5), TOL, max_steps=ms)
    assert steps_to(SPEC, GDSchedule((F(1, 4),) * 6), TOL, max_steps=100) == 6


def test_newton_and_cg_max_steps() -> None:
    """Newton reaches e = 0 in one step (max_steps = 0 is too few); CG on two distinct
    eigenvalues reaches 0 in two steps and not in one (the CG polynomial of degree 1 cannot
    vanish at both 1 and 4), so tol = 1/100 needs exactly 2."""
    assert steps_to(SPEC, Newton(), TOL, max_steps=1) == 1
    with pytest.raises(NoConvergenceError, match="max_steps = 0"):
        steps_to(SPEC, Newton(), TOL, max_steps=0)
    assert steps_to(SPEC, CG(), TOL) == 2 == steps_to(SPEC, CG(), TOL, max_steps=2)
    # exact tie: CG's first step on H = diag(1, 4), e_0 = (1, 1): alpha = r.r / r.Hr = 17/65, q_1 = 18/65
    assert steps_to(SPEC, CG(), F(18, 65) / F(5, 2)) == 1
    with pytest.raises(NoConvergenceError, match="max_steps = 1"):
        steps_to(SPEC, CG(), TOL, max_steps=1)


# ---------------------------------------------------------------- tolerance and bad input
def test_tolerance_as_fmpq_and_the_error_wording() -> None:
    """tol may be given as an fmpq (it is converted exactly); a non-number says so, an out-of-range
    number is refused by ``bounds.check_tol`` with its own wording."""
    assert steps_to(SPEC, GD(F(1, 4)), fmpq(1, 100)) == steps_to(SPEC, GD(F(1, 4)), F(1, 100))
    with pytest.raises(ToleranceError, match="must be a number in"):
        steps_to(SPEC, GD(F(1, 4)), "abc")
    with pytest.raises(ToleranceError, match=r"must lie in \(0, 1\), got 2$"):
        steps_to(SPEC, GD(F(1, 4)), 2)
    with pytest.raises(ToleranceError, match=r"must lie in \(0, 1\), got 2$"):
        steps_to(SPEC, GD(F(1, 4)), fmpq(2))
    # a numpy float32 / float16 tolerance is its exact binary value (float32(0.1) = 13421773 / 2^27)
    assert steps_to(SPEC, GD(F(1, 4)), np.float32(0.1)) == steps_to(SPEC, GD(F(1, 4)), F(13421773, 2**27))
    assert steps_to(SPEC, GD(F(1, 4)), np.float16(0.25)) == steps_to(SPEC, GD(F(1, 4)), F(1, 4))
    with pytest.raises(ToleranceError, match=r"must lie in \(0, 1\), got 1.5$"):
        steps_to(SPEC, GD(F(1, 4)), np.float32(1.5))
    # mpmath reads (1, -1) as 1 * 2^-1, which is in (0, 1); it is still no rational tolerance
    with pytest.raises(InvalidInputError, match=r"^tol \(1, -1\) is not a real number$"):
        steps_to(SPEC, GD(F(1, 4)), (1, -1))


def test_unsupported_problem_and_optimizer() -> None:
    with pytest.raises(InvalidInputError, match="must be a Quadratic or a MatrixQuadratic, got str"):
        steps_to("p", GD(1), TOL)
    with pytest.raises(InvalidInputError, match="unsupported optimizer"):
        steps_to(SPEC, "sgd", TOL)
    with pytest.raises(InvalidInputError, match="Adam has no spectral measure"):
        measure_for(SPEC, Adam(1))
    with pytest.raises(InvalidInputError, match="no closed form for CG"):
        closed_form_loss(SPEC, CG(), 1)
    with pytest.raises(InvalidInputError, match="Adam has no exact rational iteration"):
        brute_force_steps(SPEC, Adam(1), TOL, 5)


@pytest.mark.parametrize("opt", [LBFGS(2), NewtonCG(1, F(1, 2)), Sophia(F(1, 4))],
                         ids=lambda o: repr(o)[:24])
def test_max_steps_caps_the_second_order_counts(opt) -> None:
    """L-BFGS, Newton-CG, Sophia on a Quadratic: the count equals exact rational iteration
    (``brute_force_steps``), max_steps = N returns it and N - 1 raises NoConvergenceError."""
    N = steps_to(SPEC, opt, TOL)
    assert N == brute_force_steps(SPEC, opt, TOL, N + 1)
    assert steps_to(SPEC, opt, TOL, max_steps=N) == N
    with pytest.raises(NoConvergenceError):
        steps_to(SPEC, opt, TOL, max_steps=N - 1)


# ---------------------------------------------------------------- stalled modes, divergence messages
def test_stalled_mode_exactly_at_the_target() -> None:
    """GD(1/2) on lambda = 2, 4 (masses 2, 4; q_0 = 3): f(2) = 0, f(4) = -1, so q_t = 2 for every
    t >= 1. tol = 2/3 makes tol q_0 = 2 = q_1: reached at t = 1 (not 'never'); tol = 1/10 < 2/3
    never. With lambda = 1, 4 (masses 1, 4, q_0 = 5/2) f(1) = 1/2 and q_t = 2 + (1/4)^t / 2 > 2 =
    (4/5) q_0 for all t: never; tol = 81/100 (target 2.025) needs (1/4)^t <= 1/20: t = 3."""
    p = Quadratic.from_spectrum([2, 4], [1, 1])
    assert steps_to(p, GD(F(1, 2)), F(2, 3)) == 1 == brute_force_steps(p, GD(F(1, 2)), F(2, 3), 3)
    with pytest.raises(NoConvergenceError, match=r"eigenvalue 4 has \|factor\| = 1 .* loss 2 >= tol \* q0 = 0\.3$"):
        steps_to(p, GD(F(1, 2)), F(1, 10))
    p = Quadratic.from_spectrum([1, 4], [1, 1])
    with pytest.raises(NoConvergenceError, match="never decays"):
        steps_to(p, GD(F(1, 2)), F(4, 5))
    with pytest.raises(NoConvergenceError):
        brute_force_steps(p, GD(F(1, 2)), F(4, 5), 60)
    assert steps_to(p, GD(F(1, 2)), F(81, 100)) == 3 == brute_force_steps(p, GD(F(1, 2)), F(81, 100), 4)


def test_exact_kill_in_one_step() -> None:
    """GD(1/lambda) on one eigenvalue (or on a repeated one) zeroes e in one step: 1 step for any
    tol, however small."""
    for p in (Quadratic.from_spectrum([1], [3]), Quadratic.from_spectrum([F(5, 2), F(5, 2)], [1, -7])):
        lam = p.H[0, 0]
        for tol in (F(1, 2), F(1, 10**60)):
            assert steps_to(p, GD(1 / F(int(lam.p), int(lam.q))), tol) == 1


def test_gd_divergence_message() -> None:
    """1 - (1/4) 10 = -3/2: the message names the step, eigenvalue, |factor| and the stable limit
    2 / lambda = 1/5 (rationals to 8 significant digits, integers as integers)."""
    p = Quadratic.from_spectrum([1, 3, 10], [1, 1, 1])
    with pytest.raises(DivergenceError, match=r"^GD diverges: step 0\.25 on eigenvalue 10 gives "
                                              r"\|1 - eta\*lambda\| = 1\.5 > 1 \(needs eta < 2/lambda = 0\.2\)$"):
        steps_to(p, GD(F(1, 4)), F(1, 100))
    with pytest.raises(DivergenceError, match=r"^PreconditionedGD diverges: step 1 on eigenvalue 3 gives "
                                              r"\|1 - eta\*lambda\| = 2 > 1 \(needs eta < 2/lambda = 0\.66666667\)$"):
        steps_to(Quadratic.from_spectrum([1, 3], [1, 1]), PreconditionedGD(1, [[1, 0], [0, 1]]), F(1, 100))


def test_number_rendering_helpers() -> None:
    """_num: fmpq -> the same Fraction, arb -> its midpoint with every bit kept, anything else as is;
    _show: an integer as digits, other values to 8 significant digits."""
    from convrate.numerics.steps import _num, _show

    assert _num(fmpq(7, 2)) == F(7, 2) and isinstance(_num(fmpq(7, 2)), F)
    assert _num(None) is None and _num(F(1, 3)) == F(1, 3)
    with arb_prec(400):
        third = arb(1) / 3
    v = _num(third)
    assert isinstance(v, mpmath.mpf)
    with mpmath.workprec(600):
        assert abs(v - mpmath.mpf(1) / 3) < mpmath.mpf(2) ** -390
    assert _num(arb(0)) == 0 and _num(arb(4)) == 4 and _num(arb(0.5)) == 0.5  # mantissa 1: 2^2, 2^-1
    with arb_prec(128):
        assert _num(arb(-5) / 4) == mpmath.mpf(-1.25)
    assert _show(fmpq(3)) == "3" and _show(fmpq(-12)) == "-12"
    assert _show(fmpq(7, 2)) == "3.5" and _show(fmpq(1, 3)) == "0.33333333" and _show(fmpq(-2, 3)) == "-0.66666667"
    with arb_prec(256):
        assert _show(arb(2).sqrt()) == "1.4142136"


# ---------------------------------------------------------------- spectral measures, closed form, iterates
P2 = [[2, 1], [1, 2]]


@pytest.mark.parametrize("opt", [PreconditionedGD(F(1, 8), P2), LM(F(1, 2), D=P2), HeavyBall(F(1, 8), F(1, 4), P=P2),
                                 Nesterov(F(1, 8), F(1, 4), P=P2)], ids=lambda o: type(o).__name__)
def test_non_diagonal_preconditioner(opt) -> None:
    """A non-diagonal P (or LM's D) on a diagonal H: the operator P H (D^-1 H) is not diagonal, its
    eigenvalues are irrational (P H = [[2, 4], [1, 8]] for H = diag(1, 4): x^2 - 10 x + 12, and
    D^-1 H = (P H) / 3), the measure comes from Lanczos with total 2 q_0; the count equals exact
    iteration."""
    m = measure_for(SPEC, opt)
    assert m.exact == () and m.total == 2 * SPEC.q0
    c = [int(m.irrational.coeffs()[k] * (3 if isinstance(opt, LM) else 1) ** (2 - k)) for k in range(3)]
    assert c == [12, -10, 1]
    N = steps_to(SPEC, opt, TOL)
    assert N == brute_force_steps(SPEC, opt, TOL, N + 1)


def test_diagonal_preconditioner_measure_and_cache() -> None:
    """Diagonal P = diag(1, 1/2) on H = diag(1, 4), e_0 = (1, 1): P H = diag(1, 2) with masses
    lambda_i e_i^2 = 1, 4; LM's D = diag(1, 2) gives D^-1 H = the same. The measure is cached per
    operator: a second preconditioner on the same problem gets its own measure."""
    p = Quadratic.from_spectrum([1, 4], [1, 1])
    P = [[1, 0], [0, F(1, 2)]]
    assert measure_for(p, PreconditionedGD(1, P)).exact == ((fmpq(1), fmpq(1)), (fmpq(2), fmpq(4)))
    assert measure_for(p, LM(1, D=[[1, 0], [0, 2]])).exact == ((fmpq(1), fmpq(1)), (fmpq(2), fmpq(4)))
    assert measure_for(p, GD(1)).exact == ((fmpq(1), fmpq(1)), (fmpq(4), fmpq(4)))
    assert measure_for(p, LM(1)).exact == measure_for(p, GD(1)).exact
    assert measure_for(p, PreconditionedGD(1, [[F(1, 4), 0], [0, 1]])).exact == ((fmpq(1, 4), fmpq(1)), (fmpq(4), fmpq(4)))
    for P in ([[1, 0], [0, F(1, 2)]], [[F(1, 4), 0], [0, 1]], P2, [[3, 1], [1, 1]]):
        opt = PreconditionedGD(F(1, 16), P)
        N = steps_to(p, opt, TOL)
        assert N == brute_force_steps(p, opt, TOL, N + 1)


@pytest.mark.parametrize("opt", [PreconditionedGD(F(1, 8), P2), LM(F(1, 2), D=P2), GD(F(1, 5)), LM(F(1, 3))],
                         ids=lambda o: repr(o)[:20])
def test_closed_form_loss_against_iteration(opt) -> None:
    """closed_form_loss = the loss of the exact rational iterate: exactly on a rational spectrum, a
    ball containing it (of relative radius ~2^-prec) on an irrational one."""
    for p in (SPEC, Quadratic([[2, 1], [1, 3]], [1, -2])):
        exact = iterate(p, opt, 4)
        for t in range(5):
            got = closed_form_loss(p, opt, t)
            if measure_for(p, opt).is_exact:
                assert isinstance(got, fmpq) and got == exact[t]
                continue
            for prec in (128, 512):
                got = closed_form_loss(p, opt, t, prec=prec)
                with arb_prec(prec):
                    assert got.contains(exact[t])
                    assert got.rad() <= abs(got.mid()) * mpmath.mpf(2) ** (30 - prec)


def test_trajectory_and_iterate_are_the_exact_iteration() -> None:
    """trajectory of a linear method is run_exact's list of exact iterates; iterate is their
    losses; for Adam the balls contain the exact-precision iterates of a finer run."""
    for opt in (GD(F(1, 4)), HeavyBall(F(1, 4), F(1, 3)), CG()):
        tr = trajectory(SPEC, opt, 3)
        assert len(tr) == 4 and all(isinstance(e, fmpq_mat) for e in tr)
        assert tr == run_exact(SPEC, opt, 3)
        assert iterate(SPEC, opt, 3) == [SPEC.loss(e) for e in tr]
    coarse, fine = trajectory(SPEC, Adam(F(1, 10)), 4, 64), trajectory(SPEC, Adam(F(1, 10)), 4, 300)
    assert len(coarse) == 5
    for a, b in zip(coarse, fine):
        for i in range(2):
            assert a[i, 0].contains(b[i, 0])
    qs = iterate(SPEC, Adam(F(1, 10)), 4, 300)
    assert all(q.rad() < mpmath.mpf(2) ** -250 for q in qs[1:])


def test_brute_force_steps_caps() -> None:
    """max_steps: t = max_steps is still tried; max_bits: an iterate over the cap raises
    PrecisionError (GD(1/7) on H = [[2, 1], [1, 3]] doubles its denominators' size each step),
    a cap it stays under changes nothing."""
    assert brute_force_steps(SPEC, GD(F(1, 4)), TOL, 6) == 6
    with pytest.raises(NoConvergenceError, match="within 5 steps"):
        brute_force_steps(SPEC, GD(F(1, 4)), TOL, 5)
    assert brute_force_steps(SPEC, CG(), TOL, 2) == 2
    with pytest.raises(NoConvergenceError):
        brute_force_steps(SPEC, CG(), TOL, 1)
    q = Quadratic([[2, 1], [1, 3]], [1, 1])
    N = brute_force_steps(q, GD(F(1, 7)), F(1, 10**30), 500)
    assert brute_force_steps(q, GD(F(1, 7)), F(1, 10**30), 500, max_bits=10**6) == N
    with pytest.raises(PrecisionError, match="bits > 200"):
        brute_force_steps(q, GD(F(1, 7)), F(1, 10**30), 500, max_bits=200)


def test_nearly_neutral_irrational_mode_is_decided_at_higher_precision() -> None:
    """H = [[2, 1], [1, 3]], e_0 = (1, 1): eigenvalues (5 -+ sqrt 5)/2, masses m = lambda (v . e_0)^2
    with v ~ (1, lambda - 2); 2 q_0 = 7. A step eta within 2^-140 (relative) of 2 / lambda_max
    makes |1 - eta lambda_max| = 1 +- ~2^-139: undecided against 1 at 128 bits, decided at 256.
    Above: DivergenceError at lambda_max. Below: the count is the first t with
    m_1 f_1^(2t) + m_2 f_2^(2t) <= 7 tol, computed independently in mpmath at 300 digits (f_1^(2t)
    is below 10^-(10^40) there; the real root is checked to be far from an integer)."""
    p = Quadratic([[2, 1], [1, 3]], [1, 1])
    tol = F(1, 10)
    with mpmath.workdps(300):
        lam = [(5 - mpmath.sqrt(5)) / 2, (5 + mpmath.sqrt(5)) / 2]
        m = [x * (x - 1) ** 2 / (1 + (x - 2) ** 2) for x in lam]
        assert abs(m[0] + m[1] - 7) < mpmath.mpf(10) ** -290
        up, down = (F(mpmath.nstr(2 / lam[1] * (1 + s * mpmath.mpf(2) ** -140), 200)) for s in (1, -1))
        f = [1 - mpmath.mpf(down.numerator) / down.denominator * x for x in lam]
        t_real = mpmath.log(7 * mpmath.mpf(1) / 10 / m[1]) / (2 * mpmath.log(abs(f[1])))
        want = int(mpmath.ceil(t_real))
        assert want > 10**40 and min(t_real - (want - 1), want - t_real) > mpmath.mpf(10) ** -100
        assert m[0] * f[0] ** (2 * (want - 1)) < mpmath.mpf(10) ** -(10**40)
    with pytest.raises(DivergenceError) as exc:
        steps_to(p, GD(up), tol)
    assert abs(exc.value.eigenvalue - lam[1]) < 1e-30 and exc.value.factor < -1
    assert steps_to(p, GD(down), tol) == want


@pytest.mark.parametrize("opt", [HeavyBall(F(1, 4), F(1, 3)), Nesterov(F(1, 4), F(1, 3)), GDSchedule((F(1, 4),) * 5)],
                         ids=lambda o: type(o).__name__)
def test_scanned_tie_on_an_irrational_spectrum(opt) -> None:
    """H = [[2, 1], [1, 1]] (eigenvalues (3 +- sqrt 5)/2): q_2 is rational, so tol = q_2 / q_0 is an
    exact tie that no ball decides and the scanned methods have no exact fallback on an irrational
    measure: PrecisionError (documented); 10^-30 (relative) either side the counts equal exact
    rational iteration."""
    p = Quadratic(fmpq_mat([[2, 1], [1, 1]]), fmpq_mat([[1], [0]]))
    qs = [p.loss(e) for e in run_exact(p, opt, 2)]
    tie = F(int((qs[2] / qs[0]).p), int((qs[2] / qs[0]).q))
    with pytest.raises(PrecisionError, match="65536 bits"):
        steps_to(p, opt, tie)
    for tol in (tie * (1 + F(1, 10**30)), tie * (1 - F(1, 10**30))):
        N = steps_to(p, opt, tol)
        assert N == brute_force_steps(p, opt, tol, N + 1)
        assert (N == 2) == (tol > tie)


def _optimal_fixed_step_count(lams: list[int], cs: list[F], tol: F) -> int:
    """min over eta of N(eta), independently: 2 q_t(eta) = sum_i m_i (1 - eta lambda_i)^(2t) (m_i =
    lambda_i c_i^2) is convex in eta (even powers of affine functions), so its minimum over
    (0, 2/lambda_max) is where the derivative changes sign (bisection, mpmath at 60 digits, the
    verdict checked to have a relative margin > 10^-30); the answer is the first t with that
    minimum <= tol * 2 q_0 (q_t(eta) decreases in t for every stable eta)."""
    with mpmath.workdps(60):
        m = [mpmath.mpf(lam) * (mpmath.mpf(F(c).numerator) / F(c).denominator) ** 2 for lam, c in zip(lams, cs)]
        target = mpmath.mpf(tol.numerator) / tol.denominator * sum(m)
        for t in range(1, 200):
            lo, hi = mpmath.mpf(0), mpmath.mpf(2) / max(lams)
            for _ in range(180):
                mid = (lo + hi) / 2
                if sum(-mi * lam * (1 - mid * lam) ** (2 * t - 1) for mi, lam in zip(m, lams)) < 0:
                    lo = mid
                else:
                    hi = mid
            q = sum(mi * (1 - lo * lam) ** (2 * t) for mi, lam in zip(m, lams))
            assert abs(q - target) > target * mpmath.mpf(10) ** -30
            if q <= target:
                return t
    raise AssertionError("no t < 200")


@pytest.mark.parametrize("lams, cs, tol", [([1, 10], [1, 1], F(1, 10**6)), ([1, 20], [1, 3], F(1, 10**3))])
@pytest.mark.parametrize("grid", [2, 3])
def test_best_fixed_step_refinement_finds_the_optimum(lams, cs, tol, grid) -> None:
    """With a grid too coarse to contain a best step (grid = 2: the candidates are eta*, 1/lambda_max
    and u = 1/2 of 2/lambda_max), the golden-section refinement on the unimodal N(eta) (q_t convex
    in eta, so {eta: N(eta) <= t} is an interval) finds the optimal count, computed independently;
    here it is strictly below N(eta*) (the masses are unequal), and N(returned eta) is that count."""
    p = Quadratic.from_spectrum(lams, cs)
    eta, N = best_fixed_step(p, tol, grid=grid)
    assert N == _optimal_fixed_step_count(lams, cs, tol) == steps_to(p, GD(eta), tol)
    assert N < steps_to(p, GD(F(2, lams[0] + lams[-1])), tol)
    assert 0 < eta < F(2, lams[-1])


def test_default_horizon_of_the_ball_iterations() -> None:
    """Adam with step eta = 10^-7 on q = x^2 / 2 from x = 1 moves x by at most eta (1 - beta1) /
    sqrt(1 - beta2) ~ 3.2 eta per step, so q_t / q_0 >= (1 - 3.2 10^-7 t)^2 > 1/10 for t <= 10^6:
    the default horizon of 10^4 steps is exhausted first."""
    p = Quadratic.from_spectrum([1], [1])
    with pytest.raises(NoConvergenceError, match="within 10000 steps"):
        steps_to(p, Adam(F(1, 10**7)), F(1, 10))
    # L-BFGS with a fixed step 10^-7 (torch's rule) on SPEC: each step moves e by 10^-7 times a
    # quasi-Newton direction of the size of e (H^-1 g = e at best; eigenvalues 1 and 4), so q_t stays
    # above q_0 / 100 far beyond the default horizon
    with pytest.raises(NoConvergenceError, match="within 10000 steps"):
        steps_to(SPEC, LBFGS(2, step=F(1, 10**7)), TOL)


@pytest.mark.parametrize("opt, msg", [
    (PreconditionedGD(1, [[1, 0], [0, -1]]), r"^P must be positive definite"),
    (PreconditionedGD(1, [[1]]), r"^P must be 2x2, got 1x1$"),
    (HeavyBall(F(1, 4), F(1, 4), P=[[1]]), r"^P must be 2x2, got 1x1$"),
    (Nesterov(F(1, 4), F(1, 4), P=[[1, 0], [0, -1]]), r"^P must be positive definite"),
    (LM(1, D=[[1, 0], [0, -1]]), r"^D must be positive definite"),
    (LM(1, D=[[1]]), r"^D must be 2x2, got 1x1$")], ids=lambda x: str(x)[:30])
def test_bad_preconditioner_is_named(opt, msg) -> None:
    """A preconditioner that is not SPD or of the wrong size: the error names it (P or D)."""
    from convrate.errors import NotPositiveDefiniteError

    with pytest.raises((InvalidInputError, NotPositiveDefiniteError), match=msg):
        steps_to(Quadratic.from_spectrum([1, 2], [1, 1]), opt, TOL)


def test_brute_force_bit_cap_is_inclusive() -> None:
    """max_bits caps the iterates' total bits: an iterate with exactly max_bits bits is allowed."""
    q = Quadratic([[2, 1], [1, 3]], [1, 1])
    tol = F(1, 10**6)
    N = brute_force_steps(q, GD(F(1, 7)), tol, 200)
    bits = [sum(e[i, 0].p.bit_length() + e[i, 0].q.bit_length() for i in range(2)) for e in run_exact(q, GD(F(1, 7)), N)]
    assert bits[-1] == max(bits) > bits[0]
    assert brute_force_steps(q, GD(F(1, 7)), tol, 200, max_bits=bits[-1]) == N
    with pytest.raises(PrecisionError, match=f"iterate {N} has {bits[-1]} bits > {bits[-1] - 1}"):
        brute_force_steps(q, GD(F(1, 7)), tol, 200, max_bits=bits[-1] - 1)


def test_default_precision_is_256_bits() -> None:
    """closed_form_loss, trajectory and iterate default to 256-bit balls (the same balls as prec=256);
    on a zero start the closed form is the exact rational 0."""
    q = Quadratic([[2, 1], [1, 3]], [1, -2])
    same = lambda a, b: a.mid() == b.mid() and a.rad() == b.rad()  # noqa: E731
    assert same(closed_form_loss(q, GD(F(1, 5)), 3), closed_form_loss(q, GD(F(1, 5)), 3, prec=256))
    assert not same(closed_form_loss(q, GD(F(1, 5)), 3, prec=257), closed_form_loss(q, GD(F(1, 5)), 3, prec=256))
    a, b = trajectory(q, Adam(F(1, 10)), 3), trajectory(q, Adam(F(1, 10)), 3, 256)
    assert all(same(x[i, 0], y[i, 0]) for x, y in zip(a, b) for i in range(2))
    assert all(same(x, y) for x, y in zip(iterate(q, Adam(F(1, 10)), 3), iterate(q, Adam(F(1, 10)), 3, 256)))
    zero = closed_form_loss(Quadratic.from_spectrum([1, 2], [0, 0]), GD(1), 3)
    assert isinstance(zero, fmpq) and zero == 0


@pytest.mark.parametrize("k", [100, -100])
def test_best_fixed_step_at_any_scale(k) -> None:
    """Scaling H by s = 2^k scales every GD step by 1/s and leaves every count unchanged
    (e_(t+1) = (I - (eta/s) s H) e_t). best_fixed_step must follow: the same count, the step divided
    by s exactly (its candidates are rounded relative to their size: lambda_max = 6 * 2^100 made
    the old absolute rounding to denominators <= 2^80 turn every step into 0, and the search
    crashed). On an irrational spectrum (H = s [[2, 1], [1, 3]]), the count is that of the
    returned step and no worse than eta* = 2 / (s trace H)."""
    s = F(2) ** k
    tol = F(1, 1000)
    eta, N = best_fixed_step(Quadratic.from_spectrum([1, 6], [1, 1]), tol, grid=8)
    assert best_fixed_step(Quadratic.from_spectrum([s, 6 * s], [1, 1]), tol, grid=8) == (eta / s, N)
    p = Quadratic([[2 * s, s], [s, 3 * s]], [1, 1])
    eta_s, N_s = best_fixed_step(p, tol, grid=8)
    assert N_s == steps_to(p, GD(eta_s), tol) <= steps_to(p, GD(2 / (5 * s)), tol)
    assert N_s == best_fixed_step(Quadratic([[2, 1], [1, 3]], [1, 1]), tol, grid=8)[1]


@pytest.mark.parametrize("opt", [GD(F(1, 4)), LM(F(1, 3), D=[[1, 0], [0, 2]]), PreconditionedGD(F(1, 5), [[1, 0], [0, 3]])],
                         ids=lambda o: type(o).__name__)
def test_near_tie_below_resolution_on_an_irrational_spectrum(opt) -> None:
    """tol = (q_t / q_0) (1 - 2^-3000), H = [[2, 1], [1, 1]] (irrational spectrum, rational q_t): q_t
    exceeds tol q_0 by a relative 2^-3000, which no ball below ~3000 bits resolves, so the decision
    at t falls to the exact rational iterate, which must say 'not yet': the count is t + 1 (and
    exactly q_t / q_0, a tie, gives t)."""
    p = Quadratic(fmpq_mat([[2, 1], [1, 1]]), fmpq_mat([[1], [0]]))
    qs = [p.loss(e) for e in run_exact(p, opt, 4)]
    for t in (1, 3):
        tie = F(int((qs[t] / qs[0]).p), int((qs[t] / qs[0]).q))
        assert steps_to(p, opt, tie) == t
        assert steps_to(p, opt, tie * (1 - F(1, 2**3000))) == t + 1 == brute_force_steps(p, opt, tie * (1 - F(1, 2**3000)), 5)


def test_small_counts_by_hand() -> None:
    """Counts derived by hand. GD(1/2) on lambda = 1, c = 1 (2 q_0 = 1): 2 q_t = (1/2)^(2t) <= 1/10
    first at t = 2. GD(1) on lambda = 1, 1/10 with c = 10, 1 (masses 100, 1/10; f = 0, 9/10): 2 q_1 =
    (1/10)(81/100) = 0.081 <= (1/100)(100.1) = 1.001, so t = 1, although the slowest rate 9/10
    alone would bracket ~22 steps. GD(1) on lambda = 2/3 (f = 1/3), tol = 3^-10 (1 - 2^-3000): q_5
    exceeds tol q_0 by a relative 2^-3000 (the exact fallback must say 'not yet'): t = 6."""
    assert steps_to(Quadratic.from_spectrum([1], [1]), GD(F(1, 2)), F(1, 10)) == 2
    assert steps_to(Quadratic.from_spectrum([1, F(1, 10)], [10, 1]), GD(1), F(1, 100)) == 1
    near = F(1, 3**10) * (1 - F(1, 2**3000))
    assert steps_to(Quadratic.from_spectrum([F(2, 3)], [1]), GD(1), near) == 6
    assert steps_to(Quadratic.from_spectrum([F(2, 3)], [1]), GD(1), F(1, 3**10)) == 5


def test_matrix_quadratic_counts_and_caps() -> None:
    """Muon (beta = 0) on L(W) = 1/2 tr(E^T M E), M = diag(2, 1), E_0 = I: the gradient M E stays
    diagonal positive, its polar factor is I, so E_t = (1 - t eta) I and q_t / q_0 = (1 - t/4)^2 for
    eta = 1/4: <= 1/10 first at t = 3 (0.0625; t = 2 gives 0.25). max_steps caps it (and Shampoo's
    count) like every other method; with eta = 10^-7 the default horizon of 10^4 steps runs out.
    tol = 1/4 = q_2 / q_0 is an exact tie: t = 2."""
    p = MatrixQuadratic([[2, 0], [0, 1]], [[1, 0], [0, 1]])
    assert steps_to(p, Muon(F(1, 4)), F(1, 10)) == 3 == steps_to(p, Muon(F(1, 4)), F(1, 10), max_steps=3)
    # tol = 1/4 = q_2 / q_0 exactly (dyadic iterates: the exact balls decide the tie at once)
    assert steps_to(p, Muon(F(1, 4)), F(1, 4)) == 2
    for opt in (Muon(F(1, 4)), Shampoo(F(1, 4))):
        N = steps_to(p, opt, F(1, 10))
        assert steps_to(p, opt, F(1, 10), max_steps=N) == N
        with pytest.raises(NoConvergenceError, match=f"within {N - 1} steps"):
            steps_to(p, opt, F(1, 10), max_steps=N - 1)
    with pytest.raises(NoConvergenceError, match="within 10000 steps"):
        steps_to(p, Muon(F(1, 10**7)), F(1, 10))
    with pytest.raises(InvalidInputError, match="max_steps"):
        steps_to(p, Muon(F(1, 4)), F(1, 10), max_steps=-1)


def test_jury_test_is_three_valued_on_balls() -> None:
    """_jury_unstable on balls: False when stability is proved (|a0| <= 1 and |a1| <= 1 + a0 hold on
    the whole balls), True when instability is, None when a ball straddles the boundary
    |a1| = 1 + a0 or |a0| = 1 (z^2 + (3/2) z + 1/2 = (z + 1)(z + 1/2) has a root on the unit circle,
    and a1 = 3/2 +- 2^-100 straddles it; likewise a0 = 1 +- 2^-100 with a1 = 0)."""
    from convrate.numerics.steps import _jury_unstable

    with arb_prec(128):
        third = arb(1) / 3
        assert _jury_unstable(-third, third / 2) is False  # roots of modulus < 1, balls decided
        assert _jury_unstable(-arb(5) / 2, third) is True  # |a1| = 5/2 > 1 + 1/3
        assert _jury_unstable(arb(-1), third) is False  # z^2 - z + 1/3: |z| = 3^-1/2 (|a1| > 1 - a0 is fine)
        # exact balls on the boundary: a root on the unit circle is not instability, decided
        assert _jury_unstable(arb(0), arb(1)) is False  # z^2 + 1: z = +-i
        assert _jury_unstable(arb(1.5), arb(0.5)) is False  # (z + 1)(z + 1/2)
        assert _jury_unstable(arb(1.5, 2.0**-100), arb(0.5)) is None
        assert _jury_unstable(arb(0), arb(1, 2.0**-100)) is None  # |a0| straddles 1


def test_best_fixed_step_default_grid() -> None:
    """The default grid has 48 points (the signature's documented default; the returned step depends
    on the grid on this instance)."""
    p = Quadratic.from_spectrum([1, F(5, 2), 7, 40], [3, -1, 2, 1])
    tol = F(1, 10**5)
    assert best_fixed_step(p, tol) == best_fixed_step(p, tol, grid=48)


def test_best_fixed_step_one_over_lambda_max() -> None:
    """Loss almost all on lambda_max = 100 (masses lambda c^2 = 1 and 10^6): eta = 1/100 removes that
    mode in one step, q_1 = (1/2)(99/100)^2 < 10^-3 q_0 ~ 500, so N(1/100) = 1; with grid = 3 no grid
    point (u = 1/3, 2/3 of 2/100) nor eta* = 2/101 comes within the window |1 - 100 eta| <= 0.0316
    that one step needs, so the candidate 1/lambda_max is the (first) one-step answer returned."""
    p = Quadratic.from_spectrum([1, 100], [1, 100])
    tol = F(1, 1000)
    assert steps_to(p, GD(F(1, 100)), tol) == 1
    assert all(steps_to(p, GD(eta), tol) > 1 for eta in (F(2, 101), F(2, 300), F(4, 300)))
    assert best_fixed_step(p, tol, grid=3) == (F(1, 100), 1)


@pytest.mark.parametrize("tol", [F(1, 10**3), F(1, 10**9)])
def test_best_fixed_step_uses_the_eigenvalues_not_the_masses(tol) -> None:
    """Spectrum 1, 6 with c = (3, 1/2): masses lambda c^2 = 9, 3/2 differ from the eigenvalues, and eta*
    is 2 / (1 + 6) = 2/7; no fixed step beats it here (the optimum over eta, computed independently,
    is N(2/7)), so best_fixed_step returns eta* itself (its documented tie preference). Likewise with a
    middle eigenvalue 3 (c = (3, 1, 1/2)): lambda_max is the last support point, not the second."""
    for lams, cs in (([1, 6], [3, F(1, 2)]), ([1, 3, 6], [3, 1, F(1, 2)])):
        p = Quadratic.from_spectrum(lams, cs)
        eta, N = best_fixed_step(p, tol)
        n_star = steps_to(p, GD(F(2, 7)), tol)
        assert n_star == _optimal_fixed_step_count(lams, cs, tol)  # no fixed step beats eta*
        assert (eta, N) == (F(2, 7), n_star)


def test_exact_losses_restart_for_an_earlier_t_and_the_bit_cap_is_inclusive(monkeypatch) -> None:
    """``_exact_losses`` (the exact-tie fallback) returns 2 q_t of the rational iterate for t asked
    in any order (forward from the last t, restarting for a smaller one), equal to the exact
    iteration's; an iterate of exactly ``_EXACT_BITS`` bits is allowed, one bit more is refused."""
    from convrate.numerics import steps

    p = Quadratic.from_spectrum([F(1, 3), 4, 7], [1, F(2, 5), 3])
    opt = GD(F(1, 7))
    iterates = run_exact(p, opt, 8)
    exact = [2 * p.loss(e) for e in iterates]
    two_q = steps._exact_losses(p, opt)
    for t in (3, 5, 2, 2, 0, 8, 4):
        assert two_q(t) == exact[t], t
    cap = max(steps._bits(e) for e in iterates[:6])
    assert steps._bits(iterates[6]) > cap  # the sizes grow on this instance
    monkeypatch.setattr(steps, "_EXACT_BITS", cap)
    two_q = steps._exact_losses(p, opt)
    assert two_q(5) == exact[5]
    with pytest.raises(PrecisionError, match=f"more than {cap} bits"):
        two_q(6)
    assert two_q(4) == exact[4]  # restarted after the refusal


@pytest.mark.parametrize("seed", range(40))
def test_diagonal_fast_path_is_the_lanczos_measure(seed) -> None:
    """For diagonal H and a diagonal preconditioner P (or LM damping D), ``measure_for`` builds the
    measure of A = P H (D^-1 H) from its diagonal; ``lanczos_measure`` of the same (A, e_0) with
    the H inner product gives the identical measure (the measure is unique and A's eigenvalues are
    rational): same exact points and masses, same total, no irrational part. Repeated
    eigenvalues and zero coordinates of e_0 included."""
    import random

    from convrate.numerics.krylov import lanczos_measure

    rng = random.Random(seed)
    n = rng.randint(1, 5)
    lam = [F(rng.randint(1, 9), rng.randint(1, 4)) for _ in range(n)]
    d = [F(rng.randint(1, 9), rng.randint(1, 4)) for _ in range(n)]
    if seed % 3 == 0:
        lam[0], d[0] = lam[-1], d[-1]
    c = [F(rng.randint(-3, 3), rng.randint(1, 3)) for _ in range(n)]
    c[0] = c[0] or F(1)
    p = Quadratic.from_spectrum(lam, c)
    diag = [[d[i] if i == j else 0 for j in range(n)] for i in range(n)]
    for opt, A in ((PreconditionedGD(F(1, 8), diag), "P"), (LM(1, D=diag), "D")):
        fast = measure_for(p, opt)
        Dm = fmpq_mat([[fmpq(x.numerator, x.denominator) for x in row] for row in diag])
        op = Dm * p.H if A == "P" else Dm.inv() * p.H
        slow = lanczos_measure(op, p.e0, p.H)
        assert tuple(fast.exact) == tuple(slow.exact) and fast.total == slow.total, (opt, fast, slow)
        assert len(slow.balls(64)) == len(slow.exact)
