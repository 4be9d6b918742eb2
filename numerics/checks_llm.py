"""Battery entries for the decoder-LLM statements S4 and O (THEORY.md section 6).

* ``llm_S4_rope_scores``: rotary pairs with exact rational rotations (the Pythagorean point
  ((1 - t^2)/(1 + t^2), 2t/(1 + t^2)) of a rational t; t = 0 an unrotated pair, a half-turn
  point (-1, 0), pairs drawn to coincide with an earlier one or with its conjugate), a head of
  dimension d = 2p in transformers' rotate_half layout, G query heads sharing one key. An
  element A of RoPE's commutant is built class by class (complex rational matrices embedded,
  real GL blocks), and, exactly in rationals (fmpq):
  (a) every score (E_m A q_h)^T (E_n A^-T k) equals (E_m q_h)^T (E_n k) for all positions m, n < L
      (every offset, positive ones included) and every head h;
  (b) the dimension of the exact commutant {X : E_1 X = X E_1} (d^2 - rank of the Sylvester map)
      equals ``bounds_llm.rope_commutant_dimension`` of the points;
  (c) a random rational map M outside the commutant changes the offset -1 scores: D = M^T E_-1
      M^-T - E_-1 has a nonzero entry, and D M^T = [M^T, E_-1] (the derived identity); skipped
      when every map commutes (all pairs unrotated or half-turns of one kind).
* ``llm_O_orthogonal``: a rational quadratic q(e) = 1/2 e^T H e, an exactly orthogonal T (product
  of rational Householder reflections, or a signed permutation).
  (a) exact rationals: GD, heavy ball, Nesterov and Newton on q' = q o T^-1 from T e_0 give
      e'_t = T e_t for every t;
  (b) arb balls (256 bits): Adam's and RMSprop's first step on q' equals the derived closed form
      T e_0 - eta f(T g_0), f(x)_i = x_i / (sqrt(c x_i^2) + eps) (c = 1 for Adam with bias
      correction, 1 - beta for RMSprop), and the mapped-back difference T^T e'_1 - e_1 equals
      eta (f(g_0) - T^T f(T g_0)); the ratio ||T g_0||_1 / ||g_0||_1 (the first step's first-order
      decrease against the undefended one as eps -> 0) lies in ``bounds_llm``'s interval;
  (c) for a signed permutation T, Adam's iterates map exactly: T^T e'_t = e_t for t <= K (balls).
Precision: exact rational (fmpq) for (S4) and O(a); arb balls at 256 bits for O(b, c), the
verdict decided with the balls' radii as err.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Any

import mpmath
import numpy as np
from flint import arb, arb_mat, fmpq, fmpq_mat
from hypothesis import strategies as st

from convrate.numerics.battery import entry
from convrate.numerics.checks_quadratic import (_cmp, _coeffs, _eye, _nonzero_gradient, _orthogonal, _residual,
                                                _rng, _rotated, _spectrum, _worst_ball_gap)
from convrate.numerics.optimizers import GD, Adam, HeavyBall, Nesterov, Newton, RMSprop, run_ball, run_exact
from convrate.numerics.quadratic import arb_prec, arb_to_mpf
from convrate.theory import bounds_llm
from convrate.theory.core import CheckResult

EXACT = "exact rational (fmpq)"
BALL = "arb ball arithmetic, 256 bits; err = the balls' radii"
DPS = 60


# ---------------------------------------------------------------- S4
def _point(kind: str, t: Fraction) -> tuple[Fraction, Fraction]:
    if kind == "unrotated":
        return Fraction(1), Fraction(0)
    if kind == "half-turn":
        return Fraction(-1), Fraction(0)
    return (1 - t * t) / (1 + t * t), 2 * t / (1 + t * t)


def _rope_points(rng: np.random.Generator, p: int) -> list[tuple[Fraction, Fraction]]:
    """Exact points e^{i w_j}: mostly distinct rotary pairs, some coinciding (or conjugate) with an
    earlier pair, some unrotated or half-turn."""
    pts: list[tuple[Fraction, Fraction]] = []
    for j in range(p):
        u = rng.random()
        if j and u < 0.25:
            c, s = pts[int(rng.integers(0, j))]
            pts.append((c, s if rng.random() < 0.5 else -s))
        elif u < 0.35:
            pts.append(_point("unrotated", Fraction(0)))
        elif u < 0.42:
            pts.append(_point("half-turn", Fraction(0)))
        else:
            t = Fraction(int(rng.integers(1, 10)), int(rng.integers(1, 10))) * (1 if rng.random() < 0.5 else -1)
            pts.append(_point("rotary", t))
    return pts


def _generator(pts: list[tuple[Fraction, Fraction]]) -> fmpq_mat:
    """E_1 in the rotate_half layout: cos on (j, j) and (j+p, j+p), -sin at (j, j+p), sin at (j+p, j)."""
    p = len(pts)
    E = fmpq_mat(2 * p, 2 * p)
    for j, (c, s) in enumerate(pts):
        cq, sq = fmpq(c.numerator, c.denominator), fmpq(s.numerator, s.denominator)
        E[j, j] = E[j + p, j + p] = cq
        E[j, j + p], E[j + p, j] = -sq, sq
    return E


def _power(E: fmpq_mat, n: int) -> fmpq_mat:
    """E^n, with E^-1 = E^T (E exactly orthogonal)."""
    B = E if n >= 0 else E.transpose()
    out = _eye(E.nrows())
    for _ in range(abs(n)):
        out = out * B
    return out


def _rand_q(rng: np.random.Generator) -> fmpq:
    return fmpq(int(rng.integers(-6, 7)), int(rng.integers(1, 5)))


def _commutant_member(rng: np.random.Generator, pts: list[tuple[Fraction, Fraction]]) -> fmpq_mat:
    """A random invertible rational element commuting with E_1, class by class (module doc)."""
    p = len(pts)
    while True:
        A = fmpq_mat(2 * p, 2 * p)
        for kind, pairs in bounds_llm.rope_class_structure(pts):
            coords = list(pairs) + [j + p for j in pairs]
            if kind in ("unrotated", "half-turn"):
                for a in coords:
                    for b in coords:
                        A[a, b] = _rand_q(rng)
                continue
            ref_sign = 1 if pts[pairs[0]][1] > 0 else -1
            sg = [1 if (pts[j][1] > 0) == (ref_sign > 0) else -1 for j in pairs]
            for x, ja in enumerate(pairs):
                for y, jb in enumerate(pairs):
                    re, im = _rand_q(rng), _rand_q(rng)
                    # entry (x, y) of the complex matrix in coordinates z_j = x_j + i sg_j y_j
                    A[ja, jb] = re
                    A[ja, jb + p] = -im * sg[y]
                    A[ja + p, jb] = im * sg[x]
                    A[ja + p, jb + p] = re * sg[x] * sg[y]
        if A.det() != 0:
            return A


@entry("llm_S4_rope_scores", ["S4"], st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1), "p": st.integers(1, 3), "G": st.integers(1, 2), "L": st.integers(2, 5)}))
def check_s4_rope_scores(d: dict) -> list[CheckResult]:
    rng = _rng(d["seed"])
    p, G, L = d["p"], d["G"], d["L"]
    pts = _rope_points(rng, p)
    n = 2 * p
    E = _generator(pts)
    inst = (f"p={p} G={G} L={L} points={[(str(c), str(s)) for c, s in pts]} "
            f"classes={bounds_llm.rope_class_structure(pts)} seed={d['seed']}")
    A = _commutant_member(rng, pts)
    AinvT = A.inv().transpose()
    powers = [_power(E, m) for m in range(L)]
    k = fmpq_mat([[_rand_q(rng)] for _ in range(n)])
    changed = 0
    for _ in range(G):
        q = fmpq_mat([[_rand_q(rng)] for _ in range(n)])
        for Em in powers:
            for En in powers:
                new = ((Em * A * q).transpose() * (En * AinvT * k))[0, 0]
                old = ((Em * q).transpose() * (En * k))[0, 0]
                changed += int(new != old)
    out = [_cmp("S4", inst, changed, "==", 0, precision=EXACT,
                detail=f"scores changed by q -> A q, k -> A^-T k over {G} heads x {L}^2 position pairs")]
    I = _eye(n)
    syl = fmpq_mat(n * n, n * n)
    for i in range(n):  # vec_row(E X - X E) = (E (x) I - I (x) E^T) vec_row(X)
        for j in range(n):
            for a in range(n):
                for b in range(n):
                    syl[i * n + j, a * n + b] = E[i, a] * I[j, b] - I[i, a] * E[b, j]
    dim = n * n - syl.rank()
    out.append(_cmp("S4", inst, dim, "==", bounds_llm.rope_commutant_dimension(pts), precision=EXACT,
                    detail="dimension of {X : E_1 X = X E_1} vs bounds_llm.rope_commutant_dimension"))
    if dim == n * n:  # every pair unrotated or a half-turn: E_1 = +-I per class, every map commutes
        return out
    while True:
        M = fmpq_mat([[_rand_q(rng) for _ in range(n)] for _ in range(n)])
        if M.det() != 0 and E * M != M * E:
            break
    Em1 = E.transpose()
    D = M.transpose() * Em1 * M.inv().transpose() - Em1
    nonzero = sum(1 for i in range(n) for j in range(n) if D[i, j] != 0)
    out.append(_cmp("S4", inst, nonzero, ">=", 1, precision=EXACT,
                    detail="a map outside the commutant changes the offset -1 bilinear form M^T E_-1 M^-T"))
    ident = D * M.transpose() - (M.transpose() * Em1 - Em1 * M.transpose())
    out.append(_cmp("S4", inst, _residual([ident], [fmpq_mat(n, n)]), "==", 0, precision=EXACT,
                    detail="D M^T = [M^T, E_-1] (offset -1 changes iff M does not commute with E_1)"))
    return out


# ---------------------------------------------------------------- O
def _signed_permutation(rng: np.random.Generator, n: int) -> fmpq_mat:
    P = fmpq_mat(n, n)
    for i, j in enumerate(rng.permutation(n)):
        P[i, int(j)] = 1 if rng.random() < 0.5 else -1
    return P


def _first_step_prediction(T: fmpq_mat, e0: fmpq_mat, g0: fmpq_mat, eta: Fraction, eps: Fraction,
                           c: Fraction) -> arb_mat:
    """T e_0 - eta f(T g_0), f(x)_i = x_i / (sqrt(c x_i^2) + eps), as balls (module doc)."""
    Tg = T * g0
    Te = T * e0
    out = []
    for i in range(Tg.nrows()):
        x = arb(Tg[i, 0])
        out.append([arb(Te[i, 0]) - arb(fmpq(eta.numerator, eta.denominator)) * x
                    / ((arb(fmpq(c.numerator, c.denominator)) * x * x).sqrt() + arb(fmpq(eps.numerator, eps.denominator)))])
    return arb_mat(out)


def _l1(v: fmpq_mat) -> Fraction:
    return sum((abs(Fraction(int(v[i, 0].p), int(v[i, 0].q))) for i in range(v.nrows())), Fraction(0))


@entry("llm_O_orthogonal", ["O"], st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1), "n": st.integers(2, 5), "a": st.integers(3, 15), "u": st.integers(1, 20),
    "b": st.integers(0, 9), "signed_perm": st.booleans(), "e": st.integers(0, 2)}), cost=2)
def check_o_orthogonal(d: dict) -> list[CheckResult]:
    rng = _rng(d["seed"])
    n = d["n"]
    kappa = max(2, round(10 ** (d["a"] / 10)))
    lam, c0 = _spectrum(rng, n, kappa), _coeffs(rng, n)
    prob = _nonzero_gradient(_rotated(rng, lam, c0))
    T = _signed_permutation(rng, n) if d["signed_perm"] else _orthogonal(rng, n, k=3)
    defended = prob.reparameterize(T)
    eta = Fraction(d["u"], 20) / Fraction(kappa)
    beta = Fraction(d["b"], 10)
    eps = [Fraction(0), Fraction(1, 10**8), Fraction(1, 100)][d["e"]]
    Tg0 = T * (prob.H * prob.e0)
    if eps == 0 and any(Tg0[i, 0] == 0 for i in range(n)):
        eps = Fraction(1, 10**8)  # f(0) = 0 / 0 at eps = 0: the defended first step is undefined
    kind = "signed permutation" if d["signed_perm"] else "Householder product"
    inst = f"n={n} kappa={kappa} T={kind} eta={eta} beta={beta} eps={eps} seed={d['seed']}"
    K = 4
    out = []
    for name, opt in (("GD", GD(eta)), ("heavy ball", HeavyBall(eta, beta)), ("Nesterov", Nesterov(eta, beta)),
                      ("Newton", Newton())):
        mapped = [T * e for e in run_exact(prob, opt, K)]
        out.append(_cmp("O", inst, _residual(run_exact(defended, opt, K), mapped), "==", 0, precision=EXACT,
                        detail=f"{name}: max |theta'_t - T theta_t|, t <= {K}"))
    g0 = prob.H * prob.e0
    Tt = arb_mat(T.transpose())
    for name, opt, cfac in (("Adam", Adam(eta, Fraction(9, 10), Fraction(99, 100), eps), Fraction(1)),
                            ("RMSprop", RMSprop(eta, Fraction(9, 10), eps), Fraction(1, 10))):
        with arb_prec(256):
            first = run_ball(defended, opt, 1, 256)[1]
            pred = _first_step_prediction(T, prob.e0, g0, eta, eps, cfac)
            undef = run_ball(prob, opt, 1, 256)[1]
            diff_meas = Tt * first - undef
            und_pred = _first_step_prediction(_eye(n), prob.e0, g0, eta, eps, cfac)
            diff_pred = Tt * pred - und_pred
        gap, err, where = _worst_ball_gap([first], [pred])
        out.append(_cmp("O", inst, gap, "==", 0, precision=BALL, err=err,
                        detail=f"{name}: first step on L' == T e_0 - eta f(T g_0) (worst {where})"))
        gap, err, where = _worst_ball_gap([diff_meas], [diff_pred])
        out.append(_cmp("O", inst, gap, "==", 0, precision=BALL, err=err,
                        detail=f"{name}: mapped-back difference T^T e'_1 - e_1 == eta (f(g_0) - T^T f(T g_0)) "
                               f"(worst {where})"))
    ratio = _l1(T * g0) / _l1(g0)
    with mpmath.workdps(DPS):
        lo, hi = bounds_llm.adam_first_step_decrease_ratio_bounds([Fraction(int(g0[i, 0].p), int(g0[i, 0].q))
                                                                    for i in range(n)])
        r = mpmath.mpf(ratio.numerator) / ratio.denominator
        slack = mpmath.mpf(10) ** (5 - DPS) * hi
        out.append(_cmp("O", inst, r, ">=", lo, precision=f"exact ratio vs bound at mpmath dps={DPS}", err=slack,
                        detail=f"||T g||_1 / ||g||_1 = {mpmath.nstr(r, 8)} >= ||g||_2/||g||_1"))
        out.append(_cmp("O", inst, r, "<=", hi, precision=f"exact ratio vs bound at mpmath dps={DPS}", err=slack,
                        detail="||T g||_1 / ||g||_1 <= sqrt(n) ||g||_2/||g||_1"))
    if d["signed_perm"]:
        with arb_prec(256):
            back = [Tt * e for e in run_ball(defended, Adam(eta, Fraction(9, 10), Fraction(99, 100), eps), K, 256)]
        direct = run_ball(prob, Adam(eta, Fraction(9, 10), Fraction(99, 100), eps), K, 256)
        gap, err, where = _worst_ball_gap(back, direct)
        out.append(_cmp("O", inst, gap, "==", 0, precision=BALL, err=err,
                        detail=f"Adam under a signed permutation: T^T theta'_t == theta_t, t <= {K} (worst {where})"))
    return out


__all__: list[Any] = []
