"""Symbolic derivations of the transformation laws T1-T4, and the shared sympy toolkit.

Every identity is checked on fully symbolic small matrices (each entry its own symbol):
a rational-function identity counts as proved when the expanded numerator of
``together(lhs - rhs)`` is the zero polynomial (exact, no floating point); anything else
goes through ``sympy.simplify``. A residual that sympy cannot reduce to 0 is probed at
random rational points: a nonzero value is a counterexample (status FALSE), otherwise the
step is recorded as unproved (status CHECKED_ONLY). Nothing is reported proved that sympy
did not reduce to 0.

Conventions (THEORY.md section 0): ``vec`` is row-major, vec(A W B) = (A (x) B^T) vec(W);
the two-layer net is f(x; theta) = W_b (W_a x + b_a), theta = (vec W_a, b_a, vec W_b), and
the S1 map is T = diag(A (x) I_{n_in}, A, I_{n_out} (x) A^-T).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import sympy as sp
from sympy import Matrix

from convrate.theory.core import Derivation, Status

# ---------------------------------------------------------------- proof bookkeeping


@dataclass
class SymbolicDerivation(Derivation):
    """A ``Derivation`` that also carries each closed form rendered by ``sympy.latex``."""

    latex_forms: dict[str, str] = field(default_factory=dict)


Circle = tuple[sp.Symbol, sp.Symbol]


def is_zero(expr: Any, circles: Sequence[Circle] = ()) -> bool:
    """True when sympy reduces ``expr`` to 0 exactly: for rational functions, the expanded
    numerator of ``together(expr)`` is the zero polynomial, or, with ``circles`` = pairs (c, d)
    constrained to c^2 + d^2 = 1, its remainder modulo those relations is zero (they form a
    Groebner basis: distinct variables, leading terms c^2); ``simplify`` otherwise."""
    e = sp.sympify(expr)
    if e == 0:
        return True
    if e.is_rational_function():
        num, _ = sp.fraction(sp.together(e))
        num = sp.expand(num)
        if num == 0:
            return True
        if not circles:
            return False
        gens = [g for cd in circles for g in cd]
        gens += sorted(num.free_symbols - set(gens), key=str)
        rels = [c**2 + d**2 - 1 for c, d in circles]
        _, rem = sp.reduced(num, rels, *gens, order="lex")
        return sp.expand(rem) == 0
    s = sp.simplify(e)
    if s == 0:
        return True
    return sp.simplify(sp.expand(sp.powsimp(sp.expand_log(s, force=False)))) == 0


def _probe_value(sym: sp.Symbol, rng: random.Random) -> sp.Rational:
    """A random small rational respecting the symbol's sign assumptions."""
    v = sp.Rational(rng.randint(1, 40), rng.randint(1, 9))
    if sym.is_positive or sym.is_nonnegative:
        return v
    return v if rng.random() < 0.5 else -v


def probe(expr: sp.Expr, tries: int = 6, seed: int = 0, circles: Sequence[Circle] = ()) -> str | None:
    """Evaluate ``expr`` at random rational points (points of the unit circle for each pair in
    ``circles``, via c = (1 - t^2)/(1 + t^2), d = 2t/(1 + t^2)); return a description of a point
    where it is certainly nonzero (|value| > 1e-20 at 40 digits), or None."""
    rng = random.Random(seed)
    on_circle = {g for cd in circles for g in cd}
    free = sorted(expr.free_symbols - on_circle, key=str)
    for _ in range(tries):
        point = {s: _probe_value(s, rng) for s in free}
        for c, d in circles:
            t = sp.Rational(rng.randint(-9, 9), rng.randint(1, 9))
            point[c], point[d] = (1 - t**2) / (1 + t**2), 2 * t / (1 + t**2)
        try:
            val = sp.N(expr.subs(point), 40)
        except (ZeroDivisionError, TypeError, ValueError):
            continue
        if val.is_number and val.is_finite is not False and abs(complex(val)) > 1e-20:
            shown = ", ".join(f"{k}={v}" for k, v in list(point.items())[:12])
            return f"value {sp.N(val, 8)} at {shown}{' ...' if len(point) > 12 else ''}"
    return None


class Proof:
    """Accumulates the steps of one derivation.

    ``zero``/``equal``/``true`` are sympy-checked steps (tagged ``[sympy]``); ``argue`` records
    a step of the written argument that relies on checked identities and elementary
    inequalities (``[argument]``); ``cite`` a classical theorem used as is (``[cited]``);
    ``numeric`` a high-precision evaluation (``[mpmath]``). ``form`` records a closed form.
    """

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.forms: dict[str, str] = {}
        self.latex: dict[str, str] = {}
        self.failures: list[str] = []
        self.unproved: list[str] = []
        self.checked = 0

    # -- checked steps
    def _failed(self, failure: str, step: str) -> bool:
        """Record a failed sympy step (``failure`` for the report, ``step`` for the trace)."""
        self.failures.append(failure)
        self.steps.append(f"[sympy] FAILED {step}")
        return False

    def zero(self, label: str, expr: Any, circles: Sequence[Circle] = ()) -> bool:
        """Record ``expr == 0`` (scalar or every matrix entry; with ``circles``, on the unit
        circles c^2 + d^2 = 1) as proved, or the failure."""
        entries = list(expr) if isinstance(expr, sp.MatrixBase) else [expr]
        bad = [sp.sympify(e) for e in entries if not is_zero(e, circles)]
        if not bad:
            self.steps.append(f"[sympy] {label}")
            self.checked += 1
            return True
        for e in bad:
            found = probe(e, circles=circles)
            if found is not None:
                return self._failed(f"{label}: residual nonzero, {found}", f"{label}: {found}")
        self.unproved.append(label)
        self.steps.append(f"[sympy] NOT REDUCED {label} (random rational probes give 0)")
        return False

    def equal(self, label: str, lhs: Any, rhs: Any, circles: Sequence[Circle] = ()) -> bool:
        """Record ``lhs == rhs`` (matrices entrywise)."""
        if isinstance(lhs, sp.MatrixBase) or isinstance(rhs, sp.MatrixBase):
            if lhs.shape != rhs.shape:
                return self._failed(f"{label}: shapes {lhs.shape} != {rhs.shape}", f"{label}: shapes differ")
        return self.zero(label, lhs - rhs, circles)

    def true(self, label: str, cond: Any) -> bool:
        """Record a sympy relational / boolean that sympy evaluates to True."""
        c = sp.sympify(cond)
        if c is sp.true or c is True:
            self.steps.append(f"[sympy] {label}")
            self.checked += 1
            return True
        if c is sp.false or c is False:
            return self._failed(f"{label}: sympy evaluates it to False", label)
        self.unproved.append(label)
        self.steps.append(f"[sympy] NOT DECIDED {label}: {c}")
        return False

    # -- written steps
    def argue(self, text: str) -> None:
        self.steps.append(f"[argument] {text}")

    def cite(self, text: str) -> None:
        self.steps.append(f"[cited] {text}")

    def numeric(self, text: str) -> None:
        self.steps.append(f"[mpmath] {text}")

    def form(self, name: str, expr: Any, text: str | None = None) -> None:
        """Record a closed form: ``expr`` a sympy object (rendered by str and sympy.latex) or
        ``text`` for forms with indices (rendered verbatim; ``expr`` then gives the LaTeX)."""
        self.forms[name] = text if text is not None else sp.sstr(expr)
        self.latex[name] = expr if isinstance(expr, str) else sp.latex(expr)

    def done(self, status: Status = Status.PROVED, counterexample: str | None = None) -> SymbolicDerivation:
        """The derivation: FALSE if a checked step failed (its residual is the counterexample),
        CHECKED_ONLY if a step was not reduced, else ``status``."""
        if self.failures:
            status, counterexample = Status.FALSE, "; ".join(self.failures)
        elif self.unproved:
            status = Status.CHECKED_ONLY
        return SymbolicDerivation(status=status, steps=list(self.steps), closed_forms=dict(self.forms),
                                  counterexample=counterexample, latex_forms=dict(self.latex))


# ---------------------------------------------------------------- symbolic matrices

_TEX: dict[str, str] = {}


class TexSymbol(sp.Symbol):
    """A symbol printed by ``sympy.latex`` as the LaTeX registered with it (``str`` is its name)."""

    def _latex(self, printer: Any) -> str:
        return _TEX.get(self.name, self.name)


def tsym(name: str, tex: str, **assumptions: Any) -> TexSymbol:
    """A ``TexSymbol`` named ``name`` rendered as ``tex``."""
    _TEX[name] = tex
    return TexSymbol(name, **assumptions)



def smat(name: str, rows: int, cols: int, **assumptions: Any) -> Matrix:
    """rows x cols matrix whose (i, j) entry is the symbol ``name_{i+1}{j+1}``."""
    return Matrix(rows, cols, lambda i, j: sp.Symbol(f"{name}_{i + 1}{j + 1}", **assumptions))


def svec(name: str, n: int, **assumptions: Any) -> Matrix:
    """Column of symbols ``name_1 .. name_n``."""
    return Matrix(n, 1, lambda i, _: sp.Symbol(f"{name}_{i + 1}", **assumptions))


def ssym(name: str, n: int) -> Matrix:
    """Symmetric n x n matrix of symbols (entry (i, j) = (j, i) = ``name_{ij}``, i <= j)."""
    return Matrix(n, n, lambda i, j: sp.Symbol(f"{name}_{min(i, j) + 1}{max(i, j) + 1}"))


def vec(M: Matrix) -> Matrix:
    """Row-major vectorization (torch ``.flatten()``)."""
    return M.reshape(M.rows * M.cols, 1)


def kron(A: Matrix, B: Matrix) -> Matrix:
    """Kronecker product A (x) B as an explicit matrix."""
    return Matrix(A.rows * B.rows, A.cols * B.cols,
                  lambda i, j: A[i // B.rows, j // B.cols] * B[i % B.rows, j % B.cols])


def commutation(m: int, n: int) -> Matrix:
    """The permutation K_{m,n} with K vec_row(W) = vec_row(W^T) for W of shape m x n."""
    K = sp.zeros(m * n, m * n)
    for i in range(m):
        for j in range(n):
            K[j * m + i, i * n + j] = 1
    return K


def rotation(name: str) -> tuple[Matrix, Circle]:
    """A general rotation of the plane [[c, -d], [d, c]] with the relation c^2 + d^2 = 1 (pass
    the returned pair as ``circles`` to the zero test). Every 2x2 orthogonal matrix is a rotation
    times diag(1, +-1), a sign that commutes with diagonal matrices."""
    c, d = sp.symbols(f"c_{name} d_{name}", real=True)
    return Matrix([[c, -d], [d, c]]), (c, d)


def generic_polynomial(u: sp.Symbol, v: sp.Symbol, degree: int) -> sp.Expr:
    """Generic polynomial of the given degree in (u, v): sum c_ij u^i v^j, one symbol per coefficient."""
    return sum(sp.Symbol(f"c_{i}{j}") * u**i * v**j for i in range(degree + 1) for j in range(degree + 1 - i))


def gradient(expr: sp.Expr, variables: Sequence[sp.Symbol]) -> Matrix:
    return Matrix([sp.diff(expr, v) for v in variables])


def jacobian(f: Matrix, variables: Sequence[sp.Symbol]) -> Matrix:
    return f.jacobian(list(variables))


def at(expr: Any, variables: Sequence[sp.Symbol], values: Iterable[Any]) -> Any:
    """Simultaneous substitution variables -> values."""
    return expr.xreplace(dict(zip(variables, values)))


@dataclass(frozen=True)
class DefendedCubic:
    """A generic cubic L(u, v) (10 symbolic coefficients), a fully symbolic 2x2 T, and the
    defended loss L'(u', v') = L(T^-1 (u', v')) with its gradient evaluated at T theta."""

    u: sp.Symbol
    v: sp.Symbol
    up: sp.Symbol
    vp: sp.Symbol
    L: sp.Expr
    T: Matrix
    Ti: Matrix
    Lp: sp.Expr
    theta: Matrix
    at_T_theta: dict  # {u': (T theta)_1, v': (T theta)_2}

    @property
    def grad_defended(self) -> Matrix:
        """grad L'(T theta)."""
        return gradient(self.Lp, (self.up, self.vp)).xreplace(self.at_T_theta)

    @property
    def grad(self) -> Matrix:
        """grad L(theta)."""
        return gradient(self.L, (self.u, self.v))


def defended_cubic() -> DefendedCubic:
    u, v, up, vp = sp.symbols("u v up vp")
    L = generic_polynomial(u, v, 3)
    T = smat("t", 2, 2)
    Ti = inverse(T)
    old = Ti * Matrix([up, vp])
    th = Matrix([u, v])
    new = T * th
    return DefendedCubic(u, v, up, vp, L, T, Ti, L.xreplace({u: old[0], v: old[1]}), th,
                         {up: new[0], vp: new[1]})


def inverse(A: Matrix) -> Matrix:
    """Inverse as adjugate / determinant (exact rational functions)."""
    return A.adjugate() / A.det()


@dataclass
class TwoLayer:
    """Symbolic two-layer linear net f(x) = W_b (W_a x + b_a); ``theta`` lists the parameter
    symbols in the order (vec W_a, b_a, vec W_b) (row-major)."""

    Wa: Matrix
    ba: Matrix | None
    Wb: Matrix
    x: Matrix

    @property
    def theta(self) -> list[sp.Symbol]:
        parts = [vec(self.Wa)] + ([self.ba] if self.ba is not None else []) + [vec(self.Wb)]
        return list(Matrix.vstack(*parts))

    def f(self, x: Matrix | None = None) -> Matrix:
        x = self.x if x is None else x
        h = self.Wa * x + (self.ba if self.ba is not None else sp.zeros(self.Wa.rows, 1))
        return self.Wb * h


def two_layer(r: int, n_in: int, n_out: int, bias: bool = True) -> TwoLayer:
    """Fully symbolic two-layer linear net of hidden width r."""
    return TwoLayer(smat("wa", r, n_in), svec("ba", r) if bias else None, smat("wb", n_out, r), svec("x", n_in))


def s1_matrix(A: Matrix, n_in: int, n_out: int, bias: bool = True) -> Matrix:
    """T = diag(A (x) I_{n_in}, A, I_{n_out} (x) A^-T) (the A block only with a bias)."""
    Ainv_T = inverse(A).T
    blocks = [kron(A, sp.eye(n_in))] + ([A] if bias else []) + [kron(sp.eye(n_out), Ainv_T)]
    return sp.diag(*blocks)


def sq_loss(f: Matrix, y: Matrix) -> sp.Expr:
    """Squared loss 1/2 ||f - y||^2."""
    d = f - y
    return (d.T * d)[0, 0] / 2


# ---------------------------------------------------------------- T1


def derive_T1() -> Derivation:
    """T1: grad L'(T theta) = T^-T grad L(theta), for the S1 map of a symbolic 2-layer linear
    net (r = 2, n_in = 2, n_out = 2, with bias) and for S2 (ReLU) on every activation pattern."""
    p = Proof()
    A, W, B = smat("a", 2, 2), smat("w", 2, 3), smat("b", 3, 2)
    p.equal("row-major vec: vec(A W B) = (A (x) B^T) vec(W) for symbolic A (2x2), W (2x3), B (3x2)",
            vec(A * W * B), kron(A, B.T) * vec(W))
    net = two_layer(2, 2, 2)
    th = net.theta
    T = s1_matrix(A, 2, 2)
    Tth = T * Matrix(th)
    p.equal("T theta = (vec(A W_a), A b_a, vec(W_b A^-1)) (the block form of the S1 map)", Tth,
            Matrix.vstack(vec(A * net.Wa), A * net.ba, vec(net.Wb * inverse(A))))
    f = net.f()
    p.equal("function preservation f(x; T theta) = f(x; theta) for symbolic x", at(f, th, Tth), f)
    J = jacobian(f, th)
    p.equal("Jacobian law J_f(T theta) T = J_f(theta), every theta and x", at(J, th, Tth) * T, J)
    p.argue("for any differentiable loss ell, grad L(theta) = J_f(theta)^T grad ell(f); since f(T theta) = "
            "f(theta) and J_f(T theta) = J_f(theta) T^-1, grad L(T theta) = T^-T grad L(theta); with "
            "L'(theta') := L(T^-1 theta') = L(theta') (function preservation) this is T1")
    y = svec("y", 2)
    L = sq_loss(f, y)
    g = gradient(L, th)
    p.equal("squared loss directly: grad L(T theta) - T^-T grad L(theta) = 0", at(g, th, Tth), inverse(T).T * g)
    # singular values of T
    Kc = commutation(2, 3)
    M = smat("m", 2, 2)
    p.equal("commutation: K (M (x) I_3) K^T = I_3 (x) M, so sigma(M (x) I_k) = sigma(M) repeated k times",
            Kc * kron(M, sp.eye(3)) * Kc.T, kron(sp.eye(3), M))
    p.equal("T^T T = diag(A^T A (x) I, A^T A, I (x) A^-1 A^-T) (block diagonal)", T.T * T,
            sp.diag(kron(A.T * A, sp.eye(2)), A.T * A, kron(sp.eye(2), inverse(A) * inverse(A).T)))
    mu = sp.Symbol("mu")
    cA = (A.T * A).charpoly(mu).as_expr()
    cAi = (inverse(A) * inverse(A).T).charpoly(mu).as_expr()
    Ts = s1_matrix(A, 1, 1)
    p.equal("charpoly(T^T T) = charpoly(A^T A)^(n_in+1) charpoly(A^-1 A^-T)^(n_out) (n_in = n_out = 1)",
            (Ts.T * Ts).charpoly(mu).as_expr(), cA**2 * cAi)
    p.equal("det(mu I - A^-1 A^-T) = mu^2 det(mu^-1 I - A^T A) / det(A^T A): sigma(A^-1) = 1/sigma(A)",
            cAi, mu**2 * cA.subs(mu, 1 / mu) / (A.T * A).det())
    p.form("sigma(T)", r"\sigma(T) = \sigma(A)^{\times (n_{in}+1)} \cup \sigma(A^{-1})^{\times n_{out}}",
           text="sigma(A) (multiplicity n_in + 1) u 1/sigma(A) (multiplicity n_out)")
    sa, sb = tsym("sigma_max(A)", r"\sigma_{\max}(A)", positive=True), tsym("sigma_min(A)", r"\sigma_{\min}(A)", positive=True)
    p.form("kappa(T)", sp.Max(sa, 1 / sb) / sp.Min(sb, 1 / sa))
    # S2 on each activation pattern
    d = svec("d", 2, positive=True)
    D = sp.diag(*d)
    wa, ba, wb, x = smat("wa", 2, 2), svec("ba", 2), smat("wb", 1, 2), svec("x", 2)
    for mask in ((0, 0), (0, 1), (1, 0), (1, 1)):
        Mk = sp.diag(*mask)
        fm = wb * Mk * (wa * x + ba)
        fd = (wb * inverse(D)) * Mk * (D * wa * x + D * ba)
        p.zero(f"S2, activation pattern {mask}: W_b D^-1 M (D W_a x + D b_a) = W_b M (W_a x + b_a)", fd - fm)
    p.argue("relu(d u) = d relu(u) for d > 0 (the pattern of D(W_a x + b_a) equals that of W_a x + b_a), so on "
            "every open region of fixed pattern the S2 map preserves f and the Jacobian law holds as above")
    return p.done()


# ---------------------------------------------------------------- T2, T3


def derive_T2() -> Derivation:
    """T2: hess L'(T theta) = T^-T hess L(theta) T^-1; Sylvester inertia; Ostrowski."""
    p = Proof()
    A = smat("a", 2, 2)
    net = two_layer(2, 1, 1)
    th = net.theta
    T = s1_matrix(A, 1, 1)
    Tth = T * Matrix(th)
    y = sp.Symbol("y")
    L = sq_loss(net.f(), Matrix([y]))
    H = sp.hessian(L, th)
    p.equal("squared loss, r = 2, n_in = n_out = 1 with bias: T^T hess L(T theta) T = hess L(theta)",
            T.T * at(H, th, Tth) * T, H)
    big = two_layer(2, 2, 2)
    thb = big.theta
    Tb = s1_matrix(A, 2, 2)
    Tthb = Tb * Matrix(thb)
    fb = big.f()
    for k in range(2):
        Hk = sp.hessian(fb[k], thb)
        p.equal(f"r = n_in = n_out = 2: T^T hess f_{k + 1}(T theta) T = hess f_{k + 1}(theta)",
                Tb.T * at(Hk, thb, Tthb) * Tb, Hk)
    p.argue("hess L = J^T hess ell(f) J + sum_k d ell/d f_k hess f_k; with f(T theta) = f(theta), J(T theta) T = J(theta) "
            "(T1) and the line above, T^T hess L(T theta) T = hess L(theta) for every twice differentiable loss ell, "
            "i.e. hess L'(T theta) = T^-T hess L(theta) T^-1")
    S = smat("t", 2, 2)
    Hs = ssym("h", 2)
    xv = svec("u", 2)
    Hp = inverse(S).T * Hs * inverse(S)
    yv = inverse(S) * xv
    p.equal("Rayleigh quotients: u^T H' u = (S^-1 u)^T H (S^-1 u) for H' = S^-T H S^-1", (xv.T * Hp * xv), yv.T * Hs * yv)
    p.argue("so u^T H' u / u^T u = (v^T H v / v^T v) (v^T v / u^T u) with v = T^-1 u and v^T v / u^T u in "
            "[sigma_min(T^-1)^2, sigma_max(T^-1)^2]; Courant-Fischer on this product gives Ostrowski's theorem")
    p.cite("Ostrowski (Horn & Johnson, Matrix Analysis, Thm 4.5.9): lambda_k(S^T H S) = rho_k lambda_k(H), rho_k in "
           "[sigma_min(S)^2, sigma_max(S)^2]; Sylvester's law of inertia for the congruence H' = T^-T H T^-1")
    p.equal("det H' = det H / det(T)^2 (2x2 symbolic): the sign of det, hence definiteness in 2D, is preserved",
            Hp.det(), Hs.det() / S.det() ** 2)
    p.form("lambda_k(H')", sp.Symbol("rho_k") * sp.Symbol("lambda_k"),
           text="rho_k lambda_k(H), rho_k in [sigma_min(T^-1)^2, sigma_max(T^-1)^2]")
    return p.done()


def derive_T3() -> Derivation:
    """T3: kappa(H)/kappa(T)^2 <= kappa(H') <= kappa(T)^2 kappa(H) for H > 0, and tightness."""
    p = Proof()
    lmin, lmax, smin, smax = sp.symbols("lambda_min lambda_max sigma_min sigma_max", positive=True)
    # sigma(T^-1) = 1/sigma(T)
    up = (lmax / smin**2) / (lmin / smax**2)
    p.argue("Ostrowski (T2) with S = T^-1: lambda_max(H') <= lambda_max(H)/sigma_min(T)^2 and "
            "lambda_min(H') >= lambda_min(H)/sigma_max(T)^2 (H > 0)")
    p.equal("ratio of those bounds = kappa(T)^2 kappa(H)", up, (smax / smin) ** 2 * (lmax / lmin))
    p.argue("the lower bound follows by exchanging the roles: H = T^T H' T, kappa(T^-1) = kappa(T)")
    k, lam = sp.symbols("k lambda", positive=True)
    T = sp.diag(1, k)
    H = sp.diag(lam, lam)
    Hp = inverse(T).T * H * inverse(T)
    p.equal("tightness: T = diag(1, k), H = lambda I gives H' = diag(lambda, lambda/k^2), kappa(H') = k^2 = kappa(T)^2 kappa(H)",
            Hp, sp.diag(lam, lam / k**2))
    p.form("kappa(H') interval", sp.Interval(sp.Symbol("kappa_H") / sp.Symbol("kappa_T") ** 2,
                                               sp.Symbol("kappa_T") ** 2 * sp.Symbol("kappa_H")))
    return p.done()


# ---------------------------------------------------------------- T4


def derive_T4() -> Derivation:
    """T4: third derivative of L' = L o T^-1 is the third derivative of L contracted with T^-1
    in each slot; M' <= ||T^-1||^3 M."""
    p = Proof()
    u, v = sp.symbols("u v")
    L = generic_polynomial(u, v, 4)
    S = smat("t", 2, 2)
    Si = inverse(S)
    up, vp = sp.symbols("up vp")
    old = Si * Matrix([up, vp])
    Lp = L.xreplace({u: old[0], v: old[1]})
    vars_ = (u, v)
    pvars = (up, vp)
    d3 = {(a, b, c): sp.diff(L, vars_[a], vars_[b], vars_[c]) for a in range(2) for b in range(2) for c in range(2)}
    residuals = []
    for a in range(2):
        for b in range(a, 2):
            for c in range(b, 2):
                lhs = sp.diff(Lp, pvars[a], pvars[b], pvars[c])
                rhs = sum(d3[(i, j, l)].xreplace({u: old[0], v: old[1]}) * Si[i, a] * Si[j, b] * Si[l, c]
                          for i in range(2) for j in range(2) for l in range(2))
                residuals.append(lhs - rhs)
    p.zero("generic quartic L(u, v) (15 symbolic coefficients), symbolic 2x2 T, L' = L o T^-1: "
           "d^3 L'(theta')[a,b,c] = sum_ijk d^3 L(T^-1 theta')[i,j,k] (T^-1)_ia (T^-1)_jb (T^-1)_kc", Matrix(residuals))
    p.argue("for the spectral norm of trilinear forms, |C(T^-1 x, T^-1 y, T^-1 z)| <= ||C|| ||T^-1||^3 for unit x, y, z "
            "(and ||C x_1 S x_2 S x_3 S||_F <= ||S||_2^3 ||C||_F); taking sup over theta, M' <= ||T^-1||^3 M")
    p.form("M'", tsym("||T^-1||", r"\|T^{-1}\|_2") ** 3 * sp.Symbol("M"), text="M' <= ||T^-1||_2^3 M")
    return p.done()
