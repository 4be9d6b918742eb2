"""Symbolic derivations of the recovery statements R1, R2 and of the precision limit PREC."""
from __future__ import annotations

import sympy as sp
from sympy import Matrix

from convrate.theory import bounds
from convrate.theory import bounds_precision as bp
from convrate.theory.core import Derivation, Status
from convrate.theory.derive_transforms import (Proof, defended_cubic, general_pair, inverse, rotation,
                                               smat, svec, tsym, two_layer)


# ---------------------------------------------------------------- R1


def derive_R1() -> Derivation:
    """R1: with knowledge of T, preconditioning by T T^T (or inserting frozen A, A^-1) replays the
    undefended run exactly; extra parameters 2 r^2 (S1) and 2 r (S2) per pair."""
    p = Proof()
    eta = sp.Symbol("eta")
    c = defended_cubic()
    p.equal("generic cubic L, symbolic 2x2 T: T theta - eta T T^T grad L'(T theta) = T (theta - eta grad L(theta))",
            c.T * c.theta - eta * c.T * c.T.T * c.grad_defended, c.T * (c.theta - eta * c.grad), scope="example")
    n = sp.Symbol("n", integer=True, positive=True)
    Tg, gg, tg = sp.MatrixSymbol("T", n, n), sp.MatrixSymbol("g", n, 1), sp.MatrixSymbol("theta", n, 1)
    p.equal("any n, T invertible, g = grad L(theta), grad L'(T theta) = T^-T g (T1, chain rule): "
            "T theta - eta T T^T (T^-T g) = T (theta - eta g)", Tg * tg - eta * Tg * Tg.T * (Tg.I.T * gg),
            Tg * (tg - eta * gg), scope="general")
    p.argue("by induction theta'_t = T theta_t for every t and every step size or schedule: preconditioning with "
            "P' = T T^T undoes the defense exactly (slowdown 1)")
    net = two_layer(2, 2, 2)
    A = smat("a", 2, 2)
    frozen = (net.Wb * inverse(A)) * (A * (net.Wa * net.x + net.ba))
    p.equal("frozen layers: W_b A^-1 (A (W_a x + b_a)) = W_b (W_a x + b_a) (symbolic A, weights, x), so training the "
            "free factors from phi_0 = T^-1 theta'_0 = theta_0 is the undefended run", frozen, net.f(), scope="example")
    g = general_pair()
    p.equal("frozen layers, every dimension: (W_b A^-1)(A (W_a x + b_a)) = W_b (W_a x + b_a), so training the free "
            "factors from phi_0 = T^-1 theta'_0 = theta_0 is the undefended run", (g.Wb * g.A.I) * (g.A * (g.Wa * g.x + g.ba)),
            g.f(), scope="general")
    r, n_in, n_out, m = sp.symbols("r n_in n_out m", positive=True)  # m = min(n_in, n_out)
    pair = r * (n_in + 1 + n_out)
    bound = 2 * (r / m) * pair
    p.equal("bound - 2 r^2 = 2 r^2 (n_in + 1 + n_out - m)/m >= 0 (m = min(n_in, n_out) <= n_in + n_out)",
            bound - 2 * r**2, 2 * r**2 * (n_in + 1 + n_out - m) / m, scope="general")
    p.equal("bound - 2 r = 2 r (r (n_in + 1 + n_out) - m)/m >= 0", bound - 2 * r, 2 * r * (r * (n_in + 1 + n_out) - m) / m, scope="general")
    p.argue("summing over pairs, the extra parameters are at most 2 max_p (r_p / min(n_in,p, n_out,p)) times the "
            "defended parameters: linear in model size")
    s2 = bounds.recovery_extra_parameters("S2", 3)
    p.true("convention check: inserting frozen D and D^-1 for an S2 group of width 3 stores 2 r = 6 numbers "
           "(bounds.recovery_extra_parameters('S2', 3))", sp.Eq(s2, 6), scope="example")
    p.form("extra parameters (S1, per pair)", 2 * r**2)
    p.form("extra parameters (S2, per group)", 2 * r)
    p.form("bound (per pair)", bound, text="2 (r / min(n_in, n_out)) r (n_in + 1 + n_out)")
    return p.done(Status.CORRECTED,
                  counterexample="S2 group of width r_p = 3: the inserted frozen layers D and D^-1 hold 2 r_p = 6 "
                                 "parameters, not r_p = 3 (THEORY's r_p counts D alone, while its S1 count 2 r_p^2 "
                                 "counts both A and A^-1)")


# ---------------------------------------------------------------- R2


def _r2_s2(p: Proof) -> None:
    """Per-unit balance for S2 and its invariance; dead units have no minimizer."""
    c, al, be = sp.symbols("c alpha beta", positive=True)  # alpha = ||in||^2, beta = ||out||^2
    F = c**2 * al + be / c**2
    crit = sp.solve(sp.diff(F, c), c)
    p.true("S2 unit: d/dc (c^2 ||in||^2 + ||out||^2 / c^2) = 0 has exactly one positive root", sp.Eq(len(crit), 1), scope="general")
    cs = crit[0]
    p.equal("the root satisfies c^2 = ||out|| / ||in||", cs**2, sp.sqrt(be) / sp.sqrt(al), scope="general")
    p.equal("second derivative there = 8 ||in||^2 > 0 (a minimum); F -> oo at c -> 0+ and c -> oo",
            sp.diff(F, c, 2).subs(c, cs), 8 * al, scope="general")
    p.equal("minimum value 2 ||in|| ||out||", F.subs(c, cs), 2 * sp.sqrt(al) * sp.sqrt(be), scope="general")
    x1, x2, y1, y2 = sp.symbols("x_1 x_2 y_1 y_2", real=True)
    d = sp.Symbol("d", positive=True)

    def canon(inv: list, outv: list) -> list:
        ni = sp.sqrt(sp.factor(sum(z**2 for z in inv)))
        no = sp.sqrt(sp.factor(sum(z**2 for z in outv)))
        c2 = no / ni
        return [z * sp.sqrt(c2) for z in inv] + [z / sp.sqrt(c2) for z in outv]

    base = canon([x1, x2], [y1, y2])
    moved = canon([d * x1, d * x2], [y1 / d, y2 / d])
    p.equal("the balanced unit is the same for (in, out) and (d in, out/d), d > 0: canonicalization undoes S2 exactly",
            Matrix(moved), Matrix(base), scope="example")
    ni, no = sp.symbols("n_in n_out", positive=True)  # ||in||, ||out|| (any lengths)
    cb = sp.sqrt(no / ni)  # balancing scale of (in, out)
    cm = sp.sqrt((no / d) / (d * ni))  # of (d in, out / d)
    p.equal("any lengths: the balanced norms of (d in, out/d) equal those of (in, out): ||d in|| c' = ||in|| c and "
            "||out/d|| / c' = ||out|| / c with c^2 = ||out||/||in||", Matrix([d * ni * cm, (no / d) / cm]),
            Matrix([ni * cb, no / cb]), scope="general")
    p.equal("and the balanced vectors themselves: (d in) c' = in c, i.e. c' = c / d", d * cm, cb, scope="general")
    p.true("dead unit (out = 0): d/dc (c^2 ||in||^2) = 2 c ||in||^2 has no positive root: no minimizer over the orbit "
           "(the infimum 0 is approached as c -> 0)", sp.Eq(len(sp.solve(sp.diff(c**2 * al, c), c)), 0), scope="general")
    p.argue("deep ReLU nets: with u = log c per hidden unit, sum ||W||_F^2 = sum_l sum_ij W_l,ij^2 exp(2(u_l,i - u_(l-1),j)) "
            "is convex in u (sum of exponentials of linear forms), strictly convex and coercive when every unit has "
            "nonzero in- and out-weights; per-unit balancing is exact coordinate minimization, so iterating it over "
            "layers converges to the unique minimizer")


def _r2_s1(p: Proof) -> None:
    """Balanced factors for S1: optimality, uniqueness up to O(r), degenerate products."""
    (U, cu), (V, cv), (Q, cq) = rotation("U"), rotation("V"), rotation("Q")
    circ = [cu, cv, cq]
    t1, t2 = sp.symbols("tau_1 tau_2", positive=True)  # tau_i = sqrt(sigma_i)
    s1, s2 = t1**2, t2**2
    Sig, Sh = sp.diag(s1, s2), sp.diag(t1, t2)
    M = U * Sig * V.T
    X, Y = Q * Sh * V.T, U * Sh * Q.T
    p.equal("balanced factors W_a = Q Sigma^(1/2) V^T, W_b = U Sigma^(1/2) Q^T (U, V, Q rotations): W_b W_a = U Sigma V^T",
            Y * X, M, circ)
    p.equal("balance: W_a W_a^T = W_b^T W_b", X * X.T, Y.T * Y, circ)
    p.equal("||W_a||_F^2 + ||W_b||_F^2 = 2 tr Sigma = 2 ||W_b W_a||_*", (X * X.T).trace() + (Y.T * Y).trace(),
            2 * (s1 + s2), circ)
    a, b = sp.symbols("a b", positive=True)
    p.equal("AM-GM: (a^2 + b^2)/2 - a b = (a - b)^2 / 2", (a**2 + b**2) / 2 - a * b, (a - b) ** 2 / 2, scope="general")
    p.cite("Hoelder for Schatten norms: ||Y X||_* <= ||Y||_F ||X||_F; with AM-GM every factorization of M has "
           "||X||^2 + ||Y||^2 >= 2 ||M||_*: the balanced factors minimize sum ||W||_F^2 over the orbit")
    Xg, Yg, B = smat("x", 2, 2), smat("y", 2, 2), smat("b", 2, 2)
    eps = sp.Symbol("epsilon")
    Ae = sp.eye(2) + eps * B
    F = ((Ae * Xg).T * (Ae * Xg)).trace() + ((Yg * inverse(Ae)).T * (Yg * inverse(Ae))).trace()
    p.equal("first variation at A = I + eps B: dF/deps(0) = 2 tr(B (W_a W_a^T - W_b^T W_b)), so the critical points of "
            "the orbit are exactly the balanced pairs", sp.diff(F, eps).subs(eps, 0), 2 * (B * (Xg * Xg.T - Yg.T * Yg)).trace())
    p.equal("uniqueness: M^T M - (W_a^T W_a)^2 = W_a^T (W_b^T W_b - W_a W_a^T) W_a (generic), so balanced pairs have "
            "W_a^T W_a = (M^T M)^(1/2)", (Yg * Xg).T * (Yg * Xg) - (Xg.T * Xg) ** 2, Xg.T * (Yg.T * Yg - Xg * Xg.T) * Xg, scope="example")
    r_ = sp.Symbol("r", integer=True, positive=True)
    Yg, Xs = sp.MatrixSymbol("W_b", r_, r_), sp.MatrixSymbol("W_a", r_, r_)
    p.equal("uniqueness, every dimension (square r x r factors): M^T M - (W_a^T W_a)^2 = W_a^T (W_b^T W_b - W_a W_a^T) W_a "
            "for M = W_b W_a", (Yg * Xs).T * (Yg * Xs) - sp.MatMul(Xs.T, Xs, Xs.T, Xs),  # flat word, not a power
            Xs.T * (Yg.T * Yg - Xs * Xs.T) * Xs, scope="general")
    p.argue("two full-rank factors with the same Gram matrix W_a^T W_a differ by an orthogonal Q on the left "
            "(W_a = Q Sigma^(1/2) V^T), and W_b = M W_a^+ follows: unique up to O(r)")
    p.equal("GD is invariant under orthogonal T = Q: P = Q^-1 Q^-T = I (statement P)", Q.T * Q, sp.eye(2), circ, scope="example")
    e = sp.Symbol("epsilon", positive=True)
    Ad = sp.diag(1, e)
    Wb0 = Matrix([[1, 0]])
    val = (Ad.T * Ad).trace() + ((Wb0 * inverse(Ad)) * (Wb0 * inverse(Ad)).T).trace()
    p.equal("degenerate product: W_a = I_2, W_b = [1, 0] (rank W_b W_a = 1 < r = 2), A = diag(1, eps): sum of squares "
            "= 2 + eps^2, infimum 2 not attained by any A in GL(2): no minimizer", val, 2 + e**2, scope="example")
    p.argue("with a bias b_a the orbit norm includes ||A b_a||^2: the minimizer is the balanced factorization of "
            "W_b [W_a | b_a]; in every case the canonical form is a function of the orbit, so canonical(T theta_0) = "
            "canonical(theta_0) up to an orthogonal map (S1) or a permutation (S2), and the attack's step counts do not "
            "depend on the defense strength K")


def derive_R2() -> Derivation:
    """R2: canonicalization (orbit norm minimization) undoes S1 and S2 defenses, under nondegeneracy."""
    p = Proof()
    _r2_s2(p)
    _r2_s1(p)
    p.form("S2 balance", r"c_i^2 = \|\mathrm{out}_i\| / \|(\mathrm{in}_i, b_i)\|", text="c_i^2 = ||out_i|| / ||(in_i, b_i)||")
    p.form("S1 canonical factors", r"W_a = \Sigma^{1/2} V^T,\; W_b = U \Sigma^{1/2},\; W_b W_a = U \Sigma V^T",
           text="W_a = Sigma^(1/2) V^T, W_b = U Sigma^(1/2) (up to W_a -> Q W_a, W_b -> W_b Q^T, Q orthogonal)")
    p.form("orbit minimum (S1)", 2 * tsym("||W_b W_a||_*", r"\|W_b W_a\|_*"))
    return p.done(Status.CORRECTED,
                  counterexample="the orbit minimizer need not exist: an S2 unit with zero outgoing weights (c^2 ||in||^2 "
                                 "has infimum 0, not attained for c > 0), or an S1 pair with rank(W_b W_a) < r (W_a = I_2, "
                                 "W_b = [1, 0]: A = diag(1, eps) gives 2 + eps^2, infimum 2 not attained); with a bias the "
                                 "S1 minimizer factors W_b [W_a | b_a], not W_b W_a")


# ---------------------------------------------------------------- PREC


def derive_PREC() -> Derivation:
    """PREC: the floating-point output error of a defended pair is bounded by a quantity linear in
    kappa(A) (rigorous form: convrate.theory.bounds_precision.forward_error_bound)."""
    p = Proof()
    Wa, Wb, x = smat("wa", 2, 2), smat("wb", 2, 2), svec("x", 2)
    P, Q = smat("p", 2, 2), smat("q", 2, 2)  # P~, Q~: the reparameterized weights before casting
    dP, dQ, dx = smat("dp", 2, 2), smat("dq", 2, 2), svec("dx", 2)
    e1, e2 = svec("e1", 2), svec("e2", 2)
    xh, Ph, Qh = x + dx, P + dP, Q + dQ
    hh = Ph * xh + e1
    yh = Qh * hh + e2
    Delta = Q * P - Wb * Wa
    p.equal("exact expansion of the computed output (casts dx, dP, dQ; layer errors e1, e2; reparameterization "
            "residual Delta = Q~P~ - W_b W_a): y^ - W_b W_a x = Delta x + Q~P~ dx + Q~ dP x^ + Q~ e1 + dQ h^ + e2",
            yh - Wb * Wa * x, Delta * x + Q * P * dx + Q * dP * xh + Q * e1 + dQ * hh + e2, scope="example")
    gp = general_pair()
    n_, r_, o_ = gp.n_in, gp.r, gp.n_out
    Pm, Qm = sp.MatrixSymbol("P", r_, n_), sp.MatrixSymbol("Q", o_, r_)
    dPm, dQm, dxm = sp.MatrixSymbol("dP", r_, n_), sp.MatrixSymbol("dQ", o_, r_), sp.MatrixSymbol("dx", n_, 1)
    e1m, e2m = sp.MatrixSymbol("e1", r_, 1), sp.MatrixSymbol("e2", o_, 1)
    xm = gp.x
    hh_ = (Pm + dPm) * (xm + dxm) + e1m
    p.equal("every dimension: y^ - W_b W_a x = Delta x + Q~P~ dx + Q~ dP x^ + Q~ e1 + dQ h^ + e2 (Delta = Q~P~ - W_b W_a)",
            (Qm + dQm) * hh_ + e2m - gp.Wb * gp.Wa * xm,
            (Qm * Pm - gp.Wb * gp.Wa) * xm + Qm * Pm * dxm + Qm * dPm * (xm + dxm) + Qm * e1m + dQm * hh_ + e2m,
            scope="general")
    p.equal("every dimension: (W_b A^-1)(A W_a) = W_b W_a, Delta = 0", (gp.Wb * gp.A.I) * (gp.A * gp.Wa), gp.Wb * gp.Wa,
            scope="general")
    A = smat("a", 2, 2)
    p.equal("exact reparameterization: Q~ P~ = (W_b A^-1)(A W_a) = W_b W_a, Delta = 0", (Wb * inverse(A)) * (A * Wa), Wb * Wa, scope="example")
    p.cite("Higham, Accuracy and Stability of Numerical Algorithms, Lemma 3.1 and eq. (3.5): |fl(a^T b) - a^T b| <= "
           "gamma_k |a|^T |b|, gamma_k = k u / (1 - k u); casts |dt| <= u_c |t| (+ underflow slack)")
    p.argue("bounding each term in norm (|| |M| ||_F = ||M||_F >= ||M||_2) gives the rigorous bound "
            "bounds_precision.forward_error_bound; with ||A W_a||_F <= ||A||_2 ||W_a||_F and ||W_b A^-1||_F <= "
            "||A^-1||_2 ||W_b||_F every weight term carries ||A|| ||A^-1|| = kappa(A) (bounds_precision.kappa_form_bound)")
    u, n, r = sp.symbols("u n r", positive=True)
    coef = 2 * u + n * u / (1 - n * u) + r * u / (1 - r * u)  # 2 u_c + gamma_n + gamma_r with a single cast (u_c = u)
    p.equal("first order in u: 2 u_c + gamma_n + gamma_r = (n + r + 2) u + O(u^2) (u_c = u)",
            sp.series(coef, u, 0, 2).removeO(), (n + r + 2) * u, scope="general")
    p.argue("so ||y^ - y|| <~ (n + r + 2) u kappa(A) ||W_b||_F ||W_a||_F ||x|| + u ||W_b W_a||_F ||x|| "
            "(bounds_precision.leading_order_model): linear in kappa(A), equal to the undefended bound at kappa(A) = 1. "
            "This is an upper bound; the largest K each dtype tolerates, and overflow "
            "(bounds_precision.overflow_certain / no_overflow_guaranteed), are measured on real models")
    lo = bp.kappa_form_bound("fp32", 8, 4, 2, 1, 2, 2, 1, 1, 1)
    hi = bp.kappa_form_bound("fp32", 8, 4, 2, 1, 4, 4, 1, 1, 1)
    p.true("bounds_precision.kappa_form_bound grows with kappa(A) (fp32, n = 8, r = 4: ||A|| = ||A^-1|| = 2 vs 4)", lo < hi, scope="example")
    p.form("first-order error", (n + r + 2) * u * tsym("kappa(A)", r"\kappa(A)") * tsym("||W_b||_F", r"\|W_b\|_F")
           * tsym("||W_a||_F", r"\|W_a\|_F") * tsym("||x||", r"\|x\|_2"),
           text="(n_in + r + 2) u kappa(A) ||W_b||_F ||W_a||_F ||x||_2 (+ the undefended cast error of x)")
    return p.done()
