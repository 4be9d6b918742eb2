"""Symbolic derivations of the transformation laws T1-T4, and the shared sympy toolkit.

Identities are checked either in every dimension -- sympy matrix expressions of symbolic size
(``MatrixSymbol`` with shapes such as (r, n_in), matrix calculus by ``sympy.diff``), reduced by
sympy's noncommutative algebra (distribution, transposes, X X^-1 = I for the invertible symbols
a statement assumes, Kronecker mixed products) -- or on fully symbolic small matrices (each
entry its own symbol): a rational-function identity counts as proved when the expanded
numerator of ``together(lhs - rhs)`` is the zero polynomial (exact, no floating point);
anything else goes through ``sympy.simplify``. A scalar residual that sympy cannot reduce to 0
is probed at random rational points: a nonzero value is a counterexample (status FALSE),
otherwise the step is recorded as unproved (status CHECKED_ONLY); a matrix expression that does
not reduce is recorded as unproved. Nothing is reported proved that sympy did not reduce to 0.
Each step is tagged with how far it goes (``theory.core``: ``[sympy:general]``, ``[sympy]``,
``[sympy:example]``, ``[argument]``, ``[cited]``, ``[mpmath]``).

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

from convrate.theory.core import TAG_EXAMPLE, TAG_GENERAL, TAG_INSTANCE, Derivation, Status

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


def normal_form(expr: Any) -> Any:
    """A matrix expression of symbolic size in sympy's normal form: ``doit``, Kronecker products
    combined (mixed product, transpose), products expanded over sums, repeated to a fixed point."""
    from sympy.matrices.expressions.kronecker import combine_kronecker

    e = expr
    for _ in range(8):
        new = sp.expand(combine_kronecker(e.doit()).doit()).doit()
        if new == e:
            break
        e = new
    return e


def matrix_expr_is_zero(expr: Any) -> bool:
    """True when sympy's matrix-expression algebra reduces ``expr`` (any symbolic size) to 0."""
    e = normal_form(expr)
    return e == 0 or isinstance(e, sp.ZeroMatrix) or bool(getattr(e, "is_ZeroMatrix", False))


def _is_matrix_expr(x: Any) -> bool:
    return isinstance(x, sp.MatrixExpr) and not isinstance(x, sp.MatrixBase)


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


_TAGS = {"general": TAG_GENERAL, "instance": TAG_INSTANCE, "example": TAG_EXAMPLE}


class Proof:
    """Accumulates the steps of one derivation.

    ``zero``/``equal``/``true`` are sympy-checked steps; their ``scope`` says how far each goes
    (``theory.core``): "general" (every dimension: matrix expressions of symbolic size, or a
    scalar identity that is the general case; ``[sympy:general]``), "instance" (a fixed-size
    symbolic instance the proof relies on; ``[sympy]``, the default) or "example" (an
    illustration, counterexample or consistency check, not part of the proof;
    ``[sympy:example]``). ``argue`` records a step of the written argument that relies on
    checked identities and elementary inequalities (``[argument]``); ``cite`` a classical
    theorem used as is (``[cited]``); ``numeric`` a high-precision evaluation (``[mpmath]``).
    ``form`` records a closed form.
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

    def zero(self, label: str, expr: Any, circles: Sequence[Circle] = (), *, scope: str = "instance") -> bool:
        """Record ``expr == 0`` (scalar, every matrix entry, or a matrix expression of symbolic
        size; with ``circles``, on the unit circles c^2 + d^2 = 1) as proved, or the failure."""
        tag = _TAGS[scope]
        if _is_matrix_expr(expr):
            if matrix_expr_is_zero(expr):
                self.steps.append(f"{tag} {label}")
                self.checked += 1
                return True
            self.unproved.append(label)
            self.steps.append(f"[sympy] NOT REDUCED {label} (matrix expression: {normal_form(expr)})")
            return False
        entries = list(expr) if isinstance(expr, sp.MatrixBase) else [expr]
        bad = [sp.sympify(e) for e in entries if not is_zero(e, circles)]
        if not bad:
            self.steps.append(f"{tag} {label}")
            self.checked += 1
            return True
        for e in bad:
            found = probe(e, circles=circles)
            if found is not None:
                return self._failed(f"{label}: residual nonzero, {found}", f"{label}: {found}")
        self.unproved.append(label)
        self.steps.append(f"[sympy] NOT REDUCED {label} (random rational probes give 0)")
        return False

    def equal(self, label: str, lhs: Any, rhs: Any, circles: Sequence[Circle] = (), *, scope: str = "instance") -> bool:
        """Record ``lhs == rhs`` (matrices entrywise; matrix expressions of symbolic size after
        bringing each side to ``normal_form``)."""
        if isinstance(lhs, (sp.MatrixBase, sp.MatrixExpr)) or isinstance(rhs, (sp.MatrixBase, sp.MatrixExpr)):
            if lhs.shape != rhs.shape:
                return self._failed(f"{label}: shapes {lhs.shape} != {rhs.shape}", f"{label}: shapes differ")
        if _is_matrix_expr(lhs) or _is_matrix_expr(rhs):
            return self.zero(label, normal_form(lhs) - normal_form(rhs), scope=scope)
        return self.zero(label, lhs - rhs, circles, scope=scope)

    def true(self, label: str, cond: Any, *, scope: str = "instance") -> bool:
        """Record a sympy relational / boolean that sympy evaluates to True."""
        c = sp.sympify(cond)
        if c is sp.true or c is True:
            self.steps.append(f"{_TAGS[scope]} {label}")
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


# ---------------------------------------------------------------- symbolic-size S1 pair


@dataclass(frozen=True)
class GeneralPair:
    """The S1 pair f(x) = W_b (W_a x + b_a) with matrix symbols of symbolic size (r, n_in,
    n_out are positive integer symbols): every identity proved on it holds in every dimension.
    ``A`` is an r x r symbol, assumed invertible; ``g`` stands for grad ell(z) at z = f(x)."""

    r: sp.Symbol
    n_in: sp.Symbol
    n_out: sp.Symbol
    Wa: sp.MatrixSymbol
    ba: sp.MatrixSymbol
    Wb: sp.MatrixSymbol
    x: sp.MatrixSymbol
    y: sp.MatrixSymbol
    g: sp.MatrixSymbol
    A: sp.MatrixSymbol

    def f(self, Wa: Any = None, ba: Any = None, Wb: Any = None) -> sp.MatrixExpr:
        Wa, ba, Wb = (self.Wa if Wa is None else Wa), (self.ba if ba is None else ba), (self.Wb if Wb is None else Wb)
        return Wb * (Wa * self.x + ba)

    def moved(self) -> tuple[sp.MatrixExpr, sp.MatrixExpr, sp.MatrixExpr]:
        """T theta = (A W_a, A b_a, W_b A^-1)."""
        return self.A * self.Wa, self.A * self.ba, self.Wb * self.A.I


def general_pair() -> GeneralPair:
    r, n_in, n_out = sp.symbols("r n_in n_out", integer=True, positive=True)
    return GeneralPair(r, n_in, n_out, sp.MatrixSymbol("W_a", r, n_in), sp.MatrixSymbol("b_a", r, 1),
                       sp.MatrixSymbol("W_b", n_out, r), sp.MatrixSymbol("x", n_in, 1), sp.MatrixSymbol("y", n_out, 1),
                       sp.MatrixSymbol("g", n_out, 1), sp.MatrixSymbol("A", r, r))


def _pair_gradients(p: Proof, net: GeneralPair, loss: str) -> None:
    """Matrix calculus on the pair: the gradient blocks at T theta are A^-T grad_{W_a},
    A^-T grad_{b_a}, grad_{W_b} A^T (the blocks of T^-T grad L), in every dimension."""
    Wp, bp, Vp = (sp.MatrixSymbol(n, *m.shape) for n, m in (("Wp_a", net.Wa), ("bp_a", net.ba), ("Wp_b", net.Wb)))
    A = net.A

    def L(Wa: Any, ba: Any, Wb: Any) -> sp.Expr:
        z = net.f(Wa, ba, Wb)
        return sp.Trace(net.g.T * z) if loss == "linear" else sp.Trace((z - net.y).T * (z - net.y)) / 2

    Ld = L(A.I * Wp, A.I * bp, Vp * A)  # L'(theta') = L(T^-1 theta')
    at = dict(zip((Wp, bp, Vp), net.moved()))
    what = "g^T f (the linearization of any loss ell at z, g = grad ell(z))" if loss == "linear" else \
        "1/2 ||f - y||^2"
    for name, var, prime, back in (("W_a", net.Wa, Wp, lambda G: A.I.T * G), ("b_a", net.ba, bp, lambda G: A.I.T * G),
                                   ("W_b", net.Wb, Vp, lambda G: G * A.T)):
        lhs = sp.diff(Ld, prime).xreplace(at)
        rhs = back(sp.diff(L(net.Wa, net.ba, net.Wb), var))
        law = f"A^-T grad_{{{name}}} L(theta)" if name != "W_b" else f"grad_{{{name}}} L(theta) A^T"
        p.equal(f"L = {what}: grad_{{{name}'}} L'(T theta) = {law} (matrix calculus, shapes r x n_in, r, n_out x r "
                "symbolic)", lhs, rhs, scope="general")


# ---------------------------------------------------------------- T1


def derive_T1() -> Derivation:
    """T1: grad L'(T theta) = T^-T grad L(theta), for the S1 pair in every dimension (matrix
    symbols of symbolic size, any differentiable loss through its linearization) and for S2
    per unit; singular values of T through Kronecker products of symbolic size."""
    p = Proof()
    net = general_pair()
    A = net.A
    p.equal("function preservation in every dimension: (W_b A^-1)(A W_a x + A b_a) = W_b (W_a x + b_a)",
            net.f(*net.moved()), net.f(), scope="general")
    _pair_gradients(p, net, "linear")
    _pair_gradients(p, net, "squared")
    p.cite("chain rule: grad (ell o f)(theta) = J_f(theta)^T grad ell(f(theta)) is the gradient of the linearization "
           "g^T f with g = grad ell(f(theta)); f(T theta) = f(theta) gives the same g at theta and T theta, so the "
           "linear-loss identities above hold for every differentiable ell")
    Am, W, B = smat("a", 2, 2), smat("w", 2, 3), smat("b", 3, 2)
    p.equal("row-major vec: vec(A W B) = (A (x) B^T) vec(W) for symbolic A (2x2), W (2x3), B (3x2)",
            vec(Am * W * B), kron(Am, B.T) * vec(W), scope="example")
    p.cite("row-major vec(A W B) = (A (x) B^T) vec(W) (Magnus-Neudecker, transposed for row-major): the block maps "
           "W_a -> A^-T W_a, b_a -> A^-T b_a, W_b -> W_b A^T above are T^-T = diag(A^-T (x) I, A^-T, I (x) A) applied to "
           "(vec W_a, b_a, vec W_b), T = diag(A (x) I_n_in, A, I_n_out (x) A^-T)")
    net2 = two_layer(2, 2, 2)
    T2 = s1_matrix(Am, 2, 2)
    p.equal("the same in explicit coordinates (r = n_in = n_out = 2, squared loss): grad L(T theta) = T^-T grad L(theta)",
            at(gradient(sq_loss(net2.f(), svec("y", 2)), net2.theta), net2.theta, T2 * Matrix(net2.theta)),
            inverse(T2).T * gradient(sq_loss(net2.f(), svec("y", 2)), net2.theta), scope="example")
    # singular values of T in every dimension
    Ii, Io = sp.Identity(net.n_in), sp.Identity(net.n_out)
    KP = sp.KroneckerProduct
    p.equal("(A (x) I_n_in)^T (A (x) I_n_in) = A^T A (x) I_n_in (Kronecker products of symbolic size)",
            KP(A, Ii).T * KP(A, Ii), KP(A.T * A, Ii), scope="general")
    p.equal("(I_n_out (x) A^-T)^T (I_n_out (x) A^-T) = I_n_out (x) A^-1 A^-T", KP(Io, A.I.T).T * KP(Io, A.I.T),
            KP(Io, A.I * A.I.T), scope="general")
    p.equal("A^-1 A^-T = (A^T A)^-1: its eigenvalues are 1/sigma_i(A)^2", A.I * A.I.T, (A.T * A).I, scope="general")
    p.cite("T^T T is block diagonal with these blocks (and A^T A for the bias); the eigenvalues of X (x) I_k and "
           "I_k (x) X are those of X, each k times: sigma(T) = sigma(A) (multiplicity n_in + 1) u 1/sigma(A) "
           "(multiplicity n_out)")
    p.form("sigma(T)", r"\sigma(T) = \sigma(A)^{\times (n_{in}+1)} \cup \sigma(A^{-1})^{\times n_{out}}",
           text="sigma(A) (multiplicity n_in + 1) u 1/sigma(A) (multiplicity n_out)")
    sa, sb = tsym("sigma_max(A)", r"\sigma_{\max}(A)", positive=True), tsym("sigma_min(A)", r"\sigma_{\min}(A)", positive=True)
    p.form("kappa(T)", sp.Max(sa, 1 / sb) / sp.Min(sb, 1 / sa))
    _s2_unit(p)
    return p.done()


def _s2_unit(p: Proof) -> None:
    """S2, one unit of any width: relu(d u) = d relu(u) (d > 0) and the unit's gradient law."""
    d = sp.Symbol("d", positive=True)
    up, un = sp.Symbol("u", positive=True), sp.Symbol("u", negative=True)
    p.equal("relu(d u) = d relu(u), d > 0, u > 0 (so the activation pattern of D(W_a x + b_a) is that of W_a x + b_a)",
            sp.Max(d * up, 0), d * sp.Max(up, 0), scope="general")
    p.equal("relu(d u) = d relu(u), d > 0, u < 0", sp.Max(d * un, 0), d * sp.Max(un, 0), scope="general")
    n_in, n_out = sp.symbols("n_in n_out", integer=True, positive=True)
    w, x, c, g = (sp.MatrixSymbol("w", 1, n_in), sp.MatrixSymbol("x", n_in, 1), sp.MatrixSymbol("c", n_out, 1),
                  sp.MatrixSymbol("g", n_out, 1))
    beta, wp, bp, cp = sp.Symbol("beta"), sp.MatrixSymbol("wp", 1, n_in), sp.Symbol("bp"), sp.MatrixSymbol("cp", n_out, 1)

    def unit(w_: Any, b_: Any, c_: Any) -> sp.MatrixExpr:  # active unit: out column c times (w x + b)
        return c_ * (w_ * x + b_ * sp.Identity(1))

    p.equal("active unit (any n_in, n_out): (c/d)(d w x + d b) = c (w x + b)", unit(d * w, d * beta, c / d),
            unit(w, beta, c), scope="general")
    Ld = sp.Trace(g.T * unit(wp / d, bp / d, cp * d))
    at_ = {wp: d * w, bp: d * beta, cp: c / d}
    base = sp.Trace(g.T * unit(w, beta, c))
    p.equal("active unit, linearized loss g^T f: grad_{w'} L'(T theta) = (1/d) grad_w L(theta)",
            sp.diff(Ld, wp).xreplace(at_), sp.diff(base, w) / d, scope="general")
    p.equal("active unit: grad_{c'} L'(T theta) = d grad_c L(theta)", sp.diff(Ld, cp).xreplace(at_),
            d * sp.diff(base, c), scope="general")
    p.argue("an inactive unit contributes 0 and has zero gradient on both sides; units are independent, so with "
            "T = diag(D (x) I, D, I (x) D^-1) the law grad L'(T theta) = T^-T grad L(theta) holds for every width, "
            "on the open set where no pre-activation is 0 (T1's assumption)")


# ---------------------------------------------------------------- T2, T3


def derive_T2() -> Derivation:
    """T2: hess L'(T theta) = T^-T hess L(theta) T^-1; Sylvester inertia; Ostrowski."""
    p = Proof()
    net = general_pair()
    s_ = sp.Symbol("s")
    V = [sp.MatrixSymbol(n, *m.shape) for n, m in (("V_a", net.Wa), ("v_b", net.ba), ("V_b", net.Wb))]
    line = [net.Wa + s_ * V[0], net.ba + s_ * V[1], net.Wb + s_ * V[2]]
    moved = [net.A * line[0], net.A * line[1], line[2] * net.A.I]  # T (theta + s v) = T theta + s T v
    p.equal("every line theta + s v is mapped to the line T theta + s T v and f is preserved along it: "
            "f(x; T(theta + s v)) = f(x; theta + s v) for all s (symbolic sizes)", net.f(*moved), net.f(*line),
            scope="general")
    p.cite("so ell(f(T(theta + s v))) = ell(f(theta + s v)) as functions of s; their second derivatives at s = 0 are "
           "(T v)^T hess L'(T theta) (T v) and v^T hess L(theta) v (chain rule), for every v: by polarization "
           "T^T hess L'(T theta) T = hess L(theta), i.e. hess L'(T theta) = T^-T hess L(theta) T^-1, for every twice "
           "differentiable loss")
    A = smat("a", 2, 2)
    small = two_layer(2, 1, 1)
    th = small.theta
    T = s1_matrix(A, 1, 1)
    H = sp.hessian(sq_loss(small.f(), Matrix([sp.Symbol("y")])), th)
    p.equal("explicit coordinates, squared loss, r = 2, n_in = n_out = 1 with bias: T^T hess L(T theta) T = "
            "hess L(theta)", T.T * at(H, th, T * Matrix(th)) * T, H, scope="example")
    n = sp.Symbol("n", integer=True, positive=True)
    S, Hs, u = sp.MatrixSymbol("T", n, n), sp.MatrixSymbol("H", n, n), sp.MatrixSymbol("u", n, 1)
    Hp = S.I.T * Hs * S.I
    p.equal("Rayleigh quotients (any n): u^T H' u = (T^-1 u)^T H (T^-1 u) for H' = T^-T H T^-1",
            u.T * Hp * u, (S.I * u).T * Hs * (S.I * u), scope="general")
    p.argue("so u^T H' u / u^T u = (v^T H v / v^T v) (v^T v / u^T u) with v = T^-1 u and v^T v / u^T u in "
            "[sigma_min(T^-1)^2, sigma_max(T^-1)^2]; Courant-Fischer on this product gives Ostrowski's theorem")
    p.cite("Ostrowski (Horn & Johnson, Matrix Analysis, Thm 4.5.9): lambda_k(S^T H S) = rho_k lambda_k(H), rho_k in "
           "[sigma_min(S)^2, sigma_max(S)^2]; Sylvester's law of inertia for the congruence H' = T^-T H T^-1")
    S2, H2 = smat("t", 2, 2), ssym("h", 2)
    p.equal("det H' = det H / det(T)^2 (2x2 symbolic): the sign of det, hence definiteness in 2D, is preserved",
            (inverse(S2).T * H2 * inverse(S2)).det(), H2.det() / S2.det() ** 2, scope="example")
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
    p.equal("ratio of those bounds = kappa(T)^2 kappa(H) (a relation of the spectral quantities: every dimension)",
            up, (smax / smin) ** 2 * (lmax / lmin), scope="general")
    p.argue("the lower bound follows by exchanging the roles: H = T^T H' T, kappa(T^-1) = kappa(T)")
    k, lam = sp.symbols("k lambda", positive=True)
    T = sp.diag(1, k)
    H = sp.diag(lam, lam)
    Hp = inverse(T).T * H * inverse(T)
    p.equal("tightness: T = diag(1, k), H = lambda I gives H' = diag(lambda, lambda/k^2), kappa(H') = k^2 = kappa(T)^2 kappa(H)",
            Hp, sp.diag(lam, lam / k**2), scope="example")
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
