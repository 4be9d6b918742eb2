"""Bounds of the inserted compensation layer (THEORY.md section 6: statements I, PREC-ALPHA, M).

Construction (SpecDef as described for the paper). W (m x n) = U Sigma V^T, a full SVD with
sigma_1 >= sigma_2 >= ... (padded with zeros to length m or n). For 1 <= k <= min(m, n) and
alpha > 0, d = (alpha, ..., alpha, 1, ..., 1) (k entries alpha). The released layer is

    W' = U diag(d_m) U^T W = W V diag(d_n) V^T = U diag(d) Sigma V^T   (top-k singular values x alpha)

and the inserted layer C is the inverse of the deformation on the side it sits:

    side "output":  y = C (W' x + b'),  C  = U diag(1/d_m) U^T  (m x m),  b' = C^-1 b,
    side "input":   y = W' (C x) + b,   C  = V diag(1/d_n) V^T  (n x n),

so the chain computes W x + b exactly in exact arithmetic; C carries no bias (the layer's
bias stays on W', transformed on the output side) and "s" below is the side's width (m or n).

Norms (exact for orthogonal U, V): ||W'||_F^2 = alpha^2 sum_{i<=k} sigma_i^2 + sum_{i>k} sigma_i^2,
||C||_F^2 = k / alpha^2 + (s - k), ||W'||_2 = max(alpha sigma_1, sigma_{k+1}),
||C||_2 = max(1/alpha, 1 if k < s). The precision amplification of the chain is

    rho = ||C||_2 ||W'||_2 / ||W||_2      (= alpha for alpha >= 1 and k < s; = 1 for k = s).

PREC-ALPHA (rigorous): the chain is a PREC pair (``bounds_precision``): output side P = W',
Q = C with (n_in, r, m_out) = (n, m, m); input side P = C, Q = W' with (n, n, m). So
``forward_error_bound`` bounds ||fl(chain(x)) - W x||_2 for the bias-free map (the bias is
added once at the end, identically with and without the defense).

I (joint training): the update of the product W = C W' under one GD step on (C, W') is
-eta (C C^T G + G W'^T W') + eta^2 G W'^T C^T G (output side), i.e. to first order the
preconditioner P = C C^T (x) I_n + I_m (x) W'^T W' (Kronecker sum, row-major vec), whose
eigenvalues are c_i + w_j (c = sigma(C)^2, w = sigma(W')^2 padded to n); with a bias b' on W'
(output side) the same law holds for the augmented [W' | b'] and [G | g_b]. The imbalance
Q = C^T C - W' W'^T is conserved by gradient flow, so lambda_max(W' W'^T) >= -lambda_min(Q)
= alpha^2 sigma_1^2 - alpha^-2 (alpha >= 1) for all time.

M (merge): fl(C W') in a format of unit roundoff u obeys |fl(C W') - C W'| <= gamma_s |C| |W'|
entrywise (Higham (3.5), inner length s), so ||fl(C W') - C W'||_F <= gamma_s ||C||_F ||W'||_F
(+ an underflow allowance); the merge removes s^2 parameters (s^2 + s with a bias on C).

Units: weights and outputs in the layer's units; alpha, rho dimensionless. No torch here.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import mpmath

from convrate.errors import InvalidInputError, PrecisionError
from convrate.theory import bounds_precision as bp
from convrate.theory.bounds import Real, mpf

SIDES = ("output", "input")


def check_side(side: str) -> str:
    if side not in SIDES:
        raise InvalidInputError(f"inserted side must be one of {', '.join(SIDES)}, got {side!r}")
    return side


def check_alpha(alpha: Any) -> Any:
    """alpha must be a finite number > 0 (returned unchanged, so rationals stay exact; a sympy
    symbol declared positive passes, for the symbolic derivations)."""
    if getattr(alpha, "is_Symbol", False) and getattr(alpha, "is_positive", False):
        return alpha
    try:
        ok = math.isfinite(float(alpha)) and float(alpha) > 0
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise InvalidInputError(f"alpha must be a finite number > 0, got {alpha!r}")
    return alpha


def check_rank(k: Any, m: int, n: int) -> int:
    """1 <= k <= min(m, n) (the number of singular values a W of shape m x n has)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= min(m, n):
        raise InvalidInputError(f"k must be an integer in [1, {min(m, n)}] for a {m}x{n} layer, got {k!r}")
    return k


def side_width(side: str, m: int, n: int) -> int:
    """s: the width of C (m on the output side, n on the input side)."""
    return m if check_side(side) == "output" else n


def _padded(sigmas: Sequence[Real], length: int) -> list:
    s = list(sigmas)
    if len(s) > length:
        raise InvalidInputError(f"{len(s)} singular values for a side of width {length}")
    if any(float(a) < 0 for a in s) or any(float(a) < float(b) for a, b in zip(s, s[1:])):
        raise InvalidInputError("singular values must be nonnegative and non-increasing")
    return s + [0] * (length - len(s))


def deformation(k: int, alpha: Any, s: int) -> list:
    """d = (alpha x k, 1 x (s - k)): the factors on the singular values (exact for rational alpha)."""
    return [alpha] * k + [1] * (s - k)


def frobenius_squares(sigmas: Sequence[Real], k: int, alpha: Any, s: int) -> tuple[Any, Any, Any]:
    """(||W'||_F^2, ||C||_F^2, ||W||_F^2), exact for rational inputs (module doc)."""
    check_alpha(alpha)
    sig = list(sigmas)
    if not 1 <= k <= min(len(sig), s):
        raise InvalidInputError(f"k = {k} outside [1, {min(len(sig), s)}]")
    w2 = sum((x * x for x in sig), 0 * alpha)
    top = sum((x * x for x in sig[:k]), 0 * alpha)
    return alpha * alpha * top + (w2 - top), k / (alpha * alpha) + (s - k), w2


def spectral_norms(sigmas: Sequence[Real], k: int, alpha: Real, s: int) -> tuple[mpmath.mpf, mpmath.mpf]:
    """(||W'||_2, ||C||_2) = (max(alpha sigma_1, sigma_{k+1}), max(1/alpha, 1 if k < s))."""
    a = mpf(check_alpha(alpha))
    sig = [mpf(x) for x in sigmas]
    wp = max(a * sig[0], sig[k] if k < len(sig) else mpf(0))
    c = max(1 / a, mpf(1) if k < s else mpf(0))
    return wp, c


def amplification(sigmas: Sequence[Real], k: int, alpha: Real, s: int) -> mpmath.mpf:
    """rho = ||C||_2 ||W'||_2 / ||W||_2: alpha for alpha >= 1 and k < s, 1 for k = s."""
    wp, c = spectral_norms(sigmas, k, alpha, s)
    return c * wp / mpf(sigmas[0])


def chain_dims(side: str, n: int, m: int) -> tuple[int, int, int]:
    """(n_in, r, m_out) of the PREC pair the chain is: output (n, m, m), input (n, n, m)."""
    return (n, m, m) if check_side(side) == "output" else (n, n, m)


def inserted_error_bound(dtype: str, side: str, n: int, m: int, norm_x: Real, norm_Wp: Real, norm_C: Real,
                         norm_W: Real) -> mpmath.mpf:
    """PREC-ALPHA (rigorous): ||fl(chain(x)) - W x||_2 for the bias-free chain of a layer W (m x n)
    on an input with ||x||_2 <= norm_x, given upper bounds on ||W'||_F, ||C||_F, ||W||_F:
    ``bounds_precision.forward_error_bound`` with P, Q the chain's first and second map."""
    a, r, b = chain_dims(side, n, m)
    P, Q = (norm_Wp, norm_C) if side == "output" else (norm_C, norm_Wp)
    return bp.forward_error_bound(dtype, a, r, b, norm_x, P, Q, norm_W, 0)


def alpha_form_bound(dtype: str, side: str, n: int, m: int, k: int, alpha: Real, sigmas: Sequence[Real],
                     norm_x: Real = 1) -> mpmath.mpf:
    """``inserted_error_bound`` with the closed-form norms of the exact construction (module doc)."""
    s = side_width(side, m, n)
    wp2, c2, w2 = frobenius_squares([mpf(x) for x in sigmas], k, mpf(alpha), s)
    return inserted_error_bound(dtype, side, n, m, norm_x, mpmath.sqrt(wp2), mpmath.sqrt(c2), mpmath.sqrt(w2))


def leading_order(dtype: str, side: str, n: int, m: int, k: int, alpha: Real, sigmas: Sequence[Real],
                  norm_x: Real = 1) -> mpmath.mpf:
    """First-order reading (not a bound): (2 u_c + gamma_a + gamma_r) ||C||_F ||W'||_F ||x|| +
    u_c ||W||_F ||x||, ~ (n + s + 2) u ||C||_F ||W'||_F ||x||; for alpha -> oo and k < s this is
    ~ (n + s + 2) u alpha sqrt(s - k) ||sigma_{1:k}|| ||x|| (linear in alpha, no sigma_1/sigma_k)."""
    fmt = bp.float_format(dtype)
    uc, _ = bp.cast_roundoff(dtype)
    a, r, _ = chain_dims(side, n, m)
    s = side_width(side, m, n)
    wp2, c2, w2 = frobenius_squares([mpf(x) for x in sigmas], k, mpf(alpha), s)
    coef = mpf(2 * uc + bp.gamma(a, fmt.u) + bp.gamma(r, fmt.u))
    return (coef * mpmath.sqrt(c2 * wp2) + mpf(uc) * mpmath.sqrt(w2)) * mpf(norm_x)


def no_overflow(dtype: str, side: str, n: int, m: int, k: int, alpha: Real, sigmas: Sequence[Real],
                max_abs_x: Real) -> bool:
    """``bounds_precision.no_overflow_guaranteed`` with entry / row-sum bounds from the spectral
    norms (|M_ij| <= ||M||_2, row sum <= sqrt(cols) ||M||_2): True = no overflow possible."""
    s = side_width(side, m, n)
    wp, c = spectral_norms(sigmas, k, alpha, s)
    a, r, _ = chain_dims(side, n, m)
    P, Q = (wp, c) if side == "output" else (c, wp)
    return bp.no_overflow_guaranteed(dtype, a, r, max_abs_x, P, Q, mpmath.sqrt(a) * P, mpmath.sqrt(r) * Q)


def certified_safe_alpha(dtype: str, side: str, n: int, m: int, k: int, sigmas: Sequence[Real], rtol: Real,
                         *, alpha_max: float = 1e16, per_decade: int = 8) -> float:
    """Largest alpha on the grid 10^(j / per_decade) in [1, alpha_max] such that at it and at every
    grid point below it the rigorous bound guarantees, for every input with ||x||_2 = 1, a relative
    error ||fl(chain(x)) - W x|| / ||W||_2 <= rtol and no overflow. 0.0 if alpha = 1 already fails.
    (Checked at every grid point: no monotonicity in alpha is assumed.)"""
    rt = mpf(rtol)
    if not (rt > 0):
        raise InvalidInputError(f"rtol must be > 0, got {rtol}")
    s1 = mpf(sigmas[0])
    if s1 <= 0:
        raise InvalidInputError("W = 0: the relative error is undefined")
    best = 0.0
    for j in range(0, int(round(math.log10(alpha_max) * per_decade)) + 1):
        a = 10.0 ** (j / per_decade)
        try:
            ok = (no_overflow(dtype, side, n, m, k, a, sigmas, 1)
                  and alpha_form_bound(dtype, side, n, m, k, a, sigmas, 1) / s1 <= rt)
        except PrecisionError:
            ok = False
        if not ok:
            break
        best = a
    return best


def joint_preconditioner_range(sigmas: Sequence[Real], k: int, alpha: Real, m: int, n: int,
                               side: str = "output") -> tuple[mpmath.mpf, mpmath.mpf]:
    """(lambda_min, lambda_max) of the first-order joint-training preconditioner at the release:
    output side P = C C^T (x) I_n + I_m (x) W'^T W' (eigenvalues c_i + w_j, c = sigma(C)^2 padded
    to m, w = sigma(W')^2 padded to n); input side P = W' W'^T (x) I_n + I_m (x) C^T C."""
    a = mpf(check_alpha(alpha))
    s = side_width(side, m, n)
    d = [mpf(x) for x in deformation(k, a, s)]
    c = [1 / (x * x) for x in d]
    sig = _padded([mpf(x) for x in sigmas], min(m, n))
    dd = [mpf(x) for x in deformation(k, a, len(sig))]
    w = [(x * y) ** 2 for x, y in zip(dd, sig)]
    w_in = w + [mpf(0)] * ((n if side == "output" else m) - len(w))
    return min(c) + min(w_in), max(c) + max(w_in)


def imbalance_diagonal(sigmas: Sequence[Real], k: int, alpha: Any, m: int) -> list:
    """Eigenvalues 1/d_i^2 - d_i^2 sigma_i^2 (i <= m) of Q = C^T C - W' W'^T at the release
    (output side, Q = U diag(.) U^T); exact for rational inputs."""
    d = deformation(k, check_alpha(alpha), m)
    sig = list(sigmas) + [0] * (m - len(sigmas))
    return [1 / (x * x) - x * x * s * s for x, s in zip(d, sig[:m])]


def imbalance_floor(sigma_1: Any, alpha: Any) -> Any:
    """alpha^2 sigma_1^2 - alpha^-2: lower bound on lambda_max(W'(t) W'(t)^T) along gradient
    flow from the release (alpha >= 1): W' W'^T = C^T C - Q >= -Q and -lambda_min(Q) is this."""
    return alpha * alpha * sigma_1 * sigma_1 - 1 / (alpha * alpha)


def merge_error_bound(dtype: str, s: int, rows: int, cols: int, norm_C: Real, norm_Wp: Real) -> mpmath.mpf:
    """M in floating point: ||fl(C W') - C W'||_F <= gamma_s ||C||_F ||W'||_F + c_s sqrt(rows cols)
    (inner length s; c_s the underflow allowance of ``bounds_precision.underflow_slack``)."""
    fmt = bp.float_format(dtype)
    return (mpf(bp.gamma(s, fmt.u)) * mpf(norm_C) * mpf(norm_Wp)
            + mpf(bp.underflow_slack(s, fmt)) * mpmath.sqrt(rows * cols))


def merge_extra_parameters(s: int, bias: bool = False) -> int:
    """Parameters the merge adds (negative): -(s^2) per inserted s x s layer, -(s^2 + s) with a bias."""
    if isinstance(s, bool) or not isinstance(s, int) or s < 1:
        raise InvalidInputError(f"width must be a positive integer, got {s!r}")
    return -(s * s + (s if bias else 0))


def storage_allowance(dtype: str, amplification_F: float) -> float:
    """Relative allowance for ||C^ W'^ - W||_F / ||W||_F when an exact chain is stored in ``dtype``:
    the casts give C^ W'^ - C W' = dC W' + C dW' + dC dW' with |dM| <= u_c |M| (+ underflow), so it
    is at most (2 u_c + u_c^2) a, a = ||C||_F ||W'||_F / ||W||_F; 4 u_c a covers it with room."""
    uc, _ = bp.cast_roundoff(dtype)
    return 4 * float(uc) * float(amplification_F)


__all__ = ["SIDES", "alpha_form_bound", "amplification", "certified_safe_alpha", "chain_dims", "check_alpha",
           "check_rank", "check_side", "deformation", "frobenius_squares", "imbalance_diagonal", "imbalance_floor",
           "inserted_error_bound", "joint_preconditioner_range", "leading_order", "merge_error_bound",
           "merge_extra_parameters", "no_overflow", "side_width", "spectral_norms", "storage_allowance"]
