"""PREC: a rigorous floating-point error bound for a defended S1 pair, and its overflow test.

Setting. A linear pair y = W_b W_a x (W_a: r x n, W_b: m x r, x in R^n) is defended by
A in GL(r): P = A W_a, Q = W_b A^-1, so Q P = W_b W_a. The reparameterization is done in
high or exact precision (``P~``, ``Q~``: the stored-before-casting weights, with residual
Delta = Q~ P~ - W_b W_a, zero when done exactly); then P~, Q~ and x are cast to a binary
format ``d`` and the forward pass y^ = fl(Q^ fl(P^ x^)) runs in ``d``. Statement PREC
bounds ||y^ - W_b W_a x||_2.

Floating-point model (Higham, *Accuracy and Stability of Numerical Algorithms*, ch. 2-3),
for a format with p significand bits, unit roundoff u = 2^-p, smallest positive normal
eta = 2^e_min, largest finite Omega = (2 - 2^(1-p)) 2^e_max, and no overflow:

(M1) rounding to nearest: fl(t) = t (1 + delta) + e, |delta| <= u, |e| <= eta. The absolute
     slack covers gradual underflow (|e| <= eta u), flush-to-zero (|e| < eta) and both.
(M2) cast chain. Python rounds an exact rational to fp64 correctly; torch casts fp64 to a
     narrower format through fp32. Along a chain of roundings with (u_i, eta_i), where an
     operand in the subnormal range may also be read as 0 by the kernel (denormals-are-zero,
     one more eta_i), induction on |x_j - x| <= a_j |x| + b_j gives
         a_j = (1 + a_{j-1})(1 + u_j) - 1,   b_j = (1 + u_j) b_{j-1} + 2 eta_j,
     so fl_cast(t) = t + dt with |dt| <= u_c |t| + eta_c (``cast_roundoff``). A chain that is
     really shorter (a direct cast) only has a smaller error.
(M3) inner products. For s = sum_{i<=k} a_i b_i evaluated in d in ANY order, with or without
     fused multiply-add: |s^ - s| <= gamma_k sum |a_i b_i| + c_k, with
         gamma_k = k u / (1 - k u)  (needs k u < 1),   c_k = 2 (2k + 1)(1 + gamma_k) eta.
     The relative part is Higham (3.5). Absolute part: each of the k products and k - 1 sums
     adds an underflow error <= eta, which later factors (1 + delta) multiply by at most
     1 + gamma_k, and a denormals-are-zero read of s^ by the next layer adds one more eta:
     (2k - 1)(1 + gamma_k) eta + eta <= c_k.
     Accumulating instead in a wider format w (u_w <= u^2 / 2, eta_w <= eta, k u_w <= 1/4)
     and rounding once to d (torch's CPU kernels for bf16 / fp16 accumulate in fp32) obeys
     the same bound: its error is at most
         (u + (1 + u) gamma_k(u_w)) sum|a_i b_i| + (1 + u)(2k - 1)(1 + gamma_k(u_w)) eta + 2 eta
     (wide rounding, then the final rounding or flush, then the DAZ read), and
       u + (1 + u) gamma_k(u_w) <= gamma_k(u): gamma_k(u) - u >= (k - 1) u + k^2 u^2, and
         (1 + u) gamma_k(u_w) <= u^2 for k = 1, <= 4 k u_w <= 2 k u^2 <= k^2 u^2 for k >= 2;
       (1 + u)(2k - 1)(1 + gamma_k(u_w)) + 2 <= 2 (2k - 1) + 2 = 4k <= 2 (2k + 1),
         since (1 + u)(1 + gamma_k(u_w)) <= 2.
     Every partial sum obeys the same bound as the full sum, which the overflow test uses.
     fp32 matmuls must run at full fp32 precision (torch float32 matmul precision "highest").

Derivation (entrywise |.|, 1 the all-ones vector; vector norms 2-norms, matrix norms
Frobenius, which bound the 2-norm and satisfy || |M| ||_F = ||M||_F):

 1. casts (M2):  x^ = x + dx, P^ = P~ + dP, Q^ = Q~ + dQ,
                 |dx| <= u_c |x| + eta_c 1,  |dP| <= u_c |P~| + eta_c 1 1^T,  same for dQ.
 2. layers (M3): h^ = P^ x^ + e1,  |e1| <= gamma_n |P^| |x^| + c_n 1,
                 y^ = Q^ h^ + e2,  |e2| <= gamma_r |Q^| |h^| + c_r 1.
 3. exact expansion (no term dropped):
       y^ - W_b W_a x = Delta x + Q~P~ dx + Q~ dP x^ + Q~ e1 + dQ h^ + e2,
    from Q^ h^ = Q~ (P~ + dP)(x + dx) + Q~ e1 + dQ h^.
 4. norms, with || 1 1^T |v| ||_2 = sqrt(rows) ||v||_1 <= sqrt(rows * cols) ||v||_2:
       X1 = ||x^||    <= (1 + u_c) ||x|| + eta_c sqrt(n)
       P1 = ||P^||_F  <= (1 + u_c) ||P~||_F + eta_c sqrt(r n)
       Q1 = ||Q^||_F  <= (1 + u_c) ||Q~||_F + eta_c sqrt(m r)
       E1 = ||e1||    <= gamma_n P1 X1 + c_n sqrt(r)
       H1 = ||h^||    <= P1 X1 + E1
       T_res = ||Delta||_F ||x||
       T_x   = ||Q~P~||_F (u_c ||x|| + eta_c sqrt(n))
       T_P   = ||Q~||_F (u_c ||P~||_F + eta_c sqrt(r n)) X1
       T_1   = ||Q~||_F E1
       T_Q   = (u_c ||Q~||_F + eta_c sqrt(m r)) H1
       T_2   = gamma_r Q1 H1 + c_r sqrt(m)
    ||y^ - W_b W_a x||_2 <= T_res + T_x + T_P + T_1 + T_Q + T_2   (``forward_error_bound``).
 5. scaling. With an exact reparameterization (Delta = 0), ||P||_F <= ||A||_2 ||W_a||_F and
    ||Q||_F <= ||A^-1||_2 ||W_b||_F, so ||Q|| ||P|| <= kappa(A) ||W_b||_F ||W_a||_F and, to first
    order in u (the bound is exact, this is only its reading):
       ||y^ - y|| <~ (2 u_c + gamma_n + gamma_r) kappa(A) ||W_b||_F ||W_a||_F ||x||
                     + u_c ||W_b W_a||_F ||x||,
    i.e. (n + r + 2) u kappa(A) ||W_b|| ||W_a|| ||x|| plus the undefended cast error of x
    (``leading_order_model``). At kappa(A) = 1 it is the undefended bound. Every term of
    step 4 is nondecreasing in u, u_c, eta, eta_c and in each norm (``kappa_form_bound``
    plugs the kappa bounds into the rigorous form).

Overflow (``overflow_certain``, ``no_overflow_guaranteed``). Rounding is monotone and each
cast threshold below is representable in every earlier format of the chain, so a stored
entry with |t| >= (2 - 2^-p) 2^e_max (``FloatFormat.overflow_threshold``) certainly becomes
+-inf. Conversely, by (M2) and (M3) entrywise, every cast entry, every hidden entry and every
partial sum is at most
       (1 + u_c) max|t| + eta_c,
       H_inf = (1 + gamma_n) ((1 + u_c) ||P~||_inf + n eta_c) ((1 + u_c) ||x||_inf + eta_c) + c_n,
       Y_inf = (1 + gamma_r) ((1 + u_c) ||Q~||_inf + r eta_c) H_inf + c_r
(||.||_inf of a matrix the largest absolute row sum), so if all are <= Omega nothing
overflows (then the finite outputs obey the bound above).

Units: all quantities are in the units of the outputs y; u, eta exact powers of two
(``fractions.Fraction``); real results mpmath mpf at the caller's precision. No torch here.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import mpmath

from convrate.errors import InvalidInputError, PrecisionError
from convrate.theory.bounds import Real, mpf


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: p significand bits (implicit bit included),
    normal exponents e_min..e_max."""

    name: str
    p: int
    emin: int
    emax: int

    @property
    def u(self) -> Fraction:
        """Unit roundoff u = 2^-p (round to nearest)."""
        return Fraction(1, 2**self.p)

    @property
    def eta(self) -> Fraction:
        """Smallest positive normal 2^e_min: the absolute slack of one rounding near 0."""
        return Fraction(1, 2 ** (-self.emin))

    @property
    def max_finite(self) -> Fraction:
        """Omega = (2 - 2^(1-p)) 2^e_max, the largest finite value."""
        return (2 - Fraction(2, 2**self.p)) * 2**self.emax

    @property
    def overflow_threshold(self) -> Fraction:
        """(2 - 2^-p) 2^e_max: round-to-nearest sends |t| >= this to +-inf (ties to even)."""
        return (2 - Fraction(1, 2**self.p)) * 2**self.emax


#: the formats of PREC (IEEE binary64, binary32, binary16 and bfloat16)
FORMATS: dict[str, FloatFormat] = {
    "fp64": FloatFormat("fp64", 53, -1022, 1023),
    "fp32": FloatFormat("fp32", 24, -126, 127),
    "bf16": FloatFormat("bf16", 8, -126, 127),
    "fp16": FloatFormat("fp16", 11, -14, 15),
}

#: the rounding chain a stored weight goes through: exact -> fp64 (Python) -> fp32 -> d (torch)
CAST_CHAIN: dict[str, tuple[str, ...]] = {
    "fp64": ("fp64",),
    "fp32": ("fp64", "fp32"),
    "bf16": ("fp64", "fp32", "bf16"),
    "fp16": ("fp64", "fp32", "fp16"),
}


def float_format(name: str) -> FloatFormat:
    """The FloatFormat called ``name`` (one of fp64, fp32, bf16, fp16)."""
    try:
        return FORMATS[name]
    except KeyError:
        raise InvalidInputError(f"unsupported dtype {name!r}; choose one of {', '.join(FORMATS)}") from None


def unit_roundoff(name: str) -> Fraction:
    """u of the format: fp64 2^-53, fp32 2^-24, bf16 2^-8, fp16 2^-11."""
    return float_format(name).u


def max_finite(name: str) -> Fraction:
    """Largest finite value of the format (fp16: 65504)."""
    return float_format(name).max_finite


def gamma(k: int, u: Fraction) -> Fraction:
    """gamma_k = k u / (1 - k u) (exact); raises PrecisionError unless k u < 1."""
    if k < 0:
        raise InvalidInputError(f"inner-product length must be >= 0, got {k}")
    if k * u >= 1:
        raise PrecisionError(f"gamma_{k} undefined for u = {float(u):.3g}: k u = {float(k * u):.3g} >= 1")
    return k * u / (1 - k * u)


def underflow_slack(k: int, fmt: FloatFormat) -> Fraction:
    """c_k = 2 (2k + 1)(1 + gamma_k) eta: absolute underflow allowance of a length-k inner product (M3)."""
    return 2 * (2 * k + 1) * (1 + gamma(k, fmt.u)) * fmt.eta


def cast_roundoff(name: str) -> tuple[Fraction, Fraction]:
    """(u_c, eta_c) with |fl_cast(t) - t| <= u_c |t| + eta_c for the chain ``CAST_CHAIN[name]`` (M2)."""
    a, b = Fraction(0), Fraction(0)
    for step in CAST_CHAIN[float_format(name).name]:
        f = FORMATS[step]
        a, b = (1 + a) * (1 + f.u) - 1, (1 + f.u) * b + 2 * f.eta
    return a, b


def _sqrt(k: int) -> mpmath.mpf:
    return mpmath.sqrt(mpmath.mpf(k))


def _check_dims(n: int, r: int, m: int) -> None:
    for name, v in (("n", n), ("r", r), ("m", m)):
        if int(v) != v or v < 1:
            raise InvalidInputError(f"dimension {name} must be a positive integer, got {v}")


def forward_error_bound(dtype: str, n: int, r: int, m: int, norm_x: Real, norm_P: Real, norm_Q: Real,
                        norm_QP: Real, norm_residual: Real = 0) -> mpmath.mpf:
    """PREC (rigorous, step 4 of the module doc): for one input x, with no overflow,

        ||fl(Q^ fl(P^ x^)) - W_b W_a x||_2 <= T_res + T_x + T_P + T_1 + T_Q + T_2,

    given upper bounds norm_x >= ||x||_2, norm_P >= ||P~||_F, norm_Q >= ||Q~||_F,
    norm_QP >= ||Q~ P~||_F and norm_residual >= ||Q~ P~ - W_b W_a||_F (0 for an exact
    reparameterization). Nondecreasing in every argument. Evaluated in mpmath at the working
    precision with positive terms only (relative rounding < 200 * 2^-prec)."""
    _check_dims(n, r, m)
    fmt = float_format(dtype)
    uc, ec = (mpf(v) for v in cast_roundoff(dtype))
    gn, gr = mpf(gamma(n, fmt.u)), mpf(gamma(r, fmt.u))
    cn, cr = mpf(underflow_slack(n, fmt)), mpf(underflow_slack(r, fmt))
    x, p, q, g, d = mpf(norm_x), mpf(norm_P), mpf(norm_Q), mpf(norm_QP), mpf(norm_residual)
    if min(x, p, q, g, d) < 0:
        raise InvalidInputError("norms must be nonnegative")
    X1 = (1 + uc) * x + ec * _sqrt(n)
    P1 = (1 + uc) * p + ec * _sqrt(r * n)
    Q1 = (1 + uc) * q + ec * _sqrt(m * r)
    E1 = gn * P1 * X1 + cn * _sqrt(r)
    H1 = P1 * X1 + E1
    T_res = d * x
    T_x = g * (uc * x + ec * _sqrt(n))
    T_P = q * (uc * p + ec * _sqrt(r * n)) * X1
    T_1 = q * E1
    T_Q = (uc * q + ec * _sqrt(m * r)) * H1
    T_2 = gr * Q1 * H1 + cr * _sqrt(m)
    return T_res + T_x + T_P + T_1 + T_Q + T_2


def kappa_form_bound(dtype: str, n: int, r: int, m: int, norm_x: Real, norm_A: Real, norm_Ainv: Real,
                     norm_Wa_F: Real, norm_Wb_F: Real, norm_WbWa_F: Real) -> mpmath.mpf:
    """PREC in terms of A (step 5, exact reparameterization): ``forward_error_bound`` with
    ||P||_F <= ||A||_2 ||W_a||_F and ||Q||_F <= ||A^-1||_2 ||W_b||_F, still rigorous."""
    return forward_error_bound(dtype, n, r, m, norm_x, mpf(norm_A) * mpf(norm_Wa_F),
                               mpf(norm_Ainv) * mpf(norm_Wb_F), norm_WbWa_F, 0)


def leading_order_model(dtype: str, n: int, r: int, kappa_A: Real, norm_Wa_F: Real, norm_Wb_F: Real,
                        norm_WbWa_F: Real, norm_x: Real) -> mpmath.mpf:
    """PREC model (first order in u; a reading of the bound, not itself a bound):
    (2 u_c + gamma_n + gamma_r) kappa(A) ||W_b||_F ||W_a||_F ||x|| + u_c ||W_b W_a||_F ||x||
    ~ (n + r + 2) u kappa(A) ||W_b|| ||W_a|| ||x|| + (undefended cast error of x)."""
    fmt = float_format(dtype)
    uc, _ = cast_roundoff(dtype)
    coef = mpf(2 * uc + gamma(n, fmt.u) + gamma(r, fmt.u))
    return (coef * mpf(kappa_A) * mpf(norm_Wb_F) * mpf(norm_Wa_F) + mpf(uc) * mpf(norm_WbWa_F)) * mpf(norm_x)


def overflow_certain(dtype: str, max_abs_x: Real, max_abs_P: Real, max_abs_Q: Real) -> bool:
    """An input or stored weight entry at or above ``overflow_threshold`` certainly casts to +-inf."""
    t = float_format(dtype).overflow_threshold
    return any(mpf(v) >= mpf(t) for v in (max_abs_x, max_abs_P, max_abs_Q))


def no_overflow_guaranteed(dtype: str, n: int, r: int, max_abs_x: Real, max_abs_P: Real, max_abs_Q: Real,
                           rowsum_P: Real, rowsum_Q: Real) -> bool:
    """True when no cast, hidden entry, output entry or partial sum can exceed Omega (module doc):
    needs max |entry| of x, P~, Q~ and the largest absolute row sums of P~ and Q~ (upper bounds)."""
    _check_dims(n, r, 1)
    fmt = float_format(dtype)
    try:
        gn, gr = gamma(n, fmt.u), gamma(r, fmt.u)
        cn, cr = underflow_slack(n, fmt), underflow_slack(r, fmt)
    except PrecisionError:
        return False
    uc, ec = (mpf(v) for v in cast_roundoff(dtype))
    omega = mpf(fmt.max_finite)
    xs = (1 + uc) * mpf(max_abs_x) + ec
    casts = [xs, (1 + uc) * mpf(max_abs_P) + ec, (1 + uc) * mpf(max_abs_Q) + ec]
    H = (1 + mpf(gn)) * ((1 + uc) * mpf(rowsum_P) + n * ec) * xs + mpf(cn)
    Y = (1 + mpf(gr)) * ((1 + uc) * mpf(rowsum_Q) + r * ec) * H + mpf(cr)
    return all(v <= omega for v in casts + [H, Y])
