"""Krylov machinery in exact rational arithmetic: spectral measures, exact Lanczos, exact CG.

Spectral measure. Let A be self-adjoint for <x, y>_G = x^T G y (G > 0) and v a start vector.
Then for every function g,   <v, g(A) v>_G = sum_j m_j g(mu_j),
with mu_j the distinct eigenvalues of A whose eigenspace meets v ("active") and m_j > 0 the
G-mass of v's component there. Every linear iteration of this module is of that form:
  GD              A = H,           G = H, factor 1 - eta mu,   q_t = 1/2 sum m_j (1 - eta mu_j)^(2t)
  preconditioned  A = P H,         G = H, factor 1 - eta mu
  LM (damping D)  A = D^-1 H,      G = H, factor lam / (mu + lam)
  polynomial methods (GD schedules, heavy ball, Nesterov, CG): e_t = p_t(A) e_0 and
                  q_t = 1/2 sum_j m_j p_t(mu_j)^2.
The measure is computed EXACTLY: exact Lanczos (no normalization, so every quantity is
rational) gives the monic orthogonal polynomials p_0..p_k of the measure; p_k (degree k =
number of active eigenvalues) is the minimal polynomial of v for A. Its rational roots are
found exactly (flint), the others are isolated rigorously as arb balls (flint
``complex_roots``); the masses are the Christoffel numbers
    m(x) = 1 / sum_{j<k} p_j(x)^2 / h_j,   h_j = <u_j, u_j>_G,
a sum of positive terms, exact at rational roots and a certified ball at irrational ones.
Units: mu in the units of A's eigenvalues (curvature, or preconditioned curvature), m in loss
units times 2 (sum_j m_j = 2 q_0 for G = H).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from flint import arb, fmpq, fmpq_mat, fmpq_poly

from convrate.errors import InvalidInputError
from convrate.numerics.quadratic import arb_prec

__all__ = ["SpectralMeasure", "diagonal_measure", "lanczos_measure", "cg_run", "cg_losses",
           "cg_polynomial_minimum", "inner"]


def inner(x: fmpq_mat, y: fmpq_mat, G: fmpq_mat | None = None) -> fmpq:
    """<x, y>_G = x^T G y (exact); G = None is the Euclidean product."""
    if G is None:
        return (x.transpose() * y)[0, 0]
    return (x.transpose() * (G * y))[0, 0]


@dataclass
class SpectralMeasure:
    """mu = sum_j m_j delta_{mu_j} (see module doc).

    ``exact``: rational support points with exact masses, ascending.
    ``irrational``: monic fmpq_poly whose roots (simple, real, irrational) are the remaining
    support points (constant 1 when there are none).
    ``alphas, norms``: the Lanczos recurrence p_{j+1} = (x - a_j) p_j - (h_j/h_{j-1}) p_{j-1}
    and h_j, needed for the Christoffel masses of the irrational points.
    ``total`` = <v, v>_G = sum_j m_j exactly.
    """

    exact: tuple[tuple[fmpq, fmpq], ...]
    irrational: fmpq_poly
    alphas: tuple[fmpq, ...]
    norms: tuple[fmpq, ...]
    total: fmpq
    _balls: dict[int, list[tuple[arb, arb]]] = field(default_factory=dict, repr=False)

    @property
    def size(self) -> int:
        """Number of active eigenvalues (support points)."""
        return len(self.exact) + self.irrational.degree()

    @property
    def is_exact(self) -> bool:
        return self.irrational.degree() == 0

    def christoffel(self, x: Any) -> Any:
        """Mass at support point x: 1 / sum_{j<k} p_j(x)^2 / h_j (fmpq for rational x, arb for a ball)."""
        acc: Any = 0
        p_prev: Any = 0
        p: Any = 1
        for j, (a, h) in enumerate(zip(self.alphas, self.norms)):
            acc = acc + p * p / h
            b = h / self.norms[j - 1] if j > 0 else 0
            p_prev, p = p, (x - a) * p - b * p_prev
        return 1 / acc

    def irrational_points(self, prec: int) -> list[arb]:
        """Certified balls of the irrational support points at ``prec`` bits, ascending."""
        if self.irrational.degree() == 0:
            return []
        with arb_prec(prec):
            roots = self.irrational.complex_roots()
            out = []
            for z, mult in roots:
                if mult != 1 or not z.imag.contains(0):
                    raise ArithmeticError(f"support polynomial has a non-real or multiple root {z}")
                out.append(z.real)
        return sorted(out, key=lambda r: r.mid())

    def balls(self, prec: int) -> list[tuple[arb, arb]]:
        """All support points and masses as arb balls at ``prec`` bits (exact ones rounded outward)."""
        if prec not in self._balls:
            with arb_prec(prec):
                out = [(arb(mu), arb(m)) for mu, m in self.exact]
                for r in self.irrational_points(prec):
                    out.append((r, self.christoffel(r)))
            self._balls[prec] = out
        return self._balls[prec]

    def lambda_range(self, prec: int = 128) -> tuple[arb, arb]:
        """Balls of the smallest and largest active eigenvalue: the entries of ``balls(prec)`` with
        the smallest and largest midpoint (two support points closer than their balls' radii
        cannot be ordered by a certified comparison; their midpoints still order them)."""
        pts = [mu for mu, _ in self.balls(prec)]
        lo = min(pts, key=lambda b: b.mid())
        hi = max(pts, key=lambda b: b.mid())
        return lo, hi


def diagonal_measure(mu: Sequence[fmpq], m: Sequence[fmpq]) -> SpectralMeasure:
    """Exact measure of a diagonal operator: points mu_i with masses m_i (equal points merged,
    zero masses dropped)."""
    acc: dict[fmpq, fmpq] = {}
    for x, w in zip(mu, m, strict=True):
        if w < 0:
            raise InvalidInputError(f"negative mass {w} at {x}")
        if w != 0:
            acc[x] = acc.get(x, fmpq(0)) + w
    pts = tuple(sorted(acc.items(), key=lambda t: t[0]))
    total = sum((w for _, w in pts), fmpq(0))
    return SpectralMeasure(pts, fmpq_poly([1]), (), (), total)


def lanczos_measure(A: fmpq_mat, v: fmpq_mat, G: fmpq_mat | None = None) -> SpectralMeasure:
    """Exact spectral measure of (A, v) for the inner product <.,.>_G (see module doc).

    A must be G-self-adjoint (G A symmetric; checked exactly) with G > 0. Runs the unnormalized
    Lanczos recurrence u_{j+1} = A u_j - a_j u_j - b_j u_{j-1} in rationals until u_k = 0
    exactly, k <= n; the minimal polynomial p_k of v is then split into its rational linear
    factors (exact roots) and an irrational part."""
    n = A.nrows()
    GA = A if G is None else G * A
    for i in range(n):
        for j in range(i + 1, n):
            if GA[i, j] != GA[j, i]:
                raise InvalidInputError("operator is not self-adjoint for the given inner product")
    h0 = inner(v, v, G)
    if h0 == 0:
        return SpectralMeasure((), fmpq_poly([1]), (), (), fmpq(0))
    alphas: list[fmpq] = []
    norms: list[fmpq] = []
    x = fmpq_poly([0, 1])
    p_prev, p = fmpq_poly([0]), fmpq_poly([1])
    u_prev, u, h = None, v, h0
    for j in range(n):
        Au = A * u
        a = inner(Au, u, G) / h
        w = Au - u * a
        if j > 0:
            w = w - u_prev * (h / norms[-1])
        alphas.append(a)
        norms.append(h)
        p_next = (x - a) * p - (p_prev * (h / norms[-2]) if j > 0 else 0)
        p_prev, p = p, p_next
        hw = inner(w, w, G)
        if hw == 0:
            break
        u_prev, u, h = u, w, hw
    poly = p  # minimal polynomial of v, degree k = len(alphas)
    rational = [r for r, mult in poly.roots()]
    rest = poly
    for r in rational:
        rest, rem = divmod(rest, fmpq_poly([-r, 1]))
        if not rem.is_zero():
            raise ArithmeticError("exact division by a rational root failed")
    meas = SpectralMeasure((), rest, tuple(alphas), tuple(norms), h0)
    meas.exact = tuple(sorted(((r, meas.christoffel(r)) for r in rational), key=lambda t: t[0]))
    return meas


# ---------------------------------------------------------------- exact CG
def cg_run(H: fmpq_mat, e0: fmpq_mat, steps: int | None = None) -> list[fmpq_mat]:
    """Conjugate gradients on q(e) = 1/2 e^T H e from e_0, in exact rationals.

    r_0 = -H e_0, p_0 = r_0; alpha = r^T r / p^T H p; e <- e + alpha p; r <- r - alpha H p;
    beta = r_new^T r_new / r^T r; p <- r + beta p. Stops when r = 0 exactly (after at most
    n steps, as many as active eigenvalues); the iterate list is padded with the minimizer 0
    up to ``steps`` when given. Returns [e_0, e_1, ...].

    Cost: the exact iterates are rationals whose size grows roughly linearly with the step
    (and with the bits of the data): n = 20 takes ~0.3 s, n = 50 with float data ~1-2 min.
    Use it for small n; the other closed forms stay O(n log t)."""
    e = e0
    r = -(H * e)
    p = r
    rr = inner(r, r)
    out = [e]
    while rr != 0 and (steps is None or len(out) <= steps):
        Hp = H * p
        alpha = rr / inner(p, Hp)
        e = e + p * alpha
        r = r - Hp * alpha
        rr_new = inner(r, r)
        p = r + p * (rr_new / rr)
        rr = rr_new
        out.append(e)
    if steps is not None:
        while len(out) <= steps:
            out.append(e)
        out = out[: steps + 1]
    return out


def cg_losses(H: fmpq_mat, e0: fmpq_mat, steps: int | None = None) -> list[fmpq]:
    """[q_0, q_1, ...] of exact CG (see ``cg_run``)."""
    return [inner(e, H * e) / 2 for e in cg_run(H, e0, steps)]


def cg_polynomial_minimum(measure: SpectralMeasure, t: int) -> fmpq:
    """min over polynomials p with deg p <= t, p(0) = 1 of 1/2 sum_j m_j p(mu_j)^2, exactly.

    This is q_t of CG (CG minimizes the H-norm error over the Krylov space). Solved from the
    normal equations M a = -b, M_jk = sum m mu^(j+k), b_j = sum m mu^j (j, k = 1..t), whose
    minimum is sum m + a^T b. For t >= number of support points, p = prod_j (1 - x/mu_j) over the
    nonzero ones vanishes at all of them, so the minimum is half the mass at 0 (p(0) = 1 there),
    zero when 0 is not a support point (M would be singular once t exceeds the nonzero points).
    Needs an exact measure."""
    if not measure.is_exact:
        raise InvalidInputError("cg_polynomial_minimum needs a measure with rational support")
    pts = measure.exact
    if t >= len(pts):
        return sum((m for mu, m in pts if mu == 0), fmpq(0)) / 2
    if t == 0:
        return measure.total / 2
    M = fmpq_mat(t, t)
    b = fmpq_mat(t, 1)
    for j in range(1, t + 1):
        b[j - 1, 0] = sum((m * mu ** j for mu, m in pts), fmpq(0))
        for k in range(1, t + 1):
            M[j - 1, k - 1] = sum((m * mu ** (j + k) for mu, m in pts), fmpq(0))
    a = M.solve(-b)
    return (measure.total + inner(a, b)) / 2
