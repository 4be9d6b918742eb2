"""The local quadratic model q(e) = 1/2 e^T H e, H > 0, e = theta - theta*, held EXACTLY.

Every finite int / Fraction / float / mpmath mpf / flint fmpq is a rational number (floats and
mpf are dyadic), so a ``Quadratic`` stores H and e_0 exactly as flint ``fmpq_mat``: nothing is
rounded on the way in, and everything that is rational downstream (losses, gradients, exact
iterations, the defended problem H' = T^-T H T^-1, e_0' = T e_0) is computed without error.

Two forms:
- explicit: ``Quadratic(H, e0)`` with H symmetric positive definite (checked exactly by the
  signs of the pivots of a rational LDL^T factorization; the error names the smallest
  eigenvalue, certified by ``numerics.linalg.sym_eig``);
- spectral: ``Quadratic.from_spectrum(lambdas, c)``, H = diag(lambdas) in its own eigenbasis
  and e_0 = c, so lambda_i and c_i^2 are known exactly. Closed forms on this form are exact
  and O(n).
Units: H in loss per parameter^2, e in parameter units, q in loss units.
"""
from __future__ import annotations

from fractions import Fraction
from functools import cached_property
from numbers import Integral
from typing import Any, Sequence

import flint
import mpmath
from flint import arb, fmpq, fmpq_mat, fmpz

from convrate.errors import (InvalidInputError, NotPositiveDefiniteError, NotSymmetricError,
                             SingularReparameterizationError)
from convrate.numerics.linalg import SymEig, sym_eig

__all__ = ["Quadratic", "to_fmpq", "fmpq_matrix", "fmpq_column", "fmpq_to_fraction",
           "arb_to_mpf", "arb_prec", "mpf_enclosure_to_arb"]


# ---------------------------------------------------------------- exact conversions
def to_fmpq(x: Any, what: str = "value") -> fmpq:
    """Exact rational value of an int / Fraction / float / mpf / fmpq / numpy scalar / 'p/q' string.

    Raises InvalidInputError on NaN, infinity or anything not a real number."""
    if isinstance(x, fmpq):
        return x
    if isinstance(x, fmpz):
        return fmpq(x)
    if isinstance(x, bool):
        return fmpq(int(x))
    if isinstance(x, Integral):
        return fmpq(int(x))
    if isinstance(x, Fraction):
        return fmpq(x.numerator, x.denominator)
    if isinstance(x, str):
        try:
            f = Fraction(x)
        except (ValueError, ZeroDivisionError) as exc:
            raise InvalidInputError(f"{what} {x!r} is not a rational number") from exc
        return fmpq(f.numerator, f.denominator)
    if isinstance(x, mpmath.mpf):
        if not mpmath.isfinite(x):
            raise InvalidInputError(f"{what} must be finite, got {x}")
        sign, man, exp, _ = x._mpf_
        v = fmpq(int(man)) * (fmpq(2) ** exp if exp >= 0 else fmpq(1, 2 ** (-exp)))
        return -v if sign else v
    if hasattr(x, "item") and not isinstance(x, (list, tuple)):  # numpy scalar / 0-d array
        try:
            x = x.item()
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"{what} {x!r} is not a real number") from exc
        return to_fmpq(x, what)
    if isinstance(x, float):
        if x != x or x in (float("inf"), float("-inf")):
            raise InvalidInputError(f"{what} must be finite, got {x}")
        f = Fraction(x)
        return fmpq(f.numerator, f.denominator)
    raise InvalidInputError(f"{what} {x!r} is not a real number")


def fmpq_to_fraction(x: fmpq) -> Fraction:
    return Fraction(int(x.p), int(x.q))


def _rows(A: Any, name: str) -> list[list[Any]]:
    if isinstance(A, fmpq_mat):
        return A.tolist()
    if isinstance(A, mpmath.matrix):
        return [[A[i, j] for j in range(A.cols)] for i in range(A.rows)]
    rows = A.tolist() if hasattr(A, "tolist") else A
    try:
        rows = [list(r) for r in rows]
    except TypeError as exc:
        raise InvalidInputError(f"{name} must be a matrix (nested sequence), got {type(A).__name__}") from exc
    if rows and len({len(r) for r in rows}) != 1:
        raise InvalidInputError(f"{name} has rows of different lengths {sorted({len(r) for r in rows})}")
    return rows


def fmpq_matrix(A: Any, name: str = "matrix") -> fmpq_mat:
    """Exact rational matrix from nested sequences / numpy / mpmath / fmpq_mat."""
    if isinstance(A, fmpq_mat):
        return A
    rows = _rows(A, name)
    if not rows or not rows[0]:
        raise InvalidInputError(f"{name} is empty")
    return fmpq_mat([[to_fmpq(x, f"{name}[{i},{j}]") for j, x in enumerate(r)] for i, r in enumerate(rows)])


def fmpq_column(v: Any, name: str = "vector") -> fmpq_mat:
    """Exact rational column vector (n x 1) from a sequence or an n x 1 / 1 x n matrix."""
    if isinstance(v, fmpq_mat):
        if v.ncols() == 1:
            return v
        if v.nrows() == 1:
            return v.transpose()
        raise InvalidInputError(f"{name} must be a vector, got a {v.nrows()}x{v.ncols()} matrix")
    items = v.tolist() if hasattr(v, "tolist") else list(v)
    flat = []
    for x in items:
        if isinstance(x, (list, tuple)):
            if len(x) != 1:
                raise InvalidInputError(f"{name} must be a vector")
            x = x[0]
        flat.append(x)
    if not flat:
        raise InvalidInputError(f"{name} is empty")
    return fmpq_mat([[to_fmpq(x, f"{name}[{i}]")] for i, x in enumerate(flat)])


# ---------------------------------------------------------------- arb helpers
class arb_prec:
    """Context manager setting flint's working precision (bits) for arb ball arithmetic."""

    def __init__(self, bits: int) -> None:
        self.bits = int(bits)

    def __enter__(self) -> "arb_prec":
        self._old = flint.ctx.prec
        flint.ctx.prec = self.bits
        return self

    def __exit__(self, *exc: object) -> None:
        flint.ctx.prec = self._old


def arb_to_mpf(x: arb) -> tuple[mpmath.mpf, mpmath.mpf]:
    """(midpoint, radius) of a ball as mpf at the current mpmath precision, the radius enlarged
    by the rounding of the midpoint conversion, so [mid - rad, mid + rad] still contains x."""
    if not x.is_finite():
        raise ArithmeticError(f"ball {x} is not finite")
    man, exp = x.mid().man_exp()
    mid = mpmath.mpf((int(man), int(exp))) if man != 0 else mpmath.mpf(0)
    rman, rexp = x.rad().man_exp()
    rad = mpmath.mpf((int(rman), int(rexp))) if rman != 0 else mpmath.mpf(0)
    rad = rad * (1 + mpmath.mpf(2) ** (8 - mpmath.mp.prec)) + abs(mid) * mpmath.mpf(2) ** (2 - mpmath.mp.prec)
    return mid, rad


def mpf_enclosure_to_arb(mid: mpmath.mpf, rad: mpmath.mpf) -> arb:
    """The ball [mid - rad, mid + rad] (both exact dyadics) as an arb."""
    m = to_fmpq(mid)
    r = to_fmpq(abs(rad))
    return arb(m - r).union(arb(m + r)) if r != 0 else arb(m)


# ---------------------------------------------------------------- exact checks
def _is_symmetric(H: fmpq_mat) -> tuple[int, int] | None:
    n = H.nrows()
    for i in range(n):
        for j in range(i + 1, n):
            if H[i, j] != H[j, i]:
                return i, j
    return None


def ldl_pivots(H: fmpq_mat) -> list[fmpq]:
    """Pivots d_1..d_n of the exact symmetric Gaussian elimination of H, stopping at the first
    nonpositive one. H (symmetric) is positive definite iff all n pivots are positive
    (d_k = det H_[1..k] / det H_[1..k-1], Sylvester's criterion)."""
    n = H.nrows()
    A = [[H[i, j] for j in range(n)] for i in range(n)]
    piv: list[fmpq] = []
    for k in range(n):
        d = A[k][k]
        piv.append(d)
        if d <= 0:
            return piv
        for i in range(k + 1, n):
            if A[i][k] == 0:
                continue
            f = A[i][k] / d
            row_k, row_i = A[k], A[i]
            for j in range(k + 1, n):
                if row_k[j] != 0:
                    row_i[j] -= f * row_k[j]
    return piv


def require_spd_exact(H: fmpq_mat, name: str = "H") -> None:
    """Raise NotSymmetricError / NotPositiveDefiniteError unless the rational matrix H is
    exactly symmetric positive definite. The PD decision is exact (pivot signs); the message
    names the smallest eigenvalue from the certified ``sym_eig`` enclosure."""
    if H.nrows() != H.ncols():
        raise NotSymmetricError(f"{name} must be square, got {H.nrows()}x{H.ncols()}")
    bad = _is_symmetric(H)
    if bad is not None:
        i, j = bad
        raise NotSymmetricError(f"{name} is not symmetric: {name}[{i},{j}] = {H[i, j]} != {name}[{j},{i}] = {H[j, i]}")
    piv = ldl_pivots(H)
    if len(piv) == H.nrows() and piv[-1] > 0:
        return
    with mpmath.workdps(30):
        eig = sym_eig(H, name)
        lam, rad = eig.values[0], eig.radius[0]
        raise NotPositiveDefiniteError(
            f"{name} must be positive definite; its smallest eigenvalue is {mpmath.nstr(lam, 8)} "
            f"(+- {mpmath.nstr(rad, 2)}; exact pivot {len(piv)} is {piv[-1]})")


# ---------------------------------------------------------------- the problem
class Quadratic:
    """q(e) = 1/2 e^T H e with H > 0 exact rational, start e_0 exact rational.

    ``H`` (fmpq_mat n x n), ``e0`` (fmpq_mat n x 1), ``n``, ``q0`` = q(e_0) (fmpq).
    ``spectral`` is True when built by ``from_spectrum`` (H diagonal, its eigenbasis the
    coordinate basis); ``lambdas`` then holds the exact eigenvalues and ``c`` = e_0.
    """

    def __init__(self, H: Any, e0: Any, *, _checked: bool = False, _spectral: bool = False) -> None:
        Hq = fmpq_matrix(H, "H")
        eq = fmpq_column(e0, "e0")
        if not _checked:
            require_spd_exact(Hq, "H")
            if eq.nrows() != Hq.nrows():
                raise InvalidInputError(f"e0 has length {eq.nrows()} but H is {Hq.nrows()}x{Hq.ncols()}")
        self.H: fmpq_mat = Hq
        self.e0: fmpq_mat = eq
        self.n: int = Hq.nrows()
        self.spectral: bool = _spectral

    # ---- constructors
    @classmethod
    def from_spectrum(cls, lambdas: Sequence[Any], c: Sequence[Any]) -> "Quadratic":
        """H = diag(lambdas) (its eigenbasis), e_0 = c: lambda_i > 0 and c_i exact rationals."""
        lam = [to_fmpq(x, f"lambdas[{i}]") for i, x in enumerate(lambdas)]
        cc = [to_fmpq(x, f"c[{i}]") for i, x in enumerate(c)]
        if not lam:
            raise InvalidInputError("lambdas is empty")
        for i, x in enumerate(lam):
            if x <= 0:
                raise NotPositiveDefiniteError(f"H must be positive definite; eigenvalue lambdas[{i}] = {x} is not positive")
        if len(cc) != len(lam):
            raise InvalidInputError(f"c has length {len(cc)} but there are {len(lam)} eigenvalues")
        n = len(lam)
        H = fmpq_mat(n, n)
        for i, x in enumerate(lam):
            H[i, i] = x
        return cls(H, fmpq_mat([[x] for x in cc]), _checked=True, _spectral=True)

    # ---- spectral data
    @property
    def lambdas(self) -> list[fmpq]:
        """Exact eigenvalues (spectral form only)."""
        if not self.spectral:
            raise InvalidInputError("lambdas are exact only for a problem built by from_spectrum")
        return [self.H[i, i] for i in range(self.n)]

    @property
    def c(self) -> list[fmpq]:
        """Components of e_0 (in H's eigenbasis for the spectral form)."""
        return [self.e0[i, 0] for i in range(self.n)]

    @cached_property
    def q0(self) -> fmpq:
        return self.loss(self.e0)

    @property
    def is_diagonal(self) -> bool:
        H = self.H
        return self.spectral or all(H[i, j] == 0 for i in range(self.n) for j in range(self.n) if i != j)

    # ---- values
    def loss(self, e: Any) -> Any:
        """q(e) = 1/2 e^T H e (exact for rational e; a ball for an arb_mat e)."""
        if isinstance(e, flint.arb_mat):
            return (e.transpose() * flint.arb_mat(self.H) * e)[0, 0] / 2
        v = fmpq_column(e, "e")
        return (v.transpose() * self.H * v)[0, 0] / 2

    def gradient(self, e: Any) -> Any:
        """nabla q(e) = H e."""
        if isinstance(e, flint.arb_mat):
            return flint.arb_mat(self.H) * e
        return self.H * fmpq_column(e, "e")

    # ---- defense
    def reparameterize(self, T: Any) -> "Quadratic":
        """Defended problem q'(e') = q(T^-1 e'): H' = T^-T H T^-1, e_0' = T e_0 (exact).

        Raises SingularReparameterizationError when T is singular (exact rank over Q)."""
        Tq = fmpq_matrix(T, "T")
        if Tq.nrows() != self.n or Tq.ncols() != self.n:
            raise InvalidInputError(f"T must be {self.n}x{self.n}, got {Tq.nrows()}x{Tq.ncols()}")
        if Tq.det() == 0:
            raise SingularReparameterizationError(f"T is singular: exact rank {Tq.rank()} < {self.n}")
        Ti = Tq.inv()
        return Quadratic(Ti.transpose() * self.H * Ti, Tq * self.e0, _checked=True)

    # ---- certified spectrum
    def eig(self, dps: int = 40) -> SymEig:
        """Certified eigen-enclosure of H (``numerics.linalg.sym_eig`` at ``dps`` digits); for
        the spectral form the exact eigenvalues with radius 0."""
        key = ("eig", dps)
        cache = self.__dict__.setdefault("_eig_cache", {})
        if key not in cache:
            with mpmath.workdps(dps):
                if self.spectral:
                    vals = sorted(mpmath.mpf(int(x.p)) / int(x.q) for x in self.lambdas)
                    exact = all(x.q == 1 for x in self.lambdas)
                    rad = [mpmath.mpf(0) if exact else abs(v) * mpmath.mpf(2) ** (2 - mpmath.mp.prec) for v in vals]
                    cache[key] = SymEig(vals, mpmath.eye(self.n), rad, dps)
                else:
                    cache[key] = sym_eig(self.H, "H")
        return cache[key]

    def extreme_eigenvalues(self, rel: float = 1e-20) -> tuple[arb, arb]:
        """Balls containing lambda_min(H) and lambda_max(H), certified; the working precision
        of ``sym_eig`` is raised until lambda_min is known to relative accuracy ``rel``."""
        if self.spectral:
            lam = self.lambdas
            return arb(min(lam)), arb(max(lam))
        dps = 40
        while True:
            e = self.eig(dps)
            lo, hi = e.values[0], e.values[-1]
            if e.radius[0] <= rel * abs(lo) or dps >= 640:
                break
            dps *= 2
        with arb_prec(max(flint.ctx.prec, 4 * dps)):
            return (mpf_enclosure_to_arb(lo, e.radius[0]), mpf_enclosure_to_arb(hi, e.radius[-1]))

    def kappa_ball(self) -> arb:
        """Ball containing kappa(H) = lambda_max / lambda_min (certified)."""
        lo, hi = self.extreme_eigenvalues()
        return hi / lo

    def __repr__(self) -> str:
        kind = "spectral" if self.spectral else "explicit"
        return f"Quadratic({kind}, n={self.n}, q0={self.q0})"
