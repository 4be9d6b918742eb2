"""Exact small networks: loss, gradient, Hessian, third derivative, Gauss-Newton.

A network is a chain of layers z_l = W_l a_{l-1} + b_l, a_l = act_l(z_l) (act = identity
or ReLU), f(x) = z_{L-1}, with the squared loss (mu_ell = 1)

    L(theta) = 1/(2N) sum_k ||f(x_k; theta) - y_k||^2 .

Parameters theta = concat over trainable layers of (vec W_l row-major, b_l); frozen layers
(used by the R1 recovery, which inserts fixed A and A^-1) carry no parameters. Away from the
ReLU kinks the net is, locally, a masked linear chain, so f is affine in each layer and

    df/dW_l[i,j]                   = Left_l[:, i] a~_{l-1}[j],
    d^2 f/dW_l[i,j] dW_m[p,q]      = Left_m[:, p] Jin_{m,l}[q, i] a~_{l-1}[j]        (l < m),
    d^3 f/dW_l dW_m dW_n           = Left_n[:, .] Jin_{n,m}[., .] Jin_{m,l}[., .] a~_{l-1}[.]  (l < m < n),

with Left_l = df/dz_l, Jin_{m,l} = d a~_{m-1} / d z_l (a zero row for the bias input) and
a~ the layer input augmented by 1 when the layer has a bias. Hence

    grad L = 1/N sum_k J_k^T e_k,   H = 1/N sum_k (J_k^T J_k + sum_o e_ko d^2 f_o),
    D^3 L[a,b,c] = 1/N sum_k sum_o (J_oa F_obc + J_ob F_oac + J_oc F_oab + e_o d^3 f_o[a,b,c]),

e_k = f(x_k) - y_k. Two fields are supported: exact rationals (flint ``fmpq``; results are
``fmpq_mat``) and arb balls (``flint.arb``; results are ``arb_mat`` whose balls contain the
exact value). mpmath numbers enter as exact arb balls. A point where some ReLU pre-activation
is exactly 0 is refused (the Hessian does not exist there; such points have measure zero).

Independently of the closed forms, ``line_polynomial`` expands L(theta + t u) as an exact
polynomial in t (masks frozen at theta), so D^k L(theta)[u]^k = k! c_k and mixed
derivatives follow by polarization.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Iterator, Sequence

import flint
import mpmath

from convrate.errors import ConvrateError, InvalidInputError, PrecisionError
from convrate.numerics.linalg import SymEig, mp_matrix, sym_eig

#: working precision (bits) of every arb computation in this package's net code
ARB_PREC = 320

EXACT, BALL = "exact", "ball"


class ReluKinkError(InvalidInputError):
    """A ReLU pre-activation is exactly 0: the loss is not twice differentiable there."""


class SingularHessianError(ConvrateError, ArithmeticError):
    """Newton's step is undefined: the Hessian is exactly singular."""


@contextlib.contextmanager
def arb_precision(bits: int = ARB_PREC) -> Iterator[None]:
    """Raise flint's arb working precision to at least ``bits`` inside the block."""
    old = flint.ctx.prec
    flint.ctx.prec = max(old, bits)
    try:
        yield
    finally:
        flint.ctx.prec = old


def at_arb_precision(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` with the arb precision raised to ``ARB_PREC`` bits."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with arb_precision():
            return fn(*args, **kwargs)

    return wrapper


# ---------------------------------------------------------------- scalars and fields
def to_fmpq(x: Any) -> flint.fmpq:
    """Exact rational of an int / Fraction / fmpq / finite float / mpf."""
    if isinstance(x, flint.fmpq):
        return x
    if isinstance(x, bool):
        raise InvalidInputError(f"boolean {x!r} is not a number")
    if isinstance(x, (int, flint.fmpz)):
        return flint.fmpq(int(x))
    if isinstance(x, Fraction):
        return flint.fmpq(x.numerator, x.denominator)
    if isinstance(x, float):
        if not math.isfinite(x):
            raise InvalidInputError(f"non-finite value {x}")
        f = Fraction(x)
        return flint.fmpq(f.numerator, f.denominator)
    if isinstance(x, mpmath.mpf):
        if not mpmath.isfinite(x):
            raise InvalidInputError(f"non-finite value {x}")
        sign, man, exp, _ = x._mpf_
        f = Fraction(int(man) * (-1 if sign else 1)) * (Fraction(2) ** int(exp))
        return flint.fmpq(f.numerator, f.denominator)
    raise InvalidInputError(f"cannot use {type(x).__name__} value {x!r} as an exact rational")


def to_fraction(x: Any) -> Fraction:
    """Fraction of an exact scalar (fmpq, int, Fraction)."""
    q = to_fmpq(x)
    return Fraction(int(q.p), int(q.q))


def to_arb(x: Any) -> flint.arb:
    """Ball containing x: exact for binary numbers (int, float, mpf), a rounded ball for
    other rationals at the current arb precision."""
    if isinstance(x, flint.arb):
        return x
    if isinstance(x, mpmath.mpf):
        if not mpmath.isfinite(x):
            raise InvalidInputError(f"non-finite value {x}")
        if x == 0:
            return flint.arb(0)
        sign, man, exp, _ = x._mpf_
        a = flint.arb(flint.fmpz(int(man))) * flint.arb(2) ** int(exp)
        return -a if sign else a
    if isinstance(x, float):
        return to_arb(mpmath.mpf(x))
    return flint.arb(to_fmpq(x))


def arb_to_mpf(x: flint.arb) -> mpmath.mpf:
    """The exact midpoint of an arb ball as an mpf (no rounding)."""
    man, exp = x.mid().man_exp()
    return mpmath.make_mpf(mpmath.libmp.from_man_exp(int(man), int(exp)))


def arb_radius(x: flint.arb) -> mpmath.mpf:
    """The radius of an arb ball as an mpf (exact)."""
    man, exp = x.rad().man_exp()
    return mpmath.make_mpf(mpmath.libmp.from_man_exp(int(man), int(exp)))


def scalar_kind(x: Any) -> str:
    """EXACT for rationals (int, Fraction, fmpq, float), BALL for arb / mpf."""
    if isinstance(x, (flint.arb, mpmath.mpf)):
        return BALL
    if isinstance(x, (int, Fraction, flint.fmpq, flint.fmpz, float)) and not isinstance(x, bool):
        return EXACT
    raise InvalidInputError(f"unsupported scalar type {type(x).__name__}: {x!r}")


def join_kinds(*kinds: str) -> str:
    return BALL if BALL in kinds else EXACT


def convert(x: Any, kind: str) -> Any:
    """x in the field ``kind`` (EXACT -> fmpq, BALL -> arb)."""
    return to_fmpq(x) if kind == EXACT else to_arb(x)


def rows_of(A: Any) -> list[list[Any]]:
    """Nested lists of the entries of a matrix-like (fmpq_mat, arb_mat, mpmath, numpy, lists)."""
    if isinstance(A, (flint.fmpq_mat, flint.arb_mat, flint.fmpz_mat)):
        return [[A[i, j] for j in range(A.ncols())] for i in range(A.nrows())]
    if isinstance(A, mpmath.matrix):
        return [[A[i, j] for j in range(A.cols)] for i in range(A.rows)]
    rows = A.tolist() if hasattr(A, "tolist") else A
    return [list(r) for r in rows]


def matrix_kind(rows: Sequence[Sequence[Any]]) -> str:
    return join_kinds(*(scalar_kind(x) for r in rows for x in r)) if rows else EXACT


@at_arb_precision
def as_field_rows(A: Any, kind: str | None = None) -> tuple[str, list[list[Any]]]:
    """(kind, rows converted to that field); kind defaults to the entries' own kind."""
    rows = rows_of(A)
    k = kind or matrix_kind(rows)
    return k, [[convert(x, k) for x in r] for r in rows]


def pack(rows: Sequence[Sequence[Any]], kind: str) -> Any:
    """fmpq_mat (EXACT) or arb_mat (BALL) from nested lists already in that field."""
    n = len(rows)
    m = len(rows[0]) if n else 0
    flat = [x for r in rows for x in r]
    if kind == EXACT:
        return flint.fmpq_mat(n, m, flat)
    return flint.arb_mat(n, m, flat)


@at_arb_precision
def column(values: Sequence[Any], kind: str) -> Any:
    """Column vector (n x 1) of ``values`` in the field ``kind``."""
    return pack([[v] for v in values], kind)


@at_arb_precision
def as_vector(theta: Any) -> tuple[str, list[Any]]:
    """(kind, flat list) of a vector given as a column/row matrix or a sequence."""
    if isinstance(theta, (flint.fmpq_mat, flint.arb_mat, mpmath.matrix)) or hasattr(theta, "shape"):
        rows = rows_of(theta)
        if rows and len(rows[0]) != 1 and len(rows) != 1:
            raise InvalidInputError(f"a parameter vector must be n x 1, got {len(rows)}x{len(rows[0])}")
        flat = [x for r in rows for x in r]
    else:
        flat = list(theta)
    k = join_kinds(*(scalar_kind(x) for x in flat)) if flat else EXACT
    return k, [convert(x, k) for x in flat]


@at_arb_precision
def identity(n: int, kind: str = EXACT) -> Any:
    one, zero = convert(1, kind), convert(0, kind)
    return pack([[one if i == j else zero for j in range(n)] for i in range(n)], kind)


@at_arb_precision
def kron(A: Any, B: Any) -> Any:
    """Kronecker product of exact / ball matrices (vec(A W B) = (A (x) B^T) vec W row-major)."""
    ka, ra = as_field_rows(A)
    kb, rb = as_field_rows(B)
    k = join_kinds(ka, kb)
    ra = [[convert(x, k) for x in r] for r in ra]
    rb = [[convert(x, k) for x in r] for r in rb]
    out = [[ra[i][j] * rb[p][q] for j in range(len(ra[0])) for q in range(len(rb[0]))]
           for i in range(len(ra)) for p in range(len(rb))]
    return pack(out, k)


@at_arb_precision
def block_diag(blocks: Sequence[Any]) -> Any:
    """Block-diagonal matrix of square exact / ball blocks."""
    conv = [as_field_rows(b) for b in blocks]
    k = join_kinds(*(c[0] for c in conv))
    n = sum(len(r) for _, r in conv)
    zero = convert(0, k)
    out = [[zero] * n for _ in range(n)]
    o = 0
    for _, rows in conv:
        for i, r in enumerate(rows):
            for j, x in enumerate(r):
                out[o + i][o + j] = convert(x, k)
        o += len(rows)
    return pack(out, k)


def max_abs_entry(M: Any) -> tuple[mpmath.mpf | Fraction, mpmath.mpf]:
    """(max |entry| of M, rigorous error). Exact matrices: a Fraction and error 0. Ball
    matrices: max |midpoint| and the largest (|mid| + radius) - |mid| allowance, so the true
    max |entry| lies within [value - err, value + err]."""
    kind, rows = as_field_rows(M)
    if kind == EXACT:
        return max((abs(to_fraction(x)) for r in rows for x in r), default=Fraction(0)), mpmath.mpf(0)
    best, err = mpmath.mpf(0), mpmath.mpf(0)
    for r in rows:
        for x in r:
            best = max(best, abs(arb_to_mpf(x)))
            err = max(err, arb_radius(x))
    return best, err


# ---------------------------------------------------------------- certified spectra
def _frob_upper_robust(M: flint.arb_mat) -> mpmath.mpf:
    """Upper bound of the Frobenius norm of a ball matrix: sqrt of the sum of the exact
    upper bounds of |m_ij|^2 (no ball of the sum straddles 0, so sqrt never returns NaN)."""
    s = flint.arb(0)
    for i in range(M.nrows()):
        for j in range(M.ncols()):
            u = flint.arb(abs(M[i, j]).upper())
            s = flint.arb((s + u * u).upper())
    return arb_to_mpf(flint.arb(s.sqrt().upper()))


def _recertify(H: Any, e: SymEig) -> SymEig:
    """The sym_eig residual enclosure (|lambda_k - lam_k| <= ||E||_F + ||F||_F |lam_k|,
    E = H - Q diag(lam) Q^T, F = Q^T Q - I) recomputed with ``_frob_upper_robust``; used when
    sym_eig's own Frobenius bound is NaN (its arb sqrt of a sum of squares whose ball
    contains 0, e.g. for an exactly orthogonal eigenvector matrix of a diagonal matrix)."""
    n = len(e.values)
    old = flint.ctx.prec
    flint.ctx.prec = max(old, int(mpmath.mp.prec) + 64)
    try:
        if isinstance(H, flint.fmpq_mat):
            Ha = flint.arb_mat(H)
        else:
            Ha = flint.arb_mat([[to_arb(H[i, j]) for j in range(n)] for i in range(n)])
        Qa = flint.arb_mat([[to_arb(e.vectors[i, j]) for j in range(n)] for i in range(n)])
        La = flint.arb_mat([[to_arb(e.values[i]) if i == j else flint.arb(0) for j in range(n)] for i in range(n)])
        E = Ha - Qa * La * Qa.transpose()
        F = Qa.transpose() * Qa - flint.arb_mat([[1 if i == j else 0 for j in range(n)] for i in range(n)])
        ef, ff = _frob_upper_robust(E), _frob_upper_robust(F)
    finally:
        flint.ctx.prec = old
    if not ff < 1:
        raise PrecisionError("eigenvector matrix too far from orthogonal to certify; raise mp.dps")
    return SymEig(e.values, e.vectors, [ef + ff * abs(x) for x in e.values], e.dps)


def _sym_eig(H: Any, name: str) -> SymEig:
    """linalg.sym_eig, re-certified by ``_recertify`` where its radius came out NaN."""
    e = sym_eig(H, name)
    if all(mpmath.isfinite(r) for r in e.radius):
        return e
    if not isinstance(H, (flint.fmpq_mat, mpmath.matrix)):
        H = mp_matrix(H)
    return _recertify(H, e)


@at_arb_precision
def certified_spectrum(M: Any, name: str = "H") -> SymEig:
    """Certified eigenvalues of a symmetric exact or ball matrix (current mpmath precision).

    Exact / mpmath input: ``linalg.sym_eig``. Ball input: sym_eig of the (exactly
    symmetric) midpoint matrix, each radius enlarged by an upper bound of the Frobenius norm
    of the radius matrix (Weyl: |lambda_k(M) - lambda_k(mid)| <= ||M - mid||_2)."""
    if isinstance(M, flint.arb_mat):
        n = M.nrows()
        mid = mpmath.matrix(n, n)
        with arb_precision():
            for i in range(n):
                for j in range(n):
                    mid[i, j] = arb_to_mpf(M[i, j])
            rad_f = _frob_upper_robust(flint.arb_mat([[M[i, j].rad() for j in range(n)] for i in range(n)]))
        e = _sym_eig(mid, name)
        return SymEig(e.values, e.vectors, [r + rad_f for r in e.radius], e.dps)
    return _sym_eig(M, name)


def exact_inertia(M: Any) -> tuple[int, int, int]:
    """(positive, zero, negative) eigenvalue counts of an exact symmetric rational matrix.

    The characteristic polynomial of a symmetric matrix has only real roots, so Descartes'
    rule of signs is exact: #positive roots = sign changes of its coefficients, #negative =
    sign changes of p(-x), #zero = the multiplicity of the root 0."""
    _, rows = as_field_rows(M, EXACT)
    A = pack(rows, EXACT)
    coeffs = [to_fraction(c) for c in A.charpoly().coeffs()]  # ascending powers

    def changes(cs: list[Fraction]) -> int:
        signs = [c > 0 for c in cs if c != 0]
        return sum(1 for a, b in zip(signs, signs[1:]) if a != b)

    zero = next(i for i, c in enumerate(coeffs) if c != 0)
    neg = changes([c * (-1) ** i for i, c in enumerate(coeffs)])
    return changes(coeffs), zero, neg


# ---------------------------------------------------------------- polynomials in t
def _padd(p: list, q: list) -> list:
    if len(p) < len(q):
        p, q = q, p
    return [a + (q[i] if i < len(q) else 0) for i, a in enumerate(p)]


def _pmul(p: list, q: list) -> list:
    out = [p[0] * 0] * (len(p) + len(q) - 1)
    for i, a in enumerate(p):
        for j, b in enumerate(q):
            out[i + j] = out[i + j] + a * b
    return out


# ---------------------------------------------------------------- the chain network
@dataclass(frozen=True)
class LayerSpec:
    """One layer z = W a + b followed by ``activation`` ("linear" or "relu").

    A frozen layer holds its fixed weight (n_out x n_in, no bias) and contributes no
    parameters; ``structure`` ("dense" or "monomial") says how many of its entries an
    implementation must store (n_out n_in, or n_out for a permutation times a diagonal)."""

    n_in: int
    n_out: int
    bias: bool = False
    activation: str = "linear"
    frozen: Any = None
    structure: str = "dense"

    @property
    def trainable(self) -> bool:
        return self.frozen is None

    @property
    def n_params(self) -> int:
        return self.n_out * (self.n_in + (1 if self.bias else 0)) if self.trainable else 0

    @property
    def stored_entries(self) -> int:
        """Entries a frozen layer stores (its cost as extra parameters)."""
        if self.trainable:
            return 0
        return self.n_out if self.structure == "monomial" else self.n_out * self.n_in


@dataclass(frozen=True)
class Slot:
    """Where a trainable layer's parameters sit in theta."""

    layer: int
    offset: int
    n_out: int
    n_in: int
    bias: bool

    @property
    def size(self) -> int:
        return self.n_out * (self.n_in + (1 if self.bias else 0))

    @property
    def weight_size(self) -> int:
        return self.n_out * self.n_in


def _rational_data(A: Any, name: str, cols: int) -> list[list[flint.fmpq]]:
    rows = rows_of(A)
    if not rows:
        raise InvalidInputError(f"{name} has no rows")
    for i, r in enumerate(rows):
        if len(r) != cols:
            raise InvalidInputError(f"{name} row {i} has {len(r)} entries, expected {cols}")
    return [[to_fmpq(x) for x in r] for r in rows]


class ChainNet:
    """A chain of layers with squared loss on fixed rational data X (N x n_in), Y (N x n_out).

    All derivative methods take theta as a column matrix or a flat sequence (exact rationals
    or balls) and return exact (fmpq_mat) or ball (arb_mat) results accordingly."""

    def __init__(self, layers: Sequence[LayerSpec], X: Any, Y: Any, name: str = "chain") -> None:
        if not layers:
            raise InvalidInputError("a network needs at least one layer")
        for l, spec in enumerate(layers):
            if spec.activation not in ("linear", "relu"):
                raise InvalidInputError(f"layer {l}: unknown activation {spec.activation!r}")
            if spec.n_in < 1 or spec.n_out < 1:
                raise InvalidInputError(f"layer {l}: dimensions must be >= 1, got {spec.n_out}x{spec.n_in}")
            if l and layers[l - 1].n_out != spec.n_in:
                raise InvalidInputError(
                    f"layer {l} expects {spec.n_in} inputs but layer {l - 1} gives {layers[l - 1].n_out}")
            if not spec.trainable:
                if spec.bias:
                    raise InvalidInputError(f"frozen layer {l} cannot have a bias")
                fr = rows_of(spec.frozen)
                if len(fr) != spec.n_out or any(len(r) != spec.n_in for r in fr):
                    raise InvalidInputError(f"frozen layer {l} must be {spec.n_out}x{spec.n_in}")
        if layers[-1].activation != "linear":
            raise InvalidInputError("the last layer must be linear (the loss acts on z_{L-1})")
        self.layers = list(layers)
        self.name = name
        self.n_in, self.n_out = layers[0].n_in, layers[-1].n_out
        self.X = _rational_data(X, "X", self.n_in)
        self.Y = _rational_data(Y, "Y", self.n_out)
        if len(self.X) != len(self.Y):
            raise InvalidInputError(f"X has {len(self.X)} samples but Y has {len(self.Y)}")
        self.N = len(self.X)
        self.slots: list[Slot] = []
        off = 0
        for l, spec in enumerate(layers):
            if spec.trainable:
                self.slots.append(Slot(l, off, spec.n_out, spec.n_in, spec.bias))
                off += spec.n_params
        self.n_params = off
        # parameter index -> (chain layer, row i, input column j); j == n_in is the bias
        self._pmap: list[tuple[int, int, int]] = []
        for s in self.slots:
            self._pmap += [(s.layer, i, j) for i in range(s.n_out) for j in range(s.n_in)]
            if s.bias:
                self._pmap += [(s.layer, i, s.n_in) for i in range(s.n_out)]
        self._frozen_cache: dict[tuple[int, str, int], list[list[Any]]] = {}

    def __repr__(self) -> str:
        return f"{self.name}({' -> '.join(str(s.n_out) for s in self.layers)}; N={self.N}, n_params={self.n_params})"

    # ------------------------------------------------------------ parameters
    def _theta(self, theta: Any) -> tuple[str, list[Any]]:
        kind, flat = as_vector(theta)
        if len(flat) != self.n_params:
            raise InvalidInputError(f"{self.name} has {self.n_params} parameters, got a vector of {len(flat)}")
        if kind == EXACT and any(not s.trainable and matrix_kind(rows_of(s.frozen)) == BALL for s in self.layers):
            kind, flat = BALL, [to_arb(x) for x in flat]
        return kind, flat

    def _weights(self, kind: str, flat: list[Any]) -> list[tuple[list[list[Any]], list[Any] | None]]:
        """Per chain layer: (W rows, bias or None) in the field ``kind``."""
        out = []
        for l, spec in enumerate(self.layers):
            if spec.trainable:
                s = next(sl for sl in self.slots if sl.layer == l)
                W = [flat[s.offset + i * s.n_in: s.offset + (i + 1) * s.n_in] for i in range(s.n_out)]
                b = flat[s.offset + s.weight_size: s.offset + s.size] if s.bias else None
                out.append((W, b))
            else:
                key = (l, kind, flint.ctx.prec)
                if key not in self._frozen_cache:
                    self._frozen_cache[key] = [[convert(x, kind) for x in r] for r in rows_of(spec.frozen)]
                out.append((self._frozen_cache[key], None))
        return out

    @at_arb_precision
    def unflatten(self, theta: Any) -> list[tuple[Any, Any]]:
        """[(W_l, b_l or None)] for the trainable layers, as exact / ball matrices (b a column)."""
        kind, flat = self._theta(theta)
        ws = self._weights(kind, flat)
        return [(pack(ws[s.layer][0], kind), column(ws[s.layer][1], kind) if s.bias else None)
                for s in self.slots]

    @at_arb_precision
    def flatten(self, params: Sequence[tuple[Any, Any]]) -> Any:
        """theta (column) from [(W_l, b_l or None)] for the trainable layers."""
        if len(params) != len(self.slots):
            raise InvalidInputError(f"{self.name} has {len(self.slots)} trainable layers, got {len(params)}")
        flat: list[Any] = []
        for s, (W, b) in zip(self.slots, params):
            rows = rows_of(W)
            if len(rows) != s.n_out or any(len(r) != s.n_in for r in rows):
                raise InvalidInputError(f"layer {s.layer}: W must be {s.n_out}x{s.n_in}")
            flat += [x for r in rows for x in r]
            if s.bias:
                if b is None:
                    raise InvalidInputError(f"layer {s.layer} needs a bias")
                bb = [x for r in rows_of(b) for x in r] if not isinstance(b, list) else list(b)
                if len(bb) != s.n_out:
                    raise InvalidInputError(f"layer {s.layer}: bias must have {s.n_out} entries, got {len(bb)}")
                flat += bb
        kind, flat = as_vector(flat)
        return column(flat, kind)

    # ------------------------------------------------------------ forward pass
    def _mask(self, z: Any, kind: str, l: int, k: int, i: int, strict: bool = True) -> int | None:
        """1 if z > 0, 0 if z < 0; at z == 0 exactly: ReluKinkError when derivatives are
        needed (``strict``), else 0 (relu(0) = 0 is a fine value). A ball containing 0 is a
        PrecisionError when strict, else None (the value is then enclosed by (z + |z|) / 2)."""
        if kind == EXACT:
            if z == 0 and not strict:
                return 0
            if z == 0:
                raise ReluKinkError(f"ReLU kink: pre-activation of unit {i} in layer {l} is exactly 0 on sample {k}")
            return 1 if z > 0 else 0
        if z > 0:
            return 1
        if z < 0:
            return 0
        if z.is_exact() and z == 0:
            if not strict:
                return 0
            raise ReluKinkError(f"ReLU kink: pre-activation of unit {i} in layer {l} is exactly 0 on sample {k}")
        if not strict:
            return None
        raise PrecisionError(f"cannot decide the sign of pre-activation {z} (unit {i}, layer {l}, sample {k})")

    def _forward(self, ws, x: list[Any], kind: str, k: int = -1, strict: bool = True):
        """Inputs a~_l (augmented by 1 when layer l has a bias), masks and the output."""
        a_aug, masks = [], []
        a = x
        for l, (spec, (W, b)) in enumerate(zip(self.layers, ws)):
            a_aug.append(a + [convert(1, kind)] if spec.bias else a)
            z = [sum((W[i][j] * a[j] for j in range(spec.n_in)), convert(0, kind)) + (b[i] if b is not None else 0)
                 for i in range(spec.n_out)]
            if spec.activation == "relu":
                m = [self._mask(zi, kind, l, k, i, strict) for i, zi in enumerate(z)]
                a = [(zi + abs(zi)) / 2 if mi is None else zi if mi else convert(0, kind) for zi, mi in zip(z, m)]
                masks.append(m)
            else:
                a = z
                masks.append(None)
        return a_aug, masks, a

    def _samples(self, kind: str) -> list[tuple[list[Any], list[Any]]]:
        return [([convert(v, kind) for v in x], [convert(v, kind) for v in y]) for x, y in zip(self.X, self.Y)]

    @at_arb_precision
    def function(self, theta: Any, x: Sequence[Any]) -> list[Any]:
        """f(x; theta) for one input x (list of n_in numbers)."""
        kind, flat = self._theta(theta)
        if len(x) != self.n_in:
            raise InvalidInputError(f"input must have {self.n_in} entries, got {len(x)}")
        return self._forward(self._weights(kind, flat), [convert(v, kind) for v in x], kind, strict=False)[2]

    @at_arb_precision
    def outputs(self, theta: Any) -> list[list[Any]]:
        """f(x_k; theta) for every sample."""
        kind, flat = self._theta(theta)
        ws = self._weights(kind, flat)
        return [self._forward(ws, x, kind, k, strict=False)[2] for k, (x, _) in enumerate(self._samples(kind))]

    @at_arb_precision
    def hidden(self, theta: Any) -> list[list[Any]]:
        """h_k = the input of the last layer for every sample (post-activation)."""
        kind, flat = self._theta(theta)
        ws = self._weights(kind, flat)
        out = []
        for k, (x, _) in enumerate(self._samples(kind)):
            a_aug = self._forward(ws, x, kind, k, strict=False)[0]
            out.append(a_aug[-1][: self.layers[-1].n_in])
        return out

    @at_arb_precision
    def loss(self, theta: Any) -> Any:
        """L = 1/(2N) sum_k ||f(x_k) - y_k||^2 (an fmpq or an arb ball)."""
        kind, flat = self._theta(theta)
        ws = self._weights(kind, flat)
        tot = convert(0, kind)
        for k, (x, y) in enumerate(self._samples(kind)):
            f = self._forward(ws, x, kind, k, strict=False)[2]
            tot += sum(((fo - yo) * (fo - yo) for fo, yo in zip(f, y)), convert(0, kind))
        return tot / (2 * self.N)

    # ------------------------------------------------------------ derivatives per sample
    def _sample_derivatives(self, ws, x, y, kind: str, k: int, order: int):
        """J (n_out x n), residual e, and the closures giving d^2 f and d^3 f entries."""
        a_aug, masks, f = self._forward(ws, x, kind, k)
        L = len(self.layers)
        zero, one = convert(0, kind), convert(1, kind)
        e = [fo - yo for fo, yo in zip(f, y)]
        # Left[l] = df/dz_l (n_out x r_l)
        Left: list[list[list[Any]] | None] = [None] * L
        Left[L - 1] = [[one if i == j else zero for j in range(self.n_out)] for i in range(self.n_out)]
        for l in range(L - 2, -1, -1):
            W = ws[l + 1][0]
            m = masks[l]
            nxt = Left[l + 1]
            Left[l] = [[sum((nxt[o][p] * W[p][i] for p in range(len(W))), zero) if (m is None or m[i]) else zero
                        for i in range(self.layers[l].n_out)] for o in range(self.n_out)]
        J = []
        for o in range(self.n_out):
            J.append([Left[l][o][i] * a_aug[l][j] for (l, i, j) in self._pmap])
        if order < 2:
            return J, e, None, None
        # G[(m, l)] = d h_m / d z_l (r_m x r_l), l <= m
        G: dict[tuple[int, int], list[list[Any]]] = {}
        for l in range(L):
            r = self.layers[l].n_out
            ml = masks[l]
            G[(l, l)] = [[(one if (ml is None or ml[i]) else zero) if i == j else zero for j in range(r)] for i in range(r)]
            for m in range(l + 1, L - 1):
                W = ws[m][0]
                mm = masks[m]
                prev = G[(m - 1, l)]
                G[(m, l)] = [[sum((W[i][p] * prev[p][j] for p in range(len(prev))), zero) if (mm is None or mm[i]) else zero
                              for j in range(r)] for i in range(self.layers[m].n_out)]

        def jin(m: int, l: int, q: int, i: int) -> Any:
            """d a~_{m-1}[q] / d z_l[i] (the bias input 1 does not depend on z_l)."""
            if q >= self.layers[m].n_in:
                return zero
            return G[(m - 1, l)][q][i]

        pm = self._pmap

        def d2(o: int, p: int, q: int) -> Any:
            (lp, ip, jp), (lq, iq, jq) = pm[p], pm[q]
            if lp == lq:
                return zero
            if lp > lq:
                (lp, ip, jp), (lq, iq, jq) = (lq, iq, jq), (lp, ip, jp)
            return Left[lq][o][iq] * jin(lq, lp, jq, ip) * a_aug[lp][jp]

        def d3(o: int, p: int, q: int, s: int) -> Any:
            trip = sorted((pm[p], pm[q], pm[s]))
            (l1, i1, j1), (l2, i2, j2), (l3, i3, j3) = trip
            if l1 == l2 or l2 == l3:
                return zero
            return Left[l3][o][i3] * jin(l3, l2, j3, i2) * jin(l2, l1, j2, i1) * a_aug[l1][j1]

        return J, e, d2, d3

    def _per_sample(self, theta: Any, order: int):
        kind, flat = self._theta(theta)
        ws = self._weights(kind, flat)
        return kind, [self._sample_derivatives(ws, x, y, kind, k, order) for k, (x, y) in enumerate(self._samples(kind))]

    @at_arb_precision
    def gradient(self, theta: Any) -> Any:
        """grad L = 1/N sum_k J_k^T e_k (column)."""
        with arb_precision():
            kind, per = self._per_sample(theta, 1)
            n, zero = self.n_params, convert(0, kind)
            g = [zero] * n
            for J, e, _, _ in per:
                for o in range(self.n_out):
                    for p in range(n):
                        g[p] += J[o][p] * e[o]
            return column([v / self.N for v in g], kind)

    @at_arb_precision
    def jacobian(self, theta: Any) -> Any:
        """Stacked Jacobian of the outputs, rows (sample k, output o) in that order."""
        with arb_precision():
            kind, per = self._per_sample(theta, 1)
            return pack([row for J, _, _, _ in per for row in J], kind)

    @at_arb_precision
    def gauss_newton(self, theta: Any) -> Any:
        """Gauss-Newton matrix G = 1/N sum_k J_k^T J_k (the Hessian minus the residual term)."""
        with arb_precision():
            kind, per = self._per_sample(theta, 1)
            return pack(self._jtj(per, kind), kind)

    def _jtj(self, per, kind: str) -> list[list[Any]]:
        n, zero = self.n_params, convert(0, kind)
        H = [[zero] * n for _ in range(n)]
        for J, _, _, _ in per:
            for o in range(self.n_out):
                Jo = J[o]
                for p in range(n):
                    if Jo[p] == 0:
                        continue
                    for q in range(p, n):
                        H[p][q] += Jo[p] * Jo[q]
        for p in range(n):
            for q in range(p, n):
                H[p][q] = H[p][q] / self.N
                H[q][p] = H[p][q]
        return H

    @at_arb_precision
    def hessian(self, theta: Any) -> Any:
        """H = 1/N sum_k (J_k^T J_k + sum_o e_ko d^2 f_ko) (exactly symmetric)."""
        with arb_precision():
            kind, per = self._per_sample(theta, 2)
            n = self.n_params
            H = self._jtj(per, kind)
            pm = self._pmap
            for _, e, d2, _ in per:
                for p in range(n):
                    for q in range(p + 1, n):
                        if pm[p][0] == pm[q][0]:
                            continue
                        v = sum((e[o] * d2(o, p, q) for o in range(self.n_out)), convert(0, kind))
                        H[p][q] += v / self.N
                        H[q][p] = H[p][q]
            return pack(H, kind)

    @at_arb_precision
    def third_derivative_tensor(self, theta: Any) -> list[list[list[Any]]]:
        """D^3 L as an n x n x n nested list (exact or balls); for tiny nets only."""
        with arb_precision():
            kind, per = self._per_sample(theta, 3)
            n, zero = self.n_params, convert(0, kind)
            T = [[[zero] * n for _ in range(n)] for _ in range(n)]
            layer = [pm[0] for pm in self._pmap]
            for a, b, c in itertools.combinations_with_replacement(range(n), 3):
                if layer[a] == layer[b] == layer[c]:
                    continue  # f is affine in each layer: every term vanishes
                v = zero
                for J, e, d2, d3 in per:
                    for o in range(self.n_out):
                        v += J[o][a] * d2(o, b, c) + J[o][b] * d2(o, a, c) + J[o][c] * d2(o, a, b)
                        v += e[o] * d3(o, a, b, c)
                v = v / self.N
                for i, j, k in set(itertools.permutations((a, b, c))):
                    T[i][j][k] = v
            return T

    # ------------------------------------------------------------ line polynomials
    @at_arb_precision
    def line_polynomial(self, theta: Any, u: Any) -> list[Any]:
        """Coefficients c_0..c_{2L} of L(theta + t u) as a polynomial in t (L layers; ReLU masks
        frozen at theta, which is exact for the Taylor coefficients at t = 0)."""
        with arb_precision():
            kind, flat = self._theta(theta)
            ku, uf = as_vector(u)
            if len(uf) != self.n_params:
                raise InvalidInputError(f"direction must have {self.n_params} entries, got {len(uf)}")
            kind = join_kinds(kind, ku)
            flat = [convert(v, kind) for v in flat]
            uf = [convert(v, kind) for v in uf]
            ws = self._weights(kind, flat)
            zero = convert(0, kind)
            # polynomial weights: trainable entries theta_p + t u_p
            pw = []
            for l, spec in enumerate(self.layers):
                W, b = ws[l]
                if spec.trainable:
                    s = next(sl for sl in self.slots if sl.layer == l)
                    Wp = [[[W[i][j], uf[s.offset + i * s.n_in + j]] for j in range(s.n_in)] for i in range(s.n_out)]
                    bp = [[b[i], uf[s.offset + s.weight_size + i]] for i in range(s.n_out)] if s.bias else None
                else:
                    Wp = [[[w] for w in r] for r in W]
                    bp = None
                pw.append((Wp, bp))
            total = [zero]
            for k, (x, y) in enumerate(self._samples(kind)):
                _, masks, _ = self._forward(ws, x, kind, k)
                a = [[v] for v in x]
                for l, spec in enumerate(self.layers):
                    Wp, bp = pw[l]
                    z = []
                    for i in range(spec.n_out):
                        acc = [zero]
                        for j in range(spec.n_in):
                            acc = _padd(acc, _pmul(Wp[i][j], a[j]))
                        if bp is not None:
                            acc = _padd(acc, bp[i])
                        z.append(acc)
                    if masks[l] is not None:
                        z = [zi if mi else [zero] for zi, mi in zip(z, masks[l])]
                    a = z
                for fo, yo in zip(a, y):
                    r = _padd(fo, [-yo])
                    total = _padd(total, _pmul(r, r))
            total += [zero] * (2 * len(self.layers) + 1 - len(total))  # pad to degree 2L
            return [c / (2 * self.N) for c in total]

    @at_arb_precision
    def directional_derivative(self, theta: Any, u: Any, order: int) -> Any:
        """D^k L(theta)[u, ..., u] = k! c_k of the line polynomial."""
        c = self.line_polynomial(theta, u)
        return c[order] * math.factorial(order) if order < len(c) else c[0] * 0

    @at_arb_precision
    def third_derivative_action(self, theta: Any, u: Any, v: Any, w: Any) -> Any:
        """D^3 L(theta)[u, v, w] by polarization of the cubic coefficients:
        T(u,v,w) = 1/24 sum_{a,b = +-1} a b C(u + a v + b w), C(z) = D^3 L[z,z,z]."""
        ku, uf = as_vector(u)
        kv, vf = as_vector(v)
        kw, wf = as_vector(w)
        kind = join_kinds(ku, kv, kw)
        uf, vf, wf = ([convert(x, kind) for x in f] for f in (uf, vf, wf))
        tot = None
        for a, b in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
            z = [p + a * q + b * r for p, q, r in zip(uf, vf, wf)]
            term = self.directional_derivative(theta, z, 3) * (a * b)
            tot = term if tot is None else tot + term
        return tot / 24


# ---------------------------------------------------------------- the three architectures
class TwoLayerLinear(ChainNet):
    """f(x) = W_b (W_a x + b_a); theta = (vec W_a, b_a, vec W_b)."""

    def __init__(self, n_in: int, r: int, n_out: int, X: Any, Y: Any) -> None:
        super().__init__([LayerSpec(n_in, r, bias=True), LayerSpec(r, n_out)], X, Y, name="TwoLayerLinear")


class TwoLayerReLU(ChainNet):
    """f(x) = W_b relu(W_a x + b_a); theta = (vec W_a, b_a, vec W_b)."""

    def __init__(self, n_in: int, r: int, n_out: int, X: Any, Y: Any) -> None:
        super().__init__([LayerSpec(n_in, r, bias=True, activation="relu"), LayerSpec(r, n_out)], X, Y,
                         name="TwoLayerReLU")


class DeepLinear(ChainNet):
    """f(x) = W_L ... W_1 x (no biases); widths = [n_in, r_1, ..., n_out]; theta = (vec W_1, ..., vec W_L)."""

    def __init__(self, widths: Sequence[int], X: Any, Y: Any) -> None:
        if len(widths) < 2:
            raise InvalidInputError(f"DeepLinear needs at least [n_in, n_out], got {list(widths)}")
        super().__init__([LayerSpec(a, b) for a, b in zip(widths, widths[1:])], X, Y, name=f"DeepLinear{len(widths) - 1}")


# ---------------------------------------------------------------- exact optimizers
@at_arb_precision
def gd_iterates(net: ChainNet, theta0: Any, step: Any, steps: int, preconditioner: Any = None) -> list[Any]:
    """theta_{t+1} = theta_t - step * P grad L(theta_t), t < steps (P = I by default).
    Exact when theta0, step and P are rational, balls otherwise. Returns theta_0..theta_steps."""
    kind, flat = net._theta(theta0)
    if preconditioner is not None:
        pk, prow = as_field_rows(preconditioner)
        kind = join_kinds(kind, pk)
    kstep = scalar_kind(step)
    kind = join_kinds(kind, kstep)
    with arb_precision():
        th = column([convert(v, kind) for v in flat], kind)
        eta = convert(step, kind)
        P = pack([[convert(x, kind) for x in r] for r in prow], kind) if preconditioner is not None else None
        out = [th]
        for _ in range(steps):
            g = net.gradient(th)
            if kind != scalar_kind(g[0, 0]):
                g = column([convert(g[i, 0], kind) for i in range(g.nrows())], kind)
            d = P * g if P is not None else g
            th = th - d * eta
            out.append(th)
        return out


@at_arb_precision
def newton_iterates(net: ChainNet, theta0: Any, steps: int) -> list[Any]:
    """theta_{t+1} = theta_t - H(theta_t)^-1 grad L(theta_t), exact rationals only.
    Raises SingularHessianError when some H(theta_t) is exactly singular."""
    kind, flat = net._theta(theta0)
    if kind != EXACT:
        raise InvalidInputError("newton_iterates needs an exact rational starting point")
    th = column(flat, EXACT)
    out = [th]
    for t in range(steps):
        H = net.hessian(th)
        if H.det() == 0:
            raise SingularHessianError(f"the Hessian at Newton iterate {t} is singular (det = 0)")
        th = th - H.solve(net.gradient(th))
        out.append(th)
    return out
