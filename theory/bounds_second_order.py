"""Bound functions of the second-order and preconditioned attackers (statements SO-*).

Plain functions of real numbers (mpmath at the caller's precision); no torch.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Iterable

import mpmath
from mpmath import mpf

from convrate.errors import InvalidInputError
from convrate.theory.bounds import steps_from_rate

Real = float | int | mpf | Fraction


def _mp(x: Real) -> mpf:
    """mpf of an int / float / mpf / Fraction (Fractions divided at the working precision)."""
    if isinstance(x, Fraction):
        return mpf(x.numerator) / x.denominator
    return mpf(x)


def _kappa(kappa: Real) -> mpf:
    k = _mp(kappa)
    if not k >= 1:
        raise InvalidInputError(f"condition number must be >= 1, got {kappa}")
    return k


def newton_cg_rate(kappa: Real, inner: int) -> mpf:
    """SO-NEWTON-CG on a quadratic: one outer step with k = ``inner`` CG steps on H p = H e
    (lambda = 0) leaves e+ = e - p_k with ||e+||_H <= 2 rho^k ||e||_H, rho = (sqrt k - 1)/
    (sqrt k + 1), kappa = kappa(H) (CG's Chebyshev bound, F2): the outer contraction factor
    of the error H-norm (a bound; values >= 1 say nothing)."""
    s = mpmath.sqrt(_kappa(kappa))
    if int(inner) != inner or inner < 1:
        raise InvalidInputError(f"inner CG steps must be a positive integer, got {inner}")
    return 2 * ((s - 1) / (s + 1)) ** int(inner)


def newton_cg_defended_rate(kappa_T: Real, kappa_H: Real, inner: int) -> mpf:
    """SO-NEWTON-CG under T: the inner CG on H' = T^-T H T^-1 contracts at most as fast as
    newton_cg_rate(kappa(T)^2 kappa(H), k) (T3: kappa(H') <= kappa(T)^2 kappa(H))."""
    return newton_cg_rate(_kappa(kappa_T) ** 2 * _kappa(kappa_H), inner)


def newton_cg_steps_upper_bound(kappa: Real, inner: int, tol: Real) -> int:
    """Outer steps to q_t <= tol q_0 implied by ``newton_cg_rate`` (q ~ ||e||_H^2): the
    smallest t with rate^(2t) <= tol; raises when the rate bound is >= 1."""
    rho = newton_cg_rate(kappa, inner)
    if rho >= 1:
        raise InvalidInputError(f"the inner-CG bound 2 rho^k = {mpmath.nstr(rho, 6)} >= 1 gives no rate; "
                                f"use more inner steps")
    return steps_from_rate(rho, tol)


def shampoo_step_scale(c: Real, p: Real) -> mpf:
    """SO-SHAMPOO: under W' = c Q W (c > 0, Q orthogonal) with eps = 0, Shampoo's step on W'
    mapped back is c^(4p - 2) times the undefended step (an effective learning rate
    lr c^(4p - 2)); 1 for p = 1/2, 1/c for the default p = 1/4, c^-2 for GD (p = 0)."""
    c = _mp(c)
    if not c > 0:
        raise InvalidInputError(f"scale c must be positive, got {c}")
    return c ** (4 * _mp(p) - 2)


def shampoo_spread_exponent(p: Real) -> mpf:
    """SO-SHAMPOO on row-aligned instances under a one-sided A with singular values s_i: the
    effective per-row steps lr s_i^(4p-2) spread by kappa(A)^|2 - 4p|: this exponent."""
    return abs(2 - 4 * _mp(p))


def sophia_equivalent_hyperparameters(step: Real, gamma: Real, eps: Real, D: Iterable[Real]
                                      ) -> list[tuple[mpf, mpf, mpf]]:
    """SO-SOPHIA: Sophia on L'(theta') = L(D^-1 theta') (D > 0 diagonal) equals Sophia on L with
    per-coordinate (step, gamma, eps) = (step / D_i, gamma / D_i, eps D_i)."""
    out = []
    for d in D:
        d = _mp(d)
        if not d > 0:
            raise InvalidInputError(f"D must be positive, got {d}")
        out.append((_mp(step) / d, _mp(gamma) / d, _mp(eps) * d))
    return out


def muon_step_singular_interval(sigma_min_A: Real, sigma_max_A: Real) -> tuple[mpf, mpf]:
    """SO-MUON: under W' = A W (A invertible) the mapped-back update A^-1 polar(A^-T M) of a
    full-rank square momentum M has singular values in [1/sigma_max(A), 1/sigma_min(A)] (the
    undefended polar factor has all singular values 1): a spread of kappa(A)."""
    lo, hi = _mp(sigma_min_A), _mp(sigma_max_A)
    if not 0 < lo <= hi:
        raise InvalidInputError(f"need 0 < sigma_min <= sigma_max, got {sigma_min_A}, {sigma_max_A}")
    return 1 / hi, 1 / lo


def lbfgs_exact_line_search_steps(kappa_T: Real, kappa_H: Real, tol: Real) -> int:
    """SO-LBFGS: with exact line searches on a quadratic L-BFGS(m) produces the CG iterates on
    H' = T^-T H T^-1, so it needs at most cg_steps_upper_bound(kappa(T)^2 kappa(H), tol) steps."""
    from convrate.theory.bounds import cg_steps_upper_bound

    return cg_steps_upper_bound(_kappa(kappa_T) ** 2 * _kappa(kappa_H), tol)
