"""Exact steps-to-target on the quadratic model: the smallest t with q_t <= tol * q_0.

What is exact, and how (every count returned is a certified integer):
- GD, PreconditionedGD, LM: closed form. With the spectral measure (mu_j, m_j) of
  ``numerics.krylov`` (exact rationals, or certified balls for irrational eigenvalues),
      q_t = 1/2 sum_j m_j f(mu_j)^(2t),   f(mu) = 1 - eta mu (GD, P GD),  lam / (mu + lam) (LM).
  Divergence iff some active |f(mu_j)| > 1 (DivergenceError naming mu_j and f, decided exactly
  or by certified balls; raised even where q_t would pass below the target transiently);
  modes with |f| = 1 never decay (NoConvergenceError when their loss is > tol q_0, or = tol q_0
  while another active mode decays without vanishing).
  Otherwise q_t is nonincreasing, and t is found by exponential search + bisection on t from
  the bracket ``bounds.gd_steps_upper_bound(rho, tol)``: O(n log t) work. Each comparison
  "q_t <= tol q_0" is decided by an arb ball of q_t that lies entirely on one side (precision
  doubled until it does), falling back, when the ball keeps straddling the target (an exact tie
  is possible: q_t and tol q_0 are rational), to the exact rational sum for a rational spectrum
  and to the loss of the exact rational iterate e_t otherwise; PrecisionError past 2^16 bits. So the
  answer t is proved by q_t <= tol q_0 and q_{t-1} > tol q_0 (arb balls are the rigorous error
  bound on the evaluation; mpmath is not used for the decisions).
- CG: exact rational CG (at most n steps; the rationals grow with the step, so this is for
  small n: see ``krylov.cg_run``).
- HeavyBall, Nesterov, GDSchedule: q_t = 1/2 sum_j m_j p_t(mu_j)^2 with the method's scalar
  recurrence per mode, scanned t = 1, 2, ... in arb balls with certified comparisons (exact
  rational recurrences decide a ball that straddles the target; these methods are not
  monotone, so no bisection); divergence detected by the Jury test per mode.
- Newton: 1 step (0 if e_0 = 0); exact.
- Adam, RMSprop, Adagrad, CubicNewton: no closed form; the iteration is run in arb ball
  arithmetic (every iterate a rigorous enclosure) up to ``max_steps`` and scanned with
  certified comparisons.
- L-BFGS, Newton-CG, Sophia (on a Quadratic) and Shampoo, Muon (on a ``MatrixQuadratic``):
  ``optimizers_second_order.steps_to_second_order`` (closed forms where the statements give one,
  else the exact or arb-ball iteration scanned by ``scan_ball_count``).
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Callable, Iterable

import mpmath
from flint import arb, fmpq, fmpq_mat

from convrate.errors import (DivergenceError, InvalidInputError, NoConvergenceError, PrecisionError,
                             ToleranceError)
from convrate.numerics.krylov import SpectralMeasure, cg_losses, diagonal_measure, lanczos_measure
from convrate.numerics.optimizers import (ADAPTIVE, CG, GD, LM, CubicNewton, GDSchedule, HeavyBall,
                                          Nesterov, Newton, PreconditionedGD, _spd, iter_ball,
                                          run_exact)
from convrate.numerics.quadratic import Quadratic, arb_prec, arb_to_mpf, fmpq_to_fraction, to_fmpq
from convrate.theory import bounds

__all__ = ["steps_to", "best_fixed_step", "iterate", "trajectory", "closed_form_loss", "measure_for",
           "brute_force_steps", "scan_ball_count",
           "DEFAULT_SCAN_STEPS", "DEFAULT_BALL_STEPS"]

#: default horizon of the scanned methods (heavy ball, Nesterov) and of ball iterations (Adam, cubic)
DEFAULT_SCAN_STEPS = 100_000
DEFAULT_BALL_STEPS = 10_000
_MAX_PREC = 1 << 16
_EXACT_BITS = 8_000_000  # an undecided ball comparison falls back to exact rationals up to this size
_EXACT_SCAN = 5_000  # same, for the scanned methods: exact recurrences up to this many steps


def _tol(tol: Any) -> fmpq:
    if isinstance(tol, fmpq):
        tol = fmpq_to_fraction(tol)
    try:
        bounds.check_tol(tol)  # ToleranceError for tol outside (0, 1), NaN, inf
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ToleranceError):
            raise
        raise ToleranceError(f"tolerance must be a number in (0, 1), got {tol!r}") from exc
    return to_fmpq(tol, "tol")


def _max_steps(max_steps: int | None, default: int | None) -> int | None:
    if max_steps is None:
        return default
    if int(max_steps) != max_steps or max_steps < 0:
        raise InvalidInputError(f"max_steps must be a nonnegative integer, got {max_steps}")
    return int(max_steps)


def _num(x: Any) -> Any:
    """fmpq -> Fraction, arb -> mpf midpoint (for messages and error attributes)."""
    if isinstance(x, fmpq):
        return fmpq_to_fraction(x)
    if isinstance(x, arb):
        man, exp = x.mid().man_exp()
        with mpmath.workprec(max(53, int(man).bit_length())):  # keep every bit of the midpoint
            return mpmath.mpf((int(man), int(exp))) if man != 0 else mpmath.mpf(0)
    return x


def _show(x: Any) -> str:
    v = _num(x)
    if isinstance(v, Fraction) and v.denominator == 1:
        return str(v.numerator)
    return mpmath.nstr(mpmath.mpf(v.numerator) / v.denominator if isinstance(v, Fraction) else v, 8)


# ---------------------------------------------------------------- spectral measures
def _operator(problem: Quadratic, opt: Any) -> tuple[str, fmpq_mat | None, list[fmpq] | None]:
    """(kind, A or None, diagonal scaling or None): A = H, P H, or D^-1 H."""
    n = problem.n
    if isinstance(opt, (GD, GDSchedule, CG, Newton)) or (isinstance(opt, (HeavyBall, Nesterov)) and opt.P is None):
        return "H", None, [fmpq(1)] * n
    if isinstance(opt, (PreconditionedGD, HeavyBall, Nesterov)):
        P = _spd(opt.P, n, "P")
        diag = [P[i, i] for i in range(n)] if all(P[i, j] == 0 for i in range(n) for j in range(n) if i != j) else None
        return "P", P * problem.H, diag
    if isinstance(opt, LM):
        if opt.D is None:
            return "H", None, [fmpq(1)] * n
        D = _spd(opt.D, n, "D")
        diag = [1 / D[i, i] for i in range(n)] if all(D[i, j] == 0 for i in range(n) for j in range(n) if i != j) else None
        return "D", D.inv() * problem.H, diag
    raise InvalidInputError(f"{type(opt).__name__} has no spectral measure")


def measure_for(problem: Quadratic, opt: Any) -> SpectralMeasure:
    """Exact spectral measure (mu_j, m_j) of the iteration operator of ``opt`` on ``problem``:
    A = H (GD, schedules, heavy ball, Nesterov, LM with D = I), P H (preconditioned), D^-1 H (LM),
    inner product G = H, start e_0; sum_j m_j = 2 q_0."""
    kind, A, diag = _operator(problem, opt)
    cache = problem.__dict__.setdefault("_measures", {})
    key = kind if kind == "H" else (kind, str(A))
    if key in cache:
        return cache[key]
    H, e0, n = problem.H, problem.e0, problem.n
    if problem.is_diagonal and diag is not None:
        lam = [H[i, i] for i in range(n)]
        meas = diagonal_measure([lam[i] * diag[i] for i in range(n)], [lam[i] * e0[i, 0] ** 2 for i in range(n)])
    else:
        meas = lanczos_measure(H if A is None else A, e0, H)
    cache[key] = meas
    return meas


# ---------------------------------------------------------------- certified comparisons
class _Modes:
    """Per-mode factors of a linear iteration, exact where rational and as balls otherwise;
    ``exact_sum(t)``, when given, is sum_j m_j f_j^(2t) = 2 q_t computed exactly another way
    (the rational iterate e_t: see ``_exact_losses``), for a tie no ball decides."""

    def __init__(self, meas: SpectralMeasure, factor: Callable[[Any], Any],
                 exact_sum: Callable[[int], fmpq] | None = None) -> None:
        self.meas = meas
        self.factor = factor
        self.exact_sum = exact_sum
        self.exact = [(mu, m, factor(mu)) for mu, m in meas.exact]
        self._balls: dict[int, list[tuple[arb, arb]]] = {}

    def balls(self, prec: int) -> list[tuple[arb, arb]]:
        """(f_j^2, m_j) balls for every mode at ``prec`` bits."""
        if prec not in self._balls:
            with arb_prec(prec):
                out = [(arb(f) * arb(f), arb(m)) for _, m, f in self.exact]
                for mu, m in self.meas.balls(prec)[len(self.exact):]:
                    f = self.factor(mu)
                    out.append((f * f, m))
            self._balls[prec] = out
        return self._balls[prec]

    def irrational_factors(self, prec: int) -> list[tuple[arb, arb]]:
        with arb_prec(prec):
            return [(mu, self.factor(mu)) for mu, _ in self.meas.balls(prec)[len(self.exact):]]


def _bits(e: fmpq_mat) -> int:
    """Size of a rational vector: the bits of all its numerators and denominators together."""
    return sum(e[i, 0].p.bit_length() + e[i, 0].q.bit_length() for i in range(e.nrows()))


def _exact_losses(problem: Quadratic, opt: Any) -> Callable[[int], fmpq]:
    """t -> 2 q_t = e_t^T H e_t exactly, e_t the rational iterate of the linear method ``opt``
    (GD, PreconditionedGD, LM: e_(t+1) = M e_t with M rational, so q_t is rational even when the
    spectrum of M is not); iterates forward from the last t asked (restarting for a smaller t).
    PrecisionError when an iterate's entries together exceed ``_EXACT_BITS`` bits."""
    from convrate.numerics.optimizers import _Exact, _linear_iter

    state: dict[str, Any] = {}

    def restart() -> None:
        state["it"], state["t"] = _linear_iter(problem, opt, _Exact()), -1

    def two_q(t: int) -> fmpq:
        if "it" not in state or t < state["t"]:
            restart()
        while state["t"] < t:
            state["e"], state["t"] = next(state["it"]), state["t"] + 1
            if _bits(state["e"]) > _EXACT_BITS:
                restart()
                raise PrecisionError(f"exact iterate {t} of {type(opt).__name__} has more than {_EXACT_BITS} bits")
        return 2 * problem.loss(state["e"])

    return two_q


def _reached_linear(modes: _Modes, t: int, target: fmpq) -> bool:
    """Certified decision of sum_j m_j f_j^(2t) <= target: an arb ball of the sum that lies on
    one side of the target (precision doubled while it straddles it), or, when the ball keeps
    straddling (an exact tie is possible: the sum and the target are both rational), the exact
    rational sum: over the modes for a rational measure, else ``modes.exact_sum``."""
    if t == 0:
        return modes.meas.total <= target
    bits = max((max(f.p.bit_length(), f.q.bit_length()) for _, _, f in modes.exact), default=1)
    prec = 96 + 2 * t.bit_length()
    while prec <= _MAX_PREC:
        with arb_prec(prec):
            s = sum((m * g ** t for g, m in modes.balls(prec)), arb(0))
            T = arb(target)
            if s <= T:
                return True
            if s > T:
                return False
        if modes.meas.is_exact and 2 * t * bits <= _EXACT_BITS:
            return sum((m * f ** (2 * t) for _, m, f in modes.exact), fmpq(0)) <= target
        if not modes.meas.is_exact and modes.exact_sum is not None and prec >= 1024:
            return modes.exact_sum(t) <= target
        prec *= 2
    raise PrecisionError(f"cannot decide q_{t} <= tol q_0 at {_MAX_PREC} bits (the two are equal or too close)")


def _classify(modes: _Modes, what: str, describe: Callable[[Any, Any], str]) -> tuple[fmpq, mpmath.mpf]:
    """Raise DivergenceError for an active mode with |f| > 1; return (exact mass of the modes
    with |f| = 1, an upper bound on max |f| over the decaying modes)."""
    stalled = fmpq(0)
    rho_q = fmpq(0)
    for mu, m, f in modes.exact:
        a = abs(f)
        if a > 1:
            raise DivergenceError(f"{what} diverges: {describe(mu, f)}", eigenvalue=_num(mu), factor=_num(f))
        if a == 1:
            stalled += m
        elif a > rho_q:
            rho_q = a
    with mpmath.workdps(50):
        rho = mpmath.mpf(int(rho_q.p)) / int(rho_q.q)
    prec = 128
    pending = modes.irrational_factors(prec)
    while pending:
        left = []
        for mu, f in pending:
            with arb_prec(prec):  # abs rounds to the context precision: at 53 bits |f| ~ 1 stays undecided
                a = abs(f)
            if a > 1:
                raise DivergenceError(f"{what} diverges: {describe(mu, f)}", eigenvalue=_num(mu), factor=_num(f))
            if a < 1:
                with mpmath.workdps(50):
                    mid, rad = arb_to_mpf(a)
                    rho = max(rho, mid + rad)
            else:
                left.append(mu)
        if not left:
            break
        prec *= 2
        if prec > _MAX_PREC:
            raise PrecisionError(f"cannot decide whether |factor| < 1 at eigenvalue {_show(left[0])}")
        pending = [(mu, f) for mu, f in modes.irrational_factors(prec) if any(mu.overlaps(x) for x in left)]
    return stalled, rho


def _count_monotone(modes: _Modes, tolq: fmpq, what: str, describe: Callable[[Any, Any], str],
                    max_steps: int | None) -> int:
    """Smallest t with sum_j m_j f_j^(2t) <= tol * sum_j m_j, all |f_j| <= 1 (see module doc)."""
    total = modes.meas.total
    if total == 0:
        return 0
    target = tolq * total
    stalled, rho = _classify(modes, what, describe)
    # q_t decreases to the stalled loss: strictly above it for every t when some decaying mode has
    # f != 0 (rho > 0); when every decaying mode has f = 0 (rho = 0), q_1 equals it, a tie included
    if stalled > target or (stalled == target and rho != 0):
        mu = next(mu for mu, m, f in modes.exact if abs(f) == 1)
        raise NoConvergenceError(
            f"{what} never reaches the target: the component at eigenvalue {_show(mu)} has |factor| = 1 "
            f"(never decays) and carries loss {_show(stalled / 2)} >= tol * q0 = {_show(target / 2)}")
    if rho == 0:
        hint = 1
    else:
        # bracket (a hint: the search below verifies it): q_t - s <= rho^(2t) (q_0 - s), s the
        # stalled loss, so t = gd_steps_upper_bound(rho, (tol q_0 - s) / (q_0 - s)) suffices.
        tol_eff = (target - stalled) / (total - stalled)
        with mpmath.workdps(50):
            rho_up = rho * (1 + mpmath.mpf(10) ** -40)
            hint = bounds.gd_steps_upper_bound(rho_up, fmpq_to_fraction(tol_eff)) if rho_up < 1 else 1
        hint = max(1, min(hint, 1 << 400))
    lo, hi = 0, hint
    while not _reached_linear(modes, hi, target):
        lo, hi = hi, 2 * hi
        if hi > 1 << 400:
            raise NoConvergenceError(f"{what}: no t <= 2^400 reaches the target")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _reached_linear(modes, mid, target):
            hi = mid
        else:
            lo = mid
    if max_steps is not None and hi > max_steps:
        raise NoConvergenceError(f"{what} needs {hi} steps, more than max_steps = {max_steps}")
    return hi


# ---------------------------------------------------------------- polynomial (scanned) methods
def _jury_unstable(a1: Any, a0: Any) -> bool | None:
    """z^2 + a1 z + a0 has a root with |z| > 1 iff |a0| > 1 or |a1| > 1 + a0 (True / False /
    None when a ball comparison is undecided)."""
    c1 = abs(a0) > 1
    c2 = abs(a1) > 1 + a0
    if c1 or c2:
        return True
    if isinstance(a0, fmpq) or (abs(a0) <= 1 and abs(a1) <= 1 + a0):
        return False
    return None


def _exact_poly_sum(meas: SpectralMeasure, opt: Any, t: int) -> fmpq:
    """sum_j m_j p_t(mu_j)^2 exactly (rational measure), by the exact scalar recurrences."""
    eta = to_fmpq(getattr(opt, "step", 1))
    beta = to_fmpq(getattr(opt, "momentum", 0))
    total = fmpq(0)
    for mu, m in meas.exact:
        x = xp = fmpq(1)
        for k in range(t):
            if isinstance(opt, GDSchedule):
                x = (1 - to_fmpq(opt.steps[k]) * mu) * x
            elif isinstance(opt, HeavyBall):
                x, xp = (1 + beta - eta * mu) * x - beta * xp, x
            else:
                x, xp = (1 - eta * mu) * ((1 + beta) * x - beta * xp), x
        total += m * x * x
    return total


def _scan(meas: SpectralMeasure, opt: Any, tolq: fmpq, horizon: int, what: str) -> int:
    """First t <= horizon with 1/2 sum m_j p_t(mu_j)^2 <= tol q_0 for heavy ball / Nesterov /
    schedules, scanning t in certified arb arithmetic (precision doubled on an undecided t)."""
    if meas.total == 0:
        return 0
    target = tolq * meas.total
    eta = to_fmpq(getattr(opt, "step", 1))
    beta = to_fmpq(getattr(opt, "momentum", 0))
    if isinstance(opt, (HeavyBall, Nesterov)):
        prec = 128
        pts: list[Any] = [mu for mu, _ in meas.exact]
        with arb_prec(prec):
            pts += [mu for mu, _ in meas.balls(prec)[len(meas.exact):]]
            for mu in pts:
                if isinstance(opt, HeavyBall):
                    a1, a0 = -(1 + beta - eta * mu), beta + 0 * mu
                else:
                    a1, a0 = -(1 - eta * mu) * (1 + beta), (1 - eta * mu) * beta
                if _jury_unstable(a1, a0):
                    raise DivergenceError(
                        f"{what} diverges: at eigenvalue {_show(mu)} the mode recurrence has a root of modulus > 1",
                        eigenvalue=_num(mu), factor=None)
    etas = [to_fmpq(s) for s in opt.steps] if isinstance(opt, GDSchedule) else None
    prec = 128
    while prec <= _MAX_PREC:
        with arb_prec(prec):
            modes = meas.balls(prec)
            T = arb(target)
            x = [arb(1)] * len(modes)
            xp = list(x)
            e_, b_ = arb(eta), arb(beta)
            undecided = False
            for t in range(1, horizon + 1):
                if etas is not None:
                    h = arb(etas[t - 1])
                    x = [(1 - h * mu) * xi for (mu, _), xi in zip(modes, x)]
                elif isinstance(opt, HeavyBall):
                    x, xp = [(1 + b_ - e_ * mu) * xi - b_ * xpi for (mu, _), xi, xpi in zip(modes, x, xp)], x
                else:
                    x, xp = [(1 - e_ * mu) * ((1 + b_) * xi - b_ * xpi) for (mu, _), xi, xpi in zip(modes, x, xp)], x
                s = sum((m * xi * xi for (_, m), xi in zip(modes, x)), arb(0))
                if s <= T:
                    return t
                if not s > T:
                    if prec >= 1024 and meas.is_exact and t <= _EXACT_SCAN:  # an exact tie? decide in rationals
                        if _exact_poly_sum(meas, opt, t) <= target:
                            return t
                        continue
                    undecided = True
                    break
            if not undecided:
                raise NoConvergenceError(f"{what} does not reach the target within {horizon} steps")
        prec *= 2
    raise PrecisionError(f"{what}: cannot decide q_t <= tol q_0 at {_MAX_PREC} bits")


def scan_ball_count(iterates: Callable[[int], Iterable[Any]], loss: Callable[[Any], arb], target: fmpq,
                    horizon: int, what: str, prec0: int = 256) -> int:
    """First t <= horizon with loss(x_t) <= target, x_0, x_1, ... = ``iterates(prec)``: arb-ball
    enclosures of an exact iteration computed at ``prec`` bits (``loss`` evaluated at the flint
    precision ``prec``). Each comparison is decided on the enclosure: "reached" only when the
    whole ball of q_t lies <= target, "not yet" only when it lies > target. A ball that straddles
    the target, a ball that has blown up (non-finite, also undecided), or a PrecisionError raised by
    the iteration (an undecided branch inside the update) restarts the scan from t = 0 at twice the
    precision; so rounding cannot flip the verdict, it can only force a restart. PrecisionError
    past 2^16 bits (an exact tie q_t = target, or an exact singularity of the update);
    NoConvergenceError when no t <= horizon reaches the target."""
    prec = prec0
    last: Exception | None = None
    while prec <= _MAX_PREC:
        try:
            with arb_prec(prec):
                T = arb(target)
            for t, x in enumerate(iterates(prec)):
                if t > horizon:
                    raise NoConvergenceError(f"{what} does not reach the target within {horizon} steps")
                with arb_prec(prec):
                    q = loss(x)
                    if q <= T:
                        return t
                    if not q > T:
                        raise PrecisionError(f"q_{t} <= tol q_0 undecided at step {t}")
            raise NoConvergenceError(f"{what}: the iteration stopped before reaching the target")
        except PrecisionError as exc:
            last = exc
        prec *= 2
    raise PrecisionError(f"{what}: {last} even at {_MAX_PREC} bits")


def _scan_ball(problem: Quadratic, opt: Any, tolq: fmpq, horizon: int, what: str) -> int:
    """First t <= horizon with q(e_t) <= tol q_0 along the arb-ball iteration of ``opt``."""
    return scan_ball_count(lambda prec: iter_ball(problem, opt, prec), problem.loss, tolq * problem.q0, horizon, what)


# ---------------------------------------------------------------- public API
def _gd_describe(eta: fmpq) -> Callable[[Any, Any], str]:
    def d(mu: Any, f: Any) -> str:
        return (f"step {_show(eta)} on eigenvalue {_show(mu)} gives |1 - eta*lambda| = {_show(abs(f))} > 1 "
                f"(needs eta < 2/lambda = {_show(2 / mu)})")
    return d


def steps_to(problem: Quadratic, optimizer: Any, tol: Any, max_steps: int | None = None) -> int:
    """Exact smallest t >= 0 with q(e_t) <= tol * q(e_0), tol in (0, 1) (see module doc for how
    each optimizer is counted and what is certified); ``problem`` a Quadratic, or a
    MatrixQuadratic for Shampoo and Muon.

    Raises ToleranceError (tol not in (0, 1)), DivergenceError (an active mode grows; carries
    ``eigenvalue`` and ``factor``), NoConvergenceError (a mode never decays and holds too much
    loss, or the target is not reached within ``max_steps`` / the horizon of an iterated
    method), PrecisionError (a comparison undecidable at 2^16 bits)."""
    tolq = _tol(tol)
    from convrate.numerics.optimizers_second_order import MATRIX, SECOND_ORDER, MatrixQuadratic, steps_to_second_order
    if isinstance(problem, MatrixQuadratic):  # Shampoo, Muon (statements SO-SHAMPOO, SO-MUON)
        return steps_to_second_order(problem, optimizer, tolq, _max_steps(max_steps, DEFAULT_BALL_STEPS))
    if not isinstance(problem, Quadratic):
        raise InvalidInputError(f"problem must be a Quadratic or a MatrixQuadratic, got {type(problem).__name__}")
    name = type(optimizer).__name__
    if problem.q0 == 0:
        return 0
    if isinstance(optimizer, (GD, PreconditionedGD)):
        eta = to_fmpq(optimizer.step)
        modes = _Modes(measure_for(problem, optimizer), lambda mu: 1 - eta * mu, _exact_losses(problem, optimizer))
        return _count_monotone(modes, tolq, name, _gd_describe(eta), _max_steps(max_steps, None))
    if isinstance(optimizer, LM):
        lam = to_fmpq(optimizer.damping)
        modes = _Modes(measure_for(problem, optimizer), lambda mu: lam / (mu + lam), _exact_losses(problem, optimizer))
        return _count_monotone(modes, tolq, name, lambda mu, f: f"factor {_show(f)}", _max_steps(max_steps, None))
    if isinstance(optimizer, Newton):
        if max_steps is not None and max_steps < 1:
            raise NoConvergenceError(f"Newton needs 1 step, more than max_steps = {max_steps}")
        return 1
    if isinstance(optimizer, CG):
        target = tolq * problem.q0
        for t, q in enumerate(cg_losses(problem.H, problem.e0)):
            if q <= target:
                if max_steps is not None and t > max_steps:
                    break
                return t
        raise NoConvergenceError(f"CG needs more than max_steps = {max_steps}")
    if isinstance(optimizer, (HeavyBall, Nesterov, GDSchedule)):
        horizon = _max_steps(max_steps, DEFAULT_SCAN_STEPS)
        if isinstance(optimizer, GDSchedule):
            horizon = min(horizon, len(optimizer.steps))
        return _scan(measure_for(problem, optimizer), optimizer, tolq, horizon, name)
    if isinstance(optimizer, ADAPTIVE + (CubicNewton,)):
        return _scan_ball(problem, optimizer, tolq, _max_steps(max_steps, DEFAULT_BALL_STEPS), name)
    if isinstance(optimizer, SECOND_ORDER + MATRIX):  # L-BFGS, Newton-CG, Sophia (statements SO-*)
        return steps_to_second_order(problem, optimizer, tolq, _max_steps(max_steps, DEFAULT_BALL_STEPS))
    raise InvalidInputError(f"unsupported optimizer {optimizer!r}")


def closed_form_loss(problem: Quadratic, optimizer: Any, t: int, prec: int = 256) -> Any:
    """q_t = 1/2 sum_j m_j f(mu_j)^(2t) from the closed form (GD, PreconditionedGD, LM): an exact
    fmpq when the measure is rational, else an arb ball at ``prec`` bits."""
    if isinstance(optimizer, (GD, PreconditionedGD)):
        eta = to_fmpq(optimizer.step)
        f = lambda mu: 1 - eta * mu  # noqa: E731
    elif isinstance(optimizer, LM):
        lam = to_fmpq(optimizer.damping)
        f = lambda mu: lam / (mu + lam)  # noqa: E731
    else:
        raise InvalidInputError(f"no closed form for {type(optimizer).__name__}")
    modes = _Modes(measure_for(problem, optimizer), f)
    if modes.meas.is_exact:
        return sum((m * f ** (2 * t) for _, m, f in modes.exact), fmpq(0)) / 2
    with arb_prec(prec):
        return sum((m * g ** t for g, m in modes.balls(prec)), arb(0)) / 2


def trajectory(problem: Quadratic, optimizer: Any, steps: int, prec: int = 256) -> list[Any]:
    """Brute-force iterates e_0..e_steps: exact fmpq_mat for the linear methods and CG, arb_mat
    balls at ``prec`` bits for Adam / RMSprop / Adagrad / CubicNewton."""
    if isinstance(optimizer, ADAPTIVE + (CubicNewton,)):
        from convrate.numerics.optimizers import run_ball
        return run_ball(problem, optimizer, steps, prec)
    return run_exact(problem, optimizer, steps)


def iterate(problem: Quadratic, optimizer: Any, steps: int, prec: int = 256) -> list[Any]:
    """Brute-force loss sequence q_0..q_steps (the cross-check of the closed forms): exact fmpq
    for the rational methods, arb balls for the irrational ones (see ``trajectory``)."""
    out = []
    for e in trajectory(problem, optimizer, steps, prec):
        if isinstance(e, fmpq_mat):
            out.append(problem.loss(e))
        else:
            with arb_prec(prec):
                out.append(problem.loss(e))
    return out


def brute_force_steps(problem: Quadratic, optimizer: Any, tol: Any, max_steps: int, max_bits: int | None = None) -> int:
    """Smallest t <= max_steps with q_t <= tol q_0 by exact rational iteration (rational methods
    only, the SO-* ones of ``optimizers_second_order`` included): the independent cross-check of
    ``steps_to``. NoConvergenceError past max_steps; PrecisionError when an iterate's entries
    together exceed ``max_bits`` bits (numerators and denominators; None: no cap) before that."""
    tolq = _tol(tol)
    target = tolq * problem.q0
    from convrate.numerics.optimizers import LINEAR, _Exact, _linear_iter
    from convrate.numerics.optimizers_second_order import SECOND_ORDER, exact_iterator
    if isinstance(optimizer, CG):
        it: Iterable[fmpq_mat] = run_exact(problem, optimizer, max_steps)
    elif isinstance(optimizer, LINEAR):
        it = _linear_iter(problem, optimizer, _Exact())
    elif isinstance(optimizer, SECOND_ORDER):
        it = exact_iterator(problem, optimizer)
    else:
        raise InvalidInputError(f"{type(optimizer).__name__} has no exact rational iteration")
    for t, e in enumerate(it):
        if t > max_steps:
            break
        if max_bits is not None:
            bits = _bits(e)
            if bits > max_bits:
                raise PrecisionError(f"{type(optimizer).__name__}: exact iterate {t} has {bits} bits > {max_bits}")
        if problem.loss(e) <= target:
            return t
    raise NoConvergenceError(f"{type(optimizer).__name__} does not reach the target within {max_steps} steps")


# ---------------------------------------------------------------- best fixed step
def best_fixed_step(problem: Quadratic, tol: Any, grid: int = 48) -> tuple[Fraction, int]:
    """(eta, N(eta)): a fixed GD step with the smallest exact count N found, and that count.

    N(eta) = steps_to(problem, GD(eta), tol) is exact (certified) for every eta tried; N is
    piecewise constant in eta. The minimum over eta in (0, 2/lambda_max) is a SEARCH, not a
    proof: candidates are eta* = 2/(lambda_min + lambda_max) (``bounds.best_fixed_step``, over
    the active eigenvalues; a rational within ~2^-79 relative of it when they are irrational),
    1/lambda_max, a grid of ``grid`` points u * 2/lambda_max, u in (0, 1), and a golden-section
    refinement around the best of those. Hence N(returned eta) <= N(eta*) always."""
    tolq = _tol(tol)
    if problem.q0 == 0:
        return Fraction(0), 0
    meas = measure_for(problem, GD(1))
    lo, hi = meas.lambda_range(256)
    # the midpoints of the extreme eigenvalue balls, exactly (``_num`` keeps every bit)
    lmin = meas.exact[0][0] if meas.is_exact else to_fmpq(_num(lo))
    lmax = meas.exact[-1][0] if meas.is_exact else to_fmpq(_num(hi))
    cache: dict[fmpq, float] = {}

    def N(eta: fmpq) -> float:
        if eta not in cache:
            try:
                cache[eta] = steps_to(problem, GD(eta), tolq)
            except (DivergenceError, NoConvergenceError):
                cache[eta] = math.inf
        return cache[eta]

    def limit(x: fmpq, bits: int = 80) -> fmpq:
        """A rational within 2^(1 - bits) relative of x > 0 and of ~``bits`` significant bits (keeps
        the exact arithmetic cheap): x = s y with s a power of 2 and y in (1/2, 2), y rounded to a
        denominator <= 2^bits. Relative, so that a step of any scale (lambda_max > 2^80) stays > 0."""
        f = fmpq_to_fraction(x)
        s = Fraction(2) ** (f.numerator.bit_length() - f.denominator.bit_length())
        f = (f / s).limit_denominator(1 << bits) * s
        return fmpq(f.numerator, f.denominator)

    scale = 2 / lmax
    eta_star = limit(2 / (lmin + lmax))  # bounds.best_fixed_step, exactly
    cands = [eta_star, limit(1 / lmax)] + [limit(scale * fmpq(k, grid)) for k in range(1, grid)]
    for c in cands:
        N(c)
    best = min(cache, key=lambda e: (cache[e], e != eta_star))
    # golden-section on u = eta / scale around the best candidate: 30 steps shrink the bracket
    # [a, b] (width <= 2/grid) by the golden ratio g = (sqrt 5 - 1)/2 each, to <= 2/grid g^30 ~ 1e-6/grid
    g = Fraction((math.sqrt(5) - 1) / 2).limit_denominator(1 << 30)
    u0 = fmpq_to_fraction(best / scale)
    a, b = max(Fraction(0), u0 - Fraction(1, grid)), min(Fraction(1), u0 + Fraction(1, grid))
    for _ in range(30):
        c, d = b - g * (b - a), a + g * (b - a)
        ec, ed = limit(scale * to_fmpq(c)), limit(scale * to_fmpq(d))
        if N(ec) <= N(ed):
            b = d
        else:
            a = c
    best = min(cache, key=lambda e: (cache[e], e != eta_star))
    if cache[best] == math.inf:
        raise NoConvergenceError("no fixed step tried reaches the target")
    return fmpq_to_fraction(best), int(cache[best])
