"""Symbolic derivations of the inserted compensation layer: I, PREC-ALPHA, M (THEORY.md section 6).

Conventions as in ``derive_transforms``: row-major vec, vec(A W B) = (A (x) B^T) vec(W); the
layer W is m x n, the released W' has the same shape, and C (the inserted layer) is s x s with
s = m on the output side (y = C W' x) and s = n on the input side (y = W' C x). The exact
construction and the bound functions are in ``bounds_inserted``.
"""
from __future__ import annotations

from fractions import Fraction

import sympy as sp
from sympy import Matrix

from convrate.theory import bounds
from convrate.theory import bounds_inserted as bi
from convrate.theory.core import Derivation, Status
from convrate.theory.derive_transforms import Proof, inverse, kron, rotation, smat, ssym, svec, tsym, vec


def _reshape(v: Matrix, rows: int, cols: int) -> Matrix:
    """Inverse of the row-major vec."""
    return v.reshape(rows, cols)


def _grad_matrix(L: sp.Expr, M: Matrix) -> Matrix:
    """dL/dM entrywise (same shape as M)."""
    return M.applyfunc(lambda e: sp.diff(L, e))


def _quadratic(w: Matrix, name: str) -> tuple[sp.Expr, Matrix, Matrix]:
    """Generic quadratic L(w) = 1/2 w^T H w + g^T w (H symmetric, every entry a symbol) and H, g."""
    H, g = ssym(f"h{name}", w.rows), svec(f"g{name}", w.rows)
    return (w.T * H * w)[0, 0] / 2 + (g.T * w)[0, 0], H, g


def _frozen(p: Proof) -> None:
    """C frozen: gradient, Hessian and update of the grown model on both sides."""
    eta = sp.Symbol("eta")
    m, n = 2, 3
    C, Wp = smat("c", m, m), smat("w", m, n)
    p.equal("vec(C W') = (C (x) I_n) vec(W') (row-major; C 2x2, W' 2x3 symbolic)", vec(C * Wp), kron(C, sp.eye(n)) * vec(Wp))
    L, H, g = _quadratic(vec(C * Wp), "")
    G = _reshape(H * vec(C * Wp) + g, m, n)  # G = dL/dW at W = C W' (a generic affine function of W)
    p.equal("output side, generic quadratic L (21 + 6 symbolic coefficients): d L(C W') / d W' = C^T G, "
            "G = dL/dW at W = C W'", _grad_matrix(L, Wp), C.T * G)
    Ti = kron(C, sp.eye(n))  # T^-1 on vec W' (W' = A W, A = C^-1: T = A (x) I_n)
    wp = list(vec(Wp))
    p.equal("hess_{W'} L(C W') = (C (x) I)^T H (C (x) I) = T^-T H T^-1 with T = C^-1 (x) I_n (statement T2)",
            sp.hessian(L, wp), Ti.T * H * Ti)
    Gs = smat("g", m, n)  # the update laws hold for every G
    p.equal("one GD step on W' with C frozen moves the product by C (W' - eta C^T G) - C W' = -eta C C^T G",
            C * (Wp - eta * C.T * Gs) - C * Wp, -eta * C * C.T * Gs)
    p.equal("vec(C C^T G) = P vec(G) with P = T^-1 T^-T = C C^T (x) I_n (statement P)", vec(C * C.T * Gs),
            Ti * Ti.T * vec(Gs))
    Ci = smat("e", n, n)  # input side C' (n x n)
    Li, Hi, gi = _quadratic(vec(Wp * Ci), "i")
    Gi = _reshape(Hi * vec(Wp * Ci) + gi, m, n)
    p.equal("input side: d L(W' C') / d W' = G C'^T", _grad_matrix(Li, Wp), Gi * Ci.T)
    Tii = kron(sp.eye(m), Ci.T)
    p.equal("vec(W' C') = (I_m (x) C'^T) vec(W'), and hess_{W'} L(W' C') = T^-T H T^-1 with T^-1 = I (x) C'^T",
            sp.hessian(Li, wp), Tii.T * Hi * Tii)
    p.equal("input side update: W' C' -> W' C' - eta G C'^T C', vec = -eta (I_m (x) C'^T C') vec(G): a right "
            "preconditioner", vec((Wp - eta * Gi * Ci.T) * Ci - Wp * Ci), -eta * kron(sp.eye(m), Ci.T * Ci) * vec(Gi))
    # the two placements differ in effect
    a = sp.Symbol("a", positive=True)
    Sxx = sp.diag(4, 1)
    Hlast = kron(sp.eye(2), Sxx)
    Wl = smat("v", 2, 2)
    p.equal("last layer, squared loss, E[x x^T] = diag(4, 1): H = I (x) E[x x^T] (vec(W S) = (I (x) S) vec W)",
            Hlast * vec(Wl), vec(Wl * Sxx))
    Cd = sp.diag(1 / a, 1)
    left = (kron(Cd * Cd.T, sp.eye(2)) * Hlast).subs(a, 2)
    right = (kron(sp.eye(2), Cd.T * Cd) * Hlast).subs(a, 2)
    kl = max(left.eigenvals()) / min(left.eigenvals())
    kr = max(right.eigenvals()) / min(right.eigenvals())
    p.true(f"the placements differ in effect: with C = C' = diag(1/2, 1) (alpha = 2, k = 1) the preconditioned "
           f"Hessian has kappa {kl} (output side, C C^T (x) I) vs {kr} (input side, I (x) C'^T C')",
           sp.And(sp.Eq(kl, 16), sp.Eq(kr, 1)))
    p.argue("with C frozen the trainable (W', b') = T (W, b) with T = A (x) I_n on W and A on b (output side, "
            "A = C^-1) or T = I_m (x) B^T on W and I on b (input side, B = C'^-1): an FPLR of the original layer "
            "on the original parameters, so T1, T2, T3 (kappa(T) = kappa(C)), T4, P (P = C C^T (x) I, resp. "
            "I (x) C'^T C'), N, LM, F1/F2 on L' = L o T^-1 and B (corrected) apply verbatim; and since C is in the "
            "release, R1 needs no secret: it is the merge (statement M)")


def _joint(p: Proof) -> None:
    """C trainable: the exact update of the product, its vec form, the conserved imbalance."""
    eta = sp.Symbol("eta")
    m, n = 2, 3
    C, Wp, G = smat("c", m, m), smat("w", m, n), smat("g", m, n)
    L, H, g = _quadratic(vec(C * Wp), "j")
    Gq = _reshape(H * vec(C * Wp) + g, m, n)
    p.equal("d L(C W') / d C = G W'^T (generic quadratic L)", _grad_matrix(L, C), Gq * Wp.T)
    step = (C - eta * G * Wp.T) * (Wp - eta * C.T * G)
    p.equal("one GD step on (C, W') (gradients G W'^T, C^T G): the product moves by exactly "
            "-eta (C C^T G + G W'^T W') + eta^2 G W'^T C^T G", step - C * Wp,
            -eta * (C * C.T * G + G * Wp.T * Wp) + eta**2 * G * Wp.T * C.T * G)
    Pj = kron(C * C.T, sp.eye(n)) + kron(sp.eye(m), Wp.T * Wp)
    p.equal("vec form: vec(C C^T G + G W'^T W') = (C C^T (x) I_n + I_m (x) W'^T W') vec(G)",
            vec(C * C.T * G + G * Wp.T * Wp), Pj * vec(G))
    params = list(vec(C)) + list(vec(Wp))
    J = vec(C * Wp).jacobian(params)
    p.equal("that preconditioner is J J^T, J the Jacobian of (C, W') -> vec(C W')", J * J.T, Pj)
    Q = C.T * C - Wp * Wp.T
    Cdot, Wdot = -G * Wp.T, -C.T * G
    p.equal("gradient flow (C' = -G W'^T, W'' = -C^T G) conserves the imbalance Q = C^T C - W' W'^T: dQ/dt = 0",
            Cdot.T * C + C.T * Cdot - Wdot * Wp.T - Wp * Wdot.T, sp.zeros(m, m))
    C1, W1 = C - eta * G * Wp.T, Wp - eta * C.T * G
    p.equal("a GD step changes it by exactly eta^2 (W' G^T G W'^T - C^T G G^T C)",
            (C1.T * C1 - W1 * W1.T) - Q, eta**2 * (Wp * G.T * G * Wp.T - C.T * G * G.T * C))
    U, cu = rotation("u")
    V, cv = rotation("v")
    al, s1, s2 = sp.symbols("alpha sigma_1 sigma_2", positive=True)
    D, S = sp.diag(al, 1), sp.diag(s1, s2)
    Cr, Wr = U * inverse(D) * U.T, U * D * S * V.T
    p.equal("at the release (k = 1, m = n = 2, U, V rotations): Q = U diag(alpha^-2 - alpha^2 sigma_1^2, "
            "1 - sigma_2^2) U^T", Cr.T * Cr - Wr * Wr.T,
            U * sp.diag(1 / al**2 - al**2 * s1**2, 1 - s2**2) * U.T, circles=[cu, cv])
    p.argue("W' W'^T = C^T C - Q >= -Q (C^T C >= 0) at every time of the flow, so by Weyl lambda_max(W' W'^T) >= "
            "-lambda_min(Q) = alpha^2 sigma_1^2 - alpha^-2 (alpha >= 1, bounds_inserted.imbalance_floor): gradient "
            "flow can never rebalance the factorization, and the deformation of W' stays")
    p.argue("to first order the joint step is preconditioned GD on L with P = J J^T; on the local quadratic model "
            "the rate is set by kappa(P^1/2 H P^1/2) in [kappa(H)/kappa(P), kappa(P) kappa(H)] (T3 with kappa(T)^2 "
            "replaced by kappa(P)); at the release the eigenvalues of P are sigma_i(C)^2 + sigma_j(W')^2 "
            "(bounds_inserted.joint_preconditioner_range), up to 1 + alpha^2 sigma_1^2 against alpha^-2 + "
            "sigma_min(W')^2: the joint attacker faces kappa(P) ~ alpha^4 sigma_1^2 where W' has a null space, "
            "against alpha^2 = kappa(C C^T) with C frozen")
    bp, gb = svec("b", m), svec("q", m)  # bias b' on W' (output side) and its gradient g_b = dL/db at b = C b'
    Ga, Wa = G.row_join(gb), Wp.row_join(bp)
    step_b = (C - eta * (G * Wp.T + gb * bp.T)) * (Wp - eta * C.T * G)
    law_a = -eta * (C * C.T * Ga + Ga * Wa.T * Wa) + eta**2 * Ga * Wa.T * C.T * Ga
    p.equal("with a bias b' on W' (output side) dL/dC = G W'^T + g_b b'^T, and the product moves by the law written for "
            "the augmented [W' | b'] and [G | g_b] (its first n columns)", step_b - C * Wp, law_a[:, :n])
    p.equal("... and the merged bias C b' by its last column", (C - eta * (G * Wp.T + gb * bp.T)) * (bp - eta * C.T * gb)
            - C * bp, law_a[:, n])
    Ci, Wi = smat("e", n, n), smat("w", m, n)
    p.equal("input side (y = W' C' x): the product W' C' moves by -eta (W' W'^T G + G C'^T C') + eta^2 G C'^T W'^T G",
            (Wi - eta * G * Ci.T) * (Ci - eta * Wi.T * G) - Wi * Ci,
            -eta * (Wi * Wi.T * G + G * Ci.T * Ci) + eta**2 * G * Ci.T * Wi.T * G)


def derive_I() -> Derivation:
    """I: with C frozen the grown model is an FPLR with T = C^-1 (x) I (one-sided preconditioner
    C C^T); with C trainable the product moves by -eta (C C^T G + G W'^T W') + eta^2 G W'^T C^T G
    and the imbalance C^T C - W' W'^T is conserved by gradient flow."""
    p = Proof()
    _frozen(p)
    _joint(p)
    G, C, Wp = (sp.MatrixSymbol(x, 2, 2) for x in ("G", "C", "W'"))
    p.form("frozen C", C * C.T * G, text="dW = -eta C C^T G (output side); -eta G C'^T C' (input side)")
    p.form("joint", C * C.T * G + G * Wp.T * Wp,
           text="dW = -eta (C C^T G + G W'^T W') + eta^2 G W'^T C^T G (output side)")
    p.form("imbalance", C.T * C - Wp * Wp.T, text="Q = C^T C - W' W'^T, dQ/dt = 0 under gradient flow")
    return p.done()


# ---------------------------------------------------------------- PREC-ALPHA
def _fl_chain(W: list[list[float]], x: list[float], alpha: float) -> list[float]:
    """fp64 (Python floats, IEEE round to nearest) evaluation of C (W' x) with W' = alpha W and
    C = alpha^-1 I (the inserted form at k = m = n), sums left to right."""
    Wp = [[alpha * w for w in row] for row in W]
    h = [Wp[i][0] * x[0] + Wp[i][1] * x[1] for i in range(2)]
    c = 1.0 / alpha
    return [c * h[0] + 0.0 * h[1], 0.0 * h[0] + c * h[1]]


def _counterexample() -> tuple[str, sp.Rational, sp.Rational, int]:
    """k = m = n = 2: the output of the inserted form is bit-identical for alpha = 1 and 2^20."""
    W = [[1 / 3, 1 / 7], [1 / 5, 1 / 11]]
    x = [1 / 3, 2 / 3]
    exact = [sum(sp.Rational(W[i][j]) * sp.Rational(x[j]) for j in range(2)) for i in range(2)]

    def err(alpha: float) -> sp.Rational:
        y = _fl_chain(W, x, alpha)
        return sum((sp.Rational(y[i]) - exact[i]) ** 2 for i in range(2))

    j = 20
    return "W = fl64([[1/3, 1/7], [1/5, 1/11]]), x = fl64([1/3, 2/3]), k = m = n = 2", err(1.0), err(2.0**j), j


def derive_PREC_ALPHA() -> Derivation:
    """PREC-ALPHA: the inserted form is a PREC pair (P = W', Q = C), so the rigorous PREC bound
    applies with the chain's norms; the error grows like u ||C|| ||W'|| ~ u alpha ||W|| when k < s
    and not at all when k = s: the factor sigma_1 / sigma_k of THEORY.md is false."""
    p = Proof()
    A, W = smat("a", 2, 2), smat("w", 2, 3)
    p.equal("the output-side chain is the PREC pair (W_a, W_b) = (W, I_m) defended by A = C^-1: "
            "(I A^-1)(A W) = W, so bounds_precision.forward_error_bound applies with (n_in, r, m) = (n, m, m)",
            (sp.eye(2) * inverse(A)) * (A * W), W)
    Bi = smat("b", 3, 3)
    p.equal("the input-side chain is the pair (I_n, W) defended by C' : (W C'^-1) C' = W, dims (n, n, m)",
            (W * inverse(Bi)) * Bi, W)
    U, cu = rotation("u")
    V, cv = rotation("v")
    al, s1, s2 = sp.symbols("alpha sigma_1 sigma_2", positive=True)
    D, S = sp.diag(al, 1), sp.diag(s1, s2)
    Wr, Cr = U * D * S * V.T, U * inverse(D) * U.T
    p.equal("||W'||_F^2 = alpha^2 sigma_1^2 + sigma_2^2 (k = 1, U, V rotations)", (Wr.T * Wr).trace(),
            al**2 * s1**2 + s2**2, circles=[cu, cv])
    p.equal("||C||_F^2 = alpha^-2 + 1 = k / alpha^2 + (s - k)", (Cr.T * Cr).trace(), 1 / al**2 + 1, circles=[cu])
    wp2, c2, w2 = bi.frobenius_squares([s1, s2], 1, al, 2)
    p.equal("bounds_inserted.frobenius_squares gives the same closed forms", Matrix([wp2, c2, w2]),
            Matrix([al**2 * s1**2 + s2**2, 1 / al**2 + 1, s1**2 + s2**2]))
    k, s, T, R = sp.symbols("k s T R", positive=True)  # T = sum_{i<=k} sigma_i^2, R = rest
    prod = sp.sqrt((k / al**2 + s - k) * (al**2 * T + R))
    p.equal("k < s: ||C||_F ||W'||_F / alpha -> sqrt(s - k) ||sigma_{1:k}|| (alpha -> oo): growth linear in alpha, "
            "with no factor sigma_1 / sigma_k", sp.limit(prod / al, al, sp.oo), sp.sqrt(s - k) * sp.sqrt(T))
    p.equal("k = s: ||C||_F^2 ||W'||_F^2 = (s / alpha^2)(alpha^2 ||sigma||^2) = s ||W||_F^2, independent of alpha",
            (s / al**2) * (al**2 * (T + R)), s * (T + R))
    where, e1, ej, j = _counterexample()
    p.true(f"counterexample (fp64, exact rational errors): {where}; the squared output error at alpha = 1 is "
           f"{sp.N(e1, 4)} > 0 and at alpha = 2^{j} it is identical (powers of two scale exactly), while "
           f"u alpha sigma_1/sigma_k predicts a 2^{j}-fold growth", sp.And(e1 > 0, sp.Eq(e1, ej)))
    fp64 = bi.certified_safe_alpha("fp64", "output", 8, 8, 2, [1, Fraction(1, 2), Fraction(1, 4)], Fraction(1, 10**8))
    fp32 = bi.certified_safe_alpha("fp32", "output", 8, 8, 2, [1, Fraction(1, 2), Fraction(1, 4)], Fraction(1, 10**3))
    p.true(f"certified safe alpha (rigorous bound, n = m = 8, k = 2): fp64 at 1e-8 gives {fp64:.3g}, fp32 at 1e-3 "
           f"gives {fp32:.3g}; both exceed 1", sp.And(fp64 > 1, fp32 > 1))
    p.cite("Higham, Accuracy and Stability of Numerical Algorithms, eq. (3.5); the PREC model (M1)-(M3) of "
           "bounds_precision")
    p.argue("so ||fl(chain(x)) - W x|| <= forward_error_bound(...) with ||W'||_F, ||C||_F above (rigorous, "
            "bounds_inserted.inserted_error_bound / alpha_form_bound); to first order (n + s + 2) u ||C||_F ||W'||_F "
            "||x||, i.e. relative to ||W||_2 ||x|| a factor rho = ||C||_2 ||W'||_2 / ||W||_2 (= alpha for k < s, 1 for "
            "k = s) times dimension constants. sigma_1/sigma_j enters only the error relative to ||W x|| for x along "
            "v_j, and the undefended layer already has it at alpha = 1")
    u, n, sw = sp.symbols("u n s", positive=True)
    p.form("first-order error", (n + sw + 2) * u * tsym("||C||_F||W'||_F", r"\|C\|_F\|W'\|_F") * tsym("||x||", r"\|x\|_2"),
           text="(n + s + 2) u ||C||_F ||W'||_F ||x||_2 (+ the undefended cast error)")
    p.form("amplification", tsym("rho", r"\rho"), text="rho = ||C||_2 ||W'||_2 / ||W||_2 = alpha (k < s), 1 (k = s)")
    return p.done(Status.CORRECTED, counterexample=(
        f"{where}: the computed output of the inserted form is bit-identical at alpha = 1 and alpha = 2^{j} "
        f"(squared error {sp.N(e1, 4)} both times): no growth, where u alpha sigma_1/sigma_k predicts 2^{j}-fold"))


# ---------------------------------------------------------------- M
def derive_M() -> Derivation:
    """M: merging C W' -> W is exact, recovers the original model and removes s^2 parameters."""
    p = Proof()
    U, cu = rotation("u")
    V, cv = rotation("v")
    al, s1, s2 = sp.symbols("alpha sigma_1 sigma_2", positive=True)
    D, S = sp.diag(al, 1), sp.diag(s1, s2)
    W = U * S * V.T
    p.equal("output side: C W' = U D^-1 U^T U D S V^T = W (rotations U, V)", (U * inverse(D) * U.T) * (U * D * S * V.T),
            W, circles=[cu, cv])
    p.equal("input side: W' C' = U S D V^T V D^-1 V^T = W", (U * S * D * V.T) * (V * inverse(D) * V.T), W,
            circles=[cu, cv])
    C, Wp = smat("c", 2, 2), smat("w", 2, 3)
    b1, c0, x = svec("b", 2), svec("d", 2), svec("x", 3)
    p.equal("any chain of affine maps merges: C (W' x + b') + c = (C W') x + (C b' + c)", C * (Wp * x + b1) + c0,
            (C * Wp) * x + (C * b1 + c0))
    bias = svec("beta", 2)
    p.equal("with this project's convention b' = C^-1 b, c = 0 the merged bias is b", C * (inverse(C) * bias), bias)
    m, n, r = sp.symbols("m n r", positive=True, integer=True)
    grown, merged = m * n + m + m**2, m * n + m
    p.equal("parameters: grown layer m n + m + m^2 (C bias-free), merged m n + m: the merge removes m^2",
            merged - grown, -m**2)
    p.true("bounds_inserted.merge_extra_parameters(8) = -64, (8, bias) = -72; R1 adds "
           "bounds.recovery_extra_parameters('S1', 8) = 128 > 0",
           sp.And(sp.Eq(bi.merge_extra_parameters(8), -64), sp.Eq(bi.merge_extra_parameters(8, True), -72),
                  sp.Eq(bounds.recovery_extra_parameters("S1", 8), 128)))
    p.argue("the merged parameters equal the original ones exactly (exact arithmetic), so every attack from the merged "
            "point is the undefended run: slowdown exactly 1 at -s^2 parameters per inserted layer, where R1 pays "
            "+2 r^2 per S1 pair (linear increase) and R2 0")
    p.cite("Higham eq. (3.5): |fl(C W') - C W'| <= gamma_s |C| |W'| entrywise (inner length s), and "
           "|| |C| |W'| ||_F <= ||C||_F ||W'||_F")
    lo = bi.merge_error_bound("fp64", 4, 4, 4, 2, 10)
    hi = bi.merge_error_bound("fp64", 4, 4, 4, 2, 1000)
    p.true("bounds_inserted.merge_error_bound grows with ||C||_F ||W'||_F (fp64, s = 4: ||W'|| = 10 vs 1000)", lo < hi)
    p.form("merge", sp.MatrixSymbol("C", 2, 2) * sp.MatrixSymbol("W'", 2, 2), text="W = C W' exactly; extra parameters -s^2")
    p.form("merge error", tsym("gamma_s", r"\gamma_s") * tsym("||C||_F||W'||_F", r"\|C\|_F\|W'\|_F"),
           text="||fl(C W') - C W'||_F <= gamma_s ||C||_F ||W'||_F (+ underflow)")
    return p.done()


__all__ = ["derive_I", "derive_M", "derive_PREC_ALPHA"]
