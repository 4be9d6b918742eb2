"""PREC beyond "every battery result holds": properties of the safe-K search, of the bound
function across formats, exact preservation where no rounding can occur, and bad input.

Why the orderings asserted here must hold (and which one is dropped):
* tolerance: pass(K, rtol_1) implies pass(K, rtol_2) for rtol_1 < rtol_2, and the bisection
  probes fixed points, so its result is monotone (``PrecisionProblem.safe_K_search``);
* certified safe K, fp64 >= fp32 >= bf16 and fp32 >= fp16: ``forward_error_bound`` and
  ``no_overflow_guaranteed`` are monotone in (u, u_c, eta, eta_c, 1 / Omega) and these are
  ordered fp64 <= fp32 <= bf16 and fp32 <= fp16 (checked below on the formats), so the
  certified predicates are nested and the same bisection argument applies;
* measured >= certified for each dtype (battery entry ``prec_safe_K_certified``);
* DROPPED: measured safe K of fp64 >= fp32 >= fp16/bf16. Rounding errors are not monotone in u
  (they can cancel by chance), so no theorem orders the measured errors at a given K; and fp16
  vs bf16 is genuinely unordered: fp16 is 8x more precise, bf16 has the range
  (``test_fp16_bf16_unordered_by_range`` exhibits bf16 > fp16 rigorously).
"""
from __future__ import annotations

import re
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from convrate.errors import (InvalidInputError, PrecisionError, SingularReparameterizationError,
                             ToleranceError)
from convrate.numerics.checks_precision import prec_instances
from convrate.numerics.fp_precision import (DTYPES, PrecisionProblem, UnsafeStrengthError, controlled_pair,
                                            error_vs_K, function_error, growth_exponent, largest_safe_K,
                                            precision_table, require_safe_K)
from convrate.theory import bounds_precision as bp

small = prec_instances(max_r=5, max_dim=8)
RTOLS = [3e-1, 1e-1, 3e-2, 1e-2, 1e-3, 1e-4]


@settings(max_examples=max(2, settings().max_examples // 3))
@given(small, st.sampled_from(DTYPES), st.lists(st.sampled_from(RTOLS), min_size=2, max_size=2, unique=True),
       st.booleans())
def test_safe_K_monotone_in_tolerance(inst, dtype, rtols, certified):
    lo, hi = sorted(rtols)
    prob = inst.problem()
    a = prob.safe_K_search(dtype, lo, certified=certified, resolution=0.1)
    b = prob.safe_K_search(dtype, hi, certified=certified, resolution=0.1)
    assert a.K <= b.K, f"{inst}: safe K {a.K} at rtol {lo} > {b.K} at rtol {hi}"
    for s in (a, b):
        assert s.K < s.K_fail and (s.K_fail == float("inf") or s.K_fail <= s.K * 10**0.1 * (1 + 1e-12) or s.K == 0)


@settings(max_examples=max(2, settings().max_examples // 3))
@given(small, st.sampled_from([1e-1, 1e-2]))
def test_certified_safe_K_ordered_across_dtypes(inst, rtol):
    prob = inst.problem()
    c = {d: prob.safe_K_search(d, rtol, certified=True, resolution=0.1).K for d in DTYPES}
    assert c["fp64"] >= c["fp32"] >= c["bf16"], c
    assert c["fp32"] >= c["fp16"], c


def test_format_parameters_ordered():
    """The premise of the certified ordering: (u, u_c, eta, eta_c) nondecreasing and Omega
    nonincreasing along fp64 -> fp32 -> bf16 and fp32 -> fp16; and the documented constants."""
    assert [bp.unit_roundoff(d) for d in DTYPES] == [Fraction(1, 2**53), Fraction(1, 2**24), Fraction(1, 2**8),
                                                     Fraction(1, 2**11)]
    assert bp.max_finite("fp16") == 65504
    for d, t in (("fp64", torch.float64), ("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        fi = torch.finfo(t)
        assert float(bp.max_finite(d)) == fi.max and float(bp.float_format(d).eta) == fi.tiny
        assert float(2 * bp.unit_roundoff(d)) == fi.eps
    for wide, narrow in (("fp64", "fp32"), ("fp32", "bf16"), ("fp32", "fp16")):
        fw, fn = bp.float_format(wide), bp.float_format(narrow)
        (uw, ew), (un, en) = bp.cast_roundoff(wide), bp.cast_roundoff(narrow)
        assert fw.u <= fn.u and fw.eta <= fn.eta and uw <= un and ew <= en and fw.max_finite >= fn.max_finite


@given(st.integers(1, 40), st.integers(1, 16), st.integers(1, 40),
       st.lists(st.floats(1e-3, 1e3), min_size=4, max_size=4), st.integers(0, 4))
def test_bound_monotone_in_format_and_norms(n, r, m, norms, which):
    x, p, q, g = norms
    vals = [bp.forward_error_bound(d, n, r, m, x, p, q, g) for d in ("fp64", "fp32", "bf16")]
    assert vals[0] <= vals[1] <= vals[2]
    assert bp.forward_error_bound("fp32", n, r, m, x, p, q, g) <= bp.forward_error_bound("fp16", n, r, m, x, p, q, g)
    args = [x, p, q, g, 0.0]
    bigger = list(args)
    bigger[which] = args[which] * 2 + 1
    assert bp.forward_error_bound("fp16", n, r, m, *args) <= bp.forward_error_bound("fp16", n, r, m, *bigger)


def test_bound_scales_like_kappa():
    """kappa_form_bound at kappa(A) = K grows linearly in K for large K (PREC's u kappa(A) law):
    the ratio bound(100 K) / bound(K) tends to 100, and the undefended bound is the K = 1 value."""
    args = dict(dtype="fp32", n=16, r=8, m=16, norm_x=4, norm_Wa_F=2, norm_Wb_F=3, norm_WbWa_F=5)
    f = lambda K: bp.kappa_form_bound(norm_A=K**0.5, norm_Ainv=K**0.5, **args)
    assert abs(f(1e8) / f(1e6) - 100) < 0.01
    lead = bp.leading_order_model("fp32", 16, 8, 1e6, 2, 3, 5, 4)
    assert abs(f(1e6) / lead - 1) < 1e-3


def test_fp16_bf16_unordered_by_range():
    """Weights beyond fp16's range: fp16 overflows at K = 1 (certainly), bf16 is certified there."""
    Wa, Wb, X = controlled_pair(3, 2, 2, 2, 2, scale=1.0, cond=1.0)
    Wa = Wa * 1e5
    prob = PrecisionProblem(Wa, Wb / 1e5, X)
    f16 = prob.safe_K_search("fp16", 0.5, resolution=0.5)
    b16c = prob.safe_K_search("bf16", 0.5, certified=True, resolution=0.5)
    b16 = prob.safe_K_search("bf16", 0.5, resolution=0.5)
    assert prob.evaluate_K(1, "fp16").overflow_certain and f16.K == 0 and f16.cause == "overflow"
    assert b16.K >= b16c.K >= 1 > f16.K


@given(st.integers(0, 2**16), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.sampled_from(DTYPES))
def test_exact_when_no_rounding_can_occur(seed, r, n, m, dtype):
    """Entries in {-1, 0, 1} and A = permutation * diag(2^k): every cast, product and sum is exact
    in every dtype, so the defended function equals W_b W_a x exactly (error 0, not small)."""
    rng = np.random.default_rng(seed)
    Wa, Wb = rng.integers(-1, 2, (r, n)).astype(float), rng.integers(-1, 2, (m, r)).astype(float)
    X = rng.integers(-1, 2, (3, n)).astype(float)
    Wa[0], Wb[0], X[:, 0] = np.eye(n)[0], np.eye(r)[0], 1.0  # y_0 = x_0 = 1: no zero output
    A = np.eye(r)[rng.permutation(r)] * 2.0 ** rng.integers(-6, 7, r)
    fe = function_error(Wa, Wb, A, X, dtype)
    assert not fe.overflow and fe.max_rel == 0 and all(e == 0 for e in fe.abs_errors)


def test_error_vs_K_points_within_bound():
    pts = error_vs_K(*controlled_pair(1, 4, 6, 5, 3), Ks=[1, 1e3, 1e6], dtypes=("fp32", "fp16"))
    assert [(p.K, p.dtype) for p in pts] == [(K, d) for K in (1.0, 1e3, 1e6) for d in ("fp32", "fp16")]
    for p in pts:
        assert p.overflow or p.max_rel <= p.bound_max_rel


def test_growth_exponent_needs_a_regime():
    prob = PrecisionProblem(*controlled_pair(2, 3, 4, 4, 2))
    fit = growth_exponent(prob, "fp32", Ks=[1.0, 2.0])
    assert fit.exponent is None and fit.points < 3


def test_precision_table_consistent():
    rows = precision_table(0)
    assert [r["dtype"] for r in rows] == list(DTYPES)
    for row in rows:
        assert row["u"] == float(bp.unit_roundoff(row["dtype"]))
        assert row["safe_K@0.001"] <= row["safe_K@0.01"]
        for rt in ("0.01", "0.001"):
            assert row[f"safe_K@{rt}"] >= row[f"certified_K@{rt}"]
            assert row[f"cause@{rt}"] in ("tolerance", "overflow", "none")
    c = {r["dtype"]: r["certified_K@0.01"] for r in rows}
    assert c["fp64"] >= c["fp32"] >= max(c["bf16"], c["fp16"])


# ---------------------------------------------------------------- bad input
W = controlled_pair(0, 3, 4, 4, 2)


def test_nan_weights_rejected():
    Wa = W[0].copy()
    Wa[1, 2] = np.nan
    with pytest.raises(InvalidInputError, match=r"W_a\[1,2\] is nan"):
        largest_safe_K(Wa, W[1], W[2], "fp32", 1e-2)
    Wb = W[1].copy()
    Wb[0, 0] = np.inf
    with pytest.raises(InvalidInputError, match=r"W_b\[0,0\] is inf"):
        function_error(W[0], Wb, np.eye(3), W[2], "fp32")


@pytest.mark.parametrize("rtol", [0, 1, -0.1, 1.5, float("nan")])
def test_tolerance_outside_unit_interval(rtol):
    with pytest.raises(ToleranceError, match="tolerance must lie in"):
        largest_safe_K(*W, "fp32", rtol)


@pytest.mark.parametrize("dtype", ["fp8", "float32", "int8"])
def test_unsupported_dtype(dtype):
    with pytest.raises(InvalidInputError, match=f"unsupported dtype '{dtype}'"):
        function_error(W[0], W[1], np.eye(3), W[2], dtype)
    with pytest.raises(InvalidInputError, match="unsupported dtype"):
        bp.unit_roundoff(dtype)


def test_singular_A():
    A = np.eye(3)
    A[2] = A[0] + A[1]
    with pytest.raises(SingularReparameterizationError, match="A is singular: exact rank 2 < 3"):
        function_error(W[0], W[1], A, W[2], "fp64")


def test_shapes_and_K():
    with pytest.raises(InvalidInputError, match="W_b has 2 columns"):
        function_error(W[0], W[1][:, :2], np.eye(3), W[2], "fp64")
    with pytest.raises(InvalidInputError, match="A must be 3x3"):
        function_error(W[0], W[1], np.eye(2), W[2], "fp64")
    with pytest.raises(InvalidInputError, match="K must be a finite number >= 1"):
        error_vs_K(*W, Ks=[0.5], dtypes=("fp32",))
    with pytest.raises(InvalidInputError, match="sample 0 has W_b W_a x = 0"):
        PrecisionProblem(W[0], W[1], np.zeros((1, 4)))
    with pytest.raises(PrecisionError, match="gamma_300 undefined"):
        bp.forward_error_bound("bf16", 300, 2, 2, 1, 1, 1, 1)


def test_refused_K_names_largest_safe_K():
    Wa, Wb, X = controlled_pair(4, 4, 6, 6, 3)
    safe = largest_safe_K(Wa, Wb, X, "fp16", 1e-2)
    assert 1 <= safe.K < 1e6
    expected = f"largest safe K for fp16 at rtol 0.01 is {safe.K:.4g} (limit: {safe.cause})"
    with pytest.raises(UnsafeStrengthError, match=re.escape(expected)) as info:
        require_safe_K(Wa, Wb, X, 1e6, "fp16", 1e-2)
    assert info.value.largest_safe == safe and isinstance(info.value, InvalidInputError)
    assert require_safe_K(Wa, Wb, X, 1.0, "fp64", 1e-2).max_rel <= 1e-2


# ---------------------------------------------------------------- the bound functions at their edges
@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_overflow_predicates_at_their_thresholds(dtype):
    """overflow_certain includes its threshold; no_overflow_guaranteed accepts a stored entry x, P
    or Q exactly when its worst rounded cast (1 + u_c)|t| + eta_c stays <= Omega (values one
    eta_c (or 1e-40 relative, where dps 60 cannot resolve eta_c) inside and outside that edge), and
    refuses when gamma_n is undefined."""
    import mpmath

    from convrate.theory import bounds_precision as bp

    fmt = bp.float_format(dtype)
    t = fmt.overflow_threshold
    assert bp.overflow_certain(dtype, t, 0, 0) and not bp.overflow_certain(dtype, t * Fraction(999, 1000), 0, 0)
    uc, ec = bp.cast_roundoff(dtype)
    omega = fmt.max_finite
    # a margin of eta_c where the mpmath evaluation (dps 60) resolves it (fp16), else 1e-40 relative
    gap = max(ec, omega * Fraction(1, 10**40))
    inside, outside = (omega - 2 * gap) / (1 + uc), (omega + gap / 2 - ec) / (1 + uc)
    small = Fraction(1, 2**20)
    with mpmath.workdps(60):
        for pos in range(3):
            entries = [small, small, small]
            for v, want in ((inside, True), (outside, False)):
                entries[pos] = v
                # row sums that keep the hidden and output entries far below Omega
                got = bp.no_overflow_guaranteed(dtype, 2, 2, *entries, small, small)
                assert got is want, (pos, v, want)
        n_big = int(1 / fmt.u) + 1
        assert bp.no_overflow_guaranteed(dtype, n_big, 2, small, small, small, small, small) is False


def test_kappa_form_and_leading_order_are_the_documented_instances():
    """kappa_form_bound = forward_error_bound at ||P|| = ||A|| ||W_a||, ||Q|| = ||A^-1|| ||W_b||,
    ||QP|| = ||W_b W_a||, no residual; leading_order_model = (2 u_c + gamma_n + gamma_r) kappa
    ||W_b|| ||W_a|| ||x|| + u_c ||W_b W_a|| ||x|| (exact rationals vs the mpmath evaluation)."""
    import mpmath

    from convrate.theory import bounds_precision as bp

    with mpmath.workdps(60):
        for dtype in ("fp32", "bf16"):
            args = (7, 3, 5, Fraction(3, 2), 4, Fraction(1, 3), 2, 5, Fraction(7, 4))
            n, r, m, x, nA, nAi, nWa, nWb, nWbWa = args
            kf = bp.kappa_form_bound(dtype, *args)
            assert abs(kf - bp.forward_error_bound(dtype, n, r, m, x, nA * nWa, nAi * nWb, nWbWa, 0)) <= \
                kf * mpmath.mpf(10) ** -50
            fmt = bp.float_format(dtype)
            uc, _ = bp.cast_roundoff(dtype)
            kappa = Fraction(12)
            want = ((2 * uc + bp.gamma(n, fmt.u) + bp.gamma(r, fmt.u)) * kappa * nWb * nWa + uc * nWbWa) * x
            got = bp.leading_order_model(dtype, n, r, kappa, nWa, nWb, nWbWa, x)
            w = mpmath.mpf(want.numerator) / want.denominator
            assert abs(got - w) <= w * mpmath.mpf(10) ** -50


def _exact(v) -> "mpmath.mpf":
    import mpmath

    return mpmath.mpf(v.numerator) / v.denominator


def test_forward_error_bound_is_step_4_in_exact_rationals():
    """forward_error_bound = T_res + T_x + T_P + T_1 + T_Q + T_2 of the module doc (step 4),
    recomputed term by term in exact rationals. n, r, m are squares (every sqrt is rational) and
    all different; fp16 with norms ~ 1e-3, so the underflow terms (eta_c ~ 1e-4, c_k) weigh as
    much as the rounding terms and every term of every sum is visible at 1e-40 relative."""
    import mpmath

    fx = Fraction
    n, r, m = 4, 9, 16
    sq = {1: 1, 4: 2, 9: 3, 16: 4, 36: 6, 144: 12}
    fmt = bp.float_format("fp16")
    uc, ec = bp.cast_roundoff("fp16")
    gn, gr = bp.gamma(n, fmt.u), bp.gamma(r, fmt.u)
    cn, cr = bp.underflow_slack(n, fmt), bp.underflow_slack(r, fmt)
    x, p, q, g, d = fx(3, 1000), fx(5, 1000), fx(7, 1000), fx(2, 1000), fx(11, 10**6)
    X1 = (1 + uc) * x + ec * sq[n]
    P1 = (1 + uc) * p + ec * sq[r * n]
    Q1 = (1 + uc) * q + ec * sq[m * r]
    E1 = gn * P1 * X1 + cn * sq[r]
    H1 = P1 * X1 + E1
    terms = [d * x, g * (uc * x + ec * sq[n]), q * (uc * p + ec * sq[r * n]) * X1, q * E1,
             (uc * q + ec * sq[m * r]) * H1, gr * Q1 * H1 + cr * sq[m]]
    with mpmath.workdps(80):
        want = _exact(sum(terms))
        got = bp.forward_error_bound("fp16", n, r, m, x, p, q, g, d)
        assert abs(got - want) <= want * mpmath.mpf(10) ** -60
        assert bp.forward_error_bound("fp16", n, r, m, x, p, q, g) < got  # residual 0 by default
    smallest = min(t for t in terms if t) / sum(terms)
    assert smallest > Fraction(1, 10**20)  # each term matters far above the comparison's 1e-60


def test_cast_roundoff_is_the_closed_form_of_the_chain():
    """(M2) solved: along a chain of roundings (u_i, eta_i), u_c = prod (1 + u_i) - 1 and
    eta_c = sum_j 2 eta_j prod_{i > j} (1 + u_i) (the recurrence of ``cast_roundoff`` unrolled)."""
    for name, chain in bp.CAST_CHAIN.items():
        fmts = [bp.FORMATS[s] for s in chain]
        a, b = Fraction(1), Fraction(0)
        for j, f in enumerate(fmts):
            a *= 1 + f.u
            later = Fraction(1)
            for g in fmts[j + 1:]:
                later *= 1 + g.u
            b += 2 * f.eta * later
        assert bp.cast_roundoff(name) == (a - 1, b), name
    assert len(bp.CAST_CHAIN["bf16"]) == 3  # the closed form is exercised on a chain of three


def test_gamma_and_underflow_slack_values_and_edges():
    """gamma_k = k u / (1 - k u) (Higham (3.5)): 0 for the empty product k = 0, 1 at k u = 1/2,
    undefined (PrecisionError) from k u = 1 on, refused for k < 0; c_k = 2 (2k + 1)(1 + gamma_k) eta."""
    u = Fraction(1, 8)
    assert bp.gamma(0, u) == 0 and bp.gamma(4, u) == 1 and bp.gamma(1, u) == Fraction(1, 7)
    for k in (8, 9):
        with pytest.raises(PrecisionError):
            bp.gamma(k, u)
    with pytest.raises(InvalidInputError):
        bp.gamma(-1, u)
    fmt = bp.float_format("fp16")
    for k in (1, 5):
        g = Fraction(k, 2**11 - k)
        assert bp.underflow_slack(k, fmt) == 2 * (2 * k + 1) * (1 + g) * Fraction(1, 2**14)


@pytest.mark.parametrize("dims, bad", [((0, 2, 3), "n"), ((2, 0, 3), "r"), ((2, 3, 0), "m"), ((Fraction(5, 2), 2, 3), "n")])
def test_bound_refuses_dimensions_naming_them(dims, bad):
    """A dimension that is not a positive integer (0, or 5/2 >= 1) is refused, naming it."""
    with pytest.raises(InvalidInputError, match=f"dimension {bad} must be a positive integer"):
        bp.forward_error_bound("fp32", *dims, 1, 1, 1, 1)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_no_overflow_guaranteed_at_the_hidden_and_output_thresholds(dtype):
    """The hidden and output bounds of the module doc, H_inf = (1 + gamma_n)((1 + u_c) rowsum_P +
    n eta_c)((1 + u_c) max|x| + eta_c) + c_n and Y_inf = (1 + gamma_r)((1 + u_c) rowsum_Q +
    r eta_c) H_inf + c_r, are accepted up to Omega and refused above: row sums solved in exact
    rationals to put H_inf (then Y_inf) a quarter of the smallest of its additive terms (c_n, n
    eta_c, ...) inside and outside Omega, so every term and factor decides the answer."""
    import mpmath

    fmt = bp.float_format(dtype)
    uc, ec = bp.cast_roundoff(dtype)
    n, r, omega = 3, 2, fmt.max_finite
    gn, gr = bp.gamma(n, fmt.u), bp.gamma(r, fmt.u)
    cn, cr = bp.underflow_slack(n, fmt), bp.underflow_slack(r, fmt)
    x = Fraction(1)
    xs = (1 + uc) * x + ec

    def rowsum_for_H(H):  # solve H_inf(rowsum_P) = H
        return ((H - cn) / ((1 + gn) * xs) - n * ec) / (1 + uc)

    def H_of(R):
        return (1 + gn) * ((1 + uc) * R + n * ec) * xs + cn

    def rowsum_for_Y(Y, H):  # solve Y_inf(rowsum_Q) = Y at hidden bound H
        return ((Y - cr) / ((1 + gr) * H) - r * ec) / (1 + uc)

    small = Fraction(1, 4)
    with mpmath.workdps(120):  # bf16: the margins are ~1e-77 of Omega
        d = min(cn, n * ec * (1 + gn) * xs, ec) / 4
        for H, want in ((omega - d, True), (omega + d, False)):
            R = rowsum_for_H(H)
            assert bp.no_overflow_guaranteed(dtype, n, r, x, small, small, R, small) is want, (H, want)
        Hm = H_of(Fraction(8))  # a moderate hidden bound
        d = min(cr, r * ec * (1 + gr) * Hm, ec) / 4
        for Y, want in ((omega - d, True), (omega + d, False)):
            RQ = rowsum_for_Y(Y, Hm)
            assert bp.no_overflow_guaranteed(dtype, n, r, x, small, small, Fraction(8), RQ) is want, (Y, want)


@pytest.mark.parametrize("negative", range(5))
def test_bound_refuses_each_negative_norm(negative):
    """Each of the five norms (||x||, ||P~||, ||Q~||, ||Q~P~||, ||Delta||) is an upper bound of a
    norm, so a negative value is refused, whichever argument carries it."""
    norms = [Fraction(1)] * 5
    norms[negative] = Fraction(-1, 10**6)
    with pytest.raises(InvalidInputError, match="norms must be nonnegative"):
        bp.forward_error_bound("fp32", 2, 2, 2, *norms)
