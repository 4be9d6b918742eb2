"""Symbolic derivations of the slowdown statements F1, F2, P, N, LM, A, C and B.

The local model is q(theta) = 1/2 e^T H e (e = theta - theta*, H > 0). Matrices are fully
symbolic 2x2 (H symmetric, T general); eigenvectors are a general rotation Q with
c^2 + d^2 = 1. Powers with a symbolic exponent t are handled by the power law alone:
(1 - eta lambda)^t is a fresh symbol p and (1 - eta lambda)^(t+1) = (1 - eta lambda) p, so the
induction step is a rational identity. Step counts in counterexamples are exact: the
smallest t with rho^(2t) <= tol, decided in rational arithmetic (``exact_count``).
"""
from __future__ import annotations

from fractions import Fraction

import mpmath
import sympy as sp
from sympy import Matrix

from convrate.theory import bounds
from convrate.theory.core import Derivation, Status
from convrate.theory.derive_transforms import (
    defended_cubic,
    normal_form,
    Proof,
    inverse,
    rotation,
    smat,
    ssym,
    svec,
    tsym,
)


def exact_count(rho: Fraction, tol: Fraction, limit: int = 100_000) -> int:
    """Smallest integer t >= 0 with rho^(2t) <= tol, in exact rational arithmetic (0 <= rho < 1)."""
    if not (0 <= rho < 1) or not (0 < tol < 1):
        raise ValueError(f"need 0 <= rho < 1 and 0 < tol < 1, got rho={rho}, tol={tol}")
    r2, val = rho * rho, Fraction(1)
    for t in range(limit + 1):
        if val <= tol:
            return t
        val *= r2
    raise ValueError(f"no t <= {limit} with rho^(2t) <= tol")


# ---------------------------------------------------------------- F1


def derive_F1() -> Derivation:
    """F1: closed form of GD on a quadratic; divergence; monotonicity; the best-fixed-step count
    is (kappa/4) ln(1/eps), not (kappa/2) ln(1/eps)."""
    p = Proof()
    Q, circ = rotation("Q")
    l1, l2, eta = sp.symbols("lambda_1 lambda_2 eta", positive=True)
    H = Q * sp.diag(l1, l2) * Q.T
    e0 = svec("e0", 2)
    p1, p2 = sp.symbols("p_1 p_2")  # p_i = (1 - eta lambda_i)^t
    Et = Q * sp.diag(p1, p2) * Q.T * e0
    Et1 = Q * sp.diag((1 - eta * l1) * p1, (1 - eta * l2) * p2) * Q.T * e0
    p.equal("base: Q diag((1 - eta lambda_i)^0) Q^T e_0 = e_0 (2x2 symbolic H = Q diag(lambda) Q^T)",
            Q * Q.T * e0, e0, [circ], scope="example")
    p.equal("induction step: (I - eta H) Q diag((1-eta lambda_i)^t) Q^T e_0 = Q diag((1-eta lambda_i)^(t+1)) Q^T e_0",
            (sp.eye(2) - eta * H) * Et, Et1, [circ], scope="example")
    c = Q.T * e0
    qt = (Et.T * H * Et)[0, 0] / 2
    p.equal("q_t = 1/2 e_t^T H e_t = 1/2 sum_i lambda_i c_i^2 (1 - eta lambda_i)^(2t), c = Q^T e_0",
            qt, (l1 * c[0] ** 2 * p1**2 + l2 * c[1] ** 2 * p2**2) / 2, [circ], scope="example")
    pt, lam_i, c_i = sp.symbols("p_t lambda_i c_i")
    p.equal("per eigen-coordinate (any n): e_(t+1),i = (1 - eta lambda_i) e_t,i, so e_t,i = (1 - eta lambda_i)^t c_i "
            "by induction: base (1 - eta lambda_i)^0 c_i = c_i, step (1 - eta lambda_i) p_t c_i = p_(t+1) c_i with "
            "p_t = (1 - eta lambda_i)^t", (1 - eta * lam_i) * (pt * c_i), ((1 - eta * lam_i) * pt) * c_i, scope="general")
    p.argue("in H's eigenbasis (e = Q c, Q orthogonal) GD decouples into these scalar recursions: by statement P "
            "with T = Q^T the preconditioner is Q^T Q = I, so GD commutes with the orthogonal change of basis (the 2x2 "
            "steps above check it on a general rotation); q_t = 1/2 sum_i lambda_i c_i^2 (1 - eta lambda_i)^(2t)")
    lam = sp.Symbol("lambda", positive=True)
    et = sp.Symbol("eta", real=True)
    div = sp.solve_univariate_inequality(sp.Abs(1 - et * lam) > 1, et, relational=False)
    p.true("divergence: |1 - eta lambda| > 1 iff eta < 0 or eta > 2/lambda (lambda > 0)",
           sp.Eq(div, sp.Union(sp.Interval.open(-sp.oo, 0), sp.Interval.open(2 / lam, sp.oo))), scope="general")
    p.equal("monotonicity: (1 - eta lambda)^2 - 1 = eta lambda (eta lambda - 2) <= 0 for 0 <= eta lambda <= 2, so each "
            "term of q_t is nonincreasing in t (bisection in t is valid)", (1 - eta * lam) ** 2 - 1, eta * lam * (eta * lam - 2), scope="general")
    lmin, kap = sp.symbols("lambda_min kappa", positive=True)
    lmax = kap * lmin
    es = 2 / (lmin + lmax)
    rho = (kap - 1) / (kap + 1)
    p.equal("best fixed step eta* = 2/(lambda_min + lambda_max): 1 - eta* lambda_min = (kappa - 1)/(kappa + 1)",
            1 - es * lmin, rho, scope="general")
    p.equal("and eta* lambda_max - 1 = (kappa - 1)/(kappa + 1): both extremes contract by rho", es * lmax - 1, rho, scope="general")
    p.argue("|1 - eta lambda_min| is decreasing and |1 - eta lambda_max| increasing in eta near eta*, so eta* minimizes "
            "max_i |1 - eta lambda_i| (minimax); every e_0 has q_t <= rho^(2t) q_0, with equality when e_0 has weight "
            "only on lambda_min and lambda_max: the worst-case count is N = ceil(ln eps / (2 ln rho)) exactly")
    x = sp.Symbol("x", positive=True)  # x = 1/kappa
    v = sp.Symbol("v", positive=True)  # kappa = 1 + v > 1
    k1 = 1 + v
    p.equal("ln(1/rho) = ln((kappa+1)/(kappa-1)) = 2 artanh(1/kappa)",
            sp.expand_log(sp.log((k1 + 1) / (k1 - 1)), force=True),
            sp.expand_log((2 * sp.atanh(1 / k1)).rewrite(sp.log), force=True), scope="general")
    ser = sp.series(1 / (4 * sp.atanh(x)), x, 0, 3).removeO()
    p.equal("N / ln(1/eps) -> 1/(4 artanh(1/kappa)) = kappa/4 - 1/(12 kappa) + O(kappa^-3) (series at kappa = oo)",
            ser, 1 / (4 * x) - x / 12, scope="general")
    ser2 = sp.series(1 / (-2 * sp.log(1 - x)), x, 0, 2).removeO()
    p.equal("with eta = 1/lambda_max (rate 1 - 1/kappa): 1/(2 ln(kappa/(kappa-1))) = kappa/2 - 1/4 + O(1/kappa)",
            ser2, 1 / (2 * x) - sp.Rational(1, 4) - x / 24, scope="general")
    tol = Fraction(1, 10**6)
    n_star = exact_count(Fraction(99, 101), tol)
    n_half = exact_count(Fraction(99, 100), tol)
    claim = mpmath.mpf(100) / 2 * mpmath.log(10**6)
    p.numeric(f"kappa = 100, eps = 1e-6 (exact rationals): eta* needs {n_star} steps, eta = 1/lambda_max {n_half}; "
              f"(kappa/2) ln(1/eps) = {mpmath.nstr(claim, 6)}, (kappa/4) ln(1/eps) = {mpmath.nstr(claim / 2, 6)}")
    p.true("bounds.gd_worst_case_steps(100, 1e-6) equals the exact count",
           sp.Eq(bounds.gd_worst_case_steps(100, tol), n_star), scope="example")
    p.true("the exact eta* count is below (kappa/2) ln(1/eps) by a factor ~2", sp.Integer(2 * n_star) < sp.Float(str(claim), 30) + 2, scope="example")
    p.form("q_t", sp.Rational(1, 2) * sp.Sum(sp.Symbol("lambda_i") * sp.Symbol("c_i") ** 2 *
                                              (1 - sp.Symbol("eta") * sp.Symbol("lambda_i")) ** (2 * sp.Symbol("t")),
                                              (sp.Symbol("i"), 1, sp.Symbol("n"))),
           text="1/2 sum_i lambda_i c_i^2 (1 - eta lambda_i)^(2t)")
    kk, ee = sp.symbols("kappa epsilon", positive=True)
    p.form("N(kappa, eps)", sp.ceiling(sp.log(ee) / (2 * sp.log((kk - 1) / (kk + 1)))))
    p.form("N asymptotic", kk / 4 * sp.log(1 / ee))
    return p.done(Status.CORRECTED,
                  counterexample=f"kappa = 100, eps = 1e-6, worst-case e_0, eta* = 2/(lambda_min + lambda_max): the exact "
                                 f"count is {n_star} (rho = 99/101, q_t = rho^(2t) q_0), not ~(kappa/2) ln(1/eps) = "
                                 f"{mpmath.nstr(claim, 6)}; {n_half} is the count for eta = 1/lambda_max")


# ---------------------------------------------------------------- F2


def _krylov_polynomials(p: Proof) -> None:
    """Every listed method has e_t = p_t(H) e_0 with p_t(0) = 1 and deg p_t <= t."""
    x = sp.Symbol("x")
    etas = sp.symbols("eta_0:5")
    beta, eta = sp.symbols("beta eta")
    gd = [sp.Integer(1)]
    for k in range(5):
        gd.append(sp.expand((1 - etas[k] * x) * gd[-1]))
    hb = [sp.Integer(1), sp.expand(1 - eta * x)]
    nes = [sp.Integer(1), sp.expand(1 - eta * x)]
    for _ in range(4):
        hb.append(sp.expand((1 + beta - eta * x) * hb[-1] - beta * hb[-2]))
        nes.append(sp.expand((1 - eta * x) * ((1 + beta) * nes[-1] - beta * nes[-2])))
    for name, seq in (("GD with any schedule eta_k", gd), ("heavy ball", hb), ("Nesterov", nes)):
        p.zero(f"{name}: p_t(0) = 1 for t = 0..5 (e_(t+1) recursion on the error)",
               Matrix([q.subs(x, 0) - 1 for q in seq]))
        p.true(f"{name}: deg p_t <= t for t = 0..5",
               sp.And(*[sp.Le(sp.degree(q, x), t) for t, q in enumerate(seq)]))
    p.argue("e_t = p_t(H) e_0 with p_t(0) = 1, deg p_t <= t means theta_t in theta_0 + span{g_0, H g_0, ..., H^(t-1) g_0} "
            "(g_0 = H e_0): all of them are Krylov methods")


def derive_F2() -> Derivation:
    """F2: q_t >= q_t^CG for every Krylov method; CG's Chebyshev bound; worst case Theta(sqrt(kappa) ln(1/eps))."""
    p = Proof()
    _krylov_polynomials(p)
    Q, circ = rotation("Q")
    Hs, es = ssym("h", 2), svec("e", 2)
    for k in range(3):
        p.equal(f"orthogonal equivariance: Q^T H^{k} g = (Q^T H Q)^{k} Q^T g, so Krylov iterates (and CG's) commute with a "
                f"change of orthonormal basis (H symmetric symbolic, Q a rotation)",
                Q.T * Hs**k * Hs * es, (Q.T * Hs * Q) ** k * Q.T * Hs * es, [circ], scope="example")
    l1, l2 = sp.symbols("lambda_1 lambda_2", positive=True)
    H = sp.diag(l1, l2)
    e0 = svec("e", 2)
    g0 = H * e0
    a = sp.Symbol("a")
    q = lambda e: (e.T * H * e)[0, 0] / 2  # noqa: E731
    cn = lambda M: M.applyfunc(sp.cancel)  # noqa: E731
    alpha0 = sp.cancel((g0.T * g0)[0, 0] / (g0.T * H * g0)[0, 0])
    p.zero("CG step 1 (H = diag(lambda_1, lambda_2) w.l.o.g., symbolic e_0): alpha = g^T g / g^T H g makes "
           "d/da q(e_0 - a g_0) = 0; q is convex in a, so CG's first iterate minimizes q over e_0 + K_1",
           sp.diff(q(e0 - a * g0), a).subs(a, alpha0), scope="example")
    e1 = cn(e0 - alpha0 * g0)
    g1 = cn(H * e1)
    d1 = cn(g1 + sp.cancel((g1.T * g1)[0, 0] / (g0.T * g0)[0, 0]) * g0)
    e2 = cn(e1 - sp.cancel((g1.T * g1)[0, 0] / (d1.T * H * d1)[0, 0]) * d1)
    p.zero("CG step 2 reaches e_2 = 0 in dimension 2 (K_2 = R^2): the minimizer over e_0 + K_2", e2, scope="example")
    p.cite("Hestenes-Stiefel: CG's e_t minimizes ||e||_H = sqrt(2 q) over e_0 + K_t(H, g_0), for every n and t; "
           "hence q_t >= q_t^CG for every Krylov method (same t), so the exact CG count lower-bounds the class")
    v = sp.Symbol("v", positive=True)
    u = 1 + v  # u = sqrt(kappa) > 1
    kap = u**2
    X = (kap + 1) / (kap - 1)
    p.equal("Chebyshev: at x = (kappa+1)/(kappa-1), x + sqrt(x^2 - 1) = (sqrt kappa + 1)/(sqrt kappa - 1)",
            X + sp.sqrt(sp.factor(X**2 - 1)), (u + 1) / (u - 1), scope="general")
    p.argue("min over p(0) = 1, deg p <= t of max_[lmin, lmax] |p| = 1/T_t(x) <= 2 rho^t, rho = (sqrt k - 1)/(sqrt k + 1), "
            "so q_t^CG <= 4 rho^(2t) q_0 and N_CG <= ceil(ln(eps/4) / (2 ln rho)) (bounds.cg_steps_upper_bound)")
    p.cite("worst-case lower bound: for spectra filling [lambda_min, lambda_max] (n large), q_t^CG >= c rho^(2t) q_0, "
           "so the worst case is Theta(sqrt(kappa) ln(1/eps)) (Nemirovski-Yudin; Nesterov, Lectures on Convex "
           "Optimization, Thm 2.1.13)")
    x = sp.Symbol("x", positive=True)
    p.equal("leading term 1/(4 artanh x) = 1/(4x) + O(x); with ln(1/rho_CG) = 2 artanh(1/sqrt kappa) (F1's identity at "
            "sqrt kappa), N_CG ~ (sqrt(kappa)/4) ln(1/eps) and the slowdown ~ sqrt(kappa'/kappa)",
            sp.series(1 / (4 * sp.atanh(x)), x, 0, 1).removeO(), 1 / (4 * x), scope="general")
    kk, ee = sp.symbols("kappa epsilon", positive=True)
    rc = (sp.sqrt(kk) - 1) / (sp.sqrt(kk) + 1)
    p.form("q_t^CG bound", 4 * rc ** (2 * sp.Symbol("t")) * sp.Symbol("q_0"))
    p.form("N_CG(kappa, eps) upper", sp.ceiling(sp.log(ee / 4) / (2 * sp.log(rc))))
    return p.done()


# ---------------------------------------------------------------- P, N, LM


def derive_P() -> Derivation:
    """P: GD on L' from T theta_0, mapped back by T^-1, is preconditioned GD with P = T^-1 T^-T."""
    p = Proof()
    eta = sp.Symbol("eta")
    c = defended_cubic()
    Ti, th, new, gp, g = c.Ti, c.theta, c.T * c.theta, c.grad_defended, c.grad
    P = Ti * Ti.T
    p.equal("generic cubic L, symbolic 2x2 T, L' = L o T^-1: T^-1 (T theta - eta grad L'(T theta)) = theta - eta P grad L(theta), "
            "P = T^-1 T^-T", Ti * (new - eta * gp), th - eta * P * g, scope="example")
    n = sp.Symbol("n", integer=True, positive=True)
    Tg, gg, tg = sp.MatrixSymbol("T", n, n), sp.MatrixSymbol("g", n, 1), sp.MatrixSymbol("theta", n, 1)
    p.equal("any n, T invertible, g = grad L(theta), grad L'(T theta) = T^-T g (T1): T^-1 (T theta - eta T^-T g) = "
            "theta - eta T^-1 T^-T g", Tg.I * (Tg * tg - eta * Tg.I.T * gg), tg - eta * Tg.I * Tg.I.T * gg, scope="general")
    p.cite("grad L'(theta') = T^-T grad L(T^-1 theta') for L' = L o T^-1 and any invertible linear T (chain rule)")
    p.argue("by induction theta'_t = T theta_t for all t: GD on L' is preconditioned GD on L with P = T^-1 T^-T, for every "
            "step size and schedule")
    Hs, gs = ssym("h", 2), svec("g", 2)
    Hp, gps = Ti.T * Hs * Ti, Ti.T * gs
    for k in range(3):
        p.equal(f"Krylov spaces: T^-1 (H')^{k} g' = (P H)^{k} P g (H' = T^-T H T^-1, g' = T^-T g)",
                Ti * Hp**k * gps, (P * Hs) ** k * P * gs, scope="example")
    Hg = sp.MatrixSymbol("H", n, n)
    for k in range(4):
        p.equal(f"Krylov vectors (any n): T^-1 (H')^{k} g' = (P H)^{k} P g, H' = T^-T H T^-1, g' = T^-T g, P = T^-1 T^-T",
                sp.MatMul(Tg.I, *[Tg.I.T, Hg, Tg.I] * k, Tg.I.T, gg),  # flat words: no power of a product
                sp.MatMul(*[Tg.I, Tg.I.T, Hg] * k, Tg.I, Tg.I.T, gg), scope="general")
    p.argue("the identity for k + 1 follows from that for k: T^-1 H' (H')^k g' = (T^-1 T^-T H T^-1) T (T^-1 (H')^k g') "
            "= P H (P H)^k P g (checked for k <= 3 above in every dimension)")
    p.argue("so theta_0' + K_t(H', g') mapped by T^-1 is theta_0 + K_t(PH, Pg): every Krylov method on L' is the same "
            "method preconditioned by P on L; a convergence-rate defense is an adversarial preconditioner")
    p.form("P", sp.MatrixSymbol("T", 2, 2).I * sp.MatrixSymbol("T", 2, 2).I.T, text="T^-1 T^-T")
    return p.done()


def derive_N() -> Derivation:
    """N: Newton iterates satisfy theta'_t = T theta_t."""
    p = Proof()
    c = defended_cubic()
    T, Ti, gp, g = c.T, c.Ti, c.grad_defended, c.grad
    Hp = sp.hessian(c.Lp, (c.up, c.vp)).xreplace(c.at_T_theta)
    H = sp.hessian(c.L, (c.u, c.v))
    p.equal("generic cubic L (10 symbolic coefficients), symbolic 2x2 T: grad L'(T theta) = T^-T grad L(theta)", gp, Ti.T * g, scope="example")
    p.equal("hess L'(T theta) = T^-T hess L(theta) T^-1", Hp, Ti.T * H * Ti, scope="example")
    Hs, gs = ssym("h", 2), svec("g", 2)
    step_p = inverse(Ti.T * Hs * Ti) * (Ti.T * gs)
    p.equal("Newton step: (T^-T H T^-1)^-1 T^-T g = T H^-1 g (symbolic H, g, T)", step_p, T * inverse(Hs) * gs, scope="example")
    n = sp.Symbol("n", integer=True, positive=True)
    Tg, Hg, gg = sp.MatrixSymbol("T", n, n), sp.MatrixSymbol("H", n, n), sp.MatrixSymbol("g", n, 1)
    p.equal("Newton step, any n (T, H invertible): (T^-T H T^-1)^-1 T^-T g = T H^-1 g", (Tg.I.T * Hg * Tg.I).I * (Tg.I.T * gg),
            Tg * Hg.I * gg, scope="general")
    p.cite("grad L'(T theta) = T^-T grad L(theta) and hess L'(T theta) = T^-T hess L(theta) T^-1 for L' = L o T^-1 and any "
           "invertible linear T (chain rule; T1, T2)")
    p.argue("so T theta - H'^-1 g' = T (theta - H^-1 g): theta'_(t+1) = T theta_(t+1) whenever theta'_t = T theta_t; with "
            "theta'_0 = T theta_0 every Newton iterate (any step size multiplier) corresponds: no FPLR slows exact Newton")
    p.form("theta'_t", sp.MatrixSymbol("T", 2, 2) * sp.MatrixSymbol("theta_t", 2, 1), text="T theta_t")
    return p.done()


def derive_LM() -> Derivation:
    """LM: LM on L' = LM on L with damping lambda T^T T; rate lambda / (gamma_min + lambda)."""
    p = Proof()
    T = smat("t", 2, 2)
    Ti = inverse(T)
    H, g = ssym("h", 2), svec("g", 2)
    lam = sp.Symbol("lambda", positive=True)
    lhs = Ti * inverse(Ti.T * H * Ti + lam * sp.eye(2)) * (Ti.T * g)
    p.equal("T^-1 (H' + lambda I)^-1 g' = (H + lambda T^T T)^-1 g (symbolic H, g, T)", lhs, inverse(H + lam * T.T * T) * g, scope="example")
    n = sp.Symbol("n", integer=True, positive=True)
    Tg, Hg, Mg = sp.MatrixSymbol("T", n, n), sp.MatrixSymbol("H", n, n), sp.MatrixSymbol("M", n, n)
    p.equal("any n: T^T (T^-T H T^-1 + lambda I) T = H + lambda T^T T", Tg.T * (Tg.I.T * Hg * Tg.I + lam * sp.Identity(n)) * Tg,
            Hg + lam * Tg.T * Tg, scope="general")
    p.equal("any n, M invertible: (T^-1 M^-1 T^-T)(T^T M T) = I, i.e. T^-1 M^-1 T^-T = (T^T M T)^-1",
            Tg.I * Mg.I * Tg.I.T * (Tg.T * Mg * Tg), sp.Identity(n), scope="general")
    p.argue("with M = H' + lambda I (invertible for lambda > 0 when H' >= 0, or by LM's assumption): "
            "T^-1 (H' + lambda I)^-1 T^-T g = (H + lambda T^T T)^-1 g")
    p.argue("so LM on L' from T theta_0, mapped back, is LM on L with the anisotropic damping matrix lambda T^T T")
    gam = sp.Symbol("gamma", positive=True)
    m = svec("m", 2)  # m = M v with M = T^T T, H v = gamma M v
    p.zero("on a quadratic the error map is (H + lambda M)^-1 lambda M; for H v = gamma M v: "
           "lambda M v - lambda/(gamma + lambda) (H + lambda M) v = 0", lam * m - lam / (gam + lam) * (gam * m + lam * m), scope="general")
    w = svec("w", 2)
    p.equal("generalized eigenpairs of (H, T^T T) are eigenpairs of H': T^-T H T^-1 (T w) - gamma T w = T^-T (H w - gamma T^T T w)",
            Ti.T * H * Ti * (T * w) - gam * T * w, Ti.T * (H * w - gam * T.T * T * w), scope="example")
    wg = sp.MatrixSymbol("w", n, 1)
    p.equal("any n: T^-T H T^-1 (T w) - gamma T w = T^-T (H w - gamma T^T T w): generalized eigenpairs of (H, T^T T) are "
            "eigenpairs of H'", Tg.I.T * Hg * Tg.I * (Tg * wg) - gam * Tg * wg, Tg.I.T * (Hg * wg - gam * Tg.T * Tg * wg),
            scope="general")
    p.argue("hence the contraction factors are lambda/(gamma_k + lambda), gamma_k = lambda_k(H'), and by Ostrowski (T2) "
            "gamma_min in [lambda_min(H)/sigma_max(T)^2, lambda_min(H)/sigma_min(T)^2]: the rate lambda/(gamma_min + lambda) "
            "approaches 1 where lambda sigma_max(T)^2 >> lambda_min(H) (bounds.lm_rate_interval)")
    lmin, smax = sp.symbols("lambda_min(H) sigma_max(T)", positive=True)
    p.equal("worst rate rewritten: lambda/(lambda_min/sigma_max^2 + lambda) = 1/(1 + lambda_min/(lambda sigma_max^2))",
            lam / (lmin / smax**2 + lam), 1 / (1 + lmin / (lam * smax**2)), scope="general")
    p.form("LM rate", lam / (sp.Symbol("gamma_min", positive=True) + lam), text="lambda / (gamma_min + lambda), gamma_min = lambda_min(T^-T H T^-1)")
    return p.done()


# ---------------------------------------------------------------- A, C


def derive_A() -> Derivation:
    """A: Adam / RMSprop / Adagrad on L' with T = D > 0 diagonal = the method on L with step eta/D_i, eps_i = eps D_i."""
    p = Proof()
    g, m, vv, b1, b2, eta, eps, c1, c2, theta = sp.symbols("g m v beta_1 beta_2 eta epsilon c_1 c_2 theta")
    D = sp.Symbol("D", positive=True)
    vpos, c2p = sp.Symbol("v", positive=True), sp.Symbol("c_2", positive=True)
    gp = g / D  # T1 with T = D
    mp_, vp_ = m / D, vpos / D**2  # induction hypothesis m'_t = m_t / D, v'_t = v_t / D^2
    p.equal("first moment: beta_1 m' + (1 - beta_1) g' = (beta_1 m + (1 - beta_1) g) / D", b1 * mp_ + (1 - b1) * gp,
            (b1 * m + (1 - b1) * g) / D, scope="general")
    p.equal("second moment: beta_2 v' + (1 - beta_2) g'^2 = (beta_2 v + (1 - beta_2) g^2) / D^2",
            b2 * vp_ + (1 - b2) * gp**2, (b2 * vpos + (1 - b2) * g**2) / D**2, scope="general")
    p.equal("Adagrad accumulator: v' + g'^2 = (v + g^2) / D^2", vp_ + gp**2, (vpos + g**2) / D**2, scope="general")
    step_def = (D * theta - eta * (mp_ / c1) / (sp.sqrt(vp_ / c2p) + eps)) / D
    step_und = theta - (eta / D) * (m / c1) / (sp.sqrt(vpos / c2p) + eps * D)
    p.equal("Adam step (bias corrections c_1, c_2 > 0) on theta' = D theta mapped back by D^-1 = Adam on theta with step "
            "eta/D and epsilon D", step_def, step_und, scope="general")
    rms_def = (D * theta - eta * gp / (sp.sqrt(vp_) + eps)) / D
    p.equal("RMSprop / Adagrad step: (D theta - eta g'/(sqrt v' + eps)) / D = theta - (eta/D) g / (sqrt v + eps D)",
            rms_def, theta - (eta / D) * g / (sp.sqrt(vpos) + eps * D), scope="general")
    p.argue("with m_0 = v_0 = 0 the induction starts; per coordinate D_i the method on L' is the method on L with step "
            "eta/D_i and epsilon_i = epsilon D_i (bounds.adam_equivalent_hyperparameters)")
    p.equal("SGD comparison: P = D^-1 D^-T = D^-2 (statement P): the step is scaled by D_i^-2 for SGD, D_i^-1 for "
            "adaptive methods (epsilon -> 0)", inverse(sp.diag(D, D)) * inverse(sp.diag(D, D)).T, sp.diag(D**-2, D**-2), scope="example")
    Di = sp.Symbol("D_i", positive=True)
    p.form("Adam equivalent (eta_i, eps_i)", sp.Tuple(eta / Di, eps * Di), text="(eta / D_i, epsilon D_i)")
    return p.done()


def derive_C() -> Derivation:
    """C: cubic-regularized Newton on L' = cubic Newton on L with regularizer (M'/6) ||T s||^3; M' <= ||T^-1||^3 M (T4);
    invariant for T = c Q (Q orthogonal) with M' = M / c^3."""
    p = Proof()
    cc = sp.Symbol("c", positive=True)
    T = smat("t", 2, 2)
    Ti = inverse(T)
    H, g, s = ssym("h", 2), svec("g", 2), svec("s", 2)
    Hp, gp = Ti.T * H * Ti, Ti.T * g
    sp_ = T * s
    quad_p = (gp.T * sp_)[0, 0] + (sp_.T * Hp * sp_)[0, 0] / 2
    quad = (g.T * s)[0, 0] + (s.T * H * s)[0, 0] / 2
    p.equal("cubic model: g'^T s' + 1/2 s'^T H' s' = g^T s + 1/2 s^T H s for s' = T s (T1, T2)", quad_p, quad, scope="example")
    n = sp.Symbol("n", integer=True, positive=True)
    Tg, Hg, gg, sg = (sp.MatrixSymbol("T", n, n), sp.MatrixSymbol("H", n, n), sp.MatrixSymbol("g", n, 1),
                      sp.MatrixSymbol("s", n, 1))
    Hpg, gpg, spg = Tg.I.T * Hg * Tg.I, Tg.I.T * gg, Tg * sg
    p.equal("cubic model, any n: g'^T s' + 1/2 s'^T H' s' = g^T s + 1/2 s^T H s for s' = T s, g' = T^-T g, "
            "H' = T^-T H T^-1 (T1, T2)", gpg.T * spg + spg.T * Hpg * spg / 2, gg.T * sg + sg.T * Hg * sg / 2, scope="general")
    Qg = sp.MatrixSymbol("Q", n, n)
    p.equal("T = c Q, Q orthogonal (Q^T = Q^-1), any n: ||T s||^2 = c^2 ||s||^2",
            normal_form((cc * Qg * sg).T * (cc * Qg * sg)).xreplace({Qg.T: Qg.I}), cc**2 * sg.T * sg, scope="general")
    p.argue("so the cubic-Newton step on L' (min over s' of the model + (M'/6)||s'||^3), mapped back, minimizes "
            "g^T s + 1/2 s^T H s + (M'/6) ||T s||^3: cubic Newton on L in the T^T T norm, with M' <= ||T^-1||^3 M (T4); "
            "the regularizer lies between (M'/6) sigma_min(T)^3 ||s||^3 and (M'/6) sigma_max(T)^3 ||s||^3 <= "
            "(M/6) kappa(T)^3 ||s||^3")
    Q, circ = rotation("Q")
    p.equal("T = c Q (Q a rotation): ||T s||^2 = c^2 ||s||^2", ((cc * Q * s).T * (cc * Q * s))[0, 0], cc**2 * (s.T * s)[0, 0], [circ], scope="example")
    M = sp.Symbol("M", positive=True)
    p.equal("and M' = ||T^-1||^3 M = M / c^3 exactly (the trilinear form scales by c^-3): (M'/6)||Ts||^3 = (M/6)||s||^3",
            (M / cc**3) * (cc**2) ** sp.Rational(3, 2), M, scope="general")
    p.cite("Nesterov-Polyak (2006): cubic Newton's global and local rates depend on M (e.g. quadratic local convergence "
           "with constant ~ M / lambda_min(H)); for L' the constant is M' / lambda_min(H') <= kappa(T)^2 ||T^-1|| M / "
           "lambda_min(H) (T2, T4)")
    p.form("M'", tsym("||T^-1||", r"\|T^{-1}\|_2") ** 3 * M, text="M' <= ||T^-1||^3 M")
    return p.done()


# ---------------------------------------------------------------- B


def derive_B() -> Derivation:
    """B: 'GD slowdown <= kappa(T)^2' is false as a ratio of step counts; the corrected bounds."""
    p = Proof()
    k, lam = sp.symbols("k lambda", positive=True)
    e0 = svec("e0", 2)
    H = lam * sp.eye(2)
    p.zero("kappa(H) = 1, H = lambda I: GD with eta = 1/lambda reaches e_1 = 0 from every e_0 (one step)",
           (sp.eye(2) - H / lam) * e0, scope="example")
    T = sp.diag(1, k)
    p.equal("T = diag(1, k) (kappa(T) = k): H' = diag(lambda, lambda/k^2), kappa(H') = k^2 = kappa(T)^2 kappa(H)",
            inverse(T).T * H * inverse(T), sp.diag(lam, lam / k**2), scope="example")
    tol6, tol12 = Fraction(1, 10**6), Fraction(1, 10**12)
    n_def = exact_count(Fraction(99, 101), tol6)  # kappa(H') = 100
    p.numeric(f"k = 10, eps = 1e-6: defended worst-case count with eta* (rho = 99/101, exact) = {n_def} vs undefended 1: "
              f"ratio {n_def} > kappa(T)^2 = 100; the ratio grows like (k^2/4) ln(1/eps) without bound as eps -> 0")
    p.true("bounds.gd_worst_case_steps(100, 1e-6) equals that exact count", sp.Eq(bounds.gd_worst_case_steps(100, tol6), n_def), scope="example")
    n2, n8 = exact_count(Fraction(1, 3), tol12), exact_count(Fraction(7, 9), tol12)
    p.numeric(f"kappa(H) = 2 (H = diag(1, 2)), T = diag(2, 1): H' = diag(1/4, 2), kappa(H') = 8 = kappa(T)^2 kappa(H); "
              f"eps = 1e-12 exact counts {n8} vs {n2}: ratio {Fraction(n8, n2)} = {float(Fraction(n8, n2)):.4f} > 4; "
              f"asymptotically artanh(1/2)/artanh(1/8) = {mpmath.nstr(mpmath.atanh(0.5) / mpmath.atanh(mpmath.mpf(1) / 8), 6)} > 4")
    p.true("finite-eps counterexample with kappa(H) = 2: N(8)/N(2) > kappa(T)^2 = 4", sp.Rational(n8, n2) > 4, scope="example")
    Hb = sp.diag(1, 4)
    Tb = Matrix([[1, 1], [0, 1]])
    Hbp = inverse(Tb).T * Hb * inverse(Tb)
    p.equal("instance-specific: H = diag(1, 4), e_0 = (1, 0) (an eigenvector: one step with eta = 1), T = [[1, 1], [0, 1]]: "
            "H' = [[1, -1], [-1, 5]]", Hbp, Matrix([[1, -1], [-1, 5]]), scope="example")
    ev = Hbp * Matrix([1, 0])
    p.true("T e_0 = (1, 0) is not an eigenvector of H' (H' T e_0 = (1, -1) is not parallel to it)", sp.Ne(ev[1], 0), scope="example")
    p.argue("so T e_0 has nonzero weight w on both eigenvectors of H'; for any fixed eta, q'_t >= w rho'^(2t) with "
            "rho' = (kappa'-1)/(kappa'+1) > 0, so the defended count -> oo as eps -> 0 while the undefended count is 1: "
            "instance-specific ratios are unbounded")
    # corrected (i)
    kk = sp.Symbol("kappa", positive=True)
    p.equal("rate monotone: d/dkappa (kappa-1)/(kappa+1) = 2/(kappa+1)^2 > 0", sp.diff((kk - 1) / (kk + 1), kk), 2 / (kk + 1) ** 2, scope="general")
    p.argue("corrected (i): for every e_0, GD with eta* on H' has q'_t <= rho(kappa(H'))^(2t) q'_0 <= "
            "rho(kappa(T)^2 kappa(H))^(2t) q'_0 (T3 and monotonicity), so it needs at most "
            "gd_worst_case_steps(kappa(T)^2 kappa(H), eps) steps (bounds.gd_defended_steps_upper_bound)")
    # corrected (ii)
    x = sp.Symbol("x", positive=True)
    p.equal("d/dx (artanh x - x) = x^2/(1 - x^2) >= 0 on [0, 1): artanh x >= x", sp.diff(sp.atanh(x) - x, x), x**2 / (1 - x**2), scope="general")
    p.equal("d/dx (x/(1-x^2) - artanh x) = 2x^2/(1-x^2)^2 >= 0: artanh x <= x/(1 - x^2)",
            sp.diff(x / (1 - x**2) - sp.atanh(x), x), 2 * x**2 / (1 - x**2) ** 2, scope="general")
    kh, kt = sp.symbols("kappa_H kappa_T", positive=True)
    kp = sp.Symbol("kappa'", positive=True)
    upper = ((1 / kh) / (1 - 1 / kh**2)) / (1 / kp)
    p.equal("ratio bound: (1/kappa)/(1 - kappa^-2) / (1/kappa') = (kappa'/kappa) / (1 - kappa^-2)", upper, (kp / kh) / (1 - kh**-2), scope="general")
    p.argue("corrected (ii): N(kappa) = ceil(ln(1/eps) / (4 artanh(1/kappa))) (F1), so lim_(eps->0) N(kappa')/N(kappa) = "
            "artanh(1/kappa)/artanh(1/kappa') <= (kappa'/kappa)/(1 - kappa^-2) <= kappa(T)^2 / (1 - kappa(H)^-2) "
            "(kappa' <= kappa(T)^2 kappa(H), T3); bounds.gd_slowdown_bound")
    ratio = mpmath.atanh(mpmath.mpf(1) / 2) / mpmath.atanh(mpmath.mpf(1) / 8)
    p.true("the kappa(H) = 2 example obeys (ii): artanh(1/2)/artanh(1/8) <= 4/(1 - 1/4)",
           sp.Float(str(ratio), 30) <= sp.Float(str(bounds.gd_slowdown_bound(2, 2)), 30), scope="example")
    p.form("B (ii) asymptotic ratio bound", kt**2 / (1 - kh**-2))
    p.form("B (i) defended count", sp.ceiling(sp.log(sp.Symbol("epsilon")) / (2 * sp.log((kt**2 * kh - 1) / (kt**2 * kh + 1)))))
    return p.done(Status.CORRECTED,
                  counterexample=f"(a) kappa(H) = 1 (H = lambda I, 1 step with eta = 1/lambda), T = diag(1, 10): kappa(H') = 100 and "
                                 f"the exact worst-case count at eps = 1e-6 is {n_def} > kappa(T)^2 = 100 (unbounded as eps -> 0); "
                                 f"(b) kappa(H) = 2, T = diag(2, 1): exact counts {n8}/{n2} = {float(Fraction(n8, n2)):.4f} > 4 at "
                                 f"eps = 1e-12, limit {mpmath.nstr(ratio, 6)} > 4; (c) H = diag(1, 4), e_0 = (1, 0), "
                                 "T = [[1, 1], [0, 1]]: 1 undefended step, unbounded defended count")
