"""Tests of convrate.theory: the statement registry, the sympy derivations, the renderers, and
numeric confirmations of the statements found false (SPECDEF-OPT, F1's constant, B).

Numeric checks use mpmath at dps = 50 with certified eigenvalue enclosures (``sym_eig``) and
decide through ``compare`` with a rigorous ``err``; step counts use exact rationals.
"""
from __future__ import annotations

import json
import re
from fractions import Fraction

import mpmath
import numpy as np
import pytest
import sympy as sp
from hypothesis import assume, example, given
from hypothesis import strategies as st

from convrate.numerics.linalg import sym_eig
from convrate.theory import bounds, derive_runner
from convrate.theory.core import Status, compare
from convrate.theory.derive_slowdown import exact_count
from convrate.theory.derive_transforms import Proof, rotation
from convrate.theory.statements import FORMULAS, REGISTRY, bound_function

THEORY_IDS = ("T1", "T2", "T3", "T4", "W", "W'", "F1", "F2", "P", "N", "LM", "A", "C", "R1", "R2", "B", "PREC",
              "SPECDEF-OPT")
#: statements this project found false as THEORY.md words them (counterexample + proved correction)
CORRECTED = {"SPECDEF-OPT", "F1", "B", "R1", "R2"}
CORRECTED |= {"PREC-ALPHA"}  # statements_inserted
CORRECTED |= {"SO-GN", "SO-SOPHIA"}  # theory.statements_second_order
CORRECTED |= {"S4", "O"}  # section 6, decoder LLMs: distinct frequencies mod 2 pi; signed permutations commute with Adam
DPS = 50


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    return {r["id"]: r for r in derive_runner.run_all()}


# ---------------------------------------------------------------- registry and derivations


def test_registry_covers_theory_and_names_real_bounds() -> None:
    assert set(THEORY_IDS) <= set(REGISTRY)
    for sid, st_ in REGISTRY.items():
        assert st_.id == sid and st_.title and st_.text and st_.assumptions
        assert callable(st_.derive), sid
        if st_.bound is not None:
            assert callable(bound_function(sid)), f"{sid}: {st_.bound}"
        assert sid in FORMULAS


def test_every_derivation_runs_with_checked_steps(results: dict[str, dict]) -> None:
    assert set(results) == set(REGISTRY)
    for sid, r in results.items():
        assert r["status"] in {s.value for s in Status}, sid
        assert not any(s.startswith("[error]") for s in r["steps"]), (sid, r["steps"])
        assert not any(s.startswith(("[sympy] FAILED", "[sympy] NOT ")) for s in r["steps"]), (sid, r["steps"])
        assert r["status"] in ("proved", "corrected"), (sid, r["status"])
        assert r["checked"] >= 1, f"{sid} claims {r['status']} without a sympy-checked step"
        assert r["closed_forms"], f"{sid} records no closed form"


def test_false_statements_carry_counterexample_and_correction(results: dict[str, dict]) -> None:
    for sid, r in results.items():
        if sid in CORRECTED:
            assert r["status"] == Status.CORRECTED.value, sid
            assert r["counterexample"] and r["corrected"], sid
            assert REGISTRY[sid].corrected == r["corrected"]
        else:
            assert r["status"] == Status.PROVED.value, sid
            assert r["corrected"] is None and REGISTRY[sid].corrected is None, sid


def test_proof_machinery_refutes_and_never_proves_silently() -> None:
    a, b = sp.symbols("a b")
    p = Proof()
    assert not p.zero("a b - b a + a = 0 (false)", a * b - b * a + a)
    d = p.done()
    assert d.status is Status.FALSE and "residual nonzero" in d.counterexample
    (R, circ) = rotation("R")
    p2 = Proof()
    assert not p2.equal("R^T R = I without the circle relation", R.T * R, sp.eye(2))
    assert p2.done().status is Status.FALSE
    p3 = Proof()
    assert p3.equal("R^T R = I on the circle", R.T * R, sp.eye(2), [circ])
    assert p3.done().status is Status.PROVED
    p4 = Proof()
    p4.argue("an unchecked argument only")
    assert derive_runner._downgrade(p4.done().status, derive_runner._checked(p4.steps)) is Status.CHECKED_ONLY


#: statements whose identities are proved in every dimension (matrix expressions of symbolic size or
#: scalar laws that are the general case); the others rely on a fixed-size instance somewhere
GENERAL = {"T1", "T2", "T3", "P", "N", "LM", "A", "C", "R1", "B", "F1", "SPECDEF-OPT", "ORBIT-NULL", "PREC"}


def test_derive_json_says_how_far_each_proof_goes(results: dict[str, dict]) -> None:
    """``convrate derive --json``: scope "general" / "general + argued" when every load-bearing
    identity was verified in every dimension, "instances + argued" otherwise, with the argued
    (prose / cited) steps listed and the label shown ("proved (instances) + argued", ...)."""
    for sid, r in results.items():
        if sid not in THEORY_IDS + ("ORBIT-NULL",):
            continue
        assert r["scope"] in ("general", "general + argued", "instances + argued"), sid
        argued = [s for s in r["steps"] if s.startswith(("[argument]", "[cited]"))]
        if sid in GENERAL:
            assert r["scope"].startswith("general") and r["instance_steps"] == 0 and r["general_steps"] >= 1, sid
            assert r["argued_steps"] == argued
            assert r["label"] == f"{r['status']} (general)" + (" + argued" if argued else "")
        else:
            assert r["scope"] == "instances + argued" and r["instance_steps"] >= 1, sid
            assert r["label"] == f"{r['status']} (instances) + argued"
            assert r["argued_steps"][:-1] == argued and "fixed-size symbolic instances" in r["argued_steps"][-1]


def test_general_identities_are_checked_not_assumed() -> None:
    """Matrix expressions of symbolic size: a transpose, a swapped factor or a dropped term is not
    reduced to 0 (the step is recorded unproved and the statement drops to checked-only); the
    correct identity is proved with scope general."""
    from convrate.theory.core import Scope
    from convrate.theory.derive_transforms import general_pair

    g = general_pair()
    A, Wa, Wb = g.A, g.Wa, g.Wb
    for wrong in (A.I * Wa, A.T * Wa, Wa.T.T * 2):  # the true law is A^-T W_a
        q = Proof()
        assert not q.equal("gradient block", A.I.T * Wa, wrong, scope="general")
        assert derive_runner._downgrade(q.done().status, derive_runner._checked(q.steps)) is Status.CHECKED_ONLY
    q = Proof()
    assert not q.equal("(W_b A)^T = W_b^T A^T (factors not swapped: false)", (Wb * A).T, Wb.T * A.T, scope="general")
    q = Proof()
    assert q.equal("(W_b A)^T = A^T W_b^T", (Wb * A).T, A.T * Wb.T, scope="general")
    assert q.done().scope is Scope.GENERAL and q.steps[0].startswith("[sympy:general] ")
    q.argue("a written step")
    assert q.done().scope is Scope.GENERAL_ARGUED and q.done().argued == ["[argument] a written step"]
    q.equal("2 x 2 instance", sp.eye(2), sp.eye(2))
    assert q.done().scope is Scope.INSTANCES_ARGUED
    q2 = Proof()
    q2.equal("only an example", sp.eye(2), sp.eye(2), scope="example")
    assert derive_runner._downgrade(q2.done().status, derive_runner._checked(q2.steps)) is Status.CHECKED_ONLY


@given(m=st.fractions(-10, 10, max_denominator=50), b=st.fractions(-10, 10, max_denominator=50),
       e=st.fractions(0, 5, max_denominator=50), rel=st.sampled_from(["<=", ">=", "=="]))
def test_compare_verdict_and_margin(m: Fraction, b: Fraction, e: Fraction, rel: str) -> None:
    """The verdict is the exact inequality with allowance e; the margin is >= -1 whenever the
    check holds, < 0 whenever it fails, and 0 exactly when measured == bound for '=='."""
    r = compare("X", "instance", m, rel, b, precision="exact rational", err=e)
    expected = {"<=": m - b <= e, ">=": b - m <= e, "==": abs(m - b) <= e}[rel]
    assert r.holds is expected
    if r.holds:
        assert r.margin >= -1 - 1e-12
    else:
        assert r.margin < 0
    if rel == "==":
        assert (r.margin == 0) is (m == b)


def test_renderers(results: dict[str, dict]) -> None:
    rs = list(results.values())
    md = derive_runner.to_markdown(rs)
    tex = derive_runner.to_latex(rs)
    js = json.loads(derive_runner.to_json(rs))
    for sid in results:
        assert f"## {sid}:" in md
    assert [r["id"] for r in js] == list(results) and all(r["status"] == results[r["id"]]["status"] for r in js)
    assert tex.startswith(r"\documentclass") and tex.rstrip().endswith(r"\end{document}")
    assert tex.count(r"\[") == tex.count(r"\]") >= len(results)
    for line in tex.splitlines():
        assert line.replace(r"\$", "").count("$") % 2 == 0, line
    assert re.search(r"\^\{[^{}]*\}\s*\^\{", tex) is None  # no double superscript (LaTeX error)


# ---------------------------------------------------------------- SPECDEF-OPT, numerically


def _rational_matrix(rng: np.random.Generator, rows: int, cols: int) -> list[list[Fraction]]:
    return [[Fraction(int(v), 16) for v in rng.integers(-48, 49, size=cols)] for _ in range(rows)]


def _sigma_max(M: mpmath.matrix) -> tuple[mpmath.mpf, mpmath.mpf]:
    """sigma_max(M) and a rigorous bound on its error (certified enclosure of lambda_max(M M^T))."""
    e = sym_eig(M * M.T)
    lam, rad = e.values[-1], e.radius[-1]
    s = mpmath.sqrt(lam)
    return s, rad / s + mpmath.mpf(10) ** (5 - DPS) * s


def _orth_defect(Q: mpmath.matrix) -> mpmath.mpf:
    F = Q.T * Q - mpmath.eye(Q.rows)
    return mpmath.sqrt(sum(F[i, j] ** 2 for i in range(F.rows) for j in range(F.cols)))


def _random_orthogonal(rng: np.random.Generator, r: int) -> mpmath.matrix:
    Q, _ = mpmath.qr(mpmath.matrix([[mpmath.mpf(int(v)) / 7 for v in rng.integers(-20, 21, size=r)] for _ in range(r)]))
    return Q


def _specdef_case(seed: int, r: int, k_num: int, k_den: int, extra: int) -> None:
    rng = np.random.default_rng(seed)
    K = Fraction(k_den + k_num, k_den)  # K > 1
    W = mpmath.matrix(_rational_matrix(rng, r, r + extra))
    sW, errW = _sigma_max(W)
    U = sym_eig(W * W.T).vectors
    U = mpmath.matrix([[U[i, r - 1 - j] for j in range(r)] for i in range(r)])  # descending singular values
    dU = _orth_defect(U)
    gain = bounds.specdef_max_gain(K, r)
    scale = gain * sW
    # A = U diag(s) U^T with U^T U = I + F moves sigma_max(A W) by at most ~3 ||F|| s_max sigma_max(W)
    err_U = 4 * (dU + mpmath.mpf(10) ** (5 - DPS)) * scale
    prec = f"mpmath dps={DPS} + arb enclosure of lambda_max(M M^T); ||U^T U - I||_F = {mpmath.nstr(dU, 3)}"
    out = {}
    for name, prof in (("geometric", bounds.specdef_geometric_profile(K, r)), ("spike", bounds.specdef_spike_profile(K, r))):
        A = U * mpmath.diag(prof) * U.T
        out[name] = _sigma_max(A * W)
    (sg, eg), (ss, es) = out["geometric"], out["spike"]
    err = eg + es + 2 * err_U + gain * errW
    inst = f"seed={seed} r={r} K={K} n_in={r + extra}"
    # the spike attains K^((r-1)/r) sigma_max(W_a) ...
    res = compare("SPECDEF-OPT", inst, ss, "==", gain * sW, precision=prec, err=err)
    assert res.holds, res
    # ... and strictly beats the geometric profile (ratio K^((r-2)/(2r)) > 1 for r >= 3)
    ratio = mpmath.mpf(K.numerator) / K.denominator
    expected_gap = sW * (gain - mpmath.sqrt(ratio))
    assert expected_gap > 0
    res = compare("SPECDEF-OPT", inst, ss - sg, "==", expected_gap, precision=prec, err=err)
    assert res.holds, res
    assert compare("SPECDEF-OPT", inst, ss, ">=", sg, precision=prec, err=err).holds
    # no A with kappa(A) <= K, |det A| = 1 beats K^((r-1)/r) sigma_max(W_a): random ones and
    # near-optimal ones (log-profile between the spike and a random admissible profile, aligned with U)
    logK = mpmath.log(ratio)
    spike_log = [mpmath.log(x) for x in bounds.specdef_spike_profile(K, r)]
    for trial in range(6):
        u = [mpmath.mpf(float(v)) * logK for v in rng.random(r)]
        mean = mpmath.fsum(u) / r
        logs = [x - mean for x in u]  # sum 0 (|det| = 1), spread <= ln K (kappa <= K)
        if trial >= 3:
            tau = mpmath.mpf(float(rng.random())) / 4
            logs = [(1 - tau) * a + tau * b for a, b in zip(spike_log, logs)]
            Q1, Q2 = U, U
        else:
            Q1, Q2 = _random_orthogonal(rng, r), _random_orthogonal(rng, r)
        A = Q1 * mpmath.diag([mpmath.exp(x) for x in logs]) * Q2.T
        sA, eA = _sigma_max(A * W)
        e_rand = eA + 4 * (_orth_defect(Q1) + _orth_defect(Q2) + mpmath.mpf(10) ** (5 - DPS)) * scale + gain * errW
        res = compare("SPECDEF-OPT", inst + f" trial={trial}", sA, "<=", gain * sW, precision=prec, err=e_rand)
        assert res.holds, res


@given(seed=st.integers(0, 2**16), r=st.integers(3, 6), k_num=st.integers(1, 2000), k_den=st.integers(1, 4),
       extra=st.integers(0, 2))
def test_specdef_spike_beats_geometric_and_is_optimal(seed: int, r: int, k_num: int, k_den: int, extra: int) -> None:
    with mpmath.workdps(DPS):
        _specdef_case(seed, r, k_num, k_den, extra)


def test_specdef_counterexample_r3_K100() -> None:
    with mpmath.workdps(DPS):
        geo = max(bounds.specdef_geometric_profile(100, 3))
        spike = max(bounds.specdef_spike_profile(100, 3))
        assert abs(geo - 10) < mpmath.mpf(10) ** (10 - DPS)
        assert abs(spike - mpmath.cbrt(10000)) < mpmath.mpf(10) ** (10 - DPS)
        assert spike > 2 * geo


# ---------------------------------------------------------------- F1's constant


@given(num=st.integers(2, 20000), den=st.integers(1, 20), m=st.integers(1, 40))
def test_f1_worst_case_count_is_kappa_over_4(num: int, den: int, m: int) -> None:
    """N = gd_worst_case_steps(kappa, tol) satisfies (kappa/4)(1 - kappa^-2) ln(1/tol) <= N <
    (kappa/4) ln(1/tol) + 1 (x <= artanh x <= x/(1 - x^2)), so N / ((kappa/2) ln(1/tol)) -> 1/2."""
    kappa = Fraction(num + den, den)
    tol = Fraction(1, 2**m)
    n = bounds.gd_worst_case_steps(kappa, tol)
    with mpmath.workdps(DPS):
        k = mpmath.mpf(kappa.numerator) / kappa.denominator
        lg = m * mpmath.log(2)
        err = mpmath.mpf(10) ** (10 - DPS) * k * lg
        prec = f"mpmath dps={DPS}; N integer"
        assert compare("F1", f"kappa={kappa} tol=2^-{m}", n, ">=", k / 4 * (1 - 1 / k**2) * lg, precision=prec, err=err).holds
        assert compare("F1", f"kappa={kappa} tol=2^-{m}", n, "<=", k / 4 * lg + 1, precision=prec, err=err).holds


@given(l_min=st.integers(1, 9), gap=st.integers(1, 40), m=st.integers(1, 30))
def test_f1_closed_form_count_equals_exact_iteration(l_min: int, gap: int, m: int) -> None:
    """Worst-case e_0 = (1, 1) in the eigenbasis of diag(l_min, l_max), eta* exact: iterate q_t exactly."""
    lmin, lmax = Fraction(l_min), Fraction(l_min + gap)
    eta = 2 / (lmin + lmax)
    tol = Fraction(1, 2**m)
    e = [Fraction(1), Fraction(1)]
    q0 = (lmin * e[0] ** 2 + lmax * e[1] ** 2) / 2
    t = 0
    while (lmin * e[0] ** 2 + lmax * e[1] ** 2) / 2 > tol * q0:
        e = [(1 - eta * lmin) * e[0], (1 - eta * lmax) * e[1]]
        t += 1
    assert t == bounds.gd_worst_case_steps(lmax / lmin, tol) == exact_count((lmax - lmin) / (lmax + lmin), tol)


# ---------------------------------------------------------------- B


@given(k=st.integers(3, 40), m=st.integers(2, 12))
def test_b_ratio_exceeds_kappa_T_squared_when_kappa_H_is_1(k: int, m: int) -> None:
    """H = I (one GD step with eta = 1 from every e_0), T = diag(1, k): H' = diag(1, 1/k^2) exactly, and the
    defended worst-case count exceeds kappa(T)^2 = k^2; the corrected absolute bound (i) holds."""
    tol = Fraction(1, 10**m)
    e_one = [(1 - Fraction(1)) * x for x in (Fraction(3), Fraction(-5))]
    assert e_one == [0, 0]  # undefended: 1 step
    Hp = (Fraction(1), Fraction(1, k * k))  # T^-T I T^-1 with T = diag(1, k)
    kappa_p = Hp[0] / Hp[1]
    assert kappa_p == k * k
    n_def = exact_count((kappa_p - 1) / (kappa_p + 1), tol)
    assert n_def == bounds.gd_worst_case_steps(kappa_p, tol)
    assert n_def > k * k * 1, "B as stated (slowdown <= kappa(T)^2) would hold here"
    assert n_def <= bounds.gd_defended_steps_upper_bound(k, 1, tol)


def test_b_counterexample_with_kappa_H_2() -> None:
    """kappa(H) = 2, T = diag(2, 1): kappa(H') = 8; the count ratio exceeds kappa(T)^2 = 4 at eps = 1e-12
    and in the limit, and stays below the corrected asymptotic bound (ii)."""
    H, T = (Fraction(1), Fraction(2)), (Fraction(2), Fraction(1))
    Hp = (H[0] / T[0] ** 2, H[1] / T[1] ** 2)
    kp = max(Hp) / min(Hp)
    assert kp == 8
    tol = Fraction(1, 10**12)
    n, n_p = bounds.gd_worst_case_steps(2, tol), bounds.gd_worst_case_steps(kp, tol)
    assert (n, n_p) == (exact_count(Fraction(1, 3), tol), exact_count(Fraction(7, 9), tol))
    assert Fraction(n_p, n) > 4
    with mpmath.workdps(DPS):
        lim = mpmath.atanh(mpmath.mpf(1) / 2) / mpmath.atanh(mpmath.mpf(1) / 8)
        err = mpmath.mpf(10) ** (5 - DPS)
        assert lim - 4 > err  # strictly above kappa(T)^2 = 4, beyond the rounding allowance
        assert compare("B", "kappa(H)=2, kappa(T)=2", lim, "<=", bounds.gd_slowdown_bound(2, 2),
                       precision=f"mpmath dps={DPS}", err=err).holds


@given(kh_num=st.integers(1, 500), kh_den=st.integers(1, 10), kt_num=st.integers(0, 400), kt_den=st.integers(1, 20))
def test_b_corrected_asymptotic_bound(kh_num: int, kh_den: int, kt_num: int, kt_den: int) -> None:
    """(ii): artanh(1/k)/artanh(1/k') <= kappa(T)^2/(1 - kappa(H)^-2) for every k' <= kappa(T)^2 kappa(H)
    (worst case k' = kappa(T)^2 kappa(H))."""
    kh, kt = Fraction(kh_num + kh_den, kh_den), Fraction(kt_num + kt_den, kt_den)
    with mpmath.workdps(DPS):
        k = mpmath.mpf(kh.numerator) / kh.denominator
        t = mpmath.mpf(kt.numerator) / kt.denominator
        lim = mpmath.atanh(1 / k) / mpmath.atanh(1 / (t * t * k))
        bound = bounds.gd_slowdown_bound(kt, kh)
        res = compare("B", f"kappa_H={kh} kappa_T={kt}", lim, "<=", bound, precision=f"mpmath dps={DPS}",
                      err=mpmath.mpf(10) ** (10 - DPS) * bound)
        assert res.holds, res


def test_b_instance_specific_ratio_is_unbounded() -> None:
    """H = diag(1, 4), e_0 = (1, 0): 1 step with eta = 1. T = [[1, 1], [0, 1]]: T e_0 = (1, 0) has weight on both
    eigenvectors of H' = [[1, -1], [-1, 5]], so every fixed step needs >= ln(tol q_0 / w) / (2 ln rho') steps."""
    assert (1 - Fraction(1) * 1) * 1 == 0  # undefended e_1 = (1 - eta*1) e_0 = 0
    with mpmath.workdps(DPS):
        e = sym_eig([[1, -1], [-1, 5]])
        lam = e.values
        c = [e.vectors[0, i] for i in range(2)]  # components of (1, 0)
        q0 = mpmath.mpf(1) / 2  # 1/2 e^T H' e with e = (1, 0)
        w = min(lam[i] * c[i] ** 2 for i in range(2)) / 2
        kp = lam[1] / lam[0]
        rho = (kp - 1) / (kp + 1)  # min over eta of max_i |1 - eta lambda_i|
        lower = [mpmath.log(mpmath.mpf(10) ** -m * q0 / w) / (2 * mpmath.log(rho)) for m in (4, 8, 16, 32)]
        assert w > 0 and all(b > a + 1 for a, b in zip(lower, lower[1:])) and lower[0] > 1


# ---------------------------------------------------------------- W' closed forms vs direct products


@given(seed=st.integers(0, 2**16), depth=st.integers(2, 4), r=st.integers(1, 3))
def test_deep_linear_closed_form_matches_direct_gauss_newton(seed: int, depth: int, r: int) -> None:
    """Diagonal aligned deep net (U_l = I), E[x x^T] = I: G'_ll = (W'_>l)^T W'_>l (x) W'_<l (W'_<l)^T computed
    from the defended layers W'_l = A_l W_l A_(l-1)^-1 in exact rationals equals the closed form."""
    rng = np.random.default_rng(seed)
    w = [[Fraction(int(v), 4) for v in rng.integers(1, 13, size=r)] for _ in range(depth)]
    s = [[Fraction(int(v), 3) for v in rng.integers(1, 10, size=r)] for _ in range(depth - 1)]
    sc = [[Fraction(1)] * r] + s + [[Fraction(1)] * r]
    wp = [[sc[l + 1][i] * w[l][i] / sc[l][i] for i in range(r)] for l in range(depth)]  # diagonal W'_l
    for layer in range(1, depth + 1):
        after = [np.prod([wp[k][i] for k in range(layer, depth)], dtype=object) for i in range(r)]
        before = [np.prod([wp[k][j] for k in range(layer - 1)], dtype=object) for j in range(r)]
        direct = [Fraction(after[i]) ** 2 * Fraction(before[j]) ** 2 for i in range(r) for j in range(r)]
        with mpmath.workdps(DPS):
            closed = bounds.deep_linear_gn_spectrum(w, s, layer)
            for d, c in zip(direct, closed, strict=True):
                res = compare("W'", f"seed={seed} depth={depth} r={r} layer={layer}", c, "==", d,
                              precision=f"mpmath dps={DPS} vs exact", err=mpmath.mpf(10) ** (10 - DPS) * abs(c))
                assert res.holds, res
    if depth == 2:  # two layers: eig(G'_aa) = (b_i/s_i)^2 and eig(G'_bb) = (s_i a_i)^2 with a = w_1, b = w_2
        with mpmath.workdps(DPS):
            two = bounds.aligned_two_layer_gn_spectra(s[0], w[0], w[1])
            first, second = bounds.deep_linear_gn_spectrum(w, s, 1), bounds.deep_linear_gn_spectrum(w, s, 2)
            for i in range(r):
                for got, want in ((first[i * r], two["eig_aa"][i]), (second[i], two["eig_bb"][i])):
                    assert abs(got - want) <= mpmath.mpf(10) ** (10 - DPS) * abs(want)


@given(r=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_aligned_two_layer_kappas_from_exact_spectra(r: int, seed: int) -> None:
    """kappa fields of bounds.aligned_two_layer_gn_spectra = max/min of the exact eigenvalue lists
    (b_i/s_i)^2, (s_i a_i)^2 and of their union."""
    rng = np.random.default_rng(seed)
    s, a, b = ([Fraction(int(v), 3) for v in rng.integers(1, 10, size=r)] for _ in range(3))
    ea = [(bi / si) ** 2 for si, bi in zip(s, b)]
    eb = [(si * ai) ** 2 for si, ai in zip(s, a)]
    with mpmath.workdps(DPS):
        got = bounds.aligned_two_layer_gn_spectra(s, a, b)
        tol = mpmath.mpf(10) ** (10 - DPS)
        for key, want in (("kappa_aa", max(ea) / min(ea)), ("kappa_bb", max(eb) / min(eb)),
                          ("kappa_block_diagonal", max(ea + eb) / min(ea + eb))):
            w = mpmath.mpf(want.numerator) / want.denominator
            assert abs(got[key] - w) <= tol * w, key
        for lst, want in ((got["eig_aa"], ea), (got["eig_bb"], eb)):
            assert [abs(x - mpmath.mpf(y.numerator) / y.denominator) <= tol * x for x, y in zip(lst, want)] == [True] * r


@given(lam=st.lists(st.fractions(Fraction(1, 50), 100, max_denominator=50), min_size=2, max_size=6, unique=True),
       u=st.fractions(Fraction(1, 64), Fraction(63, 32), max_denominator=64))
def test_best_fixed_step_is_the_minimax_step(lam: list[Fraction], u: Fraction) -> None:
    """bounds.best_fixed_step(lmin, lmax) = 2/(lmin + lmax) equalizes the extreme contractions and
    no other step contracts the worst eigenvalue more: max_i |1 - eta lambda_i| >= its value
    for every eta = u * eta* (exact rationals; the bound at dps 50 within its rounding)."""
    lmin, lmax = min(lam), max(lam)
    with mpmath.workdps(DPS):
        es = bounds.best_fixed_step(lmin, lmax)
        want = mpmath.mpf(2) / (mpmath.mpf(lmin.numerator) / lmin.denominator + mpmath.mpf(lmax.numerator) / lmax.denominator)
        assert abs(es - want) <= mpmath.mpf(10) ** (5 - DPS) * want
    star = Fraction(2) / (lmin + lmax)
    rho = max(abs(1 - star * x) for x in lam)
    assert abs(1 - star * lmin) == abs(1 - star * lmax) == rho
    assert max(abs(1 - u * star * x) for x in lam) >= rho


@given(r=st.integers(1, 4), n_in=st.integers(1, 5), n_out=st.integers(1, 5))
def test_recovery_bound_counts_the_pair_parameters(r: int, n_in: int, n_out: int) -> None:
    """recovery_extra_parameters_bound(r, n_in, n_out) = 2 (r / min(n_in, n_out)) times the
    parameters of the pair, counted independently as those of an exact two-layer net
    (W_a: r x n_in, b_a: r, W_b: n_out x r); and it is >= both R1 counts 2 r^2 and 2 r."""
    from convrate.numerics.nets import TwoLayerLinear

    net = TwoLayerLinear(n_in, r, n_out, [[0] * n_in], [[0] * n_out])
    bound = bounds.recovery_extra_parameters_bound(r, n_in, n_out)
    assert bound == Fraction(2 * r, min(n_in, n_out)) * net.n_params
    assert bound >= bounds.recovery_extra_parameters("S1", r) == 2 * r * r
    assert bound >= bounds.recovery_extra_parameters("S2", r) == 2 * r
    from convrate.theory import bounds_nets

    assert bounds_nets.recovery_extra_parameters_bound_pair(r, n_in, n_out, bias=True) == bound
    assert bounds_nets.pair_parameters(r, n_in, n_out, bias=True) == net.n_params
    # a bias-free pair: counted as torch counts two bias-free Linear layers
    import torch

    free = sum(p.numel() for p in torch.nn.Sequential(torch.nn.Linear(n_in, r, bias=False),
                                                      torch.nn.Linear(r, n_out, bias=False)).parameters())
    assert bounds_nets.pair_parameters(r, n_in, n_out, bias=False) == free
    assert bounds_nets.recovery_extra_parameters_bound_pair(r, n_in, n_out, bias=False) == \
        Fraction(2 * r, min(n_in, n_out)) * free >= 2 * r * r
    from convrate.errors import InvalidInputError

    for dims in ((0, n_in, n_out), (r, 0, n_out), (r, n_in, 0)):
        with pytest.raises(InvalidInputError):
            bounds_nets.recovery_extra_parameters_bound_pair(*dims, bias=True)


def test_bound_functions_refuse_mismatched_lengths() -> None:
    """Paired spectral inputs must have equal lengths (zip strict): a silent truncation would
    compute the bound of a different instance."""
    with pytest.raises(ValueError):
        bounds.lambda_max_lower_bound_relu([1, 2], [1])
    with pytest.raises(ValueError):
        bounds.lambda_max_lower_bound_specdef([1, 2], [1], 1)
    with pytest.raises(ValueError):
        bounds.aligned_two_layer_gn_spectra([1, 2], [1], [1, 2])
    with pytest.raises(ValueError):
        bounds.aligned_two_layer_gn_spectra([1, 2], [1, 2], [1])


@given(rho=st.fractions(0, Fraction(15, 16), max_denominator=16), tol=st.fractions(Fraction(1, 10**6), Fraction(99, 100),
                                                                                    max_denominator=10**6),
       const=st.sampled_from([Fraction(1), Fraction(4), Fraction(1, 3)]))
@example(rho=Fraction(0), tol=Fraction(1, 4), const=Fraction(1))  # rho = 0: one step
@example(rho=Fraction(0), tol=Fraction(1, 2), const=Fraction(1, 3))  # rho = 0, const < tol: none
@example(rho=Fraction(0), tol=Fraction(1, 3), const=Fraction(1, 3))  # rho = 0, const = tol: none
@example(rho=Fraction(1, 2), tol=Fraction(1, 2), const=Fraction(1, 3))  # const < tol: none
@example(rho=Fraction(1, 2), tol=Fraction(1, 3), const=Fraction(1, 3))  # const = tol: none
def test_steps_from_rate_is_the_smallest_t(rho: Fraction, tol: Fraction, const: Fraction) -> None:
    """steps_from_rate(rho, tol, const) = min { t >= 0 : const rho^(2t) <= tol }, found by exact
    rational iteration (rho = 0 and const <= tol included, as explicit examples too; exact ties
    const rho^(2t) = tol at t >= 1, where the closed form's logarithms decide at rounding level,
    are left out -- at t = 0 the tie const = tol is decided by an exact comparison)."""
    t, val = 0, const
    while val > tol:
        t, val = t + 1, val * rho * rho
    assume(t == 0 or val != tol)
    with mpmath.workdps(DPS):
        assert bounds.steps_from_rate(rho, tol, const) == t


def test_profiles_of_width_one_are_the_identity() -> None:
    """r = 1: |det A| = 1 forces A = +-1, so both SpecDef profiles are [1] (kappa 1), for every K."""
    for K in (2, 10, 1000):
        assert bounds.specdef_spike_profile(K, 1) == [1] and bounds.specdef_geometric_profile(K, 1) == [1]
        assert bounds.specdef_max_gain(K, 1) == 1


@given(s=st.lists(st.fractions(Fraction(1, 8), 8, max_denominator=8), min_size=1, max_size=4),
       lmin=st.fractions(Fraction(1, 8), 4, max_denominator=8), data=st.data())
def test_specdef_bound_is_the_linear_bound_at_sigma_max_of_A_Wa(s, lmin, data) -> None:
    """W under SpecDef: A W_a = U diag(s_i sigma_i) V^T, so sigma_max(A W_a) = max_i s_i sigma_i and
    lambda_max_lower_bound_specdef(s, sigma, lmin) = lambda_max_lower_bound_linear(max_i s_i sigma_i,
    lmin) (mu_ell = 1, the squared loss, by default in both)."""
    sig = data.draw(st.lists(st.fractions(Fraction(1, 8), 8, max_denominator=8), min_size=len(s), max_size=len(s)))
    top = max(a * b for a, b in zip(s, sig))
    with mpmath.workdps(DPS):
        got = bounds.lambda_max_lower_bound_specdef(s, sig, lmin)
        want = bounds.lambda_max_lower_bound_linear(top, lmin)
        exact = top * top * lmin
        assert abs(got - want) <= mpmath.mpf(10) ** (5 - DPS) * want
        assert abs(want - mpmath.mpf(exact.numerator) / exact.denominator) <= mpmath.mpf(10) ** (5 - DPS) * want


# ---------------------------------------------------------------- certified step bounds (bounds_optim)
def _exact_smallest_t(rho: Fraction, tol: Fraction, const: Fraction) -> int:
    t, val = 0, const
    while val > tol:
        t, val = t + 1, val * rho * rho
    return t


@given(rho=st.fractions(0, Fraction(15, 16), max_denominator=16), k=st.integers(0, 12),
       const=st.sampled_from([Fraction(1), Fraction(4), Fraction(1, 3)]), tie=st.booleans(),
       tol=st.fractions(Fraction(1, 10**6), Fraction(99, 100), max_denominator=10**6))
@example(rho=Fraction(0), k=0, const=Fraction(1, 3), tie=False, tol=Fraction(1, 3))  # rho = 0, const = tol: none
@example(rho=Fraction(0), k=0, const=Fraction(1, 3), tie=False, tol=Fraction(1, 2))  # rho = 0, const < tol: none
@example(rho=Fraction(1, 2), k=0, const=Fraction(1, 3), tie=False, tol=Fraction(1, 2))  # const < tol: none
@example(rho=Fraction(0), k=0, const=Fraction(1), tie=False, tol=Fraction(1, 2))  # rho = 0: one step
def test_certified_steps_from_rate_is_exact_ties_included(rho, k, const, tie, tol):
    """bounds_optim.steps_from_rate_certified(rho, tol, const) = min { t : const rho^(2t) <= tol },
    decided exactly even at ties (tol = const rho^(2k) exactly, drawn on purpose; rho = 0 and
    const <= tol as explicit examples)."""
    from convrate.theory import bounds_optim

    if tie and rho > 0 and 0 < const * rho ** (2 * k) < 1:
        tol = const * rho ** (2 * k)
    assert bounds_optim.steps_from_rate_certified(rho, tol, const) == _exact_smallest_t(rho, tol, const)
    assert bounds_optim.steps_from_rate_certified(float(rho), tol, const) == _exact_smallest_t(Fraction(float(rho)), tol, const)


def test_certified_bounds_refuse_bad_input_and_handle_kappa_1():
    from convrate.errors import ToleranceError
    from convrate.theory import bounds_optim

    for tol in (0, 1, Fraction(3, 2), -1):
        with pytest.raises(ToleranceError):
            bounds_optim.steps_from_rate_certified(Fraction(1, 2), tol)
    with pytest.raises(ValueError):
        bounds_optim.steps_from_rate_certified(1, Fraction(1, 2))
    with pytest.raises(TypeError):
        bounds_optim.steps_from_rate_certified("1/2", Fraction(1, 2))
    assert bounds_optim.gd_worst_case_steps_certified(1, Fraction(1, 10)) == 1  # rho = 0: one step
    assert bounds_optim.cg_steps_upper_bound_certified(1, Fraction(1, 10)) == 1
    for f in (bounds_optim.gd_worst_case_steps_certified, bounds_optim.cg_steps_upper_bound_certified):
        with pytest.raises(ValueError):
            f(Fraction(1, 2), Fraction(1, 10))


@given(p=st.integers(2, 40), q=st.integers(1, 40), tol=st.fractions(Fraction(1, 10**8), Fraction(1, 2), max_denominator=10**8))
def test_certified_cg_bound_exact_for_square_kappa(p, q, tol):
    """kappa = (p/q)^2 (a perfect square, p > q): sqrt(kappa) = p/q exactly, rho = (p - q)/(p + q), and
    cg_steps_upper_bound_certified = min { t : 4 rho^(2t) <= tol } exactly."""
    from convrate.theory import bounds_optim

    from hypothesis import assume

    assume(p > q)
    rho = Fraction(p - q, p + q)
    assert bounds_optim.cg_steps_upper_bound_certified(Fraction(p * p, q * q), tol) == _exact_smallest_t(rho, tol, Fraction(4))


@pytest.mark.parametrize("kappa", [10**80 + 1, 2 * 10**120 + 3])
def test_certified_bounds_near_rate_one_raise_precision(kappa):
    """kappa ~ 1e80 .. 1e120 (not squares): rho = (sqrt k - 1)/(sqrt k + 1) lies within 1e-40 of 1, so
    128-bit balls cannot separate it from 1 and the precision is raised; the count agrees with
    the closed form evaluated at 400 digits (far from a tie: its fractional part is checked)."""
    from convrate.theory import bounds_optim

    tol = Fraction(1, 10**6)
    with mpmath.workdps(400):
        s = mpmath.sqrt(mpmath.mpf(kappa))
        lt = -6 * mpmath.log(10)  # ln(tol), tol = 1e-6
        x = (lt - mpmath.log(4)) / (2 * mpmath.log((s - 1) / (s + 1)))
        assert 0.01 < x - mpmath.floor(x) < 0.99
        want = int(mpmath.ceil(x))
        xg = lt / (2 * mpmath.log((mpmath.mpf(kappa) - 1) / (mpmath.mpf(kappa) + 1)))
        assert 0.01 < xg - mpmath.floor(xg) < 0.99
        want_gd = int(mpmath.ceil(xg))
    assert bounds_optim.cg_steps_upper_bound_certified(kappa, tol) == want
    assert bounds_optim.gd_worst_case_steps_certified(kappa, tol) == want_gd


_TIES = [(rho, c, k) for rho in (Fraction(2, 3), Fraction(5, 7), Fraction(10, 11)) for c in (Fraction(1), Fraction(4))
         for k in (1, 2, 7, 30) if 0 < c * rho ** (2 * k) < 1]


@pytest.mark.parametrize("rho, const, k", _TIES)
def test_certified_count_at_and_around_ties(rho, const, k):
    """Exact ties tol = const rho^(2k) (non-dyadic rho: the balls straddle tol, decided by exact
    powers) give k; tol one part in 1e60 above gives k, below gives k + 1 (the float estimate is
    then off by one and the walks correct it)."""
    from convrate.theory import bounds_optim

    at = const * rho ** (2 * k)
    eps = Fraction(1, 10**60)
    assert bounds_optim.steps_from_rate_certified(rho, at, const) == k
    assert bounds_optim.steps_from_rate_certified(rho, at * (1 + eps), const) == k
    assert bounds_optim.steps_from_rate_certified(rho, at * (1 - eps), const) == k + 1


def test_certified_ties_at_and_beyond_the_exact_power_limit():
    """A tie at t = _EXACT_POWER_LIMIT (rho = 2/3: the balls straddle tol) is decided by the exact
    power; beyond it (t = limit + 1) a tie with dyadic rho = 1/2 is decided by the ball, which is
    then exact (tol = 2^-(2t) is representable): both give t, and one part in 1e30 less tol gives
    t + 1."""
    from convrate.theory import bounds_optim

    k = bounds_optim._EXACT_POWER_LIMIT
    for rho, t in ((Fraction(2, 3), k), (Fraction(1, 2), k + 1)):
        at = rho ** (2 * t)
        assert bounds_optim.steps_from_rate_certified(rho, at) == t
        assert bounds_optim.steps_from_rate_certified(rho, at * (1 - Fraction(1, 10**30))) == t + 1


@pytest.mark.parametrize("e", [10000, 16000, 16500])
def test_certified_counts_up_to_the_precision_cap(e):
    """kappa = 2^e: rho = (kappa - 1)/(kappa + 1) is within 2^(1-e) of 1 and the count is ~ kappa/4
    ln(1/tol), so deciding needs about 2e bits. e = 10000 and 16000 are decided within the
    2^15-bit cap (the doubling from 128 bits reaches 32768) and agree with the closed form at
    3e + 2000 bits (a fractional part away from an integer); e = 16500 needs more than the cap
    and raises PrecisionError rather than returning a count."""
    from convrate.errors import PrecisionError
    from convrate.theory import bounds_optim

    tol = Fraction(1, 10**6)
    if e > 16000:
        with pytest.raises(PrecisionError):
            bounds_optim.gd_worst_case_steps_certified(2**e, tol)
        return
    with mpmath.workprec(3 * e + 2000):
        K = mpmath.mpf(2) ** e
        x = mpmath.log(mpmath.mpf(tol.numerator) / tol.denominator) / (2 * mpmath.log((K - 1) / (K + 1)))
        frac = x - mpmath.floor(x)
        assert 0.01 < frac < 0.99
        want = int(mpmath.ceil(x))
    assert bounds_optim.gd_worst_case_steps_certified(2**e, tol) == want


@pytest.mark.parametrize("const, k", [(1, 7), (4, 7), (1, 28), (4, 28)])
def test_certified_count_when_the_estimate_overshoots(const, k):
    """rho = 7/8: at these ties tol = const rho^(2k) the 128-bit estimate ceil(ln(tol/const) /
    (2 ln rho)) lands on k + 1 (checked first), so the downward walk must bring it back to k. At
    k = 7 the tie value is an exact dyadic ball; at k = 28 (7^56 needs more than 128 bits) the
    balls straddle tol and the exact power decides. One part in 1e40 more tol still gives k,
    one part less k + 1."""
    from flint import arb, ctx, fmpq

    from convrate.theory import bounds_optim

    rho, c = Fraction(7, 8), Fraction(const)
    at = c * rho ** (2 * k)
    old, ctx.prec = ctx.prec, 128
    try:
        est = ((arb(fmpq(at.numerator, at.denominator)) / const).log() / (2 * arb(fmpq(7, 8)).log())).mid().ceil()
    finally:
        ctx.prec = old
    assert int(est.unique_fmpz()) == k + 1
    eps = Fraction(1, 10**40)
    assert bounds_optim.steps_from_rate_certified(rho, at, c) == k
    assert bounds_optim.steps_from_rate_certified(rho, at * (1 + eps), c) == k
    assert bounds_optim.steps_from_rate_certified(rho, at * (1 - eps), c) == k + 1
