"""Contracts of the helpers behind ``numerics.reparam``: the rounding allowance and the
enclosures built from it, the sparsity components of ``block_spectrum``, the exact check of a
singular basis, the support of the rational generators, and the defenses' defaults.

Exact statements are equalities of rationals (fmpq / Fraction) or of exact binary numbers;
ball statements say that a rigorous arb ball contains the exact value (arb at ARB_PREC = 320
bits, mpmath at the stated precision), and a tightness bound says the ball is not wider than
the stated allowance.
"""
from __future__ import annotations

from fractions import Fraction

import flint
import mpmath
import numpy as np
import pytest

from convrate.errors import InvalidInputError
from convrate.numerics.nets import (
    EXACT,
    TwoLayerLinear,
    TwoLayerReLU,
    arb_precision,
    exact_inertia,
    identity,
    to_arb,
    to_fmpq,
)
from convrate.numerics.reparam import (
    DiagonalScaling,
    SpecDef,
    Symmetry,
    _ball,
    _components,
    _rational_in,
    _sqrt_enclosure,
    mp_of,
    rational_element,
    rational_monomial,
    rounding_allowance,
    verify_singular_basis,
)

X3 = [[1, 2], [-1, 1], [2, 0]]
Y3 = [[1], [0], [-1]]
#: a perturbation below the 2^-320 resolution of every ball computation in the package
TINY = flint.fmpq(1, 3 * 2**400)
#: exact rational rotation (3-4-5 triangle): its entries are not binary numbers
Q = flint.fmpq_mat([[flint.fmpq(3, 5), flint.fmpq(-4, 5)], [flint.fmpq(4, 5), flint.fmpq(3, 5)]])


def _same_ball(x: flint.arb, y: flint.arb) -> bool:
    """Identical balls (same midpoint and radius), not merely overlapping ones."""
    return x.mid() == y.mid() and x.rad() == y.rad()


def _diag(values) -> flint.fmpq_mat:
    n = len(values)
    return flint.fmpq_mat([[to_fmpq(values[i]) if i == j else flint.fmpq(0) for j in range(n)] for i in range(n)])


# ---------------------------------------------------------------- allowance and enclosures
def test_rounding_allowance_is_the_stated_bound():
    """rounding_allowance(x) = |x| 2^(40 - prec) at the working precision (exact binary scaling)."""
    for prec in (53, 200):
        with mpmath.workprec(prec):
            for x in (1, -3, mpmath.mpf(5) / 7):
                assert rounding_allowance(x) == mpmath.ldexp(abs(mpmath.mpf(x)), 40 - prec)


def test_sqrt_enclosure_covers_the_image_and_is_tight():
    """sqrt maps [4, 9] onto [2, 3], [-1, 4] (clipped at 0) onto [0, 2] and [1/4, 1/4] onto
    {1/2}: the enclosure contains the image and exceeds it by at most a few allowances."""
    with mpmath.workprec(100):
        slack = mpmath.ldexp(1, 40 - 100) * 8
        for lo, hi, image_lo, image_hi in ((4, 9, 2, 3), (-1, 4, 0, 2), (0.25, 0.25, 0.5, 0.5)):
            e = _sqrt_enclosure(mpmath.mpf(lo), mpmath.mpf(hi))
            assert e.lo <= image_lo and e.hi >= image_hi
            assert e.lo >= image_lo - slack and e.hi <= image_hi + slack


def test_ball_contains_the_exact_value_of_a_rounded_mpf():
    """_ball(x) for x = sqrt(2), 1/3 rounded to 53 bits contains sqrt(2), 1/3 (balls at 320 bits)
    and is no wider than twice the allowance."""
    with arb_precision():
        exact = (flint.arb(2).sqrt(), flint.arb(flint.fmpq(1, 3)))
        with mpmath.workprec(53):
            rounded = (mpmath.sqrt(2), mpmath.mpf(1) / 3)
            balls = [_ball(x) for x in rounded]
            allowances = [to_arb(rounding_allowance(x)) for x in rounded]
        for b, e, a in zip(balls, exact, allowances):
            assert b.contains(e)
            assert b.rad() <= 2 * a


# ---------------------------------------------------------------- sparsity components
def test_components_of_a_permuted_block_matrix():
    """Links (0, 2) and (1, 3): components {0, 2}, {1, 3}; a link present on one side only
    ((1, 3) without (3, 1)) still connects; a diagonal matrix gives singletons."""
    z, one = flint.fmpq(0), flint.fmpq(1)
    rows = [[one, z, 2 * one, z], [z, one, z, 5 * one], [2 * one, z, one, z], [z, z, z, one]]
    assert _components(rows) == [[0, 2], [1, 3]]
    assert _components([[one if i == j else z for j in range(3)] for i in range(3)]) == [[0], [1], [2]]


def test_components_of_a_ball_matrix_use_exact_zeros_only():
    """An exact nonzero ball links, an inexact ball around 0 links too (it is not certainly 0),
    only an exact 0 separates."""
    one, zero = flint.arb(1), flint.arb(0)
    fuzzy = flint.arb(0, 2.0**-100)
    rows = [[one, one, zero, zero], [one, one, zero, zero], [zero, zero, one, fuzzy], [zero, zero, fuzzy, one]]
    assert _components(rows) == [[0, 1], [2, 3]]


# ---------------------------------------------------------------- exact singular basis
def test_singular_basis_of_binary_numbers_is_converted_exactly():
    """mpmath (binary) W_a and basis are read as the exact rationals they are: W = diag(1, 2)
    has left singular vectors e_2, e_1 in descending order."""
    W = mpmath.matrix([[1, 0], [0, 2]])
    U = mpmath.matrix([[0, 1], [1, 0]])
    got = verify_singular_basis(W, U)
    assert got == [[flint.fmpq(0), flint.fmpq(1)], [flint.fmpq(1), flint.fmpq(0)]]
    assert all(isinstance(x, flint.fmpq) for row in got for x in row)
    with pytest.raises(InvalidInputError, match="exact rational"):
        verify_singular_basis(W, flint.arb_mat([[0, 1], [1, 0]]))


def test_singular_basis_is_checked_exactly_below_ball_resolution():
    """Defects of size 2^-400 (below any ball the package computes) are refused:
    a basis (1 + TINY) Q is not orthogonal, Q R with R a Cayley rotation by ~TINY does not
    diagonalize Q diag(2, 1), and Q for W = Q diag(1, 1 + TINY) is in increasing order."""
    W = Q * _diag([2, 1])
    verify_singular_basis(W, Q)
    with pytest.raises(InvalidInputError, match="not exactly orthogonal"):
        verify_singular_basis(W, Q * (1 + TINY))
    S = flint.fmpq_mat([[0, TINY], [-TINY, 0]])
    R = (identity(2, EXACT) - S) * (identity(2, EXACT) + S).inv()
    assert R.transpose() * R == identity(2, EXACT)
    with pytest.raises(InvalidInputError, match="does not diagonalize"):
        verify_singular_basis(W, Q * R)
    with pytest.raises(InvalidInputError, match="non-increasing"):
        verify_singular_basis(Q * _diag([1, 1 + TINY]), Q)


def test_singular_basis_shape_must_match_w():
    W = [[2, 0, 0], [0, 1, 0]]  # W_a: r = 2 rows
    with pytest.raises(InvalidInputError, match="basis must be 2x2, got 3x3"):
        verify_singular_basis(W, identity(3, EXACT))
    with pytest.raises(InvalidInputError, match="basis must be 2x2, got 2x3"):
        verify_singular_basis(W, [[1, 0, 0], [0, 1, 0]])


# ---------------------------------------------------------------- rational generators
def test_rational_in_support_is_the_grid_with_its_ends():
    """_rational_in(lo, hi) is uniform on lo + j (hi - lo)/8, j = 0..8: over 300 draws every grid
    point (both ends included) occurs and nothing else does; den = 4 gives the 5-point grid."""
    rng = np.random.default_rng(0)
    lo, hi = Fraction(1), Fraction(3)
    assert {_rational_in(lo, hi, rng) for _ in range(300)} == {lo + Fraction(j, 8) * (hi - lo) for j in range(9)}
    assert {_rational_in(lo, hi, rng, den=4) for _ in range(300)} == {lo + Fraction(j, 4) * (hi - lo) for j in range(5)}


def test_rational_generators_stay_in_the_condition_range():
    """rational_monomial: every scale d in [1, kappa] with max/min = kappa exactly;
    rational_element: every sigma^2 of A in [1, kappa^2] (exact inertia of A^T A - I and
    kappa^2 I - A^T A), so kappa(A) = kappa exactly."""
    kappa = Fraction(3)
    for seed in range(30):
        rng = np.random.default_rng(seed)
        M = rational_monomial(5, kappa, rng)
        d = [M[i, j] for i in range(5) for j in range(5) if M[i, j] != 0]
        assert len(d) == 5 and all(1 <= x <= 3 for x in d) and max(d) / min(d) == 3
        A = rational_element(4, kappa, rng)
        G = A.transpose() * A
        assert exact_inertia(G - identity(4, EXACT))[2] == 0
        assert exact_inertia(9 * identity(4, EXACT) - G)[2] == 0


# ---------------------------------------------------------------- defenses and symmetries
def test_defense_defaults_and_names():
    """Defaults: Symmetry(net) is S1 on the first pair; SpecDef and DiagonalScaling are geometric;
    the name (used in check instances) is '<kind>-<profile>'."""
    sym = Symmetry(TwoLayerLinear(2, 2, 1, X3, Y3))
    assert (sym.family, sym.pair, sym.r) == ("S1", 0, 2)
    assert SpecDef(4).name == "specdef-geometric" and SpecDef(4, "spike").name == "specdef-spike"
    assert DiagonalScaling(4).name == "diagonal-geometric"
    assert DiagonalScaling(4, "endpoints").name == "diagonal-endpoints"


@pytest.mark.parametrize("profile", ["geometric", "spike"])
def test_specdef_on_a_relu_pair_is_the_diagonal_scaling(profile):
    """SpecDef(K) on an S2 pair acts as DiagonalScaling(K) with the same profile and default
    precision: identical balls, and they contain the profile's scales K^(1/2), K^(-1/2)
    (geometric) or K^(1/2), K^(-1/2) (spike, r = 2)."""
    net = TwoLayerReLU(2, 2, 1, X3, Y3)
    theta = [1, 0, 3, 1, 0, 1, 1, 1]
    A = SpecDef(9, profile).reparameterize(net, theta).parts[0][1]
    B = DiagonalScaling(9, profile).reparameterize(net, theta).parts[0][1]
    assert all(_same_ball(A[i, j], B[i, j]) for i in range(2) for j in range(2))
    with arb_precision():
        # unit 1 has the larger ||(in_i, b_i)|| = ||(3, 1, 1)||: it gets 3 = sqrt 9, unit 0 gets 1/3
        assert A[1, 1].contains(flint.arb(3)) and A[0, 0].contains(flint.arb(flint.fmpq(1, 3)))


def test_fraction_strength_is_exact():
    """A Fraction K is read exactly: K = 5/2 as an mpf, and the endpoints profile gives the exact
    diagonal (5/2, 1) on the unit with the larger ||(in_i, b_i)||."""
    assert SpecDef(Fraction(5, 2)).K == mpmath.mpf(2.5)
    d = DiagonalScaling(Fraction(5, 2), "endpoints")
    assert d.K == mpmath.mpf(2.5)
    net = TwoLayerReLU(2, 2, 1, X3, Y3)
    A = d.reparameterize(net, [1, 0, 3, 1, 0, 1, 1, 1]).parts[0][1]
    assert A == _diag([1, Fraction(5, 2)])


def test_endpoints_with_a_float_strength_is_a_ball_element():
    """A float K = 2.1 (not rational in the profile's sense) gives a ball element: a ball around
    K on the larger unit, exact 1 elsewhere; S2 accepts it (exact 1 is a nonzero scale) and the
    reparameterized net computes the same outputs (balls containing the exact ones)."""
    net = TwoLayerReLU(2, 2, 1, X3, Y3)
    theta = [1, 0, 3, 1, 0, 1, 1, 1]
    rep = DiagonalScaling(2.1, "endpoints").reparameterize(net, theta)
    A = rep.parts[0][1]
    assert isinstance(A, flint.arb_mat)
    with arb_precision():
        assert A[1, 1].contains(to_arb(2.1)) and A[0, 0] == 1 and A[0, 0].is_exact()
        assert A[0, 1] == 0 and A[1, 0] == 0
        out = net.outputs(rep.apply(theta))
        ref = net.outputs(theta)
        assert all(out[i][j].contains(flint.arb(ref[i][j])) for i in range(len(ref)) for j in range(len(ref[0])))


def test_mp_of_a_ball_matrix_is_its_midpoints():
    """mp_of of a ball matrix gives the midpoints; on exact binary balls the SpecDef mpmath element
    is the same computation as on the rationals, hence identical."""
    R = [[2, 1], [Fraction(1, 2), 1]]
    ball = flint.arb_mat([[2, 1], [0.5, 1]])
    assert mp_of(ball) == mp_of(R) == mpmath.matrix([[2, 1], [0.5, 1]])
    d = SpecDef(4)
    assert d.element_mp(ball) == d.element_mp(R)
    U = [[1, 0], [0, 1]]  # W = diag(3, 1) has singular basis I: A = diag(2, 1/2)
    with mpmath.workdps(50):
        assert d.element_mp(_diag([3, 1]), U) == mpmath.matrix([[2, 0], [0, 0.5]])
        assert d.element_mp(_diag([3, 1]), flint.arb_mat(U)) == mpmath.matrix([[2, 0], [0, 0.5]])
