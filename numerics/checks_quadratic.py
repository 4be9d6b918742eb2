"""Battery entries on the quadratic model: F1, F2, P, N, LM, A, C, B, T3 (THEORY.md section 3-4).

Instances are built deterministically from a few drawn integers (a numpy Generator seeded by a
drawn int, then exact Fractions of small denominators), so drawing is cheap and shrinking works:
- spectra: lambda_min = 1, lambda_max = kappa (kappa = round(10^(a/10)), log-uniform), interior
  eigenvalues log-uniform, rational;
- explicit H = Q diag(lambda) Q^T with Q a product of rational Householder reflections (exactly
  orthogonal), so H is a dense rational matrix with exactly known spectrum;
- T = Q1 diag(d) Q2 (singular values d exactly, kappa(T) = d_max / d_min) or T = diag(d) U with U
  unimodular upper triangular (singular values certified by ``sym_eig`` of T^T T);
- tol = m / 10^k, m in 1..5 (so tol in [1e-12, 0.5]).
Every verdict goes through ``compare``. Counts from ``steps_to`` are certified integers (err 0);
exact rational quantities have err 0; balls contribute their radii; bounds of ``theory.bounds``
are evaluated at mpmath dps = 60, and where their arguments are enclosures their variation over
the enclosure box (they are monotone in each argument) is added to err.
"""
from __future__ import annotations

import itertools
from fractions import Fraction
from typing import Any, Callable, Sequence

import mpmath
import numpy as np
from flint import arb, arb_mat, fmpq, fmpq_mat
from hypothesis import strategies as st

from convrate.errors import DivergenceError, NoConvergenceError
from convrate.numerics.battery import entry
from convrate.numerics.krylov import cg_polynomial_minimum, cg_run, inner
from convrate.numerics.optimizers import (CG, GD, LM, Adagrad, Adam, CubicNewton, GDSchedule, HeavyBall,
                                          Nesterov, Newton, PreconditionedGD, RMSprop, run_ball, run_exact)
from convrate.numerics.quadratic import Quadratic, arb_prec, arb_to_mpf, fmpq_to_fraction
from convrate.numerics.steps import best_fixed_step, brute_force_steps, closed_form_loss, measure_for, steps_to
from convrate.theory import bounds, bounds_optim
from convrate.theory.core import CheckResult, compare

DPS = 60
EXACT = "exact rational (fmpq)"
COUNT = "certified count (arb balls / exact rationals decide q_t <= tol q0 < q_(t-1))"
BOUND = f"integer bound from theory.bounds at mpmath dps={DPS}"
BALL = "arb ball arithmetic, 256 bits; err = sum of the two balls' radii"


# ---------------------------------------------------------------- instance builders
def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _F(x: fmpq) -> Fraction:
    return fmpq_to_fraction(x)


def _kappa(a: int) -> int:
    """Condition number 10^(a/10), rounded (a >= 3 gives kappa >= 2)."""
    return max(2, round(10 ** (a / 10)))


def _spectrum(rng: np.random.Generator, n: int, kappa: int | Fraction) -> list[Fraction]:
    """[1, interior log-uniform rationals..., kappa] (ascending)."""
    logk = float(np.log(float(kappa)))
    inner_ = sorted(Fraction(float(np.exp(logk * u))).limit_denominator(64) for u in rng.uniform(0, 1, n - 2))
    return [Fraction(1)] + [min(max(x, Fraction(1)), Fraction(kappa)) for x in inner_] + [Fraction(kappa)]


def _coeffs(rng: np.random.Generator, n: int) -> list[Fraction]:
    out = []
    for _ in range(n):
        num = int(rng.integers(1, 10)) * (1 if rng.random() < 0.5 else -1)
        out.append(Fraction(num, int(rng.integers(1, 8))))
    return out


def _eye(n: int) -> fmpq_mat:
    I = fmpq_mat(n, n)
    for i in range(n):
        I[i, i] = 1
    return I


def _diag(vals: Sequence[Any]) -> fmpq_mat:
    D = fmpq_mat(len(vals), len(vals))
    for i, v in enumerate(vals):
        D[i, i] = fmpq(v.numerator, v.denominator) if isinstance(v, Fraction) else v
    return D


def _orthogonal(rng: np.random.Generator, n: int, k: int = 2) -> fmpq_mat:
    """Product of k rational Householder reflections I - 2 v v^T / v^T v: exactly orthogonal."""
    Q = _eye(n)
    for _ in range(k):
        v = [int(x) for x in rng.integers(-3, 4, n)]
        if not any(v):
            v[0] = 1
        V = fmpq_mat([[x] for x in v])
        Q = Q * (_eye(n) - V * V.transpose() * (fmpq(2) / inner(V, V)))
    return Q


def _rotated(rng: np.random.Generator, lam: Sequence[Fraction], c: Sequence[Fraction]) -> Quadratic:
    """Explicit H = Q diag(lam) Q^T, e0 = Q c: the same problem as from_spectrum(lam, c), rotated."""
    Q = _orthogonal(rng, len(lam))
    cq = fmpq_mat([[fmpq(x.numerator, x.denominator)] for x in c])
    return Quadratic(Q * _diag(lam) * Q.transpose(), Q * cq)


def _reparam(rng: np.random.Generator, n: int, kT: int, kind: int) -> tuple[fmpq_mat, list[Fraction] | None]:
    """(T, exact singular values or None). kind 0: Q1 diag(d) Q2, sigma(T) = d, kappa(T) = kT.
    kind 1: diag(d) U, U unit upper triangular with small integer entries."""
    d = _spectrum(rng, n, kT) if n > 1 else [Fraction(1)]
    if kind == 0:
        return _orthogonal(rng, n) * _diag(d) * _orthogonal(rng, n), sorted(d)
    U = _eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            U[i, j] = int(rng.integers(-1, 2))
    perm = [int(x) for x in rng.permutation(n)]
    P = fmpq_mat(n, n)
    for i, j in enumerate(perm):
        P[i, j] = 1
    return _diag(d) * P * U, None


def _tol(m: int, k: int) -> Fraction:
    return Fraction(m, 10**k)


# ---------------------------------------------------------------- enclosures and bounds
def _ball_interval(b: arb) -> tuple[mpmath.mpf, mpmath.mpf, mpmath.mpf]:
    """(mid, lo, hi) of a ball as mpf at the current precision (outward)."""
    mid, rad = arb_to_mpf(b)
    return mid, mid - rad, mid + rad


def _sigma_balls(T: fmpq_mat, exact: list[Fraction] | None) -> tuple[arb, arb]:
    """Balls of sigma_min(T), sigma_max(T): exact when known, else sqrt of the certified
    extreme eigenvalues of T^T T (``sym_eig``)."""
    with arb_prec(256):
        if exact is not None:
            return arb(fmpq(exact[0].numerator, exact[0].denominator)), arb(fmpq(exact[-1].numerator, exact[-1].denominator))
        G = Quadratic(T.transpose() * T, [1] * T.nrows())
        lo, hi = G.extreme_eigenvalues()
        return lo.sqrt(), hi.sqrt()


def _enclosed(fn: Callable[..., Any], *boxes: tuple[mpmath.mpf, mpmath.mpf, mpmath.mpf]) -> tuple[mpmath.mpf, mpmath.mpf]:
    """(fn(mids), err) with err >= |fn(x) - fn(mids)| for every x in the box, valid for fn monotone
    in each argument (the extremes are at corners), plus the dps rounding of fn (relative 1e-50)."""
    with mpmath.workdps(DPS):
        val = mpmath.mpf(fn(*[b[0] for b in boxes]))
        err = mpmath.mpf(0)
        for corner in itertools.product(*[(b[1], b[2]) for b in boxes]):
            err = max(err, abs(mpmath.mpf(fn(*corner)) - val))
        return val, err + abs(val) * mpmath.mpf(10) ** (10 - DPS)


def _official_int(fn: Callable[..., int], *args: Any) -> int:
    with mpmath.workdps(DPS):
        return int(fn(*args))


def _cmp(statement: str, inst: str, measured: Any, rel: str, bound: Any, *, precision: str, err: Any = 0,
         detail: str = "") -> CheckResult:
    with mpmath.workdps(DPS):
        return compare(statement, inst, measured, rel, bound, precision=precision, err=err, detail=detail)


def _bound_pair(statement: str, inst: str, count: int, official: int, certified: int, what: str) -> list[CheckResult]:
    """count <= bound (the certified value), and the official theory.bounds value == certified."""
    return [
        _cmp(statement, inst, count, "<=", certified, precision=COUNT + "; bound decided exactly (bounds_optim)",
             detail=f"steps <= {what}"),
        _cmp(statement, inst, official, "==", certified, precision=BOUND + " vs exactly decided value",
             detail=f"theory.bounds.{what} agrees with its exactly decided value"),
    ]


def _worst_ball_gap(A: Sequence[arb_mat], B: Sequence[arb_mat]) -> tuple[mpmath.mpf, mpmath.mpf, str]:
    """The coordinate (t, i) maximizing |mid_a - mid_b| - (rad_a + rad_b): returns (|mid diff|, radii
    sum, where). If that coordinate satisfies |diff| <= radii, all coordinates do."""
    best = None
    with mpmath.workdps(DPS):
        for t, (a, b) in enumerate(zip(A, B, strict=True)):
            for i in range(a.nrows()):
                ma, ra = arb_to_mpf(a[i, 0])
                mb, rb = arb_to_mpf(b[i, 0])
                gap, err = abs(ma - mb), ra + rb
                if best is None or gap - err > best[0] - best[1]:
                    best = (gap, err, f"t={t} i={i}")
    assert best is not None
    return best


def _residual(A: Sequence[fmpq_mat], B: Sequence[fmpq_mat]) -> Fraction:
    """max over t, i of |A_t[i] - B_t[i]| (exact)."""
    worst = fmpq(0)
    for a, b in zip(A, B, strict=True):
        d = a - b
        for i in range(d.nrows()):
            worst = max(worst, abs(d[i, 0]))
    return _F(worst)


# ---------------------------------------------------------------- F1
@entry("quad_F1_closed_form", ["F1"], st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1), "n": st.integers(2, 6), "a": st.integers(3, 15),
    "tm": st.integers(1, 5), "tk": st.integers(1, 4), "u": st.integers(16, 63)}))
def check_f1_closed_form(d: dict) -> list[CheckResult]:
    """F1: the closed-form GD count equals the count by exact rational iteration (spectral form
    and the same problem rotated to a dense H, which goes through exact Lanczos); it is at most
    gd_steps_upper_bound(rho, tol), rho = max |1 - eta lambda_i|; and the closed-form losses
    equal the iterated ones exactly for the first steps."""
    rng = _rng(d["seed"])
    n, kappa, tol = d["n"], _kappa(d["a"]), _tol(d["tm"], d["tk"])
    lam, c = _spectrum(rng, n, kappa), _coeffs(rng, n)
    eta = Fraction(d["u"], 32 * kappa)  # u/64 * 2/lambda_max, u in [16, 63]
    p = Quadratic.from_spectrum(lam, c)
    inst = f"n={n} kappa={kappa} tol={tol} eta={eta} seed={d['seed']}"
    N = steps_to(p, GD(eta), tol)
    out = []
    try:
        bf = brute_force_steps(p, GD(eta), tol, N + 1)
    except NoConvergenceError:
        bf = N + 2  # not reached within N + 1 exact steps: certainly different
    out.append(_cmp("F1", inst, N, "==", bf, precision=COUNT + " vs exact rational iteration",
                    detail="closed-form count == brute-force count"))
    rot = _rotated(rng, lam, c)
    out.append(_cmp("F1", inst, steps_to(rot, GD(eta), tol), "==", N, precision=COUNT,
                    detail="dense rotated H (exact Lanczos measure) gives the same count"))
    q_iter = [p.loss(e) for e in run_exact(p, GD(eta), 4)]
    q_closed = [closed_form_loss(p, GD(eta), t) for t in range(5)]
    out.append(_cmp("F1", inst, max(_F(abs(a - b)) for a, b in zip(q_iter, q_closed)), "==", 0, precision=EXACT,
                    detail="closed-form q_t == iterated q_t, t = 0..4"))
    rho = max(abs(1 - eta * x) for x in lam)
    out += _bound_pair("F1", inst, N, _official_int(bounds.gd_steps_upper_bound, rho, tol),
                       bounds_optim.gd_steps_upper_bound_certified(rho, tol), "gd_steps_upper_bound(rho, tol)")
    return out


@entry("quad_F1_worst_case", ["F1"], st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1), "n": st.integers(2, 12), "a": st.integers(3, 100),
    "tm": st.integers(1, 5), "tk": st.integers(1, 12), "u": st.integers(1, 63)}))
def check_f1_worst_case(d: dict) -> list[CheckResult]:
    """F1 at large kappa (up to 1e10): with eta* = 2/(1 + kappa) and e0 supported on lambda_min and
    lambda_max the exact count equals gd_worst_case_steps(kappa, tol); with full support it is at
    most that; with any eta = u/64 * 2/kappa it is at most gd_steps_upper_bound(rho, tol)."""
    rng = _rng(d["seed"])
    n, kappa, tol = d["n"], _kappa(d["a"]), _tol(d["tm"], d["tk"])
    lam, c = _spectrum(rng, n, kappa), _coeffs(rng, n)
    inst = f"n={n} kappa={kappa} tol={tol} seed={d['seed']}"
    eta_star = Fraction(2, 1 + kappa)
    two = Quadratic.from_spectrum(lam, [c[0]] + [0] * (n - 2) + [c[-1]])
    full = Quadratic.from_spectrum(lam, c)
    wc_official = _official_int(bounds.gd_worst_case_steps, kappa, tol)
    wc = bounds_optim.gd_worst_case_steps_certified(kappa, tol)
    N2 = steps_to(two, GD(eta_star), tol)
    out = [_cmp("F1", inst, N2, "==", wc, precision=COUNT + "; bound decided exactly",
                detail="two-eigenvalue worst case with eta* == gd_worst_case_steps"),
           _cmp("F1", inst, wc_official, "==", wc, precision=BOUND + " vs exactly decided value",
                detail="theory.bounds.gd_worst_case_steps agrees with its exactly decided value")]
    out.append(_cmp("F1", inst, steps_to(full, GD(eta_star), tol), "<=", wc, precision=COUNT,
                    detail="full-support e0 with eta* <= worst case"))
    eta = Fraction(d["u"], 32 * kappa)
    rho = max(abs(1 - eta * x) for x in lam)
    out += _bound_pair("F1", inst + f" eta={eta}", steps_to(full, GD(eta), tol),
                       _official_int(bounds.gd_steps_upper_bound, rho, tol),
                       bounds_optim.gd_steps_upper_bound_certified(rho, tol), "gd_steps_upper_bound(rho, tol)")
    return out


# ---------------------------------------------------------------- F2
@entry("quad_F2_krylov", ["F2"], st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1), "n": st.integers(2, 10), "a": st.integers(3, 30),
    "tm": st.integers(1, 5), "tk": st.integers(1, 6), "u": st.integers(8, 63), "b": st.integers(0, 7),
    "rotate": st.booleans()}), cost=2)
def check_f2_krylov(d: dict) -> list[CheckResult]:
    """F2: exact CG loss q_t^CG <= q_t of GD, heavy ball, Nesterov and a random GD schedule
    (steps up to 3/lambda_max, divergent ones included) for every t <= 30, exactly; the CG count
    is <= each method's count, <= n and <= cg_steps_upper_bound(kappa, tol); and q_t^CG equals
    the exact minimum over residual polynomials (the mechanism of F2)."""
    rng = _rng(d["seed"])
    n, kappa, tol = d["n"], _kappa(d["a"]), _tol(d["tm"], d["tk"])
    lam, c = _spectrum(rng, n, kappa), _coeffs(rng, n)
    spec = Quadratic.from_spectrum(lam, c)
    p = _rotated(rng, lam, c) if d["rotate"] else spec
    inst = f"n={n} kappa={kappa} tol={tol} rotated={d['rotate']} seed={d['seed']}"
    horizon = 30
    eta = Fraction(d["u"], 32 * kappa)
    beta = Fraction(d["b"], 8)
    sched = tuple(Fraction(int(k), 32 * kappa) for k in rng.integers(1, 97, horizon))
    methods = {"GD": GD(eta), "HeavyBall": HeavyBall(eta, beta), "Nesterov": Nesterov(Fraction(1, kappa), beta),
               "GDSchedule": GDSchedule(sched)}
    q_cg = [p.loss(e) for e in cg_run(p.H, p.e0, horizon)]
    N_cg = steps_to(p, CG(), tol)
    out = []
    for name, opt in methods.items():
        q_m = [p.loss(e) for e in run_exact(p, opt, horizon)]
        worst = max(_F((a - b) / p.q0) for a, b in zip(q_cg[1:], q_m[1:]))
        out.append(_cmp("F2", inst, worst, "<=", 0, precision=EXACT,
                        detail=f"max_t (q_t^CG - q_t^{name}) / q0 over 1 <= t <= {horizon}"))
        try:
            N_m: int = steps_to(p, opt, tol, max_steps=2000)
            what = f"CG count <= {name} count"
        except NoConvergenceError:
            N_m = min(2000, len(sched) if name == "GDSchedule" else 2000) + 1
            what = f"CG count <= {name} count (> {N_m - 1}: not reached)"
        except DivergenceError:
            continue
        out.append(_cmp("F2", inst, N_cg, "<=", N_m, precision=COUNT, detail=what))
    out.append(_cmp("F2", inst, N_cg, "<=", n, precision=EXACT, detail="CG count <= n"))
    out += _bound_pair("F2", inst, N_cg, _official_int(bounds.cg_steps_upper_bound, kappa, tol),
                       bounds_optim.cg_steps_upper_bound_certified(kappa, tol), "cg_steps_upper_bound(kappa, tol)")
    meas = measure_for(spec, GD(1))
    gap = max(_F(abs(q_cg[t] - cg_polynomial_minimum(meas, t))) for t in range(min(n, horizon) + 1))
    out.append(_cmp("F2", inst, gap, "==", 0, precision=EXACT,
                    detail="q_t^CG == min_{p(0)=1, deg p<=t} 1/2 sum m_j p(mu_j)^2, t <= n"))
    return out


# ---------------------------------------------------------------- P, N, LM
def _defense_instance(d: dict) -> tuple[Quadratic, fmpq_mat, list[Fraction] | None, list[Fraction], str]:
    rng = _rng(d["seed"])
    n, kappa, kT = d["n"], _kappa(d["a"]), _kappa(d["aT"])
    lam, c = _spectrum(rng, n, kappa), _coeffs(rng, n)
    p = _rotated(rng, lam, c)
    T, sig = _reparam(rng, n, kT, d["kind"])
    inst = f"n={n} kappa(H)={kappa} kappa(T)~{kT} T-kind={'orth-diag' if d['kind'] == 0 else 'diag-unimodular'} seed={d['seed']}"
    return p, T, sig, lam, inst


_DEFENSE = {"seed": st.integers(0, 2**32 - 1), "n": st.integers(2, 6), "a": st.integers(3, 30),
            "aT": st.integers(3, 40), "kind": st.integers(0, 1), "tm": st.integers(1, 5), "tk": st.integers(1, 8)}


def _trace(M: fmpq_mat) -> fmpq:
    return sum((M[i, i] for i in range(M.nrows())), fmpq(0))


@entry("quad_P_preconditioner", ["P"], st.fixed_dictionaries({**_DEFENSE, "b": st.integers(0, 7)}))
def check_p_preconditioner(d: dict) -> list[CheckResult]:
    """P: GD (and heavy ball) on the defended quadratic (H', T e0), mapped back by T^-1, equals
    preconditioned GD (heavy ball) on (H, e0) with P = T^-1 T^-T, iterate by iterate, exactly;
    the exact counts of the two agree."""
    p, T, _, _, inst = _defense_instance(d)
    tol = _tol(d["tm"], d["tk"])
    q = p.reparameterize(T)
    Ti = T.inv()
    P = Ti * Ti.transpose()
    eta = 1 / _trace(q.H)  # < 2 / lambda_max(H'): convergent
    beta = Fraction(d["b"], 8)
    K = 10
    out = []
    for name, defended, undefended in (
            ("GD", GD(eta), PreconditionedGD(eta, P)),
            ("HeavyBall", HeavyBall(eta, beta), HeavyBall(eta, beta, P=P))):
        back = [Ti * e for e in run_exact(q, defended, K)]
        out.append(_cmp("P", inst, _residual(back, run_exact(p, undefended, K)), "==", 0, precision=EXACT,
                        detail=f"max |T^-1 e'_t - e_t|, {name} vs preconditioned {name}, t <= {K}"))
    out.append(_cmp("P", inst + f" tol={tol}", steps_to(q, GD(eta), tol), "==",
                    steps_to(p, PreconditionedGD(eta, P), tol), precision=COUNT,
                    detail="count of GD on L' == count of preconditioned GD on L"))
    return out


@entry("quad_N_newton", ["N"], st.fixed_dictionaries(_DEFENSE))
def check_n_newton(d: dict) -> list[CheckResult]:
    """N: Newton iterates on the defended problem are T times the undefended ones, exactly, and
    both counts are 1."""
    p, T, _, _, inst = _defense_instance(d)
    tol = _tol(d["tm"], d["tk"])
    q = p.reparameterize(T)
    K = 3
    a, b = run_exact(q, Newton(), K), [T * e for e in run_exact(p, Newton(), K)]
    return [
        _cmp("N", inst, _residual(a, b), "==", 0, precision=EXACT, detail=f"max |e'_t - T e_t|, t <= {K}"),
        _cmp("N", inst, _F(q.loss(a[1])), "==", 0, precision=EXACT, detail="defended Newton loss after 1 step"),
        _cmp("N", inst, steps_to(q, Newton(), tol), "==", steps_to(p, Newton(), tol), precision=EXACT,
             detail="Newton counts with and without defense"),
        _cmp("N", inst, brute_force_steps(q, Newton(), tol, 3), "==", 1, precision=EXACT,
             detail="Newton count by exact iteration is 1"),
    ]


@entry("quad_LM", ["LM"], st.fixed_dictionaries({**_DEFENSE, "aT": st.integers(3, 30), "r": st.integers(1, 64)}), cost=2)
def check_lm(d: dict) -> list[CheckResult]:
    """LM: LM on L' (damping lam, D = I) mapped back equals LM on L with damping matrix lam T^T T,
    exactly; its spectral radius lam / (lambda_min(H') + lam) lies in bounds.lm_rate_interval;
    the closed-form counts with and without defense and the exact iteration count agree."""
    p, T, sig, lam, inst = _defense_instance(d)
    tol = _tol(d["tm"], min(d["tk"], 6))
    kT = _kappa(d["aT"])
    damping = Fraction(d["r"], 8) * lam[0] / (kT * kT)
    inst += f" damping={damping} tol={tol}"
    q = p.reparameterize(T)
    D = T.transpose() * T
    Ti = T.inv()
    K = 8
    back = [Ti * e for e in run_exact(q, LM(damping), K)]
    out = [_cmp("LM", inst, _residual(back, run_exact(p, LM(damping, D=D), K)), "==", 0, precision=EXACT,
                detail=f"max |T^-1 e'_t - e_t|, LM(D=I) on L' vs LM(D=T^T T) on L, t <= {K}")]
    with arb_prec(256), mpmath.workdps(DPS):
        gmin, _ = q.extreme_eigenvalues()  # lambda_min(H') = smallest generalized eigenvalue of (H, T^T T)
        lm = arb(fmpq(damping.numerator, damping.denominator))
        rad = lm / (gmin + lm)
        s_lo, s_hi = _sigma_balls(T, sig)
        rho = _ball_interval(rad)
        boxes = (_ball_interval(arb(fmpq(lam[0].numerator, lam[0].denominator))), _ball_interval(s_lo), _ball_interval(s_hi))
    lo_v, lo_e = _enclosed(lambda a, b, c: bounds.lm_rate_interval(damping, a, b, c)[0], *boxes)
    hi_v, hi_e = _enclosed(lambda a, b, c: bounds.lm_rate_interval(damping, a, b, c)[1], *boxes)
    prec = "mpmath dps=60 + certified eigen/singular-value enclosures (sym_eig); err from radii"
    out.append(_cmp("LM", inst, rho[0], ">=", lo_v, precision=prec, err=(rho[2] - rho[1]) / 2 + lo_e,
                    detail="spectral radius >= lm_rate_interval lower end"))
    out.append(_cmp("LM", inst, rho[0], "<=", hi_v, precision=prec, err=(rho[2] - rho[1]) / 2 + hi_e,
                    detail="spectral radius <= lm_rate_interval upper end"))
    N_def = steps_to(q, LM(damping), tol)
    out.append(_cmp("LM", inst, N_def, "==", steps_to(p, LM(damping, D=D), tol), precision=COUNT,
                    detail="closed-form count on L' == closed-form count on L with damping lam T^T T"))
    try:
        bf = brute_force_steps(q, LM(damping), tol, N_def + 1)
    except NoConvergenceError:
        bf = N_def + 2
    out.append(_cmp("LM", inst, N_def, "==", bf, precision=COUNT + " vs exact rational iteration",
                    detail="closed-form count == iterated count"))
    # exact ties: tol q'_0 = q'_j, on L' (whose spectrum is in general irrational, so no ball of
    # q'_j decides q'_j <= tol q'_0): the count must still be the exact iteration's
    qs = [q.loss(e) for e in run_exact(q, LM(damping), 2)]
    for j in (1, 2):
        tie = qs[j] / qs[0]
        if 0 < tie < 1:
            tie_f = fmpq_to_fraction(tie)
            out.append(_cmp("LM", inst + f" tie at q'_{j}", steps_to(q, LM(damping), tie_f), "==",
                            brute_force_steps(q, LM(damping), tie_f, j), precision=COUNT + " vs exact rational iteration",
                            detail=f"closed-form count at tol = q'_{j} / q'_0 exactly == iterated count"))
    return out


# ---------------------------------------------------------------- A, C (ball arithmetic)
def _nonzero_gradient(p: Quadratic) -> Quadratic:
    """Nudge e0 (deterministically) until every coordinate of H e0 is nonzero, so an adaptive
    method with eps = 0 is defined at its first step (after that v_i > 0 stays positive)."""
    e0 = p.e0
    for _ in range(p.n + 1):
        g = p.H * e0
        zero = [i for i in range(p.n) if g[i, 0] == 0]
        if not zero:
            break
        e0 = e0 + fmpq_mat([[fmpq(1, 97) if i == zero[0] else 0] for i in range(p.n)])
    return Quadratic(p.H, e0)


@entry("quad_A_adaptive", ["A"], st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1), "n": st.integers(2, 6), "a": st.integers(3, 20), "aD": st.integers(3, 40),
    "u": st.integers(1, 20), "b1": st.integers(0, 9), "b2": st.integers(1, 99), "e": st.integers(0, 3)}), cost=2)
def check_a_adaptive(d: dict) -> list[CheckResult]:
    """A: Adam / RMSprop / Adagrad on L'(theta') = L(D^-1 theta') (D > 0 diagonal), mapped back by
    D^-1, equal the same method on L with per-coordinate step eta/D_i and eps_i = eps D_i, iterate
    by iterate, in certified ball arithmetic (eps = 0 included); theory.bounds'
    adam_equivalent_hyperparameters returns exactly those (up to its dps rounding)."""
    rng = _rng(d["seed"])
    n, kappa = d["n"], _kappa(d["a"])
    lam, c = _spectrum(rng, n, kappa), _coeffs(rng, n)
    p = _nonzero_gradient(_rotated(rng, lam, c))
    Dv = [x for x in _spectrum(rng, n, _kappa(d["aD"]))]
    rng.shuffle(Dv)
    eta = Fraction(d["u"], 40)
    eps = [Fraction(0), Fraction(1, 10**8), Fraction(1, 1000), Fraction(1, 10)][d["e"]]
    b1, b2 = Fraction(d["b1"], 10), Fraction(d["b2"], 100)
    inst = f"n={n} kappa={kappa} D={[str(x) for x in Dv]} eta={eta} eps={eps} b1={b1} b2={b2} seed={d['seed']}"
    q = p.reparameterize(_diag(Dv))
    Dinv = arb_mat(_diag([1 / x for x in Dv]))
    steps = [eta / x for x in Dv]
    epss = [eps * x for x in Dv]
    K = 10
    out = []
    for name, defended, equivalent in (
            ("Adam", Adam(eta, b1, b2, eps), Adam(steps, b1, b2, epss)),
            ("RMSprop", RMSprop(eta, b2, eps), RMSprop(steps, b2, epss)),
            ("Adagrad", Adagrad(eta, eps), Adagrad(steps, epss))):
        with arb_prec(256):
            back = [Dinv * e for e in run_ball(q, defended, K, 256)]
        direct = run_ball(p, equivalent, K, 256)
        gap, err, where = _worst_ball_gap(back, direct)
        out.append(_cmp("A", inst, gap, "==", 0, precision=BALL, err=err,
                        detail=f"{name}: |D^-1 theta'_t - theta_t| at worst coordinate {where}, t <= {K}"))
    with mpmath.workdps(DPS):
        hp = bounds.adam_equivalent_hyperparameters(eta, eps, Dv)
        worst = max(max(abs(a - mpmath.mpf(s.numerator) / s.denominator), abs(b - mpmath.mpf(e.numerator) / e.denominator))
                    for (a, b), s, e in zip(hp, steps, epss))
        scale = max(max(abs(a), abs(b)) for a, b in hp)
    out.append(_cmp("A", inst, worst, "==", 0, precision=f"mpmath dps={DPS}", err=scale * mpmath.mpf(10) ** (5 - DPS),
                    detail="bounds.adam_equivalent_hyperparameters == (eta/D_i, eps D_i)"))
    return out


@entry("quad_C_cubic", ["C"], st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1), "n": st.integers(2, 5), "a": st.integers(3, 20), "aT": st.integers(3, 20),
    "kind": st.integers(0, 1), "m": st.integers(1, 100)}), cost=2)
def check_c_cubic(d: dict) -> list[CheckResult]:
    """C: cubic-regularized Newton on L' with constant M', mapped back by T^-1, equals cubic Newton
    on L with regularizer (M'/6) ||T s||^3, iterate by iterate (certified balls: each step's
    secular equation is bracketed by certain sign decisions)."""
    rng = _rng(d["seed"])
    n, kappa, kT = d["n"], _kappa(d["a"]), _kappa(d["aT"])
    lam, c = _spectrum(rng, n, kappa), _coeffs(rng, n)
    p = _rotated(rng, lam, c)
    T, _ = _reparam(rng, n, kT, d["kind"])
    M = Fraction(d["m"], 10)
    inst = f"n={n} kappa(H)={kappa} kappa(T)~{kT} M'={M} seed={d['seed']}"
    q = p.reparameterize(T)
    K = 4
    with arb_prec(256):
        Ti = arb_mat(T.inv())
        back = [Ti * e for e in run_ball(q, CubicNewton(M), K, 256)]
    direct = run_ball(p, CubicNewton(M, T=T), K, 256)
    gap, err, where = _worst_ball_gap(back, direct)
    return [_cmp("C", inst, gap, "==", 0, precision=BALL, err=err,
                 detail=f"|T^-1 theta'_t - theta_t| at worst coordinate {where}, t <= {K}")]


# ---------------------------------------------------------------- B, T3
@entry("quad_B_defended_gd", ["B"], st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1), "n": st.integers(2, 8), "a": st.integers(3, 40), "aT": st.integers(3, 40),
    "kind": st.integers(0, 1), "tm": st.integers(1, 5), "tk": st.integers(1, 12)}), cost=3)
def check_b_defended(d: dict) -> list[CheckResult]:
    """B: the best-fixed-step GD count on (H', T e0) is <= gd_defended_steps_upper_bound(kappa(T),
    kappa(H), tol), and the worst-case asymptotic slowdown artanh(1/k)/artanh(1/k') is <=
    gd_slowdown_bound(kappa(T), kappa(H)). kappa(H) is exact (rotated spectrum); kappa(T) exact
    for T = Q1 diag(d) Q2, else a certified enclosure; kappa(H') a certified enclosure."""
    rng = _rng(d["seed"])
    n, kappa, kT = d["n"], _kappa(d["a"]), _kappa(d["aT"])
    lam, c = _spectrum(rng, n, kappa), _coeffs(rng, n)
    p = _rotated(rng, lam, c)
    T, sig = _reparam(rng, n, kT, d["kind"])
    tol = _tol(d["tm"], d["tk"])
    q = p.reparameterize(T)
    inst = f"n={n} kappa(H)={kappa} kappa(T)~{kT} T-kind={d['kind']} tol={tol} seed={d['seed']}"
    eta, N = best_fixed_step(q, tol)
    out = []
    if sig is not None:
        kt = sig[-1] / sig[0]
        out += _bound_pair("B", inst + f" eta={eta}", N,
                           _official_int(bounds.gd_defended_steps_upper_bound, kt, kappa, tol),
                           bounds_optim.gd_worst_case_steps_certified(kt * kt * kappa, tol),
                           "gd_defended_steps_upper_bound(kappa_T, kappa_H, tol)")
    with arb_prec(256), mpmath.workdps(DPS):
        s_lo, s_hi = _sigma_balls(T, sig)
        kT_box = _ball_interval(s_hi / s_lo)
        kq_box = _ball_interval(q.kappa_ball())
    kH_box = (mpmath.mpf(kappa),) * 3
    if sig is None:
        with mpmath.workdps(DPS):
            val, err = _enclosed(lambda a, b: bounds.gd_defended_steps_upper_bound(a, b, tol), kT_box, kH_box)
        out.append(_cmp("B", inst + f" eta={eta}", N, "<=", val, precision=COUNT + "; bound at dps=60 over the kappa(T) enclosure",
                        err=err, detail="steps <= gd_defended_steps_upper_bound"))
    def ratio(k1: Any, k2: Any) -> Any:
        """artanh(1/k1) / artanh(1/k2), increasing in k2; its limit 0 as k2 -> 1 (a point of an
        enclosure of kappa(H') may fall below 1 when kappa(H') = 1, H' = c I)."""
        return mpmath.atanh(1 / k1) / mpmath.atanh(1 / k2) if k2 > 1 else mpmath.mpf(0)

    m_val, m_err = _enclosed(ratio, kH_box, kq_box)
    b_val, b_err = _enclosed(bounds.gd_slowdown_bound, kT_box, kH_box)
    out.append(_cmp("B", inst, m_val, "<=", b_val, err=m_err + b_err,
                    precision="mpmath dps=60 + certified kappa enclosures; err from radii",
                    detail="artanh(1/kappa(H)) / artanh(1/kappa(H')) <= gd_slowdown_bound"))
    return out


@entry("quad_T3_condition", ["T3"], st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1), "n": st.integers(2, 12), "a": st.integers(3, 40), "aT": st.integers(3, 40),
    "kind": st.integers(0, 1)}))
def check_t3_condition(d: dict) -> list[CheckResult]:
    """T3 on quadratics: kappa(T^-T H T^-1) lies in condition_interval(kappa(H), kappa(T)), with
    certified enclosures of kappa(H') and (for the unimodular kind) kappa(T)."""
    rng = _rng(d["seed"])
    n, kappa, kT = d["n"], _kappa(d["a"]), _kappa(d["aT"])
    lam, c = _spectrum(rng, n, kappa), _coeffs(rng, n)
    p = _rotated(rng, lam, c)
    T, sig = _reparam(rng, n, kT, d["kind"])
    q = p.reparameterize(T)
    inst = f"n={n} kappa(H)={kappa} kappa(T)~{kT} T-kind={d['kind']} seed={d['seed']}"
    with arb_prec(256), mpmath.workdps(DPS):
        s_lo, s_hi = _sigma_balls(T, sig)
        kT_box = _ball_interval(s_hi / s_lo)
        kq = _ball_interval(q.kappa_ball())
    kH_box = (mpmath.mpf(kappa),) * 3
    lo_v, lo_e = _enclosed(lambda a, b: bounds.condition_interval(a, b)[0], kH_box, kT_box)
    hi_v, hi_e = _enclosed(lambda a, b: bounds.condition_interval(a, b)[1], kH_box, kT_box)
    prec = "mpmath dps=60 + certified enclosures (sym_eig); err from radii"
    return [
        _cmp("T3", inst, kq[0], ">=", lo_v, precision=prec, err=(kq[2] - kq[1]) / 2 + lo_e,
             detail="kappa(H') >= kappa(H) / kappa(T)^2"),
        _cmp("T3", inst, kq[0], "<=", hi_v, precision=prec, err=(kq[2] - kq[1]) / 2 + hi_e,
             detail="kappa(H') <= kappa(T)^2 kappa(H)"),
    ]
