"""Bounds of THEORY.md as plain functions of spectral quantities.

Both sides call these: ``convrate.numerics`` with exact (mpmath / rational) spectra,
``convrate.models`` with Lanczos estimates. Inputs may be int, Fraction, float or mpmath
mpf; real-valued outputs are mpmath mpf at the caller's working precision
(``mpmath.mp.dps``), step counts are Python ints. No torch here.

Notation: H the Hessian (or quadratic model), T the reparameterization, kappa = condition
number sigma_max / sigma_min (for H > 0: lambda_max / lambda_min), tol = target ratio
q_t / q_0 in (0, 1) of the loss gap.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Iterable, Sequence

import mpmath
import numpy as np

from convrate.errors import ToleranceError

Real = int | float | Fraction | mpmath.mpf


def mpf(x: Real) -> mpmath.mpf:
    """Exact conversion of int / Fraction / float / mpf / numpy float16-64 scalar to mpf (rounded
    to working precision; a numpy scalar widens to a Python float exactly)."""
    if isinstance(x, Fraction):
        return mpmath.mpf(x.numerator) / x.denominator
    if isinstance(x, np.floating) and x.itemsize <= 8:
        x = float(x)
    return mpmath.mpf(x)


def check_tol(tol: Real) -> mpmath.mpf:
    """tol must lie in the open interval (0, 1)."""
    t = mpf(tol)
    if not (0 < t < 1) or not mpmath.isfinite(t):
        raise ToleranceError(f"tolerance must lie in (0, 1), got {tol}")
    return t


# ---------------------------------------------------------------- T2, T3, T4
def ostrowski_interval(lam: Real, sigma_min_Tinv: Real, sigma_max_Tinv: Real) -> tuple[mpmath.mpf, mpmath.mpf]:
    """T2 (Ostrowski): lambda_k(T^-T H T^-1) = rho_k lambda_k(H), rho_k in
    [sigma_min(T^-1)^2, sigma_max(T^-1)^2]. Returns the interval (lo, hi) that contains
    lambda_k(H') for lambda_k(H) = lam (sign-aware)."""
    lam, a, b = mpf(lam), mpf(sigma_min_Tinv) ** 2, mpf(sigma_max_Tinv) ** 2
    lo, hi = sorted((a * lam, b * lam))
    return lo, hi


def condition_interval(kappa_H: Real, kappa_T: Real) -> tuple[mpmath.mpf, mpmath.mpf]:
    """T3: for H > 0, kappa(H)/kappa(T)^2 <= kappa(T^-T H T^-1) <= kappa(T)^2 kappa(H)."""
    k, kt2 = mpf(kappa_H), mpf(kappa_T) ** 2
    return k / kt2, k * kt2


def third_derivative_bound(norm_third: Real, norm_Tinv: Real) -> mpmath.mpf:
    """T4: ||nabla^3 L'(T theta)|| <= ||T^-1||_2^3 ||nabla^3 L(theta)|| for any norm of
    trilinear forms that is submultiplicative under mode products (spectral, Frobenius).
    Hence the Hessian Lipschitz constant M' <= ||T^-1||^3 M."""
    return mpf(norm_Tinv) ** 3 * mpf(norm_third)


# ---------------------------------------------------------------- W, W'
def lambda_max_lower_bound_linear(sigma_max_Wa: Real, lambda_min_Sxx: Real, mu_ell: Real = 1) -> mpmath.mpf:
    """W (S1): lambda_max(nabla^2 L) >= mu_ell sigma_max(W_a)^2 lambda_min(E[x x^T])."""
    return mpf(mu_ell) * mpf(sigma_max_Wa) ** 2 * mpf(lambda_min_Sxx)


def lambda_max_lower_bound_hidden(lambda_max_Shh: Real, mu_ell: Real = 1) -> mpmath.mpf:
    """W (first inequality): lambda_max(nabla^2 L) >= mu_ell lambda_max(E[h h^T]) (Cauchy
    interlacing on the W_b block E[h h^T] (x) nabla^2 ell)."""
    return mpf(mu_ell) * mpf(lambda_max_Shh)


def lambda_max_lower_bound_relu(D: Sequence[Real], second_moments: Sequence[Real], mu_ell: Real = 1) -> mpmath.mpf:
    """W (S2): lambda_max(nabla^2 L') >= mu_ell max_i D_i^2 E[h_i^2], with h the undefended
    post-ReLU activations and D > 0 the diagonal defense."""
    return mpf(mu_ell) * max(mpf(d) ** 2 * mpf(m) for d, m in zip(D, second_moments, strict=True))


def lambda_max_lower_bound_specdef(s: Sequence[Real], sigma_Wa: Sequence[Real], lambda_min_Sxx: Real, mu_ell: Real = 1) -> mpmath.mpf:
    """W under SpecDef (A = U diag(s) U^T, U the left singular vectors of W_a, s aligned with
    the singular values sigma_i(W_a) in decreasing order):
    lambda_max(H') >= mu_ell (max_i s_i sigma_i(W_a))^2 lambda_min(E[x x^T])."""
    top = max(mpf(a) * mpf(b) for a, b in zip(s, sigma_Wa, strict=True))
    return mpf(mu_ell) * top**2 * mpf(lambda_min_Sxx)


def aa_block_lambda_min_upper_bound(lambda_max_Haa: Real, sigma_max_A: Real) -> mpmath.mpf:
    """W': lambda_min(H'_aa) <= lambda_max(H_aa) / sigma_max(A)^2, where H'_aa is the W_a
    block of the defended Hessian, (A^-T (x) I) H_aa (A^-1 (x) I)."""
    return mpf(lambda_max_Haa) / mpf(sigma_max_A) ** 2


# ---------------------------------------------------------------- SpecDef profiles
def specdef_geometric_profile(K: Real, r: int) -> list[mpmath.mpf]:
    """Default SpecDef profile: s_i = K^(1/2 - (i-1)/(r-1)), i = 1..r (s_1 = sqrt K on the top
    singular direction, 1/sqrt K on the bottom, geometric between; det = 1, kappa = K).
    r = 1 gives [1] (no freedom under |det A| = 1)."""
    K = mpf(K)
    if r == 1:
        return [mpmath.mpf(1)]
    return [K ** (mpmath.mpf(1) / 2 - mpmath.mpf(i) / (r - 1)) for i in range(r)]


def specdef_spike_profile(K: Real, r: int) -> list[mpmath.mpf]:
    """Maximizer of sigma_max(A W_a) over kappa(A) <= K, |det A| = 1:
    s_1 = K^((r-1)/r), s_2..s_r = K^(-1/r) (see statement SPECDEF-OPT)."""
    K = mpf(K)
    if r == 1:
        return [mpmath.mpf(1)]
    return [K ** (mpmath.mpf(r - 1) / r)] + [K ** (-mpmath.mpf(1) / r)] * (r - 1)


def specdef_max_gain(K: Real, r: int) -> mpmath.mpf:
    """SPECDEF-OPT: max { sigma_max(A) : kappa(A) <= K, |det A| = 1, A in GL(r) } = K^((r-1)/r)."""
    return mpf(K) ** (mpmath.mpf(r - 1) / r)


# ---------------------------------------------------------------- F1, F2, B
def best_fixed_step(lambda_min: Real, lambda_max: Real) -> mpmath.mpf:
    """eta* = 2 / (lambda_min + lambda_max): minimizes max_i |1 - eta lambda_i|."""
    return 2 / (mpf(lambda_min) + mpf(lambda_max))


def gd_rate(kappa: Real) -> mpmath.mpf:
    """Worst-case contraction of GD with eta*: rho = (kappa - 1) / (kappa + 1)."""
    k = mpf(kappa)
    return (k - 1) / (k + 1)


def steps_from_rate(rho: Real, tol: Real, const: Real = 1) -> int:
    """Smallest integer t with const * rho^(2t) <= tol, i.e. t = ceil(ln(tol/const) / (2 ln rho)),
    for rho in [0, 1). (q_t <= const rho^(2t) q_0 is the shape of every linear-rate bound.)"""
    tol, rho, const = check_tol(tol), mpf(rho), mpf(const)
    if rho == 0:
        return 1 if const > tol else 0
    if tol >= const:
        return 0
    return int(mpmath.ceil(mpmath.log(tol / const) / (2 * mpmath.log(rho))))


def gd_steps_upper_bound(rho: Real, tol: Real) -> int:
    """F1: if max over active components of |1 - eta lambda_i| = rho < 1 then q_t <= rho^(2t) q_0,
    so GD reaches q_t <= tol q_0 within ceil(ln tol / (2 ln rho)) steps. For the worst-case
    e_0 (weight only on lambda_min and lambda_max) with eta*, the count equals this bound."""
    return steps_from_rate(rho, tol)


def gd_worst_case_steps(kappa: Real, tol: Real) -> int:
    """F1: exact count of GD with eta* on the worst-case e_0: ceil(ln tol / (2 ln((k-1)/(k+1)))),
    which is (kappa/4) ln(1/tol) (1 + O(1/kappa^2)) -- kappa/4, not kappa/2, because the loss
    gap decays as rho^(2t)."""
    return steps_from_rate(gd_rate(kappa), tol)


def cg_steps_upper_bound(kappa: Real, tol: Real) -> int:
    """F2: CG satisfies ||e_t||_H <= 2 ((sqrt k - 1)/(sqrt k + 1))^t ||e_0||_H, so
    q_t <= 4 rho^(2t) q_0 and CG needs at most ceil(ln(tol/4) / (2 ln rho)) steps. (In exact
    arithmetic CG also stops after at most n steps; this function does not take n.)"""
    s = mpmath.sqrt(mpf(kappa))
    return steps_from_rate((s - 1) / (s + 1), tol, const=4)


def gd_slowdown_bound(kappa_T: Real, kappa_H: Real) -> mpmath.mpf:
    """B (corrected, asymptotic worst case): with eta* on both problems and worst-case e_0,
    lim_{tol->0} N(H')/N(H) = artanh(1/kappa(H)) / artanh(1/kappa(H'))
                            <= kappa(T)^2 / (1 - kappa(H)^-2),
    using x <= artanh x <= x/(1-x^2) and kappa(H') <= kappa(T)^2 kappa(H) (T3)."""
    kh = mpf(kappa_H)
    return mpf(kappa_T) ** 2 / (1 - 1 / kh**2)


def gd_defended_steps_upper_bound(kappa_T: Real, kappa_H: Real, tol: Real) -> int:
    """B (corrected, absolute): for every e_0, GD with eta* on H' needs at most
    ceil(ln tol / (2 ln((k'-1)/(k'+1)))) steps with k' = kappa(T)^2 kappa(H) >= kappa(H')."""
    return gd_worst_case_steps(mpf(kappa_T) ** 2 * mpf(kappa_H), tol)


# ---------------------------------------------------------------- LM
def lm_rate_interval(damping: Real, lambda_min_H: Real, sigma_min_T: Real, sigma_max_T: Real) -> tuple[mpmath.mpf, mpmath.mpf]:
    """LM: LM on L' = LM on L with damping matrix lambda T^T T. On a quadratic its iteration
    matrix (H + lambda T^T T)^-1 lambda T^T T has spectral radius lambda / (gamma_min + lambda),
    gamma_min the smallest generalized eigenvalue of (H, T^T T), which lies in
    [lambda_min(H)/sigma_max(T)^2, lambda_min(H)/sigma_min(T)^2]. Returns the interval of the
    spectral radius."""
    lam, lmin = mpf(damping), mpf(lambda_min_H)
    g_lo, g_hi = lmin / mpf(sigma_max_T) ** 2, lmin / mpf(sigma_min_T) ** 2
    return lam / (g_hi + lam), lam / (g_lo + lam)


# ---------------------------------------------------------------- A
def adam_equivalent_hyperparameters(step: Real, eps: Real, D: Iterable[Real]) -> list[tuple[mpmath.mpf, mpmath.mpf]]:
    """A: Adam/RMSprop/Adagrad on L'(theta') = L(D^-1 theta'), D > 0 diagonal, mapped back by
    D^-1, is the same method on L with per-coordinate step eta/D_i and eps_i = eps D_i."""
    return [(mpf(step) / mpf(d), mpf(eps) * mpf(d)) for d in D]


# ---------------------------------------------------------------- R1
def recovery_extra_parameters(family: str, r: int) -> int:
    """R1: parameters of the frozen layers inserted around one defended group of width r:
    S1 inserts dense A and A^-1 (2 r^2), S2 inserts diagonal D and D^-1 (2 r). Convention:
    both inserted layers are counted (THEORY.md's "r_p for S2" counts D alone; see statement R1)."""
    if family == "S1":
        return 2 * r * r
    if family == "S2":
        return 2 * r
    raise ValueError(f"unknown symmetry family {family!r}")


def recovery_extra_parameters_bound(r: int, n_in: int, n_out: int) -> Fraction:
    """R1: 2 (r / min(n_in, n_out)) * (defended parameters of the pair), where the pair
    (W_a: r x n_in, b_a: r, W_b: n_out x r) has r (n_in + 1 + n_out) parameters."""
    return Fraction(2 * r, min(n_in, n_out)) * r * (n_in + 1 + n_out)


# ---------------------------------------------------------------- W' closed forms
def condition_lower_bound_defended(sigma_max_AWa: Real, sigma_max_A: Real, lambda_min_Sxx: Real,
                                   lambda_max_Haa: Real, mu_ell: Real = 1) -> mpmath.mpf:
    """W' (for H' > 0): kappa(H') >= lambda_max(H'_bb) / lambda_min(H'_aa)
    >= mu_ell sigma_max(A W_a)^2 lambda_min(E[x x^T]) sigma_max(A)^2 / lambda_max(H_aa).
    Under SpecDef with s_max on the top singular direction, sigma_max(A W_a) >= s_max sigma_1(W_a)
    and sigma_max(A) = s_max, so the bound grows like s_max^4. (At a critical point of a linear
    net H' is singular along the orbit tangents, so H' > 0 fails there; the bound then applies to
    the block-diagonal part, see ``aligned_two_layer_gn_spectra``.)"""
    return (mpf(mu_ell) * mpf(sigma_max_AWa) ** 2 * mpf(lambda_min_Sxx) * mpf(sigma_max_A) ** 2
            / mpf(lambda_max_Haa))


def aligned_two_layer_gn_spectra(s: Sequence[Real], a: Sequence[Real], b: Sequence[Real]) -> dict[str, object]:
    """W' closed form, two-layer linear net with aligned weights W_a = U diag(a) V^T,
    W_b = P diag(b) U^T, E[x x^T] = I, SpecDef A = U diag(s) U^T, squared loss:
    eig(G'_aa) = (b_i/s_i)^2 (each n_in times), eig(G'_bb) = (s_i a_i)^2 (each n_out times).
    Returns the distinct eigenvalues per block and kappa of G'_aa, G'_bb and of the
    block-diagonal part diag(G'_aa, G'_bb) (the full G' is singular: orbit tangents)."""
    ea = [(mpf(bi) / mpf(si)) ** 2 for si, bi in zip(s, b, strict=True)]
    eb = [(mpf(si) * mpf(ai)) ** 2 for si, ai in zip(s, a, strict=True)]
    both = ea + eb
    return {"eig_aa": ea, "eig_bb": eb, "kappa_aa": max(ea) / min(ea), "kappa_bb": max(eb) / min(eb),
            "kappa_block_diagonal": max(both) / min(both)}


def deep_linear_gn_spectrum(w: Sequence[Sequence[Real]], s: Sequence[Sequence[Real]], layer: int) -> list[mpmath.mpf]:
    """W' closed form, deep linear net f = W_L ... W_1 x with aligned W_l = U_l diag(w_l) U_(l-1)^T
    (all widths r), E[x x^T] = I and SpecDef A_l = U_l diag(s_l) U_l^T between layers l and l+1
    (``s`` lists s_1 .. s_(L-1); s_0 = s_L = 1). The Gauss-Newton block of layer ``layer`` (1-based)
    has the r^2 eigenvalues (beta_i / s_(l,i))^2 (alpha_j s_(l-1,j))^2 with beta_i = prod_(k>l) w_(k,i),
    alpha_j = prod_(k<l) w_(k,j). Returned in the Kronecker order (i major, j minor)."""
    L = len(w)
    if not 1 <= layer <= L:
        raise ValueError(f"layer must be in 1..{L}, got {layer}")
    r = len(w[0])
    ones = [mpmath.mpf(1)] * r
    sc = [ones] + [[mpf(x) for x in row] for row in s] + [ones]
    if len(sc) != L + 1:
        raise ValueError(f"need {L - 1} SpecDef profiles for {L} layers, got {len(s)}")
    beta = [mpmath.fprod(mpf(w[k][i]) for k in range(layer, L)) for i in range(r)]
    alpha = [mpmath.fprod(mpf(w[k][j]) for k in range(layer - 1)) for j in range(r)]
    return [(beta[i] / sc[layer][i]) ** 2 * (alpha[j] * sc[layer - 1][j]) ** 2 for i in range(r) for j in range(r)]
