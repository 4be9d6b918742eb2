"""Exact and certified linear algebra shared by every numerics module.

Matrices come in as nested sequences / numpy arrays / mpmath matrices / flint fmpq_mat of
int, Fraction, float or mpf. Exact work uses rationals (``fractions.Fraction`` or flint
``fmpq_mat``). Real spectra use mpmath ``eigsy`` at the working precision plus a rigorous
enclosure computed in arb ball arithmetic (python-flint):

    H = Q diag(lam) Q^T + E,  Q^T Q = I + F,
    |lambda_k(H) - lam_k| <= ||E||_F + ||F||_F |lam_k|   (Weyl + Ostrowski),

with ||E||_F and ||F||_F bounded from above in arb, so the radius is an upper bound on the
true error whatever rounding happened in ``eigsy``.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Sequence

import flint
import mpmath

from convrate.errors import InvalidInputError, NotPositiveDefiniteError, NotSymmetricError


def mp_matrix(A: Any) -> mpmath.matrix:
    """Convert to an mpmath matrix at the working precision (Fractions divided in mpf)."""
    if isinstance(A, mpmath.matrix):
        return A.copy()
    if isinstance(A, flint.fmpq_mat):
        rows = [[Fraction(int(x.p), int(x.q)) for x in row] for row in A.tolist()]
        return mp_matrix(rows)
    rows = [list(r) for r in (A.tolist() if hasattr(A, "tolist") else A)]
    out = mpmath.matrix(len(rows), len(rows[0]) if rows else 0)
    for i, r in enumerate(rows):
        for j, x in enumerate(r):
            if isinstance(x, Fraction):
                out[i, j] = mpmath.mpf(x.numerator) / x.denominator
            else:
                v = mpmath.mpf(x)
                if not mpmath.isfinite(v):
                    raise InvalidInputError(f"non-finite entry {x} at ({i}, {j})")
                out[i, j] = v
    return out


def _arb(x: Any) -> flint.arb:
    """Exact arb enclosure of an int / Fraction / float / mpf."""
    if isinstance(x, Fraction):
        return flint.arb(flint.fmpq(x.numerator, x.denominator))
    if isinstance(x, int):
        return flint.arb(flint.fmpz(x))
    v = mpmath.mpf(x)
    if v == 0:
        return flint.arb(0)
    sign, man, exp, _ = v._mpf_  # v = (-1)^sign * man * 2^exp exactly
    a = flint.arb(flint.fmpz(int(man))) * flint.arb(2) ** int(exp)
    return -a if sign else a


def arb_matrix(A: Any) -> flint.arb_mat:
    """Ball matrix containing A exactly (entries converted without rounding loss)."""
    if isinstance(A, flint.fmpq_mat):
        return flint.arb_mat(A)
    if isinstance(A, mpmath.matrix):
        rows = [[A[i, j] for j in range(A.cols)] for i in range(A.rows)]
    else:
        rows = [list(r) for r in (A.tolist() if hasattr(A, "tolist") else A)]
    return flint.arb_mat([[_arb(x) for x in r] for r in rows])


def _frob_upper(M: flint.arb_mat) -> mpmath.mpf:
    """Rigorous upper bound of the Frobenius norm of a ball matrix."""
    s = flint.arb(0)
    for i in range(M.nrows()):
        for j in range(M.ncols()):
            a = abs(M[i, j])
            s += a * a
    upper = flint.arb(s.upper()).sqrt().upper()  # a ball around 0 would give sqrt = nan
    return mpmath.mpf(upper.str(30, radius=False)) * (1 + mpmath.mpf(10) ** -25)


def require_symmetric(H: mpmath.matrix, name: str = "H") -> None:
    """Raise NotSymmetricError unless H is square and exactly symmetric."""
    if H.rows != H.cols:
        raise NotSymmetricError(f"{name} must be square, got {H.rows}x{H.cols}")
    for i in range(H.rows):
        for j in range(i + 1, H.cols):
            if H[i, j] != H[j, i]:
                raise NotSymmetricError(
                    f"{name} is not symmetric: {name}[{i},{j}] = {mpmath.nstr(H[i, j], 8)} "
                    f"!= {name}[{j},{i}] = {mpmath.nstr(H[j, i], 8)}")


@dataclass(frozen=True)
class SymEig:
    """Certified spectrum of a symmetric matrix: ascending eigenvalues ``values``,
    orthonormal (to working precision) eigenvectors as the columns of ``vectors``,
    and ``radius[k]`` with |lambda_k(H) - values[k]| <= radius[k] rigorously."""

    values: list[mpmath.mpf]
    vectors: mpmath.matrix
    radius: list[mpmath.mpf]
    dps: int

    @property
    def lambda_min(self) -> mpmath.mpf:
        return self.values[0]

    @property
    def lambda_max(self) -> mpmath.mpf:
        return self.values[-1]

    def interval(self, k: int) -> tuple[mpmath.mpf, mpmath.mpf]:
        return self.values[k] - self.radius[k], self.values[k] + self.radius[k]


def sym_eig(H: Any, name: str = "H") -> SymEig:
    """Eigen-decomposition of a symmetric matrix with a rigorous enclosure (see module doc)."""
    Hm = mp_matrix(H)
    require_symmetric(Hm, name)
    n = Hm.rows
    vals, Q = mpmath.eigsy(Hm)
    order = sorted(range(n), key=lambda k: vals[k])
    lam = [vals[k] for k in order]
    Qs = mpmath.matrix(n, n)
    for new, old in enumerate(order):
        for i in range(n):
            Qs[i, new] = Q[i, old]
    prec = int(mpmath.mp.prec) + 64
    old_prec = flint.ctx.prec
    flint.ctx.prec = prec
    try:
        Ha = arb_matrix(H) if not isinstance(H, mpmath.matrix) else arb_matrix(Hm)
        Qa = arb_matrix(Qs)
        La = flint.arb_mat([[_arb(lam[i]) if i == j else flint.arb(0) for j in range(n)] for i in range(n)])
        E = Ha - Qa * La * Qa.transpose()
        F = Qa.transpose() * Qa - flint.arb_mat([[1 if i == j else 0 for j in range(n)] for i in range(n)])
        e, f = _frob_upper(E), _frob_upper(F)
    finally:
        flint.ctx.prec = old_prec
    if f >= 1:
        raise ArithmeticError("eigenvector matrix too far from orthogonal to certify; raise mp.dps")
    return SymEig(lam, Qs, [e + f * abs(x) for x in lam], mpmath.mp.dps)


def require_spd(H: Any, name: str = "H") -> SymEig:
    """Certified spectrum of H, raising NotPositiveDefiniteError unless lambda_min(H) > 0
    is certified (the lower end of its enclosure is positive)."""
    eig = sym_eig(H, name)
    lo, _ = eig.interval(0)
    if lo <= 0:
        raise NotPositiveDefiniteError(
            f"{name} must be positive definite; its smallest eigenvalue is "
            f"{mpmath.nstr(eig.values[0], 6)} (+- {mpmath.nstr(eig.radius[0], 2)})")
    return eig


def singular_values(A: Any) -> list[mpmath.mpf]:
    """Singular values of A, descending, as sqrt of the eigenvalues of A^T A (or A A^T,
    whichever is smaller), at the working precision."""
    M = mp_matrix(A)
    G = M.T * M if M.cols <= M.rows else M * M.T
    vals = sym_eig(G).values
    return sorted((mpmath.sqrt(max(v, 0)) for v in vals), reverse=True)


def kron(A: Any, B: Any) -> mpmath.matrix:
    """Kronecker product A (x) B; with row-major vec, vec(A W B) = (A (x) B^T) vec(W)."""
    A, B = mp_matrix(A), mp_matrix(B)
    out = mpmath.matrix(A.rows * B.rows, A.cols * B.cols)
    for i in range(A.rows):
        for j in range(A.cols):
            a = A[i, j]
            if a == 0:
                continue
            for k in range(B.rows):
                for m in range(B.cols):
                    out[i * B.rows + k, j * B.cols + m] = a * B[k, m]
    return out


def frac_matrix(rows: Sequence[Sequence[Any]]) -> list[list[Fraction]]:
    """Nested lists of Fractions (exact) from ints / Fractions / floats (floats exactly)."""
    return [[x if isinstance(x, Fraction) else Fraction(x) for x in r] for r in rows]
