"""Exact networks, reparameterizations and recoveries: error handling and the facts that are
not "a bound holds" (closed forms equal an independent expansion, exact block structure of T,
round trips, the documented counterexample to the biased form of W).

Everything here is exact rational arithmetic (assertions are equalities of rationals) except
where balls are named: there the assertion is that the rigorous ball contains the claimed
exact value.
"""
from __future__ import annotations

from fractions import Fraction

import flint
import mpmath
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from convrate.errors import InvalidInputError, PrecisionError, SingularReparameterizationError
from convrate.numerics.checks_nets import NetCase, net_cases
from convrate.numerics.linalg import sym_eig
from convrate.numerics.nets import (
    EXACT,
    ChainNet,
    arb_precision,
    arb_to_mpf,
    DeepLinear,
    LayerSpec,
    ReluKinkError,
    SingularHessianError,
    TwoLayerLinear,
    TwoLayerReLU,
    column,
    exact_inertia,
    identity,
    kron,
    newton_iterates,
    pack,
    to_arb,
    to_fmpq,
)
from convrate.numerics.recovery import balance_s1, balance_s2, canonicalize, canonicalize_pair, r1_reparameterize
from convrate.numerics.reparam import (
    DiagonalScaling,
    Identity,
    Reparameterization,
    SpecDef,
    Symmetry,
    rational_element,
    rational_orthogonal,
    rational_svd_matrix,
    singular_value_range,
    verify_singular_basis,
)
from convrate.theory import bounds

X3 = [[1, 2], [-1, 1], [2, 0]]
Y3 = [[1], [0], [-1]]


def _consistent(ball: flint.arb, exact: object) -> bool:
    """The ball is consistent with the exact rational (their enclosures overlap at ARB_PREC)."""
    with arb_precision():
        return bool(to_arb(exact).overlaps(ball))


def _theta(case: NetCase) -> tuple[ChainNet, object]:
    net, theta = case.build()
    return net, column([to_fmpq(t) for t in theta], EXACT)


# ---------------------------------------------------------------- error handling
def test_singular_element_names_smallest_singular_value():
    net = TwoLayerLinear(2, 2, 1, X3, Y3)
    sym = Symmetry(net, "S1", 0)
    with pytest.raises(SingularReparameterizationError, match="smallest singular value 0"):
        sym.validate([[1, 2], [2, 4]])
    with pytest.raises(SingularReparameterizationError):
        Reparameterization(net, ((sym, [[0, 0], [0, 0]]),))


@pytest.mark.parametrize("K", [1, Fraction(1, 2), 0, -3, float("nan"), float("inf"), "abc"])
def test_bad_strength_rejected(K):
    with pytest.raises(InvalidInputError, match="K"):
        SpecDef(K)
    with pytest.raises(InvalidInputError, match="K"):
        DiagonalScaling(K)


def test_unknown_profile_rejected():
    with pytest.raises(InvalidInputError, match="profile"):
        SpecDef(4, profile="flat")
    with pytest.raises(InvalidInputError, match="profile"):
        DiagonalScaling(4, profile="flat")


def test_relu_kink_refused_for_derivatives_only():
    # unit 0: pre-activation w x + b = 1*1 + (-1) = 0 on the first sample
    net = TwoLayerReLU(1, 1, 1, [[1], [2]], [[0], [1]])
    theta = [1, -1, 3]
    assert net.loss(theta) == 1  # relu(0) = 0 is a value: residuals 0 and 3 - 1, L = (0 + 4) / (2 * 2)
    for method in (net.gradient, net.hessian, net.third_derivative_tensor):
        with pytest.raises(ReluKinkError, match="exactly 0 on sample 0"):
            method(theta)
    with pytest.raises(ReluKinkError):
        net.line_polynomial(theta, [1, 0, 0])
    assert issubclass(ReluKinkError, InvalidInputError)


def test_wrong_shapes_rejected():
    with pytest.raises(InvalidInputError, match="row 1 has 1 entries"):
        TwoLayerLinear(2, 2, 1, [[1, 2], [3]], [[1], [2]])
    with pytest.raises(InvalidInputError, match="samples"):
        TwoLayerLinear(2, 2, 1, X3, [[1], [2]])
    net = TwoLayerLinear(2, 2, 1, X3, Y3)
    with pytest.raises(InvalidInputError, match="8 parameters"):
        net.gradient([1, 2, 3])
    with pytest.raises(InvalidInputError, match="2x2"):
        Symmetry(net, "S1", 0).validate([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    with pytest.raises(InvalidInputError, match="expects 3 inputs"):
        ChainNet([LayerSpec(2, 2), LayerSpec(3, 1)], X3, Y3)
    with pytest.raises(InvalidInputError, match="last layer must be linear"):
        ChainNet([LayerSpec(2, 1, activation="relu")], X3, Y3)
    with pytest.raises(InvalidInputError, match="input must have 2"):
        net.function([0] * 8, [1])
    with pytest.raises(InvalidInputError, match="pair 1 out of range"):
        Symmetry(net, "S1", 1)


def test_family_rules():
    relu = TwoLayerReLU(2, 2, 1, X3, Y3)
    with pytest.raises(InvalidInputError, match="S1 needs no nonlinearity"):
        Symmetry(relu, "S1", 0)
    sym = Symmetry(relu, "S2", 0)
    with pytest.raises(InvalidInputError, match="permutation times a positive diagonal"):
        sym.validate([[1, 1], [0, 1]])
    with pytest.raises(InvalidInputError, match="positive scales"):
        sym.validate([[0, -2], [3, 0]])
    sym.validate([[0, 2], [Fraction(1, 3), 0]])
    with pytest.raises(InvalidInputError, match="unknown symmetry family"):
        Symmetry(relu, "S3", 0)


def test_newton_refuses_singular_hessian():
    # r = 2 > n_out = 1: directions (M W_a, M b_a, 0) with W_b M = 0 leave f unchanged
    net = TwoLayerLinear(1, 2, 1, [[1], [2], [3]], [[1], [0], [2]])
    with pytest.raises(SingularHessianError, match="singular"):
        newton_iterates(net, [1, 2, 0, 1, 1, -1], 1)


def test_r2_degenerate_inputs_rejected():
    with pytest.raises(InvalidInputError, match="full rank"):
        balance_s1(pack([[to_fmpq(1), to_fmpq(2)], [to_fmpq(2), to_fmpq(4)]], EXACT), [[1, 0], [0, 1]])
    with pytest.raises(InvalidInputError, match="unit 1"):
        balance_s2([[1, 2], [0, 0]], [[1], [0]], [[1, 1]])


def test_basis_must_be_singular_vectors():
    W = [[2, 0], [0, 1]]
    verify_singular_basis(W, [[1, 0], [0, 1]])
    with pytest.raises(InvalidInputError, match="non-increasing"):
        verify_singular_basis(W, [[0, 1], [1, 0]])
    with pytest.raises(InvalidInputError, match="orthogonal"):
        verify_singular_basis(W, [[1, 1], [0, 1]])


# ---------------------------------------------------------------- closed forms vs an independent expansion
@given(net_cases(max_in=2, max_r=2, max_N=4), st.integers(0, 2**16))
def test_derivatives_match_line_polynomial(case, seed):
    """u^T grad L = c_1 and u^T H u = 2 c_2 of L(theta + t u) (polynomial expansion, exact),
    and the full D^3 tensor contracted with (u, v, w) equals the polarized cubic coefficients."""
    net, th = _theta(case)
    rng = np.random.default_rng(seed)
    u, v, w = ([Fraction(int(rng.integers(-3, 4)), int(rng.integers(1, 3))) for _ in range(net.n_params)]
               for _ in range(3))
    U = column([to_fmpq(x) for x in u], EXACT)
    c = net.line_polynomial(th, u)
    assert c[0] == net.loss(th)
    assert c[1] == (U.transpose() * net.gradient(th))[0, 0]
    assert 2 * c[2] == (U.transpose() * net.hessian(th) * U)[0, 0]
    T3 = net.third_derivative_tensor(th)
    n = net.n_params
    contracted = sum(T3[a][b][k] * to_fmpq(u[a]) * to_fmpq(v[b]) * to_fmpq(w[k])
                     for a in range(n) for b in range(n) for k in range(n))
    assert contracted == net.third_derivative_action(th, u, v, w)
    assert net.directional_derivative(th, u, 3) == 6 * c[3]


@given(net_cases(max_in=2, max_r=2, max_N=4))
def test_gauss_newton_and_structure(case):
    net, th = _theta(case)
    J = net.jacobian(th)
    G = net.gauss_newton(th)
    assert G == J.transpose() * J / net.N
    H = net.hessian(th)
    assert H == H.transpose()
    # zero residuals: H = G exactly (fit Y to the outputs at theta)
    fitted = ChainNet(net.layers, net.X, [[q for q in row] for row in net.outputs(th)])
    assert fitted.hessian(th) == fitted.gauss_newton(th)
    assert net.flatten(net.unflatten(th)) == th


@given(st.integers(0, 2**16), st.integers(1, 3), st.integers(2, 4))
def test_exact_inertia_matches_certified_spectrum(seed, rank, n):
    rng = np.random.default_rng(seed)
    B = pack([[to_fmpq(int(rng.integers(-3, 4))) for _ in range(n)] for _ in range(rank)], EXACT)
    D = pack([[to_fmpq(int(rng.choice([-1, 1]))) if i == j else to_fmpq(0) for j in range(rank)]
              for i in range(rank)], EXACT)
    M = B.transpose() * D * B
    pos, zero, neg = exact_inertia(M)
    assert pos + zero + neg == n
    assert zero >= n - rank
    with mpmath.workdps(40):
        e = sym_eig(M)
    for k, (lo, hi) in enumerate(e.interval(k) for k in range(n)):
        if lo > 0:
            assert k >= neg + zero
        if hi < 0:
            assert k < neg


# ---------------------------------------------------------------- reparameterizations
@given(net_cases(max_in=2, max_r=2))
def test_reparameterization_round_trip_and_inverse(case):
    net, th = _theta(case)
    rep = case.reparameterization(net)
    assert rep.inverse().apply(rep.apply(th)) == th
    assert rep.inverse().matrix() == rep.matrix().inv()
    assert rep.apply(th) == rep.matrix() * th


@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 2), st.integers(0, 2**16))
def test_block_form_and_singular_values_of_T(n_in, r, n_out, seed):
    """T = diag(A (x) I_{n_in}, A, I_{n_out} (x) A^-T) and, exactly, the characteristic
    polynomial of T^T T is charpoly(A^T A)^(n_in+1) charpoly(A^-1 A^-T)^n_out, i.e.
    sigma(T) = sigma(A) (multiplicity n_in + 1) u sigma(A^-1) (multiplicity n_out)."""
    net = TwoLayerLinear(n_in, r, n_out, [[1] * n_in], [[0] * n_out])
    A = rational_element(r, Fraction(5, 2), np.random.default_rng(seed))
    T = Symmetry(net, "S1", 0).matrix(A)
    Ainv = A.inv()
    expected = [kron(A, identity(n_in, EXACT)), A, kron(identity(n_out, EXACT), Ainv.transpose())]
    o = 0
    for B in expected:
        k = B.nrows()
        assert pack([[T[o + i, o + j] for j in range(k)] for i in range(k)], EXACT) == B
        o += k
    lhs = (T.transpose() * T).charpoly()
    rhs = (A.transpose() * A).charpoly() ** (n_in + 1) * (Ainv * Ainv.transpose()).charpoly() ** n_out
    assert lhs == rhs


@given(st.integers(1, 3), st.integers(0, 2**16), st.sampled_from([Fraction(2), Fraction(7, 3), Fraction(50)]))
def test_rational_generators(r, seed, kappa):
    rng = np.random.default_rng(seed)
    Q = rational_orthogonal(r, rng)
    assert Q.transpose() * Q == identity(r, EXACT)
    A = rational_element(r, kappa, rng)
    G = A.transpose() * A
    # sigma(A) = d with d_1 = kappa, d_r = 1: kappa^2 and 1 are roots of charpoly(A^T A)
    p = G.charpoly()
    assert p(to_fmpq(kappa * kappa)) == 0  # d_1 = kappa
    if r >= 2:
        assert p(to_fmpq(1)) == 0  # d_r = 1, so kappa(A) = kappa
    W, U, V = rational_svd_matrix([Fraction(3), Fraction(1)][: min(r, 2)], r, 2, rng)
    verify_singular_basis(W, U)


@given(st.integers(1, 3), st.integers(1, 3), st.integers(0, 2**16), st.integers(2, 10**4),
       st.sampled_from(["geometric", "spike"]))
def test_specdef_element(r, n_in, seed, K, profile):
    """A = U diag(s) U^T: symmetric, det A = 1 and kappa(A) = K within the balls, A W_a has
    singular values s_i sigma_i, and the mpmath element lies in the ball element."""
    rng = np.random.default_rng(seed)
    sig = sorted({Fraction(int(rng.integers(1, 9)), 2) for _ in range(6)}, reverse=True)
    while len(sig) < min(r, n_in):
        sig.append(sig[-1] / 3)
    W, U, _ = rational_svd_matrix(sig[: min(r, n_in)], r, n_in, rng)
    d = SpecDef(K, profile, dps=60)
    with mpmath.workdps(40):
        A = d.element_ball(W, U)
        assert A.transpose().overlaps(A)
        assert A.det().contains(1)
        smin, smax = singular_value_range(A)
        slack = 1 + mpmath.mpf(10) ** -30
        kappa = K if r > 1 else 1  # r = 1 leaves no freedom under det A = 1: A = 1
        assert smax.lo / smin.hi / slack <= kappa <= smax.hi / smin.lo * slack
        s = d.strengths(r)
        assert smax.lo <= max(s) <= smax.hi
        if r <= n_in + 1:  # at most one zero singular value: U is unique up to column signs
            Amp = d.element_mp(W)  # basis computed by mpmath: the same A up to the basis rounding
            for i in range(r):
                for j in range(r):
                    assert abs(Amp[i, j] - mpmath.mpf(A[i, j].mid().str(50, radius=False))) <= mpmath.mpf(10) ** -25 * K


def test_diagonal_scaling_profiles():
    net = TwoLayerReLU(2, 3, 1, X3, Y3)
    theta = [1, 0, 3, 1, 0, 1, Fraction(1, 2), Fraction(1, 3), 1, 1, 1, 1]
    rep = DiagonalScaling(10, "endpoints", perm=[2, 0, 1]).reparameterize(net, theta)
    A = rep.parts[0][1]
    assert isinstance(A, flint.fmpq_mat)
    # the largest ||(in_i, b_i)|| is unit 1 ((3, 1, 1/3)): it gets d = 10 and moves to row perm[1] = 0
    assert A[0, 1] == 10 and A[2, 0] == 1 and A[1, 2] == 1
    assert net.outputs(rep.apply(theta)) == net.outputs(theta)
    with mpmath.workdps(40):
        kap = DiagonalScaling(10, "geometric").reparameterize(net, theta)
        smin, smax = singular_value_range(kap.parts[0][1])
        assert abs(smax.value / smin.value - 10) < mpmath.mpf(10) ** -20
    assert Identity().reparameterize(net, theta).apply(theta) == column([to_fmpq(t) for t in theta], EXACT)


# ---------------------------------------------------------------- recoveries
@given(net_cases(max_in=2, max_r=2, max_N=3), st.integers(0, 2**16))
def test_r1_net_computes_f_at_T_phi(case, seed):
    """The R1 net with frozen A, A^-1 at any phi computes f(x; T phi) exactly."""
    net, _ = _theta(case)
    rep = case.reparameterization(net)
    rec = r1_reparameterize(rep)
    rng = np.random.default_rng(seed)
    phi = [Fraction(int(rng.integers(-3, 4)), int(rng.integers(1, 3))) for _ in range(net.n_params)]
    assert rec.net.outputs(phi) == net.outputs(rep.apply(phi))
    assert rec.net.n_params == net.n_params
    assert rec.extra_parameters == sum(bounds.recovery_extra_parameters(s.family, s.r) for s, _ in rep.parts)


@given(st.integers(1, 3), st.integers(0, 2**16))
def test_balanced_s1_equals_svd_factors_up_to_orthogonal(n_in, seed):
    """balance_s1 (geometric-mean form) and the SVD-balanced factors (S^1/2 V^T, U S^1/2) of
    M = W_b X have the same X^T X and W_b W_b^T (so they differ by an orthogonal Q)."""
    rng = np.random.default_rng(seed)
    r, n_out = 2, 2
    X = pack([[to_fmpq(int(rng.integers(-3, 4)) + (3 if i == j else 0)) for j in range(n_in + 1)] for i in range(r)], EXACT)
    B = pack([[to_fmpq(int(rng.integers(-3, 4)) + (3 if i == j else 0)) for j in range(r)] for i in range(n_out)], EXACT)
    if (X * X.transpose()).det() == 0 or (B.transpose() * B).det() == 0:
        return
    Xc, Bc = balance_s1(X, B)
    with arb_precision():
        GX, GB = Xc.transpose() * Xc, Bc * Bc.transpose()
    with mpmath.workdps(50):
        M = mpmath.matrix([[mpmath.mpf(int(v.p)) / int(v.q) for v in row] for row in (B * X).tolist()])
        U, S, V = mpmath.svd_r(M, full_matrices=False)
        Xs = mpmath.matrix([[mpmath.sqrt(S[i]) * V[i, j] for j in range(n_in + 1)] for i in range(r)])
        Bs = mpmath.matrix([[U[i, j] * mpmath.sqrt(S[j]) for j in range(r)] for i in range(n_out)])
        G1, G2 = Xs.T * Xs, Bs * Bs.T
        for i in range(n_in + 1):
            for j in range(n_in + 1):
                assert abs(arb_to_mpf(GX[i, j]) - G1[i, j]) < mpmath.mpf(10) ** -35
        for i in range(n_out):
            for j in range(n_out):
                assert abs(arb_to_mpf(GB[i, j]) - G2[i, j]) < mpmath.mpf(10) ** -35


def test_canonicalize_is_idempotent_and_orbit_invariant():
    net = TwoLayerReLU(2, 2, 1, X3, Y3)
    theta = [1, 2, -1, 1, Fraction(1, 2), Fraction(1, 3), 2, -1]
    sym = Symmetry(net, "S2", 0)
    c = canonicalize_pair(theta, sym)
    c2 = canonicalize(c, [sym], sweeps=2)
    assert (c - c2).contains(flint.arb_mat(net.n_params, 1))
    other = Reparameterization(net, ((sym, [[0, 3], [Fraction(1, 5), 0]]),)).apply(theta)
    assert (canonicalize_pair(other, sym) - c).contains(flint.arb_mat(net.n_params, 1))
    with pytest.raises(InvalidInputError, match="sweeps"):
        canonicalize(theta, [sym], sweeps=0)


def test_w_with_bias_needs_the_augmented_input():
    """Counterexample to the uncentered form of W with a bias: W_a = 1, b_a = -1, x = 1 on
    every sample gives h = 0, so lambda_max(E[hh^T]) = 0 < sigma_max(W_a)^2 lambda_min(E[xx^T])
    = 1. THEORY.md states W for h = W_a x (no bias); with a bias the check uses
    ([W_a | b_a], x~ = (x, 1)), for which lambda_min(E[x~x~^T]) = 0 here."""
    net = TwoLayerLinear(1, 1, 1, [[1], [1]], [[1], [0]])
    theta = [1, -1, 1]
    h = net.hidden(theta)
    assert all(v == 0 for row in h for v in row)
    assert bounds.lambda_max_lower_bound_linear(1, 1) == 1
    aug = pack([[to_fmpq(1), to_fmpq(1)], [to_fmpq(1), to_fmpq(1)]], EXACT)  # E[x~ x~^T]
    assert aug.det() == 0


def test_deep_linear_canonicalization_of_one_pair_preserves_function():
    net = DeepLinear([2, 2, 2, 2], X3, [[1, 0], [0, 1], [-1, 2]])
    theta = [1, 2, 0, 1, 1, -1, 2, 1, 1, 2, 0, 1]
    c = canonicalize_pair(theta, Symmetry(net, "S1", 1))
    for a, b in zip(net.outputs(c), net.outputs(theta)):
        assert all(_consistent(x, y) for x, y in zip(a, b))
    with pytest.raises(InvalidInputError, match="full rank"):  # W_3 is 1 x 2: rank 1 < r
        canonicalize_pair([1, 2, 0, 1, 1, -1, 2, 1, 1, 2], Symmetry(DeepLinear([2, 2, 2, 1], X3, Y3), "S1", 1))


def test_precision_error_on_undecidable_relu_sign():
    net = TwoLayerReLU(1, 1, 1, [[1]], [[0]])
    with pytest.raises(PrecisionError):
        net.gradient([flint.arb(1), flint.arb(-1, 1e-30), flint.arb(1)])
    assert net.loss([1, 2, 3]) == to_fmpq(Fraction(81, 2))  # f = 3 relu(1 + 2) = 9, y = 0: L = 81 / 2


def test_deeper_relu_chain_sweeps_decrease_the_norm():
    """Two S2 pairs sharing a layer: each sweep of pairwise balancing keeps the function and
    does not increase sum ||W||^2 (block coordinate descent on the log-scales)."""
    layers = [LayerSpec(2, 2, bias=True, activation="relu"), LayerSpec(2, 2, activation="relu"), LayerSpec(2, 1)]
    net = ChainNet(layers, X3, Y3)
    theta = [3, 1, -1, 2, 1, 2, 2, Fraction(1, 3), 1, 4, 5, -1]  # unit 1 of layer 0 sits on a kink at x_3
    syms = [Symmetry(net, "S2", 0), Symmetry(net, "S2", 1)]
    norms = []
    for k in (1, 2, 3):
        c = canonicalize(theta, syms, sweeps=k)
        for a, b in zip(net.outputs(c), net.outputs(theta)):
            assert all(_consistent(x, y) for x, y in zip(a, b))
        with arb_precision():
            norms.append(sum((c[i, 0] ** 2 for i in range(net.n_params)), flint.arb(0)))
    tiny = flint.arb(10) ** -60
    assert (norms[0] - flint.arb(sum(to_fmpq(t) ** 2 for t in theta))).upper() <= tiny
    assert (norms[1] - norms[0]).upper() <= tiny
    assert (norms[2] - norms[1]).upper() <= tiny
