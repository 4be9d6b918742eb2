"""Direct tests of ``numerics.krylov`` against independent exact computations: the spectral
measure's moments sum_j m_j mu_j^i equal <v, A^i v>_G (which determine a k-point measure from
its first 2k moments), measures of H = Q diag(lambda) Q^T with a rational orthogonal Q equal the
diagonal measure of (lambda, (Q^T v)^2), exact CG iterates are the Galerkin solution on the
Krylov space, and the polynomial minimum at t = k - 1 has the Lagrange closed form
1 / sum_j L_j(0)^2 / m_j."""
from __future__ import annotations

from fractions import Fraction as F

import mpmath
import numpy as np
import pytest
from flint import arb, fmpq, fmpq_mat, fmpq_poly
from hypothesis import given
from hypothesis import strategies as st

from convrate.errors import InvalidInputError
from convrate.numerics.krylov import (SpectralMeasure, cg_losses, cg_polynomial_minimum, cg_run,
                                      diagonal_measure, inner, lanczos_measure)
from convrate.numerics.quadratic import arb_prec, arb_to_mpf, fmpq_column, fmpq_matrix, to_fmpq

_mat, _col = fmpq_matrix, fmpq_column
#: a symmetric rational orthogonal matrix (Q = Q^T = Q^-1)
Q3 = _mat([[F(1, 3), F(2, 3), F(2, 3)], [F(2, 3), F(1, 3), F(-2, 3)], [F(2, 3), F(-2, 3), F(1, 3)]])


def _diag(xs) -> fmpq_mat:
    n = len(xs)
    return _mat([[xs[i] if i == j else 0 for j in range(n)] for i in range(n)])


def _moment(A: fmpq_mat, v: fmpq_mat, G: fmpq_mat | None, i: int) -> fmpq:
    """<v, A^i v>_G computed by matrix powers (independent of the Lanczos recurrence)."""
    w = v
    for _ in range(i):
        w = A * w
    Gw = w if G is None else G * w
    return sum((v[r, 0] * Gw[r, 0] for r in range(v.nrows())), fmpq(0))


def _contains(ball: arb, val: mpmath.mpf) -> bool:
    """The ball contains the mpmath number ``val`` (``arb_to_mpf`` widens the radius by the
    rounding of the midpoint)."""
    mid, rad = arb_to_mpf(ball)
    return mid - rad <= val <= mid + rad


# ---------------------------------------------------------------- inner
def test_inner_euclidean_and_weighted() -> None:
    x, y = _col([1, 2]), _col([3, -1])
    assert inner(x, y) == 1  # 1*3 + 2*(-1)
    # x^T G y with a non-symmetric G tells x^T G y (= -1) from y^T G x (= 13)
    G = _mat([[1, 2], [0, 1]])
    assert inner(x, y, G) == -1
    assert inner(y, x, G) == 13


# ---------------------------------------------------------------- diagonal measure
def test_diagonal_measure_merges_sorts_and_drops_zero_masses() -> None:
    meas = diagonal_measure([fmpq(3), fmpq(1), fmpq(3), fmpq(2), fmpq(5)],
                            [fmpq(1), fmpq(7), fmpq(5), fmpq(0), fmpq(1, 2)])
    # points ascending (masses deliberately not monotone: 7, 6, 1/2), 2 with mass 0 dropped, 3 merged
    assert meas.exact == ((1, 7), (3, 6), (5, fmpq(1, 2)))
    assert meas.total == fmpq(27, 2) and isinstance(meas.total, fmpq)
    assert meas.size == 3 and meas.is_exact
    assert meas.irrational == fmpq_poly([1]) and meas.alphas == () and meas.norms == ()


def test_diagonal_measure_empty_and_errors() -> None:
    empty = diagonal_measure([], [])
    assert empty.exact == () and empty.total == 0 and isinstance(empty.total, fmpq) and empty.size == 0
    with pytest.raises(InvalidInputError, match="negative mass"):
        diagonal_measure([fmpq(1), fmpq(2)], [fmpq(1), fmpq(-1, 3)])
    with pytest.raises(ValueError):  # one mass per point
        diagonal_measure([fmpq(1), fmpq(2)], [fmpq(1)])


# ---------------------------------------------------------------- exact Lanczos
@given(st.lists(st.integers(1, 6), min_size=3, max_size=3), st.lists(st.integers(-3, 3), min_size=3, max_size=3),
       st.booleans())
def test_lanczos_measure_of_rotated_diagonal(lams: list[int], v: list[int], weighted: bool) -> None:
    """H = Q diag(lambda) Q^T (Q rational orthogonal, repeated eigenvalues allowed): the measure of
    (H, v) is the diagonal measure of (lambda, c^2), c = Q^T v, for G = I, and of (lambda,
    lambda c^2) for G = H -- exact points and masses, merged over repeated eigenvalues."""
    lam = [fmpq(x) for x in lams]
    H = Q3 * _diag(lam) * Q3
    vv = _col(v)
    c = Q3 * vv
    G = H if weighted else None
    meas = lanczos_measure(H, vv, G)
    w = [lam[i] if weighted else fmpq(1) for i in range(3)]
    ref = diagonal_measure(lam, [w[i] * c[i, 0] ** 2 for i in range(3)])
    assert meas.exact == ref.exact
    assert meas.total == ref.total == inner(vv, vv, G)
    assert meas.is_exact and meas.size == len(ref.exact) == len(meas.alphas) == len(meas.norms)


def _spd(seed: int, n: int) -> fmpq_mat:
    """B^T B + I for a random integer B with entries in -3..3: SPD, eigenvalues mostly irrational."""
    rng = np.random.default_rng(seed)
    B = fmpq_mat([[int(x) for x in row] for row in rng.integers(-3, 4, (n, n))])
    H = B.transpose() * B
    for i in range(n):
        H[i, i] += 1
    return H


@given(st.integers(0, 10**6), st.integers(2, 4), st.sampled_from(["I", "H", "D"]))
def test_lanczos_measure_moments(seed: int, n: int, kind: str) -> None:
    """For every G-self-adjoint A: sum_j m_j mu_j^i = <v, A^i v>_G for i = 0..2k (k support points;
    2k moments determine the measure). Dense integer H (mostly irrational spectra): G = I with
    A = H, G = H with A = H, and G = H with A = D^-1 H (D diagonal, not a multiple of I). The
    exact moments must lie in the 256-bit balls of the support points and masses."""
    H = _spd(seed, n)
    rng = np.random.default_rng(seed + 1)
    v = _col([int(x) or 1 for x in rng.integers(-3, 4, n)])
    if kind == "D":
        A = _diag([F(1, i + 1) for i in range(n)]) * H
        G = H
    else:
        A, G = H, (H if kind == "H" else None)
    meas = lanczos_measure(A, v, G)
    assert meas.size == len(meas.alphas) >= 1
    balls = meas.balls(256)
    assert len(balls) == meas.size
    with arb_prec(256):
        for i in range(2 * meas.size + 1):
            s = sum((m * mu ** i for mu, m in balls), arb(0))
            exact = _moment(A, v, G, i)
            assert s.overlaps(arb(exact)), (i, s, exact)
            assert s.rad() <= (abs(exact) + 1) * fmpq(1, 2**180)
        mids = [mu.mid() for mu, _ in balls[len(meas.exact):]]
        assert mids == sorted(mids)
    lo, hi = meas.lambda_range()  # at its own (default) precision: overlaps the extreme 256-bit balls
    by_mid = sorted((mu for mu, _ in balls), key=lambda b: b.mid())
    assert lo.overlaps(by_mid[0]) and hi.overlaps(by_mid[-1])
    assert meas.size == 1 or lo < hi


def test_lanczos_irrational_and_rational_support() -> None:
    """H = diag([[2, 1], [1, 1]], 5), v = (1, 0, 1), G = I: support 5 (mass 1, exact) and the roots
    of x^2 - 3x + 1, i.e. (3 -+ sqrt 5)/2, with masses 1/(1 + (mu - 2)^2) (squared first entry of
    the unit eigenvector (1, mu - 2)/|.|)."""
    H = _mat([[2, 1, 0], [1, 1, 0], [0, 0, 5]])
    meas = lanczos_measure(H, _col([1, 0, 1]))
    assert meas.exact == ((5, 1),)
    assert meas.irrational == fmpq_poly([1, -3, 1])
    assert meas.size == 3 and not meas.is_exact and meas.total == 2
    with mpmath.workdps(60):
        s5 = mpmath.sqrt(5)
        want = [(mu, 1 / (1 + (mu - 2) ** 2)) for mu in ((3 - s5) / 2, (3 + s5) / 2)]
        for prec in (64, 256):
            balls = meas.balls(prec)
            assert _contains(balls[0][0], 5) and _contains(balls[0][1], 1)
            pts = meas.irrational_points(prec)
            for (mu_b, m_b), r, (mu, m) in zip(balls[1:], pts, want, strict=True):
                for ball, val in ((mu_b, mu), (r, mu), (m_b, m)):
                    assert _contains(ball, val) and ball.rad() <= 2.0 ** (8 - prec)
        lo, hi = meas.lambda_range(128)
        assert _contains(lo, want[0][0]) and _contains(hi, 5)


def test_lambda_range_with_overlapping_balls() -> None:
    """Support 2 -+ sqrt 2 (roots of x^2 - 4x + 2, from the block [[3, 1], [1, 1]]) and two rational
    points inside them: q_lo = 2 - sqrt 2 + d, q_hi = 2 + sqrt 2 - d' (d, d' = 2^-129 up to 2^-300:
    sqrt 2 taken to 300 bits). At 256 bits the balls certify q_lo > 2 - sqrt 2 and q_hi < 2 + sqrt 2; at
    128 bits each rational ball overlaps the irrational one beside it, so no certified comparison
    orders them, yet lambda_range (128 bits by default) must return the balls of the true extremes,
    the irrational ones (they come after the rational points in ``balls``)."""
    from math import isqrt

    s = isqrt(2 * 4**300)  # floor(sqrt(2) 2^300)
    q_lo = fmpq(2 * 2**300 - s, 2**300) + fmpq(1, 2**129)
    q_hi = fmpq(2 * 2**300 + s, 2**300) - fmpq(1, 2**129)
    H = _mat([[3, 1, 0, 0], [1, 1, 0, 0], [0, 0, q_lo, 0], [0, 0, 0, q_hi]])
    meas = lanczos_measure(H, _col([1, 0, 1, 1]))
    assert [mu for mu, _ in meas.exact] == [q_lo, q_hi] and meas.irrational == fmpq_poly([2, -4, 1])
    (b_lo, _), (b_hi, _), (r_lo, _), (r_hi, _) = meas.balls(256)
    assert b_lo > r_lo and b_hi < r_hi  # certified order of the four points
    (b_lo, _), (b_hi, _), (r_lo, _), (r_hi, _) = meas.balls(128)
    assert b_lo.overlaps(r_lo) and b_hi.overlaps(r_hi)  # not certifiable at 128 bits
    lo, hi = meas.lambda_range()
    assert lo is r_lo and hi is r_hi


def test_lanczos_minimal_polynomial_degree_below_n() -> None:
    """v in a 2-dimensional invariant subspace of a 3x3 H: Lanczos stops after 2 steps."""
    H = _mat([[1, 0, 0], [0, 4, 0], [0, 0, 9]])
    meas = lanczos_measure(H, _col([2, 0, 1]))
    assert meas.exact == ((1, 4), (9, 1)) and len(meas.alphas) == 2


def test_lanczos_zero_vector_and_not_self_adjoint() -> None:
    zero = lanczos_measure(_mat([[2, 1], [1, 2]]), _col([0, 0]))
    assert zero == diagonal_measure([], [])  # every field: no points, constant 1, no recurrence, total 0
    assert zero.size == 0 and isinstance(zero.total, fmpq)
    for A in (_mat([[1, 2], [0, 1]]),  # pair (0, 1)
              _mat([[1, 0, 0], [0, 1, 1], [0, 0, 1]]),  # pair (1, 2) only
              _mat([[1, 0, 3], [0, 1, 0], [0, 0, 1]])):  # pair (0, 2) only
        with pytest.raises(InvalidInputError, match="not self-adjoint"):
            lanczos_measure(A, _col([1] * A.nrows()))
    # D^-1 H is not symmetric but is H-self-adjoint: accepted with G = H, refused with G = I
    H = _mat([[2, 1], [1, 3]])
    A = _diag([1, F(1, 2)]) * H
    with pytest.raises(InvalidInputError):
        lanczos_measure(A, _col([1, 1]))
    assert lanczos_measure(A, _col([1, 1]), H).total == inner(_col([1, 1]), _col([1, 1]), H)


def test_irrational_points_refuse_non_real_or_multiple_roots() -> None:
    for poly in (fmpq_poly([1, 0, 1]), fmpq_poly([-2, 0, 1]) ** 2):  # +-i (simple); +-sqrt 2 (double)
        meas = SpectralMeasure((), poly, (fmpq(0), fmpq(0)), (fmpq(1), fmpq(1)), fmpq(2))
        with pytest.raises(ArithmeticError, match="non-real or multiple"):
            meas.irrational_points(64)
    assert diagonal_measure([fmpq(1)], [fmpq(1)]).irrational_points(64) == []


# ---------------------------------------------------------------- exact CG
def test_cg_run_hand_values_padding_and_truncation() -> None:
    """H = diag(1, 2), e_0 = (1, 1): r_0 = (-1, -2), alpha_0 = 5/9, e_1 = (4/9, -1/9); e_2 = 0."""
    H = _diag([1, 2])
    e0 = _col([1, 1])
    full = cg_run(H, e0)
    assert full == [e0, _col([F(4, 9), F(-1, 9)]), _col([0, 0])]
    assert cg_run(H, e0, 0) == [e0]
    assert cg_run(H, e0, 1) == full[:2]
    assert cg_run(H, e0, 4) == full + [_col([0, 0])] * 2
    assert cg_losses(H, e0) == [fmpq(3, 2), fmpq(1, 9), 0]  # 1/2 e^T H e: (1 + 2)/2, (16 + 2)/81/2
    assert cg_losses(H, e0, 3) == [fmpq(3, 2), fmpq(1, 9), 0, 0]
    z = _col([0, 0])
    assert cg_run(H, z) == [z] and cg_run(H, z, 2) == [z, z, z]


@given(st.integers(0, 10**6), st.integers(2, 4))
def test_cg_iterates_are_the_krylov_galerkin_solution(seed: int, n: int) -> None:
    """e_t - e_0 lies in K_t = span(r_0, H r_0, ..., H^(t-1) r_0) and the residual -H e_t is
    orthogonal to K_t (the exact characterization of CG); r_t = 0 after at most n steps."""
    H = _spd(seed, n)
    e0 = _col([int(x) or 1 for x in np.random.default_rng(seed + 2).integers(-3, 4, n)])
    its = cg_run(H, e0)
    assert 2 <= len(its) <= n + 1 and H * its[-1] == fmpq_mat(n, 1)
    r0 = -(H * e0)
    basis = [r0]
    for t in range(1, len(its)):
        K = fmpq_mat([[b[i, 0] for b in basis] for i in range(n)])  # n x t
        d = its[t] - e0
        # d in range(K): the normal equations K^T K y = K^T d have a solution with K y = d
        y = (K.transpose() * K).solve(K.transpose() * d)
        assert K * y == d
        r = -(H * its[t])
        assert K.transpose() * r == fmpq_mat(t, 1)
        basis.append(H * basis[-1])
    assert its[-1] == fmpq_mat(n, 1)


# ---------------------------------------------------------------- polynomial minimum
def test_cg_polynomial_minimum_small_t() -> None:
    """t = 0: q_0 = total/2; t = 1: min_a 1/2 sum m (1 + a mu)^2 = (S0 - S1^2/S2)/2, S_i = sum m mu^i;
    t >= k: 0; an irrational measure is refused."""
    meas = diagonal_measure([fmpq(1), fmpq(2), fmpq(4)], [fmpq(1), fmpq(3), fmpq(2)])
    S0, S1, S2 = 6, 1 + 6 + 8, 1 + 12 + 32
    assert cg_polynomial_minimum(meas, 0) == 3
    assert cg_polynomial_minimum(meas, 1) == (S0 - fmpq(S1 * S1, S2)) / 2
    assert cg_polynomial_minimum(meas, 3) == 0 and cg_polynomial_minimum(meas, 7) == 0
    irr = lanczos_measure(_mat([[2, 1], [1, 1]]), _col([1, 0]))
    with pytest.raises(InvalidInputError, match="rational support"):
        cg_polynomial_minimum(irr, 1)


def test_cg_polynomial_minimum_with_support_point_zero() -> None:
    """A support point 0 keeps its mass m_0 for every p (p(0) = 1): diag points (0, 1, 2), masses
    (3, 1, 1): t = 1 gives (3 + 2 - 3^2/5)/2 = 8/5 (the t = 1 formula over all points), and for
    t >= 2 (= number of nonzero points; t = 2 by the normal equations, t >= 3 past them) the
    minimum is m_0/2 = 3/2, not 0."""
    meas = diagonal_measure([fmpq(0), fmpq(1), fmpq(2)], [fmpq(3), fmpq(1), fmpq(1)])
    assert cg_polynomial_minimum(meas, 0) == fmpq(5, 2)
    assert cg_polynomial_minimum(meas, 1) == fmpq(8, 5)
    assert all(cg_polynomial_minimum(meas, t) == fmpq(3, 2) for t in (2, 3, 5))


@given(st.lists(st.integers(1, 40), min_size=2, max_size=5, unique=True),
       st.lists(st.integers(1, 9), min_size=5, max_size=5), st.integers(0, 4))
def test_cg_polynomial_minimum_lagrange_closed_form(pts: list[int], ms: list[int], m0: int) -> None:
    """At t = k - 1 (k nonzero points): p is fixed by its values y_j at the points, p(0) = sum y_j
    L_j(0) (Lagrange basis), so min 1/2 sum m_j y_j^2 subject to sum y_j L_j(0) = 1 is
    1/2 / sum_j L_j(0)^2 / m_j (Cauchy-Schwarz); a mass m0 at the point 0 adds m0/2 (p(0) = 1),
    which is all that is left for t >= k."""
    mu = [F(x, 3) for x in pts]
    m = [F(x) for x in ms[: len(mu)]]
    meas = diagonal_measure([to_fmpq(x) for x in [*mu, 0]], [to_fmpq(x) for x in [*m, m0]])
    acc = F(0)
    for j in range(len(mu)):
        L = F(1)
        for i in range(len(mu)):
            if i != j:
                L *= (0 - mu[i]) / (mu[j] - mu[i])
        acc += L * L / m[j]
    k = len(mu)
    assert cg_polynomial_minimum(meas, k - 1) == to_fmpq(1 / acc / 2 + F(m0, 2))
    assert cg_polynomial_minimum(meas, k) == cg_polynomial_minimum(meas, k + 1) == fmpq(m0, 2)
