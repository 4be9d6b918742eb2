"""Certified (exactly decided) versions of the integer step bounds of ``theory.bounds``.

``bounds.steps_from_rate(rho, tol, const)`` = ceil(ln(tol/const) / (2 ln rho)) is computed in
mpmath at the caller's precision, and tol itself is rounded when converted to mpf: at the
default 15 digits the result is off by thousands for kappa ~ 1e10, and at any precision it can
be off by one when tol = const * rho^(2k) exactly (the ceiling of an exact integer). The
functions here return the same mathematical quantity, decided exactly:

    steps_from_rate_certified(rho, tol, const) = min { t >= 0 integer : const * rho^(2t) <= tol },

which for rho in (0, 1) equals ceil(ln(tol/const) / (2 ln rho)) (0 if tol >= const). A candidate
t from a ball estimate of the logarithm ratio is confirmed by deciding const rho^(2t) <= tol and
const rho^(2(t-1)) > tol with arb balls (precision doubled until decided) or, for rational
inputs whose ball comparison stays undecided (an exact tie), in exact rationals. Inputs are
int / Fraction / fmpq (exact); rho may instead be given as a squared-root expression through
``cg_steps_upper_bound_certified``.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Any

import flint
from flint import arb, fmpq, fmpz

from convrate.errors import PrecisionError, ToleranceError

__all__ = ["steps_from_rate_certified", "gd_steps_upper_bound_certified",
           "gd_worst_case_steps_certified", "cg_steps_upper_bound_certified"]

_MAX_PREC = 1 << 15
#: largest t for which a tie const rho^(2t) = tol is decided by exact rational powers (beyond it the
#: ball comparison decides at a raised precision; a tie there would need a 10^5-digit tolerance)
_EXACT_POWER_LIMIT = 10**5


def _q(x: Any) -> fmpq:
    if isinstance(x, fmpq):
        return x
    if isinstance(x, int):
        return fmpq(x)
    if isinstance(x, Fraction):
        return fmpq(x.numerator, x.denominator)
    if isinstance(x, float):
        f = Fraction(x)
        return fmpq(f.numerator, f.denominator)
    raise TypeError(f"exact rational expected, got {type(x).__name__}")


def _check(tol: fmpq) -> None:
    if not (0 < tol < 1):
        raise ToleranceError(f"tolerance must lie in (0, 1), got {tol}")


class _Prec:
    def __init__(self, bits: int) -> None:
        self.bits = bits

    def __enter__(self) -> None:
        self.old = flint.ctx.prec
        flint.ctx.prec = self.bits

    def __exit__(self, *a: object) -> None:
        flint.ctx.prec = self.old


def _decide_le(lhs_ball: Any, rhs: fmpq, exact: Any) -> bool:
    """Decide lhs <= rhs: by the ball if it is on one side, else exactly via ``exact()``."""
    R = arb(rhs)
    if lhs_ball <= R:
        return True
    if lhs_ball > R:
        return False
    if exact is None:
        raise PrecisionError("undecided comparison")
    return exact() <= rhs


def _smallest_t(rho_ball: Any, rho_exact: fmpq | None, tol: fmpq, const: fmpq, prec0: int = 128) -> int:
    """min t >= 0 with const rho^(2t) <= tol, for 0 <= rho < 1 given as a ball builder."""
    if const <= tol:
        return 0
    prec = prec0
    while prec <= _MAX_PREC:
        with _Prec(prec):
            rho = rho_ball()
            if rho_exact is not None and rho_exact == 0:
                return 1
            if not (rho < 1) or not (rho > 0):
                prec *= 2
                continue
            # 0 < rho < 1 and 0 < tol < const are certain here, so x is a finite ball: an estimate
            # of t that the two walks below correct to the exact answer
            x = (arb(tol) / arb(const)).log() / (2 * rho.log())
            t = max(int(x.mid().ceil().unique_fmpz()), 1)

            def value(k: int) -> Any:
                return arb(const) * (rho * rho) ** k

            def exact(k: int) -> Any:
                # an exact power with a huge exponent does not fit in memory: decide by raising the precision
                if rho_exact is None or k > _EXACT_POWER_LIMIT:
                    return None
                return lambda: const * rho_exact ** (2 * k)

            try:
                # walk to the exact answer from the estimate (a few steps at most)
                while not _decide_le(value(t), tol, exact(t)):
                    t += 1
                while t > 0 and _decide_le(value(t - 1), tol, exact(t - 1)):
                    t -= 1
                return t
            except PrecisionError:
                prec *= 2
    raise PrecisionError(f"cannot decide the step bound at {_MAX_PREC} bits")


def steps_from_rate_certified(rho: Any, tol: Any, const: Any = 1) -> int:
    """Exact min { t >= 0 : const rho^(2t) <= tol } for rational rho in [0, 1), tol in (0, 1), const > 0."""
    r, t, c = _q(rho), _q(tol), _q(const)
    _check(t)
    if not (0 <= r < 1):
        raise ValueError(f"rate must lie in [0, 1), got {r}")
    return _smallest_t(lambda: arb(r), r, t, c)


def gd_steps_upper_bound_certified(rho: Any, tol: Any) -> int:
    """Certified ``bounds.gd_steps_upper_bound``: min { t : rho^(2t) <= tol }."""
    return steps_from_rate_certified(rho, tol)


def gd_worst_case_steps_certified(kappa: Any, tol: Any) -> int:
    """Certified ``bounds.gd_worst_case_steps``: rho = (kappa - 1) / (kappa + 1), rational kappa >= 1."""
    k = _q(kappa)
    if k < 1:
        raise ValueError(f"condition number must be >= 1, got {k}")
    return steps_from_rate_certified((k - 1) / (k + 1), tol)


def cg_steps_upper_bound_certified(kappa: Any, tol: Any) -> int:
    """Certified ``bounds.cg_steps_upper_bound``: min { t : 4 rho^(2t) <= tol }, rho = (sqrt k - 1)/(sqrt k + 1).

    When kappa is the square of a rational, rho is rational and ties are decided exactly.
    Otherwise s = sqrt(kappa) is irrational and the Galois conjugate of rho in Q(s) is 1/rho, so
    rho^(2t) rational would force rho^(4t) = 1: impossible for kappa > 1. Hence rho^(2t) never
    equals a rational for t >= 1, and the ball comparisons always terminate."""
    k = _q(kappa)
    tq = _q(tol)
    _check(tq)
    if k < 1:
        raise ValueError(f"condition number must be >= 1, got {k}")
    rp, rq = fmpz(k.p).sqrtrem(), fmpz(k.q).sqrtrem()
    if rp[1] == 0 and rq[1] == 0:
        s = fmpq(rp[0], rq[0])
        return steps_from_rate_certified((s - 1) / (s + 1), tq, 4)

    def ball() -> Any:
        s = arb(k).sqrt()
        return (s - 1) / (s + 1)

    return _smallest_t(ball, None, tq, fmpq(4))
