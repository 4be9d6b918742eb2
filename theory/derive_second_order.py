"""Symbolic derivations of the second-order and preconditioned attackers' statements (SO-*).

Matrices are fully symbolic 2x2 (H, G, X, S symmetric; T, A general; Q a rotation with
c^2 + d^2 = 1); scalar identities use positive symbols. Counterexamples are exact (sympy
rationals and radicals), never floating point.
"""
from __future__ import annotations

import sympy as sp
from sympy import Matrix, Rational

from convrate.theory.core import Derivation, Status
from convrate.theory.derive_transforms import Proof, inverse, rotation, smat, ssym, svec


def _dot(a: Matrix, b: Matrix) -> sp.Expr:
    return (a.T * b)[0, 0]


def polar2(M: Matrix) -> Matrix:
    """Polar factor U of an invertible real 2x2 M (M = U P, U orthogonal, P > 0), closed form:
    U = (M + sgn(det M) cof(M)) / sqrt(||M||_F^2 + 2 |det M|)."""
    det = M.det()
    cof = Matrix([[M[1, 1], -M[1, 0]], [-M[0, 1], M[0, 0]]])
    s = sp.sign(det)
    return (M + s * cof) / sp.sqrt(sum(x**2 for x in M) + 2 * sp.Abs(det))


# ---------------------------------------------------------------- SO-NEWTON-CG
def derive_newton_cg() -> Derivation:
    """Newton-CG on L' = CG preconditioned by P = T^-1 T^-T on H + lambda T^T T, mapped back."""
    p = Proof()
    T, H, g = smat("t", 2, 2), ssym("h", 2), svec("g", 2)
    Ti = inverse(T)
    lam = sp.Symbol("lambda", positive=True)
    P = Ti * Ti.T
    A = H + lam * T.T * T
    Ap = Ti.T * H * Ti + lam * sp.eye(2)
    r, rp = -g, -(Ti.T * g)
    p.equal("damped defended system: T^T (H' + lambda I) T = H + lambda T^T T (H' = T^-T H T^-1)", T.T * Ap * T, A)
    p.equal("residuals correspond: r' = T^-T r, and r'^T r' = r^T P r (the CG scalars and the P-norm stopping test "
            "agree)", _dot(rp, rp), _dot(r, P * r))
    d = svec("d", 2)
    p.equal("directions correspond: (T d)^T (H' + lambda I) (T d) = d^T (H + lambda T^T T) d", _dot(T * d, Ap * (T * d)),
            _dot(d, A * d))
    a1p = _dot(rp, rp) / _dot(rp, Ap * rp)
    z = P * r
    a1 = _dot(r, z) / _dot(z, A * z)
    p.equal("first CG step: T^-1 (alpha' r') = alpha (P r), alpha' = r'^T r'/r'^T A' r', alpha = r^T P r / (P r)^T A P r",
            Ti * (a1p * rp), a1 * z)
    p.argue("by induction on the CG recurrences (x' = T x, r' = T^-T r, d' = T d, z' = r' = T^-T r maps to z = P r, "
            "every scalar equal): k CG steps on (H' + lambda I) p' = -g' mapped back by T^-1 are k steps of CG "
            "preconditioned by P on (H + lambda T^T T) p = -g, including the negative-curvature stop d^T A d <= 0; so "
            "Newton-CG on L' is, mapped back, Newton-CG on L with damping matrix lambda T^T T (LM) and an adversarial "
            "inner preconditioner P (statement P)")
    p.equal("exact inner solve (k >= number of distinct eigenvalues): T^-1 (H' + lambda I)^-1 g' = (H + lambda T^T T)^-1 g",
            Ti * inverse(Ap) * (Ti.T * g), inverse(A) * g)
    p.equal("with lambda = 0 that is the Newton step H^-1 g: invariant (statement N)",
            (Ti * inverse(Ti.T * H * Ti) * (Ti.T * g)), inverse(H) * g)
    # counterexample: truncated (k = 1), lambda = 0, T = diag(1, 2), H = diag(1, 4), e = (1, 1)
    Hn, Tn, e = sp.diag(1, 4), sp.diag(1, 2), Matrix([1, 1])
    gn = Hn * e
    step = (_dot(gn, gn) / _dot(gn, Hn * gn)) * gn
    Hq, eq = inverse(Tn).T * Hn * inverse(Tn), Tn * e
    gq = Hq * eq
    stepq = inverse(Tn) * ((_dot(gq, gq) / _dot(gq, Hq * gq)) * gq)
    p.true("truncated (k = 1) is not invariant: H = diag(1, 4), e = (1, 1), T = diag(1, 2): mapped-back step "
           f"{list(stepq)} != undefended step {list(step)}", sp.Ne(sp.simplify((stepq - step).norm()), 0))
    p.cite("CG's Chebyshev bound (F2): k inner steps leave ||e - p_k||_H <= 2 rho^k ||e||_H, rho = (sqrt kappa - 1)/"
           "(sqrt kappa + 1); on L' kappa = kappa(H') <= kappa(T)^2 kappa(H) (T3): the outer contraction bound is "
           "bounds_second_order.newton_cg_defended_rate (the inner solve is slowed like F2, by ~kappa(T) in steps)")
    p.form("Newton-CG on L'", inverse(smat("A", 2, 2)), text="T^-1 CG_k(H' + lambda I, -g') = PCG_k(P; H + lambda T^T T, -g)")
    return p.done()


# ---------------------------------------------------------------- SO-GN
def derive_gn() -> Derivation:
    """Gauss-Newton: covariant when G is invertible; damping gives lambda T^T T; the undamped
    (minimum-norm) limit is not invariant when G is singular, which every continuous FPLR forces."""
    p = Proof()
    T = smat("t", 2, 2)
    Ti = inverse(T)
    J, G, g = smat("j", 2, 2), ssym("m", 2), svec("g", 2)
    lam = sp.Symbol("lambda", positive=True)
    p.equal("J' = J T^-1 (f(x; T^-1 theta')), so G' = J'^T J' = T^-T (J^T J) T^-1", (J * Ti).T * (J * Ti), Ti.T * (J.T * J) * Ti)
    p.equal("damped step: T^-1 (G' + lambda I)^-1 g' = (G + lambda T^T T)^-1 g (LM with the GN matrix)",
            Ti * inverse(Ti.T * G * Ti + lam * sp.eye(2)) * (Ti.T * g), inverse(G + lam * T.T * T) * g)
    p.equal("invertible G, lambda = 0: T^-1 G'^-1 g' = G^-1 g: the GN iterates map by T", Ti * inverse(Ti.T * G * Ti) * (Ti.T * g),
            inverse(G) * g)
    a, b, s = sp.symbols("a b s", positive=True)
    Jab = Matrix([[b, a]])  # f(x; a, b) = a b x at x = 1
    v = Matrix([a, -b])
    p.zero("ORBIT-NULL: for f = a b x the orbit tangent (a, -b) of (a, b) -> (s a, b / s) is in null(J): G = J^T J is "
           "singular at every point, and so is every GN matrix of a network with a continuous FPLR group", Jab * v)
    # counterexample, exact: a = b = 1, y = 0, s = 2
    def mn_step(a_: sp.Expr, b_: sp.Expr, r: sp.Expr) -> Matrix:
        Jr = Matrix([[b_, a_]])
        return -(Jr.T * (Jr * Jr.T).inv()) * r  # minimum-norm solution of G p = -g, G = J^T J, g = J^T r

    y = 0
    und = mn_step(1, 1, 1 * 1 - y)
    sn = 2
    dfd = sp.diag(Rational(1, sn), sn) * mn_step(sn, Rational(1, sn), 1 - y)  # T^-1 p', T = diag(s, 1/s)
    loss = lambda th: Rational(1, 2) * (th[0] * th[1] - y) ** 2  # noqa: E731
    l_und, l_dfd = loss(Matrix([1, 1]) + und), loss(Matrix([1, 1]) + dfd)
    p.equal("f = a b x, x = 1, y = 0, (a, b) = (1, 1): minimum-norm GN step p = -G^+ g = (-1/2, -1/2)", und,
            Matrix([-Rational(1, 2), -Rational(1, 2)]))
    p.equal("defended T = diag(2, 1/2): the minimum-norm step on L' mapped back is T^-1 p' = (-1/17, -16/17)", dfd,
            Matrix([-Rational(1, 17), -Rational(16, 17)]))
    p.true(f"so the losses after one step differ: {l_und} (undefended) vs {l_dfd} (defended): undamped GN is not "
           "invariant", sp.Ne(l_und, l_dfd))
    p.equal("but the function-space step is invariant to first order: J p = J T^-1 p' = -1", (Jab.subs({a: 1, b: 1}) * dfd)[0],
            (Jab.subs({a: 1, b: 1}) * und)[0])
    p.cite("(G + lambda M)^-1 g -> the M-minimum-norm solution of G p = g as lambda -> 0 (g in range G); so the damped "
           "limit on L' is, mapped back, the T^T T-minimum-norm step on L: it equals the Euclidean one iff T^T T p_min "
           "lies in range(G)")
    p.form("GN on L'", inverse(smat("G", 2, 2)), text="T^-1 (G' + lambda I)^-1 g' = (G + lambda T^T T)^-1 g")
    return p.done(Status.CORRECTED,
                  counterexample="f(x; a, b) = a b x, one example x = 1, y = 0, start (a, b) = (1, 1), T = diag(2, 1/2) "
                                 "(an S1 element): the undamped (minimum-norm) Gauss-Newton step is (-1/2, -1/2) on L but "
                                 "maps back to (-1/17, -16/17) on L'; the losses after one step are 1/32 and 128/83521. G "
                                 "is singular at every point (orbit tangents lie in null(J)), so 'undamped GN is "
                                 "invariant' fails for every continuous FPLR group")


# ---------------------------------------------------------------- SO-KFAC
def derive_kfac() -> Derivation:
    """K-FAC's factors transform covariantly across S1 / S2 groups, so the Kronecker step maps by T."""
    p = Proof()
    A = smat("a", 2, 2)
    Ai = inverse(A)
    X, S, Gw, x, u = ssym("x", 2), ssym("s", 2), smat("g", 2, 2), svec("x", 2), svec("u", 2)
    gam = sp.Symbol("gamma", positive=True)
    p.equal("producing layer (W_a -> A W_a): outputs s' = A s, so output gradients u' = A^-T u and S' = A^-T S A^-1 "
            "(per example: u' u'^T)", (Ai.T * u) * (Ai.T * u).T, Ai.T * (u * u.T) * Ai)
    p.equal("consuming layer (W_b -> W_b A^-1): inputs h' = A h, so X' = A X A^T (per example: h' h'^T)",
            (A * x) * (A * x).T, A * (x * x.T) * A.T)
    step_a = inverse(S) * Gw * inverse(X)
    p.equal("producing layer: grad' = A^-T grad, step' = S'^-1 grad' X^-1 = A (S^-1 grad X^-1): W_a' - step' = "
            "A (W_a - step)", inverse(Ai.T * S * Ai) * (Ai.T * Gw) * inverse(X), A * step_a)
    p.equal("consuming layer: grad' = grad A^T, step' = S^-1 grad' X'^-1 = (S^-1 grad X^-1) A^-1",
            inverse(S) * (Gw * A.T) * inverse(A * X * A.T), step_a * Ai)
    p.argue("bias: (W_a, b_a) -> A (W_a, b_a) acts on the augmented weight [W | b] with the same A on the left, and "
            "h~ = (h, 1) -> diag(A, 1) h~ on the right, so the same two identities cover it; S2 (A = D, ReLU between) "
            "is the case A diagonal: relu(D s) = D relu(s) for D > 0. Hence with exact factors and no damping the "
            "K-FAC iterates satisfy theta'_t = T theta_t: invariant")
    p.equal("factored damping gamma on L' = damping matrices gamma A^T A (output side) and gamma A^-1 A^-T (input "
            "side) on L: A^-1 (S' + gamma I)^-1 A^-T = (S + gamma A^T A)^-1",
            Ai * inverse(Ai.T * S * Ai + gam * sp.eye(2)) * Ai.T, inverse(S + gam * A.T * A))
    p.equal("and A^T (X' + gamma I)^-1 A = (X + gamma A^-1 A^-T)^-1", A.T * inverse(A * X * A.T + gam * sp.eye(2)) * A,
            inverse(X + gam * Ai * Ai.T))
    p.argue("so damping breaks the invariance exactly as in LM: the damping matrices have spectra in "
            "gamma [sigma_min(A)^2, sigma_max(A)^2] and gamma [sigma_max(A)^-2, sigma_min(A)^-2]")
    p.form("K-FAC step'", inverse(smat("S", 2, 2)), text="S'^-1 grad' X'^-1 = A (S^-1 grad X^-1)")
    return p.done()


# ---------------------------------------------------------------- SO-SHAMPOO
def derive_shampoo() -> Derivation:
    """Shampoo: orthogonal equivariance (any p), scaling c^(4p-2), row-aligned spread kappa^|2-4p|,
    a non-orthogonal counterexample; SOAP."""
    p = Proof()
    Q1, c1 = rotation("Q")
    Q2, c2 = rotation("R")
    G, F1, F2 = smat("g", 2, 2), ssym("f", 2), ssym("k", 2)
    p.equal("W' = Q1 W Q2^T: G' = Q1 G Q2^T (T1), so G'G'^T = Q1 (G G^T) Q1^T and G'^T G' = Q2 (G^T G) Q2^T",
            (Q1 * G * Q2.T) * (Q1 * G * Q2.T).T, Q1 * (G * G.T) * Q1.T, [c1, c2])
    p.argue("for every matrix function f (here M -> (M + eps I)^-p via the eigendecomposition), f(Q M Q^T) = Q f(M) Q^T; "
            "eps I is unchanged by Q")
    p.equal("so Shampoo's step maps: (Q1 F1 Q1^T)(Q1 G Q2^T)(Q2 F2 Q2^T) = Q1 (F1 G F2) Q2^T (F = the two inverse roots)",
            (Q1 * F1 * Q1.T) * (Q1 * G * Q2.T) * (Q2 * F2 * Q2.T), Q1 * (F1 * G * F2) * Q2.T, [c1, c2])
    c, pp, g, l, r = sp.symbols("c p g ell r", positive=True)
    p.equal("W' = c Q W, eps = 0: G' = G/c, L' = L/c^2, R' = R/c^2, so the step is c^(4p-1) times the undefended one, "
            "mapped back (divide by c) c^(4p-2): an effective learning rate lr c^(4p-2)",
            sp.powsimp((l / c**2) ** (-pp) * (g / c) * (r / c**2) ** (-pp) / c, force=True),
            sp.powsimp(c ** (4 * pp - 2) * l ** (-pp) * g * r ** (-pp), force=True))
    s = sp.Symbol("s", positive=True)
    p.equal("row-aligned instances (each gradient column supported on one fixed row i, so L and R stay diagonal), "
            "A = diag(s_i): entry (i, j) of the mapped-back step is s_i^(4p-2) times the undefended one",
            sp.powsimp((l / s**2) ** (-pp) * (g / s) * (r / s**2) ** (-pp) / s, force=True),
            sp.powsimp(s ** (4 * pp - 2) * l ** (-pp) * g * r ** (-pp), force=True))
    p.argue("hence per-row effective steps lr s_i^(4p-2), spread kappa(A)^|2-4p|: kappa(A)^1 at the default p = 1/4 "
            "(like Adam, statement A), kappa(A)^0 at p = 1/2, kappa(A)^2 at p = 0 (GD): between GD's power and "
            "Newton's (bounds_second_order.shampoo_spread_exponent); any A = U diag(s) V^T reduces to this by the "
            "orthogonal equivariance on the left (U) when the instance is aligned with V")
    # first step, eps = 0, p = 1/4: L^-1/4 G R^-1/4 = polar(G); non-orthogonal counterexample
    Gn, An = Matrix([[1, 1], [0, 1]]), sp.diag(2, 1)
    und = polar2(Gn)
    dfd = inverse(An) * polar2(inverse(An).T * Gn)
    p.argue("one step from zero statistics with eps = 0: L = G G^T, R = G^T G, and G = U Sigma V^T gives "
            "L^-1/4 G R^-1/4 = U V^T, the polar factor of G (Muon's step, SO-MUON)")
    p.true("non-orthogonal A = diag(2, 1), G = [[1, 1], [0, 1]]: the mapped-back first step A^-1 polar(A^-T G) differs "
           "from polar(G): Shampoo is not invariant under a non-orthogonal one-sided map",
           sp.Ne(sp.nsimplify(sp.simplify((dfd - und).norm())), 0))
    p.argue("SOAP runs Adam in the eigenbases of L and R: they rotate with Q1, Q2 (distinct eigenvalues; Adam is "
            "equivariant under the sign and order ambiguity of eigenvectors), so SOAP is equivariant under orthogonal "
            "maps; on row-aligned instances the eigenbases are the coordinate axes and SOAP is Adam (statement A)")
    p.form("Shampoo mapped-back step scale", c ** (4 * pp - 2), text="c^(4p - 2) under W' = c Q W (eps = 0)")
    return p.done()


# ---------------------------------------------------------------- SO-SOPHIA
def derive_sophia() -> Derivation:
    """Sophia under diagonal D: per-coordinate (eta/D, gamma/D, eps D); not orthogonally equivariant."""
    p = Proof()
    m, h, g, D, gam, eps, eta, b1, b2 = sp.symbols("m h g D gamma epsilon eta beta_1 beta_2", positive=True)
    p.equal("T = D: g' = g/D (T1); the GNB estimate B g^ (.) g^ (g^ a gradient at labels sampled from the unchanged "
            "predictive distribution) and the exact diagonal Hessian both scale by 1/D^2: h' = h/D^2, m' = m/D",
            b2 * h / D**2 + (1 - b2) * (g / D) ** 2, (b2 * h + (1 - b2) * g**2) / D**2)
    p.equal("case gamma h' >= eps: (m/D) / (gamma h / D^2) = m / ((gamma/D) h)", (m / D) / (gam * h / D**2), m / ((gam / D) * h))
    p.equal("case gamma h' < eps: (m/D) / eps = m / (eps D)", (m / D) / eps, m / (eps * D))
    p.equal("and the case split agrees: gamma h / D^2 >= eps iff (gamma / D) h >= eps D", (gam * h / D**2 - eps) * D,
            (gam / D) * h - eps * D)
    p.argue("so the mapped-back step D^-1 (eta clip(m'/max(gamma h', eps), 1)) = (eta/D) clip(m / max((gamma/D) h, eps D), 1): "
            "Sophia on L' is Sophia on L with per-coordinate (eta_i, gamma_i, eps_i) = (eta/D_i, gamma/D_i, eps D_i) "
            "(bounds_second_order.sophia_equivalent_hyperparameters); unclipped coordinates move by eta m/(gamma h), "
            "independent of D (diagonal Newton), clipped ones by (eta/D_i) sign(m): the first power of D, like Adam")
    # orthogonal counterexample, exact rationals
    Hn = sp.diag(1, 4)
    Q = Matrix([[Rational(3, 5), -Rational(4, 5)], [Rational(4, 5), Rational(3, 5)]])
    e0 = Matrix([1, 1])
    b1n, b2n, gn, etan = Rational(24, 25), Rational(99, 100), Rational(1, 100), Rational(1, 10)

    def sophia_step(Hm: Matrix, e: Matrix) -> Matrix:
        gr = Hm * e
        mm = (1 - b1n) * gr
        hh = [(1 - b2n) * Hm[i, i] for i in range(2)]
        return Matrix([-etan * sp.Max(sp.Min(mm[i] / (gn * hh[i]), 1), -1) for i in range(2)])

    und = sophia_step(Hn, e0)
    Hq = Q * Hn * Q.T
    dfd = Q.T * sophia_step(Hq, Q * e0)
    p.true(f"orthogonal T = Q (rotation (3/5, 4/5)), H = diag(1, 4), e0 = (1, 1), exact diagonal Hessian, default "
           f"betas/gamma, eta = 1/10: first step {list(und)} on L vs mapped-back {list(dfd)} on L': Sophia is not "
           f"equivariant under orthogonal maps", sp.Ne((dfd - und).norm(), 0))
    p.argue("per-coordinate statistics are equivariant only under signed permutations (as Adam, statement O)")
    Di = sp.Symbol("D_i", positive=True)
    p.form("Sophia equivalent (eta_i, gamma_i, eps_i)", sp.Tuple(eta / Di, gam / Di, eps * Di),
           text="(eta / D_i, gamma / D_i, eps D_i)")
    return p.done(Status.CORRECTED,
                  counterexample="H = diag(1, 4), e0 = (1, 1), T = Q the rotation with cos = 3/5: Sophia's first step (exact "
                                 "diagonal Hessian, beta1 = 24/25, beta2 = 99/100, gamma = 1/100, eta = 1/10) on L' mapped "
                                 "back differs from the step on L, so 'not covariant except for orthogonal A' is false "
                                 "for Sophia (and Adam): orthogonal A also changes them")


# ---------------------------------------------------------------- SO-LBFGS
def derive_lbfgs() -> Derivation:
    """L-BFGS with exact line search on a quadratic = CG (every m >= 1); Krylov otherwise; under T."""
    p = Proof()
    H = sp.diag(1, 3)
    e0 = svec("e", 2)
    g0 = H * e0
    a0 = _dot(g0, g0) / _dot(g0, H * g0)
    e1 = (e0 - a0 * g0).applyfunc(sp.cancel)
    g1 = (H * e1).applyfunc(sp.cancel)
    s0, y0 = e1 - e0, g1 - g0
    rho = 1 / _dot(y0, s0)
    gam = sp.Symbol("gamma", positive=True)
    I2 = sp.eye(2)
    H1 = (I2 - rho * s0 * y0.T) * (gam * I2) * (I2 - rho * y0 * s0.T) + rho * s0 * s0.T
    d_lb = -(H1 * g1)
    beta = _dot(g1, g1) / _dot(g0, g0)
    d_cg = -g1 - beta * g0
    p.zero("step 2, H = diag(1, 3), symbolic e_0, memory m = 1, H_0 = gamma I (any gamma > 0): the L-BFGS "
           "direction -H_1 g_1 is parallel to CG's -g_1 - beta d_0 (2x2 determinant zero)",
           sp.cancel(d_lb[0] * d_cg[1] - d_lb[1] * d_cg[0]))
    p.cite("Nazareth (1979), Buckley (1978): on a strictly convex quadratic with exact line searches, BFGS from "
           "H_0 = I and L-BFGS(m) for every m >= 1 with a scalar H_0 produce the conjugate-gradient iterates; so "
           "finite memory does not change the count, which is CG's exact count (F2's lower bound is attained)")
    p.argue("without a line search (fixed step t = lr) the two-loop recursion makes d_k a combination of g_k and the "
            "pairs (s_i, y_i = H s_i), so theta_t stays in theta_0 + K_t(H, g_0): a Krylov method, and F2 gives "
            "q_t >= q_t^CG")
    T = smat("t", 2, 2)
    Ti = inverse(T)
    s, y = svec("s", 2), svec("y", 2)
    r = sp.Symbol("rho")
    P = Ti * Ti.T
    Hp1 = (I2 - r * (T * s) * (Ti.T * y).T) * (gam * I2) * (I2 - r * (Ti.T * y) * (T * s).T) + r * (T * s) * (T * s).T
    p.equal("under T: s' = T s, y' = T^-T y (s'^T y' = s^T y): T^-1 H_1' T^-T = the BFGS update of gamma P, "
            "P = T^-1 T^-T: L-BFGS on L' is L-BFGS on L started from the adversarial preconditioner gamma P",
            Ti * Hp1 * Ti.T, (I2 - r * s * y.T) * (gam * P) * (I2 - r * y * s.T) + r * s * s.T)
    p.argue("with exact line searches it is then CG on H' = T^-T H T^-1: at most cg_steps_upper_bound(kappa(T)^2 kappa(H), "
            "tol) steps (bounds_second_order.lbfgs_exact_line_search_steps), a slowdown ~ sqrt(kappa(H')/kappa(H)) <= kappa(T)")
    p.form("L-BFGS(m) with exact line search", sp.Symbol("q_t^CG"), text="q_t = q_t^CG for every m >= 1")
    return p.done()


# ---------------------------------------------------------------- SO-MUON
def derive_muon() -> Derivation:
    """Muon: polar factor and Newton-Schulz are orthogonally equivariant; scale 1/c; spread kappa(A)."""
    p = Proof()
    Q1, c1 = rotation("Q")
    Q2, c2 = rotation("R")
    X = smat("x", 2, 2)

    def gram_step(M: Matrix) -> Matrix:
        return (M * M.T) * M

    p.equal("the Newton-Schulz building block X -> (X X^T) X commutes with X -> Q1 X Q2^T; Muon's step a X + "
            "b (X X^T) X + c (X X^T)^2 X composes it, and its start X_0 = M / ||M||_F is orthogonally invariant, so "
            "Newton-Schulz (any coefficients, any number of steps) is equivariant",
            gram_step(Q1 * X * Q2.T), Q1 * gram_step(X) * Q2.T, [c1, c2])
    Mn = Matrix([[2, 1], [0, 1]])
    Un = polar2(Mn)
    p.equal("closed-form polar factor, M = [[2, 1], [0, 1]]: U^T U = I", sp.simplify(Un.T * Un), sp.eye(2))
    Pn = sp.simplify(Un.T * Mn)
    p.true("and U^T M = P is symmetric positive definite", sp.And(sp.Eq(Pn[0, 1], Pn[1, 0]), Pn[0, 0] > 0, Pn.det() > 0))
    p.argue("polar(Q1 M Q2^T) = Q1 polar(M) Q2^T (M = U P => Q1 M Q2^T = (Q1 U Q2^T)(Q2 P Q2^T)): Muon, exact or "
            "Newton-Schulz, is equivariant under orthogonal maps on either side")
    cpos = sp.Symbol("c", positive=True)
    p.equal("W' = c Q W: momentum M' = Q M / c and polar(M/c) = polar(M): the mapped-back update is (1/c) polar(M) "
            "(checked on M = [[2, 1], [0, 1]]): an effective learning rate lr / c, the first power",
            polar2(Mn / cpos), polar2(Mn))
    An = sp.diag(2, 1)
    und, dfd = polar2(Mn), inverse(An) * polar2(inverse(An).T * Mn)
    p.true("A = diag(2, 1), M = [[2, 1], [0, 1]]: A^-1 polar(A^-T M) != polar(M): not invariant under a non-orthogonal "
           "one-sided map", sp.Ne(sp.simplify((dfd - und).norm()), 0))
    A, U = smat("a", 2, 2), polar2(Mn)
    Ai = inverse(A)
    K1, K2 = (Ai * U).T * (Ai * U), Ai.T * Ai
    p.equal("singular values of A^-1 U (U orthogonal) are those of A^-1: tr and det of (A^-1 U)^T (A^-1 U) equal "
            "those of A^-T A^-1", Matrix([K1.trace(), K1.det()]), Matrix([K2.trace(), K2.det()]))
    p.argue("so the mapped-back update has singular values in [1/sigma_max(A), 1/sigma_min(A)]: a spread kappa(A) "
            "(bounds_second_order.muon_step_singular_interval), the first power, like Adam under a diagonal D")
    p.form("Muon mapped-back update", sp.Symbol("U"), text="A^-1 polar(A^-T M), singular values in [1/sigma_max(A), 1/sigma_min(A)]")
    return p.done()
