"""Battery entries on adversarial and tight instances: B and T3 (aligned T), W' (active bound).

Random instances rarely sit near a bound: a random T is not aligned with H's eigenvectors, so
kappa(H') stays far below kappa(T)^2 kappa(H), and a random W' instance has lambda_min(H_aa) = 0
(rank-deficient data or W_b) or r = 1. These entries draw the worst cases on purpose, so that
each bound is met with (near-)equality and a wrong bound -- THEORY.md's false "GD slowdown <=
kappa(T)^2" among them -- fails:

* **aligned quadratics** (B, T3): H = Q diag(lambda) Q^T, T = Q diag(d) Q^T diagonal in H's
  eigenbasis, d_1 = kappa(T) on the lambda_min direction and d_n = 1 on lambda_max (interior d
  in between), so H' = Q diag(lambda_i / d_i^2) Q^T has kappa(H') = kappa(T)^2 kappa(H) exactly
  (T3's upper bound attained). kappa(H) is drawn near 1 (1 + 1/m) or large (up to 1e6); e_0 on
  the two extreme eigenvectors (the worst case of F1) or on all of them. On every such instance
  the asymptotic slowdown artanh(1/kappa(H)) / artanh(1/kappa(H')) exceeds kappa(T)^2 (artanh(x)/x
  is increasing), so the false bound fails everywhere, while the corrected ones hold: B (ii)
  with slack -> 0 as kappa(H) grows, B (i) with equality for the two-point e_0 at eta*.
* **active W'** : two-layer linear nets with r >= 2, n_out >= r, full-rank data (N = n_in
  orthogonal rows, scaled), W_b with orthogonal columns of equal norm, both perturbed by a drawn
  amount t (t = 0: W_b^T W_b and E[x x^T] are multiples of I, and lambda_min(H'_aa) =
  lambda_max(H_aa) / sigma_max(A)^2 exactly: margin 0), and a general rational A = Q1 diag(d) Q2.
  ``assume`` keeps the non-vacuous case lambda_min(H_aa) > 0.

Precision: exact rationals for the spectra of aligned problems and for H_aa (lambda_i / d_i^2
are exact); bounds at mpmath dps = 60 (``checks_quadratic``); the W' eigenvalues are certified
enclosures (``linalg.sym_eig``) with their radii in err (``checks_nets``).
"""
from __future__ import annotations

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


def aligned_problem(d: dict) -> tuple[Quadratic, Any, Fraction, Fraction, Fraction, str]:
    """(p, T, kappa(H), kappa(T), kappa(H') exact, description) of an aligned instance (module doc)."""
    rng = cq._rng(d["seed"])
    n = d["n"]
    kH, kT = _aligned_kappa_H(d), Fraction(cq._kappa(d["aT"]))
    lam = cq._spectrum(rng, n, kH)
    dd = sorted(cq._spectrum(rng, n, kT), reverse=True)  # d_1 = kappa(T) on lambda_1 = lambda_min
    c = cq._coeffs(rng, n)
    if d["extremes"]:
        c = [c[0]] + [Fraction(0)] * (n - 2) + [c[-1]]
    Q = cq._orthogonal(rng, n)
    cvec = pack([[to_fmpq(x)] for x in c], EXACT)
    p = Quadratic(Q * cq._diag(lam) * Q.transpose(), Q * cvec)
    T = Q * cq._diag(dd) * Q.transpose()
    new = [x / y**2 for x, y in zip(lam, dd)]
    kq = max(new) / min(new)
    inst = (f"aligned n={n} kappa(H)={kH} kappa(T)={kT} e0={'extremes' if d['extremes'] else 'full'} "
            f"seed={d['seed']}")
    return p, T, kH, kT, kq, inst


ALIGNED = st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1), "n": st.integers(2, 6), "near_one": st.booleans(), "m": st.integers(1, 50),
    "a": st.integers(3, 60), "aT": st.integers(3, 30), "extremes": st.booleans(), "tm": st.integers(1, 5),
    "tk": st.integers(2, 10)})


def _mpf(x: Fraction) -> mpmath.mpf:
    with mpmath.workdps(cq.DPS):
        return mpmath.mpf(x.numerator) / x.denominator


def _exact_box(x: Fraction) -> tuple[mpmath.mpf, mpmath.mpf, mpmath.mpf]:
    v = _mpf(x)
    return v, v, v


def _artanh_ratio(kH: Fraction, kq: Fraction) -> mpmath.mpf:
    with mpmath.workdps(cq.DPS):
        return mpmath.atanh(1 / _mpf(kH)) / mpmath.atanh(1 / _mpf(kq))


@entry("tight_B_T3_aligned", ["B", "T3"], ALIGNED, cost=2)
def check_b_aligned(d: dict) -> list[CheckResult]:
    """B and T3 on aligned instances: kappa(H') == kappa(T)^2 kappa(H) (exact; T3's upper bound
    attained) and the certified kappa(H') enclosure of the dense H' agrees; the best-fixed-step
    count <= gd_defended_steps_upper_bound (B (i); equality for the two-point e_0);
    artanh(1/kappa(H)) / artanh(1/kappa(H')) <= gd_slowdown_bound (B (ii), slack -> 0 as kappa(H)
    grows) and >= kappa(T)^2 (THEORY's bound kappa(T)^2 is exceeded on every aligned instance)."""
    p, T, kH, kT, kq, inst = aligned_problem(d)
    tol = cq._tol(d["tm"], d["tk"])
    q = p.reparameterize(T)
    out = [cq._cmp("T3", inst, kq, "==", kT * kT * kH, precision=EXACT_P,
                   detail="kappa(H') (exact: lambda_i / d_i^2) == kappa(T)^2 kappa(H): the upper bound is attained")]
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
    out.append(cq._cmp("B", inst, ratio, ">=", kT * kT, err=err, precision=f"mpmath dps={cq.DPS}, exact kappas",
                       detail="artanh(1/kappa(H)) / artanh(1/kappa(H')) >= kappa(T)^2: THEORY's 'slowdown <= "
                              "kappa(T)^2' fails on this instance (corrected B)"))
    return out


# ---------------------------------------------------------------- W' with the bound active
ACTIVE = st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1), "n_in": st.integers(1, 3), "r": st.integers(2, 3), "extra_out": st.integers(0, 1),
    "kappa": st.sampled_from(cn.KAPPAS), "t": st.sampled_from((Fraction(0), Fraction(1, 16), Fraction(1, 4), Fraction(1))),
    "scale": st.sampled_from((Fraction(1), Fraction(2), Fraction(1, 3)))})


def _perturbed(M: Any, t: Fraction, rng: np.random.Generator) -> list[list[Fraction]]:
    rows = [[cn._q(M[i, j]) for j in range(M.ncols())] for i in range(M.nrows())]
    return [[v + t * cn._small(rng) for v in row] for row in rows]


@entry("tight_Wprime_active", ["W'"], ACTIVE, cost=2)
@at_arb_precision
def check_wprime_active(d: dict) -> list[CheckResult]:
    """W' where it bites: lambda_min(H'_aa) <= aa_block_lambda_min_upper_bound(lambda_max(H_aa),
    sigma_max(A)) with lambda_min(H_aa) > 0 (assumed), r >= 2, full-rank data and a general A;
    equality (margin 0) at t = 0. H'_aa is the Hessian block of the net at T theta (exact), and
    equals (A^-T (x) I) H_aa (A^-1 (x) I) exactly."""
    rng = np.random.default_rng([d["seed"], 31])
    n_in, r = d["n_in"], d["r"]
    n_out = r + d["extra_out"]
    Xq = rational_orthogonal(n_in, rng)
    X = [[d["scale"] * v for v in row] for row in _perturbed(Xq, d["t"], rng)]
    Y = [[cn._small(rng, -2, 2) for _ in range(n_out)] for _ in range(n_in)]
    net = TwoLayerLinear(n_in, r, n_out, X, Y)
    Wb = _perturbed(rational_orthogonal(n_out, rng), d["t"], rng)
    theta = [cn._small(rng) for _ in range(r * n_in + r)] + [Wb[o][i] for o in range(n_out) for i in range(r)]
    th = cn._col(theta)
    a0, a1, _, _ = cn._w_blocks(net)
    Haa = cn._block(net.hessian(th), a0, a1)
    assume(Haa.det() != 0)  # the non-vacuous case: lambda_min(H_aa) > 0
    A = rational_element(r, d["kappa"], rng)
    sym = cn.Symmetry(net, "S1", 0)
    rep = cn.Reparameterization(net, ((sym, A),))
    inst = f"W' active n_in={n_in} r={r} n_out={n_out} kappa(A)={d['kappa']} t={d['t']} scale={d['scale']} seed={d['seed']}"
    H2aa = cn._block(net.hessian(rep.apply(th)), a0, a1)
    Ainv = A.inv()
    K = kron(Ainv, cn.identity(n_in, EXACT))
    out = [cn._exact_eq("W'", inst, "H'_aa - (A^-T (x) I) H_aa (A^-1 (x) I)", H2aa, K.transpose() * Haa * K)]
    with mpmath.workdps(cn.DPS):
        _, sA = singular_value_range(A)
        ub = cn._bound(bounds.aa_block_lambda_min_upper_bound, cn._encl(cn._eig(Haa), -1), sA)
        out.append(cn._cmp("W'", inst, cn._encl(cn._eig(H2aa, "H'_aa"), 0), "<=", ub,
                           detail="lambda_min(H'_aa) <= lambda_max(H_aa) / sigma_max(A)^2, lambda_min(H_aa) > 0"))
    return out
