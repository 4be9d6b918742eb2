"""Symbolic derivations of the decoder-LLM statements S4, S5, S6, S7 and O (THEORY.md section 6).

Each ``[sympy]`` step is an identity checked on fully symbolic small instances (entries their
own symbols; rotations (c, d) constrained to the unit circle c^2 + d^2 = 1); ``[argument]``
steps combine them with elementary facts, ``[cited]`` steps are classical theorems. What is
proved on instances and what is argued is listed per statement in its steps.
"""
from __future__ import annotations

import sympy as sp
from sympy import Matrix

from convrate.theory.core import Derivation, Status
from convrate.theory.derive_transforms import Proof, generic_polynomial, gradient, inverse, rotation, smat, svec

J = Matrix([[0, -1], [1, 0]])


def _scaled_rotation(a: sp.Symbol, b: sp.Symbol) -> Matrix:
    """a I + b J = r R(phi) with r^2 = a^2 + b^2 (a complex scalar a + i b on a rotary pair)."""
    return a * sp.eye(2) + b * J


# ---------------------------------------------------------------- S4
def derive_S4() -> Derivation:
    """S4: the maps (M on q, N on k) keeping every RoPE score are N = M^-T with M in the commutant
    of R_1; with e^{i w_j} pairwise distinct, non-real and non-conjugate that commutant is the
    per-pair scaled rotations. Corrected: 'distinct frequencies' must be read modulo 2 pi and up
    to sign, excluding 0 and pi."""
    p = Proof()
    q, k = svec("q", 4), svec("k", 4)
    M, N = smat("m", 4, 4), smat("n", 4, 4)
    form = ((M * q).T * (N * k))[0, 0]
    p.equal("offset 0: the score (M q)^T (N k) is the bilinear form of M^T N (its mixed second derivatives, generic "
            "4x4 M, N), so it equals q^T k for all q, k iff M^T N = I, i.e. N = M^-T",
            Matrix(4, 4, lambda i, j: sp.diff(form, q[i], k[j])), M.T * N)
    R = smat("r", 4, 4)
    p.equal("offset n: with N = M^-T the score q^T M^T R_n M^-T k equals q^T R_n k for all q, k iff "
            "M^T R_n = R_n M^T; transposing at n = -1 (R_-1 = R_1^T): R_1 M = M R_1",
            (M.T * R - R * M.T).T, R.T * M - M * R.T)
    (R1, c1), (R2, c2) = rotation("1"), rotation("2")
    X = smat("x", 2, 2)
    syl = (R1 * X - X * R2).reshape(4, 1).jacobian(list(X.reshape(4, 1)))
    (ca, sa), (cb, sb) = c1, c2
    p.equal("two pairs (rotations R_1 = R(w_1), R_2 = R(w_2)): the Sylvester operator X -> R(w_1) X - X R(w_2) on "
            "the off-diagonal 2x2 block has determinant (2 - 2 cos(w_1 - w_2)) (2 - 2 cos(w_1 + w_2)) = "
            "|e^{iw_1} - e^{iw_2}|^2 |e^{iw_1} - e^{-iw_2}|^2",
            syl.det(), (2 - 2 * (ca * cb + sa * sb)) * (2 - 2 * (ca * cb - sa * sb)), [c1, c2])
    p.argue("so when e^{iw_1} is neither e^{iw_2} nor its conjugate the off-diagonal blocks of a commuting M vanish: "
            "distinct classes never mix")
    c, s = sp.symbols("c s", real=True)
    Rg = c * sp.eye(2) + s * J
    p.equal("diagonal block: R(w) X - X R(w) = sin(w) (J X - X J) for R(w) = cos(w) I + sin(w) J",
            Rg * X - X * Rg, s * (J * X - X * J))
    sol = sp.solve(list(J * X - X * J), list(X), dict=True)
    Xs = X.subs(sol[0])
    p.true("J X = X J has the solutions X = [[a, -b], [b, a]] (two free parameters: a I + b J)",
           sp.Eq(len(sol), 1) & sp.Eq(Xs, _scaled_rotation(Xs[0, 0], Xs[1, 0])) & sp.Eq(len(Xs.free_symbols), 2))
    a1, b1, a2, b2 = sp.symbols("a_1 b_1 a_2 b_2", real=True)
    p.equal("a I + b J = r R(phi): (a I + b J)^-T = (a I + b J) / (a^2 + b^2), i.e. q -> r R(phi) q pairs with "
            "k -> r^-1 R(phi) k (a complex scalar r e^{i phi} per pair)",
            inverse(_scaled_rotation(a1, b1)).T, _scaled_rotation(a1, b1) / (a1**2 + b1**2))
    (Ra, ra), (Rb, rb) = rotation("alpha"), rotation("beta")
    Mb = sp.diag(_scaled_rotation(a1, b1), _scaled_rotation(a2, b2))
    Rn = sp.diag(Ra, Rb)
    p.equal("sufficiency for every offset: M = diag(a_1 I + b_1 J, a_2 I + b_2 J) satisfies M^T R M^-T = R for every "
            "block rotation R = diag(R(alpha), R(beta)) (independent angles), so every score q_m^T R_(n-m) k_n is kept",
            Mb.T * Rn * inverse(Mb).T, Rn, [ra, rb])
    p.argue("hence, with e^{iw_j} pairwise distinct, non-real and non-conjugate, the maps are exactly the per-pair "
            "scaled rotations q -> r_j R(phi_j), k -> r_j^-1 R(phi_j); real dimension 2 per pair")
    Z = smat("z", 2, 2)
    blocks = Matrix(sp.BlockMatrix([[_scaled_rotation(Z[0, 0], Z[1, 0]), _scaled_rotation(Z[0, 1], Z[1, 1])],
                                    [_scaled_rotation(sp.Symbol("w_1"), sp.Symbol("w_2")),
                                     _scaled_rotation(sp.Symbol("w_3"), sp.Symbol("w_4"))]]))
    Rc = sp.diag(Ra, Ra)
    p.equal("coinciding frequencies (w_1 = w_2): every block of [[a I + b J, c I + d J], [e I + f J, g I + h J]] "
            "commutes with R(w), so the 2 x 2 complex matrices act (GL(2, C), real dimension 8, not 4)",
            blocks * Rc - Rc * blocks, sp.zeros(4, 4), [ra])
    Xg = smat("g", 2, 2)
    p.equal("unrotated pairs (w = 0: R_n = I) and half-turns (w = pi: R_n = (-1)^n I) commute with every 2x2 "
            "matrix: GL on those coordinates (GL(2m, R) on m such pairs)", Xg * (-sp.eye(2)) - (-sp.eye(2)) * Xg,
            sp.zeros(2, 2))
    n_, w = sp.Symbol("n", integer=True), sp.Symbol("w", real=True)
    p.zero("counterexample to 'distinct frequencies' read literally: w_2 = w_1 + 2 pi gives R_n(w_2) = R_n(w_1) "
           "for every integer position n", sp.simplify(sp.cos(n_ * (w + 2 * sp.pi)) - sp.cos(n_ * w))
           + sp.simplify(sp.sin(n_ * (w + 2 * sp.pi)) - sp.sin(n_ * w)))
    swap = Matrix([[0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 0]])
    p.equal("... and then the pair swap P (not a per-pair scaled rotation) commutes with diag(R(w_1), R(w_1)), "
            "so q -> P q, k -> P^-T k = P k keeps every score", swap * Rc - Rc * swap, sp.zeros(4, 4), [ra])
    shear = Matrix([[1, 1], [0, 1]])
    p.equal("a half-turn pair (w = pi, distinct from every other frequency): the shear [[1, 1], [0, 1]] commutes "
            "with R_n = (-1)^n I and keeps every score", shear * (-sp.eye(2)) - (-sp.eye(2)) * shear, sp.zeros(2, 2))
    p.argue("GQA: the key map N of a KV group is shared by its G query heads, and each head's offset-0 score needs "
            "M_h^T N = I, so M_h = N^-T for every head: one element per KV group")
    p.argue("layout: transformers' rotate_half pairs coordinate j with j + d/2; the commutant above is conjugated by "
            "that coordinate permutation (convrate.models.rope)")
    p.form("S4 element", sp.Symbol("r_j") * sp.Function("R")(sp.Symbol("phi_j")),
           text="q -> r_j R(phi_j), k -> r_j^-1 R(phi_j) per rotary pair; GL(m, C) on m coinciding pairs; GL(2m, R) on "
                "pairs with w in {0, pi} mod 2 pi")
    p.form("commutant dimension", sp.Symbol("sum 2 m^2 + 4 m'^2"),
           text="sum over classes: 2 m^2 (non-real e^{iw}, m pairs), 4 m^2 (e^{iw} = +-1); bounds_llm.rope_commutant_dimension")
    return p.done(Status.CORRECTED,
                  counterexample="frequencies (w, w + 2 pi) are distinct but RoPE rotates both pairs identically at every "
                                 "integer position, so the pair swap keeps every score; likewise a pair with w = pi "
                                 "((-1)^n I) keeps every score under the shear [[1, 1], [0, 1]]")


# ---------------------------------------------------------------- S5
def derive_S5() -> Derivation:
    """S5: B on the shared value rows, B^-1 on the o columns of every query head of the KV group."""
    p = Proof()
    B = smat("b", 2, 2)
    Wv, bv = smat("v", 2, 2), svec("c", 2)
    x1, x2 = svec("x", 2), svec("y", 2)
    Wo1, Wo2 = smat("o", 2, 2), smat("u", 2, 2)
    pa, pb = sp.symbols("p_a p_b", real=True)  # the two heads' attention on token 1 (1 - p on token 2)

    def out(Wv_: Matrix, bv_: Matrix, Wo1_: Matrix, Wo2_: Matrix) -> Matrix:
        v1, v2 = Wv_ * x1 + bv_, Wv_ * x2 + bv_
        return Wo1_ * (pa * v1 + (1 - pa) * v2) + Wo2_ * (pb * v1 + (1 - pb) * v2)

    p.equal("two query heads sharing one value head (GQA), two tokens, attention weights summing to 1: "
            "v -> B v, b_v -> B b_v, W_o,h -> W_o,h B^-1 for both heads leaves the output unchanged (generic B)",
            out(B * Wv, B * bv, Wo1 * inverse(B), Wo2 * inverse(B)), out(Wv, bv, Wo1, Wo2))
    p.argue("each head's context is a convex combination of the shared value vectors (softmax weights sum to 1), "
            "so the bias passes through and the identity holds for any sequence length and any number of heads")
    p.form("S5 element", sp.Symbol("B_g"), text="v rows -> B_g v, o columns of every head of KV group g -> W_o B_g^-1")
    return p.done()


# ---------------------------------------------------------------- S6
def derive_S6() -> Derivation:
    """S6: up rows x D, down columns x D^-1 (D nonzero diagonal); no scaling of the gate rows."""
    p = Proof()
    silu = sp.Function("silu")
    g1, g2, u1, u2 = sp.symbols("g_1 g_2 u_1 u_2", real=True)
    d1, d2 = sp.symbols("d_1 d_2", real=True, nonzero=True)
    Wd = smat("w", 2, 2)
    h = Matrix([silu(g1) * u1, silu(g2) * u2])
    hD = Matrix([silu(g1) * d1 * u1, silu(g2) * d2 * u2])
    p.equal("down(silu(g) * (D u)) with down columns x D^-1 equals down(silu(g) * u) for any silu and any nonzero "
            "diagonal D (signs allowed)", Wd * sp.diag(1 / d1, 1 / d2) * hD, Wd * h)
    P = Matrix([[0, 1], [1, 0]])
    hP = Matrix([silu((P * Matrix([g1, g2]))[i]) * (P * Matrix([u1, u2]))[i] for i in range(2)])
    p.equal("hidden-unit permutations: gate and up rows permuted, down columns permuted back", Wd * P.T * hP, Wd * h)
    z, a, b = sp.symbols("z a b", real=True)
    s = z / (1 + sp.exp(-z))
    d1s, d2s = sp.diff(s, z).subs(z, 0), sp.diff(s, z, 2).subs(z, 0)
    p.true("silu'(0) = 1/2 and silu''(0) = 1/2 (silu(z) = z / (1 + e^-z))", sp.Eq(d1s, sp.Rational(1, 2))
           & sp.Eq(sp.simplify(d2s), sp.Rational(1, 2)))
    sols = sp.solve([a * d1s - b * d1s, a**2 * sp.simplify(d2s) - b * sp.simplify(d2s)], [a, b], dict=True)
    p.true("if silu(a z) = b silu(z) for all z, differentiating once and twice at 0 gives a/2 = b/2 and a^2/2 = b/2: "
           "(a, b) in {(0, 0), (1, 1)}; a = 0 is singular, so the gate rows admit no scaling",
           sp.Eq(sp.FiniteSet(*[(r[a], r[b]) for r in sols]), sp.FiniteSet((0, 0), (1, 1))))
    p.argue("no map on the up rows can compensate a gate scaling either: silu(a g) u' = silu(g) u for all inputs "
            "needs u' = u silu(g) / silu(a g), which is not a function of u alone unless a = 1")
    p.form("S6 element", sp.Symbol("D"), text="up rows -> D up, down columns -> down D^-1, D any nonzero diagonal; "
                                              "gate rows fixed; units permuted with gate, up and down together")
    return p.done()


# ---------------------------------------------------------------- S7
def derive_S7() -> Derivation:
    """S7: gamma x c with consumer columns / c; after folding, any orthogonal Q on the residual
    stream (and, with eps > 0, only orthogonal maps commute with RMSNorm)."""
    p = Proof()
    g1, g2, n1, n2 = sp.symbols("gamma_1 gamma_2 nu_1 nu_2", real=True)
    c1, c2 = sp.symbols("c_1 c_2", real=True, nonzero=True)
    W = smat("w", 2, 2)
    p.equal("W diag(c)^-1 (c * gamma * nu) = W (gamma * nu): the norm weight times c, its consumers' columns / c "
            "(any nonzero c; c = 1/gamma folds gamma into the consumers)",
            W * sp.diag(1 / c1, 1 / c2) * Matrix([c1 * g1 * n1, c2 * g2 * n2]), W * Matrix([g1 * n1, g2 * n2]))
    (Q, cq) = rotation("q")
    x = svec("x", 2)

    p.zero("||Q x||^2 = ||x||^2 for a rotation Q, so RMSNorm(Q x) = Q RMSNorm(x) exactly, eps included",
           ((Q * x).T * (Q * x))[0, 0] - (x.T * x)[0, 0], [cq])
    phi = sp.Function("phi")
    Win, Wout = smat("a", 2, 2), smat("b", 2, 2)

    QtQ = (Q.T * Q).applyfunc(lambda e: sp.expand(e.subs(cq[0] ** 2, 1 - cq[1] ** 2)))
    p.equal("Q^T Q = I: a reader W_in Q^T of the rotated stream sees W_in x", QtQ, sp.eye(2))
    rho = sp.Symbol("rho", positive=True)  # 1 / sqrt(||x||^2/n + eps) = 1 / sqrt(||Q x||^2/n + eps), shown above

    def block(v: Matrix, Wi: Matrix, Wo: Matrix) -> Matrix:
        z = Wi * (v * rho)
        return v + Wo * Matrix([phi(z[0]), phi(z[1])])

    p.equal("a folded residual block x + W_out phi(W_in RMSNorm(x)) (phi arbitrary elementwise, rho the shared RMS "
            "factor): with readers W_in Q^T and writers Q W_out the rotated stream Q x is mapped to Q times the "
            "block's output", Q * x + Q * Wout * Matrix([phi((Win * QtQ * x * rho)[i]) for i in range(2)]),
            Q * block(x, Win, Wout))
    xa, ya = svec("s", 2), svec("t", 2)
    p.equal("polarization: <x, y> = (||x + y||^2 - ||x - y||^2) / 4, so a linear map keeping every norm keeps every "
            "inner product (M^T M = I)", (xa.T * ya)[0, 0],
            (((xa + ya).T * (xa + ya))[0, 0] - ((xa - ya).T * (xa - ya))[0, 0]) / 4)
    p.argue("only orthogonal maps commute with RMSNorm when eps > 0: RMSNorm(M x) = M RMSNorm(x) reads "
            "M x / sqrt(||M x||^2/n + eps) = M x / sqrt(||x||^2/n + eps), so ||M x|| = ||x|| wherever M x != 0, hence M "
            "is orthogonal (polarization); a scalar alpha != +-1 (THEORY S3) is a symmetry only up to eps")
    A = smat("e", 2, 2)
    p.equal("tied embeddings: one tensor E is the input map (E -> E A^T) and lm_head (E -> E A^-1); consistency for "
            "all E means A^T = A^-1, i.e. A orthogonal: satisfied by the rotation group, and by no other residual map",
            A.T - inverse(A), (A.T * A - sp.eye(2)) * inverse(A))
    p.argue("folding is itself an element of the gamma groups (c = 1/gamma); after it every RMSNorm weight is 1 and "
            "the residual stream (embedding columns, o_proj / down_proj rows and biases as writers, q, k, v, gate, "
            "up, lm_head columns as readers) carries any orthogonal Q")
    p.argue("the rotation's domain is gamma = 1 (with gamma != 1, diag(gamma) does not commute with Q): f(x; T theta) "
            "= f(x; theta) holds on that affine subspace, so T1, T2 and statement O apply to the parameters other than "
            "the RMSNorm weights; an attacker who also trains gamma leaves the domain after one step, and the rotated "
            "loss is then a different function (models.llm_rotation measures by how much)")
    p.form("S7", sp.Symbol("Q"), text="gamma -> c gamma, consumers W -> W diag(c)^-1; after folding W_write -> Q W, "
                                      "W_read -> W Q^T, Q orthogonal")
    return p.done()


# ---------------------------------------------------------------- O
def _adam_first(g: Matrix, eps: sp.Expr) -> Matrix:
    """Adam's (and RMSprop's, Adagrad's) first step direction g / (|g| + eps), coordinatewise."""
    return Matrix([gi / (sp.sqrt(gi**2) + eps) for gi in g])


def derive_O() -> Derivation:
    """O: GD, heavy ball, Nesterov, Newton commute with every orthogonal T; Adam / RMSprop
    commute with an orthogonal T for every gradient history iff T is a signed permutation."""
    p = Proof()
    (Q, cq) = rotation("q")
    u, v, up, vp = sp.symbols("u v up vp")
    L = generic_polynomial(u, v, 3)
    back = Q.T * Matrix([up, vp])  # Q^-1 = Q^T on the circle
    Lp = L.xreplace({u: back[0], v: back[1]})
    th, th_prev = Matrix([u, v]), Matrix(svec("w", 2))
    at = dict(zip((up, vp), Q * th))
    gp = gradient(Lp, (up, vp)).xreplace(at)
    g = gradient(L, (u, v))
    eta, beta = sp.symbols("eta beta")
    p.equal("generic cubic L, rotation Q: grad L'(Q theta) = Q grad L(theta) (Q^-T = Q)", gp, Q * g, [cq])
    p.equal("heavy ball step (GD for beta = 0): Q theta - eta grad L'(Q theta) + beta (Q theta - Q theta_prev) = "
            "Q (theta - eta grad L(theta) + beta (theta - theta_prev))",
            Q * th - eta * gp + beta * (Q * th - Q * th_prev), Q * (th - eta * g + beta * (th - th_prev)), [cq])
    y = th + beta * (th - th_prev)
    at_y = dict(zip((up, vp), Q * y))
    gpy = gradient(Lp, (up, vp)).xreplace(at_y)
    gy = gradient(L, (u, v)).xreplace(dict(zip((u, v), y)))
    p.equal("Nesterov step: the look-ahead point maps by Q, and so does the step from it", Q * y - eta * gpy,
            Q * (y - eta * gy), [cq])
    p.argue("by induction theta'_t = Q theta_t for GD (any step schedule), heavy ball and Nesterov from theta'_0 = Q "
            "theta_0; exact Newton commutes with every invertible T (statement N); so L'(theta'_t) = L(theta_t): no "
            "slowdown, whatever the rotation")
    eps = sp.Symbol("epsilon", positive=True)
    g1, g2 = sp.symbols("g_1 g_2", real=True)
    gv = Matrix([g1, g2])
    for name, P in (("the swap with a sign [[0, -1], [1, 0]]", Matrix([[0, -1], [1, 0]])),
                    ("the sign flip diag(-1, 1)", sp.diag(-1, 1))):
        p.equal(f"signed permutation P = {name}: Adam's first-step direction g / (|g| + eps) satisfies f(P g) = "
                "P f(g), and P g squared coordinatewise is the permuted g squared (second moments permute)",
                _adam_first(P * gv, eps).col_join(Matrix([(P * gv)[i] ** 2 for i in range(2)])),
                (P * _adam_first(gv, eps)).col_join(abs(P) * Matrix([g1**2, g2**2])))
    p.argue("hence with m_0 = v_0 = 0 the moments satisfy m'_t = P m_t and v'_t = |P| v_t (|P| the permutation) by "
            "induction, every Adam / RMSprop / Adagrad step maps by P: these optimizers commute with signed "
            "permutations")
    Qc = Matrix([[sp.Rational(3, 5), -sp.Rational(4, 5)], [sp.Rational(4, 5), sp.Rational(3, 5)]])
    e1 = Matrix([1, 0])
    step_def = Qc.T * Matrix([sp.sign(x) for x in Qc * e1])
    p.equal("counterexample (eps -> 0): Q = [[3/5, -4/5], [4/5, 3/5]], g = (1, 0): the defended first step mapped "
            "back is -eta Q^T sign(Q g) = -eta (7/5, -1/5), the undefended one -eta (1, 0)",
            step_def, Matrix([sp.Rational(7, 5), -sp.Rational(1, 5)]))
    s_, qq = sp.symbols("s q", real=True, nonzero=True)
    sol = sp.solve(sp.Eq(s_ * qq / (sp.Abs(s_) * sp.Abs(qq) + eps), s_ * qq / (sp.Abs(s_) + eps)), qq)
    p.true("only signed permutations: for g = s e_i the first step needs f(s q_i) = s f(1) q_i... coordinatewise "
           "s q / (|s q| + eps) = s q / (|s| + eps), whose nonzero solutions are q = +-1", sp.Eq(sp.FiniteSet(*sol),
                                                                                                sp.FiniteSet(-1, 1)))
    p.argue("so every column of an orthogonal Q commuting with Adam's first step has entries in {0, +-1} and norm 1: "
            "Q is a signed permutation (eps = 0: sign(Q v) = Q v on the cube's vertices gives the same); every other "
            "orthogonal Q changes the first step of some gradient")
    a_, b_ = sp.symbols("a b", real=True)
    p.equal("first-order decrease of the first step: <g, Q^T sign(Q g)> = <Q g, sign(Q g)> = ||Q g||_1 (shown for "
            "Q g = (a, b))", (Matrix([a_, b_]).T * Matrix([sp.sign(a_), sp.sign(b_)]))[0, 0], sp.Abs(a_) + sp.Abs(b_))
    p.cite("||x||_2 <= ||x||_1 <= sqrt(n) ||x||_2, both attained: the ratio ||Q g||_1 / ||g||_1 lies in "
           "[||g||_2/||g||_1, sqrt(n) ||g||_2/||g||_1] (bounds_llm.adam_first_step_decrease_ratio_bounds)")
    x = sp.Symbol("x", positive=True)
    for n in (2, 3, 4, 5):
        num = sp.integrate(x * (1 - x**2) ** sp.Rational(n - 3, 2), (x, 0, 1))
        den = sp.integrate((1 - x**2) ** sp.Rational(n - 3, 2), (x, 0, 1))
        p.equal(f"n = {n}: E|u_1| over the uniform sphere (density of u_1 proportional to (1 - x^2)^((n-3)/2)) = "
                "Gamma(n/2) / (sqrt(pi) Gamma((n+1)/2))", num / den,
                sp.gamma(sp.Rational(n, 2)) / (sp.sqrt(sp.pi) * sp.gamma(sp.Rational(n + 1, 2))))
    n = sp.Symbol("n", positive=True)
    beta_ratio = (1 / (n - 1)) / (sp.gamma(sp.Rational(1, 2)) * sp.gamma((n - 1) / 2) / sp.gamma(n / 2) / 2)
    p.zero("general n: with int_0^1 x (1-x^2)^a dx = 1/(2(a+1)) and int_0^1 (1-x^2)^a dx = B(1/2, a+1)/2, a = (n-3)/2, "
           "the ratio is Gamma(n/2) / (sqrt(pi) Gamma((n+1)/2)) (their quotient gammasimp-reduces to 1)",
           sp.gammasimp(beta_ratio / (sp.gamma(n / 2) / (sp.sqrt(sp.pi) * sp.gamma((n + 1) / 2)))) - 1)
    p.argue("so for a Haar-random rotation E ||Q g||_1 = n c_n ||g||_2 (bounds_llm.haar_l1_mean): a random residual "
            "rotation changes Adam's first-step decrease by the factor n c_n ||g||_2 / ||g||_1 in expectation, "
            "~ sqrt(2n/pi) ||g||_2 / ||g||_1 -- above 1 for sparse or heavy-tailed gradients (rotation densifies them), "
            "near 1 for Gaussian-like ones")
    p.argue("Sophia: its clipped update clip(m / max(gamma h, eps), 1) is per-coordinate; where it clips, it is "
            "sign(m), the eps -> 0 Adam step above, so the same characterization and first-step change apply there "
            "(argued, not derived)")
    p.form("O", sp.Symbol("||Q g||_1 / ||g||_1"),
           text="GD / HB / Nesterov / Newton: theta'_t = Q theta_t; Adam first step mapped back: -eta Q^T sign(Q g), "
                "decrease ratio ||Q g||_1/||g||_1 in [||g||_2/||g||_1, sqrt(n)||g||_2/||g||_1]")
    return p.done(Status.CORRECTED,
                  counterexample="Adam, RMSprop and Adagrad do commute with some orthogonal T: every signed "
                                 "permutation (e.g. the coordinate swap), since their statistics are per-coordinate")
