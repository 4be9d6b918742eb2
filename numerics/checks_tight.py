"""Battery entries on adversarial and tight instances: B and T3 (aligned T), W' (active bound).

Random instances rarely sit near a bound: a random T is not aligned with H's eigenvectors, so
kappa(H') stays far below kappa(T)^2 kappa(H), and a random W' instance has lambda_min(H_aa) = 0
(rank-deficient data or W_b) or r = 1. These entries draw the worst cases on purpose, so that
each bound is met with (near-)equality and a wrong bound -- THEORY.md's false "GD slowdown <=
kappa(T)^2" among them -- fails:

* **aligned quadratics** (B, T3, T2, LM): H = Q diag(lambda) Q^T, T = c Q diag(d) Q^T diagonal
  in H's eigenbasis, d_1 = kappa(T) on the lambda_min direction and d_n = 1 on lambda_max
  ("stretch min"; interior d in between), so H' = Q diag(lambda_i / (c d_i)^2) Q^T has
  kappa(H') = kappa(T)^2 kappa(H) exactly (T3's upper bound attained), or the reverse order
  ("stretch max", with kappa(H) >= kappa(T)^2 so that sigma_min(T) on lambda_min keeps it the smallest
  eigenvalue of H'); the scale c in {1/40 .. 7/2} puts sigma(T^-1) on both sides of 1, so the
  exponents of Ostrowski's interval (T2) and of LM's rate interval are tested where they bite. kappa(H) is drawn near 1 (1 + 1/m) or large (up to 1e6); e_0 on
  the two extreme eigenvectors (the worst case of F1) or on all of them. On every such instance
  the asymptotic slowdown artanh(1/kappa(H)) / artanh(1/kappa(H')) exceeds kappa(T)^2 (artanh(x)/x
  is increasing), so the false bound fails everywhere, while the corrected ones hold: B (ii)
  with slack -> 0 as kappa(H) grows, B (i) with equality for the two-point e_0 at eta*.
* **active W'** : two-layer linear nets with r >= 2, n_in >= r, n_out >= r, full-rank data
  (N = n_in orthogonal rows, scaled), b_a = 0, W_b with orthogonal columns of equal norm, both perturbed by a drawn
  amount t (t = 0: W_b^T W_b and E[x x^T] are multiples of I, and lambda_min(H'_aa) =
  lambda_max(H_aa) / sigma_max(A)^2 exactly: margin 0), and a general rational A = Q1 diag(d) Q2.
  ``assume`` keeps the non-vacuous case lambda_min(H_aa) > 0. W''s kappa claim is checked on the
  block-diagonal part diag(H'_aa, H'_bb): H' itself is never positive definite for r >= 2
  (a nilpotent B gives an orbit tangent of zero curvature, ORBIT-NULL).

Precision: exact rationals for the spectra of aligned problems and for H_aa (lambda_i / d_i^2
are exact); bounds at mpmath dps = 60 (``checks_quadratic``); the W' eigenvalues are certified
enclosures (``linalg.sym_eig``) with their radii in err (``checks_nets``).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import mpmath
import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from convrate.numerics import checks_nets as cn
from convrate.numerics import checks_quadratic as cq
from convrate.numerics.battery import entry
from convrate.numerics.nets import EXACT, TwoLayerLinear, at_arb_precision, kron, pack, to_fmpq
from convrate.numerics.quadratic import Quadratic
from convrate.numerics.reparam import rational_element, rational_orthogonal, singular_value_range
from convrate.numerics.steps import best_fixed_step
from convrate.theory import bounds, bounds_optim
from convrate.theory.core import CheckResult

EXACT_P = "exact rational (fmpq)"


# ---------------------------------------------------------------- aligned quadratics (B, T3)
def _aligned_kappa_H(d: dict) -> Fraction:
    """kappa(H): 1 + 1/m (near 1) or round(10^(a/10)) up to 1e6."""
    return Fraction(d["m"] + 1, d["m"]) if d["near_one"] else Fraction(cq._kappa(d["a"]))


@dataclass(frozen=True)
class Aligned:
    """An aligned instance: H = Q diag(lam) Q^T, T = c Q diag(d) Q^T, e_0 = Q coeffs (exact)."""

    p: Quadratic
    T: Any
    lam: list[Fraction]  # eigenvalues of H, ascending (lam[0] = 1, lam[-1] = kappa(H))
    sigma: list[Fraction]  # singular values of T: c d_i, paired with lam[i]
    kH: Fraction
    kT: Fraction
    stretch_min: bool
    inst: str

    @property
    def new(self) -> list[Fraction]:
        """Eigenvalues of H' = T^-T H T^-1: lam_i / sigma_i^2 (exact)."""
        return [x / y**2 for x, y in zip(self.lam, self.sigma)]

    @property
    def kq(self) -> Fraction:
        return max(self.new) / min(self.new)


def aligned_problem(d: dict) -> Aligned:
    """The aligned instance of a draw (module doc): d_1 = kappa(T) on lambda_min ("stretch
    min", kappa(H') = kappa(T)^2 kappa(H)) or d = (1, ..., 1, kappa(T)) with kappa(H) >= kappa(T)^2
    ("stretch max": sigma_min(T) on lambda_min, which stays the smallest eigenvalue of H'), T scaled by c."""
    rng = cq._rng(d["seed"])
    n = d["n"]
    kH, kT = _aligned_kappa_H(d), Fraction(cq._kappa(d["aT"]))
    if d["stretch_min"]:
        lam = cq._spectrum(rng, n, kH)
        dd = sorted(cq._spectrum(rng, n, kT), reverse=True)
    else:  # kappa(H) >= kappa(T)^2 and d = (1, ..., 1, kappa(T)): lambda_min(H') = lambda_min(H) / sigma_min(T)^2
        kH = kT * kT * kH
        lam = cq._spectrum(rng, n, kH)
        dd = [Fraction(1)] * (n - 1) + [kT]
    sigma = [d["c"] * x for x in dd]
    co = cq._coeffs(rng, n)
    if d["extremes"]:
        co = [co[0]] + [Fraction(0)] * (n - 2) + [co[-1]]
    Q = cq._orthogonal(rng, n)
    cvec = pack([[to_fmpq(x)] for x in co], EXACT)
    p = Quadratic(Q * cq._diag(lam) * Q.transpose(), Q * cvec)
    T = Q * cq._diag(sigma) * Q.transpose()
    inst = (f"aligned n={n} kappa(H)={kH} kappa(T)={kT} c={d['c']} stretch={'min' if d['stretch_min'] else 'max'} "
            f"e0={'extremes' if d['extremes'] else 'full'} seed={d['seed']}")
    return Aligned(p, T, lam, sigma, kH, kT, d["stretch_min"], inst)


ALIGNED = st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1), "n": st.integers(2, 6), "near_one": st.booleans(), "m": st.integers(1, 50),
    "a": st.integers(3, 60), "aT": st.integers(3, 30), "extremes": st.booleans(), "tm": st.integers(1, 5),
    "tk": st.integers(2, 10), "stretch_min": st.booleans(),
    "c": st.sampled_from((Fraction(1), Fraction(1, 3), Fraction(1, 40), Fraction(2), Fraction(7, 2))),
    "damp": st.integers(1, 64)})


def _mpf(x: Fraction) -> mpmath.mpf:
    with mpmath.workdps(cq.DPS):
        return mpmath.mpf(x.numerator) / x.denominator


def _exact_box(x: Fraction) -> tuple[mpmath.mpf, mpmath.mpf, mpmath.mpf]:
    v = _mpf(x)
    return v, v, v


def _artanh_ratio(kH: Fraction, kq: Fraction) -> mpmath.mpf:
    with mpmath.workdps(cq.DPS):
        return mpmath.atanh(1 / _mpf(kH)) / mpmath.atanh(1 / _mpf(kq))


def _attained(statement: str, inst: str, x: Fraction, end: Any, what: str) -> CheckResult:
    """x == end: an exact value equals a bound (evaluated at dps 60) up to its rounding."""
    with mpmath.workdps(cq.DPS):
        end = mpmath.mpf(end)
        return cq._cmp(statement, inst, x, "==", end, err=abs(end) * mpmath.mpf(10) ** (10 - cq.DPS),
                       precision=f"exact value vs bound at mpmath dps={cq.DPS}", detail=what)


def _exact_interval(statement: str, inst: str, x: Fraction, lo: Any, hi: Any, what: str) -> list[CheckResult]:
    """lo <= x <= hi with x exact and lo, hi from theory.bounds evaluated at dps 60 by the caller
    (err: their relative rounding, 1e-50)."""
    with mpmath.workdps(cq.DPS):
        lo, hi = mpmath.mpf(lo), mpmath.mpf(hi)
        err = max(abs(lo), abs(hi)) * mpmath.mpf(10) ** (10 - cq.DPS)
    prec = f"exact spectra (lambda_i / sigma_i^2), bounds at mpmath dps={cq.DPS}"
    return [cq._cmp(statement, inst, x, ">=", lo, precision=prec, err=err, detail=f"{what} >= lower end"),
            cq._cmp(statement, inst, x, "<=", hi, precision=prec, err=err, detail=f"{what} <= upper end")]


@entry("tight_B_T3_aligned", ["B", "T3", "T2", "LM"], ALIGNED)
def check_b_aligned(d: dict) -> list[CheckResult]:
    """B, T3, T2 (Ostrowski) and LM on aligned instances, whose spectra are exact rationals:
    kappa(H') in condition_interval (stretch min: == kappa(T)^2 kappa(H), the upper end
    attained) and the certified enclosure of the dense H' agrees; every lambda_k(H') in
    ostrowski_interval(lambda_k(H), sigma_min(T^-1), sigma_max(T^-1)) (the ends attained by the
    smallest and largest eigenvalue); the LM spectral radius lambda/(lambda_min(H') + lambda) in
    lm_rate_interval (an end attained); the best-fixed-step count <= gd_defended_steps_upper_bound
    (B (i); equality for the two-point e_0); artanh(1/kappa(H)) / artanh(1/kappa(H')) <=
    gd_slowdown_bound (B (ii), slack -> 0 as kappa(H) grows) and, stretch min, >= kappa(T)^2
    (THEORY's bound kappa(T)^2 is exceeded on every such instance)."""
    a = aligned_problem(d)
    p, T, kH, kT, kq, inst = a.p, a.T, a.kH, a.kT, a.kq, a.inst
    tol = cq._tol(d["tm"], d["tk"])
    q = p.reparameterize(T)
    with mpmath.workdps(cq.DPS):  # every bound of theory.bounds at the working precision of the check
        lo, hi = bounds.condition_interval(kH, kT)
    out = _exact_interval("T3", inst, kq, lo, hi, "kappa(H') (exact)")
    if a.stretch_min:  # the ends are attained: a bound function too large is caught as well as one too small
        out.append(_attained("T3", inst, kq, hi, "stretch min: kappa(H') == kappa(T)^2 kappa(H) (condition_interval)"))
    smin_inv, smax_inv = 1 / max(a.sigma), 1 / min(a.sigma)  # singular values of T^-1
    # stretch max: sigma_min(T) on lambda_min(H) gives the smallest eigenvalue of H', the other ends are attained
    min_at_start = not a.stretch_min
    assert not min_at_start or min(a.new) == a.new[0], "stretch max instance built wrongly"
    n = len(a.lam)
    for k, (l_old, l_new) in enumerate(zip(sorted(a.lam), sorted(a.new))):
        with mpmath.workdps(cq.DPS):
            lo, hi = bounds.ostrowski_interval(l_old, smin_inv, smax_inv)
        out += _exact_interval("T2", inst, l_new, lo, hi, f"Ostrowski: lambda_{k + 1}(H')")
        if a.stretch_min and k in (0, n - 1):
            out.append(_attained("T2", inst, l_new, lo if k == 0 else hi,
                                 f"stretch min: lambda_{k + 1}(H') attains the {'lower' if k == 0 else 'upper'} Ostrowski end"))
        if min_at_start and k == 0:
            out.append(_attained("T2", inst, l_new, hi, "stretch max, lambda_min(H') = lambda_min(H) / sigma_min(T)^2: "
                                                        "lambda_1(H') attains the upper Ostrowski end"))
    damping = Fraction(d["damp"], 16) * min(a.new)
    rate = damping / (min(a.new) + damping)  # spectral radius of LM's error map on H' (LM statement)
    with mpmath.workdps(cq.DPS):
        lo, hi = bounds.lm_rate_interval(damping, a.lam[0], min(a.sigma), max(a.sigma))
    out += _exact_interval("LM", inst + f" damping={damping}", rate, lo, hi, "LM rate lambda / (lambda_min(H') + lambda)")
    if a.stretch_min:
        out.append(_attained("LM", inst + f" damping={damping}", rate, hi,
                             "stretch min: lambda_min(H') = lambda_min(H) / sigma_max(T)^2, the rate attains the upper end"))
    if min_at_start:
        out.append(_attained("LM", inst + f" damping={damping}", rate, lo,
                             "stretch max: lambda_min(H') = lambda_min(H) / sigma_min(T)^2, the rate attains the lower end"))
    with cq.arb_prec(256), mpmath.workdps(cq.DPS):
        box = cq._ball_interval(q.kappa_ball())
    hi_v, hi_e = cq._enclosed(lambda a, b: bounds.condition_interval(a, b)[1], _exact_box(kH), _exact_box(kT))
    out.append(cq._cmp("T3", inst, box[0], "<=", hi_v, err=(box[2] - box[1]) / 2 + hi_e,
                       precision="mpmath dps=60 + certified enclosure (sym_eig) of the dense H'; err from radii",
                       detail="kappa(H') of the dense rotated H' <= kappa(T)^2 kappa(H)"))
    eta, N = best_fixed_step(q, tol)
    out += cq._bound_pair("B", inst + f" tol={tol} eta={eta}", N,
                          cq._official_int(bounds.gd_defended_steps_upper_bound, kT, kH, tol),
                          bounds_optim.gd_worst_case_steps_certified(kT * kT * kH, tol),
                          "gd_defended_steps_upper_bound(kappa_T, kappa_H, tol)")
    ratio = _artanh_ratio(kH, kq)
    b_val, b_err = cq._enclosed(bounds.gd_slowdown_bound, _exact_box(kT), _exact_box(kH))
    err = abs(ratio) * mpmath.mpf(10) ** (10 - cq.DPS)
    out.append(cq._cmp("B", inst, ratio, "<=", b_val, err=err + b_err, precision=f"mpmath dps={cq.DPS}, exact kappas",
                       detail="artanh(1/kappa(H)) / artanh(1/kappa(H')) <= gd_slowdown_bound (corrected B (ii))"))
    if a.stretch_min:
        out.append(cq._cmp("B", inst, ratio, ">=", kT * kT, err=err, precision=f"mpmath dps={cq.DPS}, exact kappas",
                           detail="artanh(1/kappa(H)) / artanh(1/kappa(H')) >= kappa(T)^2: THEORY's 'slowdown <= "
                                  "kappa(T)^2' fails on this instance (corrected B)"))
        with mpmath.workdps(cq.DPS):
            sharp = b_val * (1 - 1 / _mpf(kH) ** 2) * (1 - 1 / _mpf(kq) ** 2)
        out.append(cq._cmp("B", inst, ratio, ">=", sharp, err=err + b_err, precision=f"mpmath dps={cq.DPS}, exact kappas",
                           detail="B (ii) is sharp: ratio >= gd_slowdown_bound (1 - kappa(H)^-2)(1 - kappa(H')^-2) "
                                  "(x <= artanh x <= x / (1 - x^2), kappa(H') = kappa(T)^2 kappa(H))"))
    return out


# ---------------------------------------------------------------- W' with the bound active
ACTIVE = st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1), "extra_in": st.integers(0, 1), "r": st.integers(2, 3), "extra_out": st.integers(0, 1),
    "kappa": st.sampled_from(cn.KAPPAS), "t": st.sampled_from((Fraction(0), Fraction(0), Fraction(1, 16), Fraction(1, 4), Fraction(1))),
    "scale": st.sampled_from((Fraction(1), Fraction(2), Fraction(1, 3)))})


def _perturbed(M: Any, t: Fraction, rng: np.random.Generator) -> list[list[Fraction]]:
    rows = [[cn._q(M[i, j]) for j in range(M.ncols())] for i in range(M.nrows())]
    return [[v + t * cn._small(rng) for v in row] for row in rows]


@entry("tight_Wprime_active", ["W'"], ACTIVE)
@at_arb_precision
def check_wprime_active(d: dict) -> list[CheckResult]:
    """W' where it bites: lambda_min(H'_aa) <= aa_block_lambda_min_upper_bound(lambda_max(H_aa),
    sigma_max(A)) with lambda_min(H_aa) > 0 (assumed), r >= 2, full-rank data and a general A;
    equality (margin 0) at t = 0. H'_aa is the Hessian block of the net at T theta (exact), and
    equals (A^-T (x) I) H_aa (A^-1 (x) I) exactly."""
    rng = np.random.default_rng([d["seed"], 31])
    r = d["r"]
    n_in = r + d["extra_in"]  # n_in >= r: W_a of full row rank, so E[h h^T] (the W_b block) is nonsingular too
    n_out = r + d["extra_out"]
    Xq = rational_orthogonal(n_in, rng)
    X = [[d["scale"] * v for v in row] for row in _perturbed(Xq, d["t"], rng)]
    Y = [[cn._small(rng, -2, 2) for _ in range(n_out)] for _ in range(n_in)]
    net = TwoLayerLinear(n_in, r, n_out, X, Y)
    Wb = _perturbed(rational_orthogonal(n_out, rng), d["t"], rng)
    theta = ([cn._small(rng) for _ in range(r * n_in)] + [Fraction(0)] * r  # W_a, b_a = 0 (uncentered moments)
             + [Wb[o][i] for o in range(n_out) for i in range(r)])
    th = cn._col(theta)
    a0, a1, _, _ = cn._w_blocks(net)
    Haa = cn._block(net.hessian(th), a0, a1)
    assume(Haa.det() != 0)  # the non-vacuous case: lambda_min(H_aa) > 0
    A = rational_element(r, d["kappa"], rng)
    sym = cn.Symmetry(net, "S1", 0)
    rep = cn.Reparameterization(net, ((sym, A),))
    inst = f"W' active n_in={n_in} r={r} n_out={n_out} kappa(A)={d['kappa']} t={d['t']} scale={d['scale']} seed={d['seed']}"
    H2 = net.hessian(rep.apply(th))
    H2aa = cn._block(H2, a0, a1)
    Ainv = A.inv()
    K = kron(Ainv, cn.identity(n_in, EXACT))
    out = [cn._exact_eq("W'", inst, "H'_aa - (A^-T (x) I) H_aa (A^-1 (x) I)", H2aa, K.transpose() * Haa * K)]
    with mpmath.workdps(cn.DPS):
        _, sA = singular_value_range(A)
        ub = cn._bound(bounds.aa_block_lambda_min_upper_bound, cn._encl(cn._eig(Haa), -1), sA)
        e_aa2, e_aa = cn._eig(H2aa, "H'_aa"), cn._eig(Haa)
        out.append(cn._cmp("W'", inst, cn._encl(e_aa2, 0), "<=", ub,
                           detail="lambda_min(H'_aa) <= lambda_max(H_aa) / sigma_max(A)^2, lambda_min(H_aa) > 0"))
        if d["t"] == 0:  # W_b^T W_b = I and E[x x^T] = (scale^2 / n_in) I: the bound is attained
            out.append(cn._cmp("W'", inst, cn._encl(e_aa2, 0), "==", ub,
                               detail="t = 0 (isotropic W_b and data): lambda_min(H'_aa) attains the bound"))
        # the kappa claim, on the block-diagonal part diag(H'_aa, H'_bb) (H' itself is never positive definite
        # for r >= 2: ORBIT-NULL); f is linear in each block, so these blocks are the Gauss-Newton blocks
        _, _, b0, b1 = cn._w_blocks(net)
        H2bb = cn._block(H2, b0, b1)
        if H2bb.det() == 0:  # W_a not of full row rank (t > 0 can do that): the block part is singular
            return out
        e_bb2 = cn._eig(H2bb, "H'_bb")
        kappa_block = cn._bound(lambda amax, bmax, amin, bmin: max(amax, bmax) / min(amin, bmin),
                                cn._encl(e_aa2, -1), cn._encl(e_bb2, -1), cn._encl(e_aa2, 0), cn._encl(e_bb2, 0))
        AWa = A * net.unflatten(th)[0][0]
        s_awa = cn._sqrt_encl(cn._encl(cn._eig(AWa * AWa.transpose(), "(A W_a)(A W_a)^T"), -1))
        lmin_x = cn._lambda_min_psd(cn._second_moment([list(x) for x in net.X], EXACT))
        lb = cn._bound(bounds.condition_lower_bound_defended, s_awa, sA, lmin_x, cn._encl(e_aa, -1))
        out.append(cn._cmp("W'", inst, kappa_block, ">=", lb,
                           detail="kappa(diag(H'_aa, H'_bb)) >= condition_lower_bound_defended(sigma_max(A W_a), "
                                  "sigma_max(A), lambda_min(E[xx^T]), lambda_max(H_aa)) (grows like s_max^4)"))
        top_bb, low_aa = cn._encl(e_bb2, -1), cn._encl(e_aa2, 0)
        if d["t"] == 0 and top_bb.lo > cn._encl(e_aa2, -1).hi and low_aa.hi < cn._encl(e_bb2, 0).lo:
            # isotropic W_b and data, and the extremes come from H'_bb's top and H'_aa's bottom: equality
            out.append(cn._cmp("W'", inst, kappa_block, "==", lb,
                               detail="t = 0, kappa = lambda_max(H'_bb) / lambda_min(H'_aa): the kappa bound is attained"))
    return out


# ---------------------------------------------------------------- T4 with ||T^-1|| on both sides of 1
SCALED = st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1), "n": st.integers(2, 4), "orthogonal": st.booleans(),
    "kappa": st.sampled_from(cn.KAPPAS),
    "c": st.sampled_from((Fraction(1, 3), Fraction(1, 2), Fraction(2), Fraction(5), Fraction(1)))})


@entry("tight_T4_scaled", ["T4"], SCALED)
@at_arb_precision
def check_t4_scaled(d: dict) -> list[CheckResult]:
    """T4's bound ||C o (S, S, S)||_F <= ||S||_2^3 ||C||_F (S = T^-1, C = D^3 L of a cubic L
    with a random symmetric rational tensor) for T = c Q1 diag(s) Q2: attained with equality
    when T = c Q (orthogonal times a scalar, ||S|| = 1/c on both sides of 1), strict otherwise;
    Frobenius norms squared exact, their square roots certified enclosures."""
    rng = np.random.default_rng([d["seed"], 41])
    n = d["n"]
    C = [[[Fraction(0)] * n for _ in range(n)] for _ in range(n)]
    for i in range(n):
        for j in range(i, n):
            for k in range(j, n):
                v = cn._small(rng)
                for a, b, c_ in {(i, j, k), (i, k, j), (j, i, k), (j, k, i), (k, i, j), (k, j, i)}:
                    C[a][b][c_] = v
    kappa = Fraction(1) if d["orthogonal"] else d["kappa"]
    A = rational_element(n, kappa, rng)  # Q1 diag(s) Q2, s_max = kappa, s_min = 1
    S = (A * to_fmpq(d["c"])).inv()
    Cq = [[[to_fmpq(x) for x in row] for row in M] for M in C]
    pulled = cn._mode_products(Cq, S)
    f1 = sum((cn._q(x) ** 2 for M in Cq for row in M for x in row), Fraction(0))
    f2 = sum((cn._q(x) ** 2 for M in pulled for row in M for x in row), Fraction(0))
    norm_S = 1 / d["c"]  # ||S||_2 = 1 / (c s_min), s_min = 1 (exact)
    inst = f"T4 cubic n={n} c={d['c']} kappa(T)={kappa} seed={d['seed']}"
    with mpmath.workdps(cn.DPS):
        bound = cn._bound(bounds.third_derivative_bound, cn._sqrt_encl(f1), norm_S)
        out = [cn._cmp("T4", inst, cn._sqrt_encl(f2), "<=", bound,
                       detail="||C o (T^-1, T^-1, T^-1)||_F <= ||T^-1||^3 ||C||_F")]
        if d["orthogonal"]:
            out.append(cn._cmp("T4", inst, cn._sqrt_encl(f2), "==", bound,
                               detail="T = c Q: ||C o (T^-1, T^-1, T^-1)||_F == ||T^-1||^3 ||C||_F (attained)"))
        return out


# ---------------------------------------------------------------- ORBIT-NULL: nilpotent orbit tangents
NILPOTENT = st.fixed_dictionaries({"seed": st.integers(0, 2**32 - 1), "n_in": st.integers(1, 3), "r": st.integers(2, 3),
                                   "n_out": st.integers(1, 3), "N": st.integers(2, 5)})


def _orbit_tangent(net: Any, theta: Any, B: Any) -> Any:
    """v(B) = Ghat(B) theta = (vec(B W_a), B b_a, vec(-W_b B)) for the pair of a two-layer net
    (linear in theta), as a parameter column (exact)."""
    (Wa, ba), (Wb, bb) = net.unflatten(theta)
    return net.flatten([(B * Wa, B * ba), (Wb * B * -1, bb)])


@entry("tight_orbit_nilpotent", ["ORBIT-NULL"], NILPOTENT)
@at_arb_precision
def check_orbit_nilpotent(d: dict) -> list[CheckResult]:
    """ORBIT-NULL at a random (non-critical) point of a two-layer linear net with r >= 2: for a
    nilpotent B (B = E_ij, i != j) the orbit tangent v(B) is nonzero and v^T H v = 0 exactly, so
    H is not positive definite anywhere; and H v(B) = -Ghat(B)^T grad L for a general B (exact;
    Ghat(B) assembled column by column from its action on the basis vectors)."""
    rng = np.random.default_rng([d["seed"], 43])
    r, n_in = d["r"], d["n_in"]
    X = [[cn._small(rng) for _ in range(n_in)] for _ in range(d["N"])]
    Y = [[cn._small(rng, -2, 2) for _ in range(d["n_out"])] for _ in range(d["N"])]
    net = TwoLayerLinear(n_in, r, d["n_out"], X, Y)
    th = cn._col([cn._small(rng) for _ in range(net.n_params)])
    H, g = net.hessian(th), net.gradient(th)
    i, j = (int(x) for x in rng.choice(r, 2, replace=False))
    E = pack([[to_fmpq(1 if (a, b) == (i, j) else 0) for b in range(r)] for a in range(r)], EXACT)
    v = _orbit_tangent(net, th, E)
    inst = f"linear2 n_in={n_in} r={r} n_out={d['n_out']} N={d['N']} B=E_{i + 1}{j + 1} seed={d['seed']}"
    vHv = (v.transpose() * H * v)[0, 0]
    out = [cq._cmp("ORBIT-NULL", inst, cn._q(vHv), "==", 0, precision=EXACT_P,
                   detail="v(B)^T H v(B) = 0 for nilpotent B = E_ij: zero curvature along the orbit tangent")]
    nonzero = sum(1 for k in range(v.nrows()) if v[k, 0] != 0)
    out.append(cq._cmp("ORBIT-NULL", inst, nonzero, ">=", 1, precision=EXACT_P,
                       detail="v(B) has a nonzero entry: H has a nonzero isotropic vector, so H is not positive definite"))
    Bg = pack([[to_fmpq(cn._small(rng)) for _ in range(r)] for _ in range(r)], EXACT)
    n = net.n_params
    cols = [_orbit_tangent(net, cn._col([Fraction(int(k == m)) for m in range(n)]), Bg) for k in range(n)]
    Ghat = pack([[cols[k][m, 0] for k in range(n)] for m in range(n)], EXACT)
    out.append(cn._exact_eq("ORBIT-NULL", inst, "H v(B) + Ghat(B)^T grad L (general B)", H * _orbit_tangent(net, th, Bg),
                            Ghat.transpose() * g * -1))
    return out
