"""Battery entries of the second-order and preconditioned attackers (statements SO-*).

Instances as in ``checks_quadratic`` (rational spectra, rotated dense H, T = Q1 diag(d) Q2 with
exact singular values). Exact rational identities have err 0; arb-ball iterations (Shampoo,
Muon, fixed-step L-BFGS) compare balls whose radii are the err; bounds from
``theory.bounds_second_order`` are evaluated at mpmath dps = 60 and checked against exactly
decided values. Two-layer linear nets (K-FAC, Gauss-Newton) are held in exact rationals:
f(x) = W_b W_a x, L = 1/(2N) sum ||f(x_n) - y_n||^2, row-major vec.
"""
from __future__ import annotations

import itertools
from fractions import Fraction
from typing import Any

import mpmath
from flint import arb, arb_mat, fmpq, fmpq_mat
from hypothesis import strategies as st

from convrate.numerics.battery import entry
from convrate.numerics.checks_quadratic import (BALL, COUNT, DPS, EXACT, _bound_pair, _cmp, _coeffs, _diag, _eye, _F,
                                                _kappa, _official_int, _orthogonal, _reparam, _residual, _rng,
                                                _rotated, _spectrum, _tol, _worst_ball_gap)
from convrate.numerics.krylov import cg_run
from convrate.numerics.optimizers_second_order import (LBFGS, MatrixQuadratic, Muon, NewtonCG, Shampoo, Sophia,
                                                       ball_iterates, exact_iterates, exact_iterator, polar)
from convrate.numerics.optimizers import LM
from convrate.numerics.quadratic import Quadratic, arb_prec, arb_to_mpf
from convrate.numerics.steps import brute_force_steps, steps_to
from convrate.theory import bounds_optim, bounds_second_order
from convrate.theory.core import CheckResult

_DEF = {"seed": st.integers(0, 2**32 - 1), "n": st.integers(2, 5), "a": st.integers(3, 25), "aT": st.integers(3, 25),
        "tm": st.integers(1, 5), "tk": st.integers(1, 8)}


def _instance(d: dict) -> tuple[Quadratic, fmpq_mat, list[Fraction], int, int, Fraction, str]:
    rng = _rng(d["seed"])
    n, kappa, kT = d["n"], _kappa(d["a"]), _kappa(d["aT"])
    lam, c = _spectrum(rng, n, kappa), _coeffs(rng, n)
    p = _rotated(rng, lam, c)
    T, sig = _reparam(rng, n, kT, 0)
    tol = _tol(d["tm"], d["tk"])
    return p, T, sig, kappa, kT, tol, f"n={n} kappa(H)={kappa} kappa(T)={kT} tol={tol} seed={d['seed']}"


def _map(T: fmpq_mat, es: list[fmpq_mat]) -> list[fmpq_mat]:
    Ti = T.inv()
    return [Ti * e for e in es]


_MODES = ("midway from q_j to the next larger q_s, s <= j (balls decide at 256 bits)",
          "q_j (1 - 2^-300): 256-bit balls cannot tell q_j from it, the scan must raise the precision",
          "exactly q_j: a tie no ball decides, the exact fallback must")


def _target(qs: list[fmpq], j: int, mode: int) -> Fraction | None:
    """tol from exact losses q_0..q_j by ``_MODES[mode]``; None when it is not in (0, 1)."""
    if mode == 0:
        above = [q for q in qs[:j + 1] if q > qs[j]]
        target = (qs[j] + min(above)) / 2 if above else None
    else:
        target = qs[j] * (1 - fmpq(1, 2**300) if mode == 1 else 1)
    if target is None or not 0 < target / qs[0] < 1:
        return None
    r = target / qs[0]
    return Fraction(int(r.p), int(r.q))


def _outcome(count: Any) -> int:
    """count(), or -1 when it raises NoConvergenceError (no t within the cap)."""
    from convrate.errors import NoConvergenceError

    try:
        return count()
    except NoConvergenceError:
        return -1


def _count_vs_exact(statement: str, inst: str, p: Quadratic, opt: Any, j: int, mode: int) -> list[CheckResult]:
    """steps_to's certified count == ``brute_force_steps`` (the exact rational iteration), both
    capped at j + 1 steps (so the exact rationals stay small), at a tol from q_j (``_MODES``)."""
    tol = _target([p.loss(e) for e in itertools.islice(exact_iterator(p, opt), j + 1)], j, mode)
    if tol is None:
        return []
    return [_cmp(statement, inst + f" {opt} j={j} tol~{float(tol):.6g}", _outcome(lambda: steps_to(p, opt, tol, j + 1)), "==",
                 _outcome(lambda: brute_force_steps(p, opt, tol, j + 1)), precision=COUNT + " vs exact rational iteration",
                 detail=f"steps_to's certified count == exact iteration's (-1: none within {j + 1} steps), "
                        f"tol q_0 = {_MODES[mode]}")]


def _diag_count_vs_exact(statement: str, inst: str, prob: MatrixQuadratic, opt: Any, qs: list[fmpq], mode: int,
                         singular: int | None) -> list[CheckResult]:
    """steps_to's certified ball count on a diagonal matrix quadratic == the count of exact scalar
    recurrences with losses ``qs`` = q_0..q_(j+1), both capped at j + 1 steps, tol from q_j
    (``_MODES``, no tie). ``singular``: the first step s whose update meets an exactly zero
    momentum (polar factor undefined): when the count needs e_(s+1), steps_to must refuse
    (PrecisionError), not count."""
    from convrate.errors import PrecisionError

    j = len(qs) - 2
    tol = _target(qs, j, mode)
    if tol is None:
        return []
    exact = next((t for t, q in enumerate(qs) if q <= fmpq(tol.numerator, tol.denominator) * qs[0]), -1)
    what = f" {opt} j={j} tol~{float(tol):.6g}"
    if singular is not None and (exact == -1 or singular < exact):
        try:
            steps_to(prob, opt, tol, j + 1)
            refused = 0
        except PrecisionError:
            refused = 1
        return [_cmp(statement, inst + what, refused, "==", 1, precision=COUNT,
                     detail=f"an exactly zero momentum at step {singular}, before the count {exact}: refused")]
    return [_cmp(statement, inst + what, _outcome(lambda: steps_to(prob, opt, tol, j + 1)), "==", exact,
                 precision=COUNT + " vs exact rational scalar recurrences",
                 detail=f"certified ball count == exact diagonal recurrences' count (-1: none within {j + 1} steps), "
                        f"tol q_0 = {_MODES[mode]}")]


# ---------------------------------------------------------------- SO-LBFGS
@entry("so_lbfgs", ["SO-LBFGS"], st.fixed_dictionaries({**_DEF, "m": st.integers(1, 6), "u": st.integers(4, 60),
                                                        "j": st.integers(1, 3), "mode": st.integers(0, 2)}), cost=2)
def check_lbfgs(d: dict) -> list[CheckResult]:
    """SO-LBFGS: with exact line search, L-BFGS(m) iterates equal CG's exactly (every m >= 1) and
    the count (steps_to's CG path) equals the exact vector iteration's; on L' the iterates mapped
    back equal L-BFGS on L started from P = T^-1 T^-T, and the count is at most
    lbfgs_exact_line_search_steps(kappa(T), kappa(H), tol); with torch's fixed step (balls)
    q_t >= q_t^CG for t <= 10 (F2); the certified counts of fixed-step L-BFGS and of L-BFGS
    preconditioned by T^-1 T^-T equal the exact rational iteration's."""
    p, T, sig, kappa, kT, tol, inst = _instance(d)
    m = d["m"]
    inst += f" m={m}"
    out = []
    it = exact_iterates(p, LBFGS(m), p.n)
    out.append(_cmp("SO-LBFGS", inst, _residual(it, cg_run(p.H, p.e0, p.n)), "==", 0, precision=EXACT,
                    detail="max |e_t(L-BFGS, exact line search) - e_t(CG)|, t <= n"))
    N = steps_to(p, LBFGS(m), tol)
    out.append(_cmp("SO-LBFGS", inst, N, "==", brute_force_steps(p, LBFGS(m), tol, p.n + 1), precision=COUNT,
                    detail="steps_to (CG count) == exact L-BFGS vector iteration"))
    q = p.reparameterize(T)
    Ti = T.inv()
    back = _map(T, exact_iterates(q, LBFGS(m), 3))
    out.append(_cmp("SO-LBFGS", inst, _residual(back, exact_iterates(p, LBFGS(m, P=Ti * Ti.transpose()), 3)), "==", 0,
                    precision=EXACT, detail="T^-1 (L-BFGS on L') == L-BFGS on L from H_0 = gamma T^-1 T^-T, t <= 3"))
    kk = Fraction(kT) ** 2 * kappa
    out += _bound_pair("SO-LBFGS", inst, steps_to(q, LBFGS(m), tol),
                       _official_int(bounds_second_order.lbfgs_exact_line_search_steps, kT, kappa, tol),
                       bounds_optim.cg_steps_upper_bound_certified(kk, tol),
                       "lbfgs_exact_line_search_steps(kappa_T, kappa_H, tol)")
    step = Fraction(d["u"], 32 * kappa)
    horizon = 10
    balls = exact_iterates(p, LBFGS(m, step=step), horizon)
    q_cg = [p.loss(e) for e in cg_run(p.H, p.e0, horizon)]
    worst, err = None, 0
    with arb_prec(256), mpmath.workdps(DPS):
        for t in range(1, horizon + 1):
            mid, rad = arb_to_mpf(p.loss(balls[t]) - arb(q_cg[t]))
            if worst is None or -mid - rad > -worst - err:
                worst, err = mid, rad
    out.append(_cmp("SO-LBFGS", inst + f" step={step}", worst, ">=", 0, precision=BALL, err=err,
                    detail="min_t q_t(L-BFGS, torch's fixed step) - q_t^CG >= 0, t <= 10 (F2: a Krylov method)"))
    out += _count_vs_exact("SO-LBFGS", inst, p, LBFGS(m, step=Fraction(d["u"], 32)), d["j"], d["mode"])
    out += _count_vs_exact("SO-LBFGS", inst, p, LBFGS(m, P=Ti * Ti.transpose()), d["j"], d["mode"])
    return out


# ---------------------------------------------------------------- SO-NEWTON-CG
@entry("so_newton_cg", ["SO-NEWTON-CG"], st.fixed_dictionaries({**_DEF, "k": st.integers(1, 5), "r": st.integers(0, 6),
                                                                "j": st.integers(1, 3), "mode": st.integers(0, 2)}), cost=2)
def check_newton_cg(d: dict) -> list[CheckResult]:
    """SO-NEWTON-CG: Newton-CG(k, lambda) on L' mapped back == Newton-CG on L with damping matrix
    lambda T^T T and inner preconditioner P = T^-1 T^-T (exact, 3 steps); with k >= n the count on
    L' equals LM's closed-form count with D = T^T T and the exact iteration's (1 for lambda = 0:
    invariant); each truncated undamped outer step contracts q by at most newton_cg_defended_rate^2;
    the certified counts of truncated Newton-CG on L' and of its mapped-back form on L (damping
    matrix, preconditioner) equal the exact rational iteration's."""
    p, T, sig, kappa, kT, tol, inst = _instance(d)
    k = min(d["k"], p.n)
    lam = Fraction(d["r"], 8) / (kT * kT)  # lambda_min(H) = 1: damping up to 3/4 lambda_min(H) / kappa(T)^2
    inst += f" k={k} lambda={lam}"
    q = p.reparameterize(T)
    Ti = T.inv()
    D, P = T.transpose() * T, Ti * Ti.transpose()
    out = [_cmp("SO-NEWTON-CG", inst, _residual(_map(T, exact_iterates(q, NewtonCG(k, lam), 3)),
                                                exact_iterates(p, NewtonCG(k, lam, D=D, P=P), 3)), "==", 0,
                precision=EXACT, detail="T^-1 NewtonCG(k, lambda) on L' == PCG-Newton(P; H + lambda T^T T) on L, t <= 3")]
    full = NewtonCG(p.n, lam)
    N_def = steps_to(q, full, tol)
    out.append(_cmp("SO-NEWTON-CG", inst, N_def, "==", brute_force_steps(q, full, tol, N_def + 1),
                    precision=COUNT + " vs exact iteration", detail="k >= n: closed-form count on L' == exact iteration"))
    if lam == 0:
        out.append(_cmp("SO-NEWTON-CG", inst, N_def, "==", steps_to(p, full, tol), precision=EXACT,
                        detail="k >= n, lambda = 0: defended count == undefended count (invariant, = 1)"))
    else:
        out.append(_cmp("SO-NEWTON-CG", inst, N_def, "==", steps_to(p, LM(lam, D=D), tol), precision=COUNT,
                        detail="k >= n: count on L' == LM on L with damping matrix lambda T^T T"))
    if k < p.n:
        es = exact_iterates(q, NewtonCG(k, 0), 2)
        with mpmath.workdps(DPS):
            bound = bounds_second_order.newton_cg_defended_rate(kT, kappa, k) ** 2
            ratios = [_F(q.loss(es[t + 1]) / q.loss(es[t])) for t in range(2) if q.loss(es[t]) != 0]
            worst = max((mpmath.mpf(x.numerator) / x.denominator for x in ratios), default=mpmath.mpf(0))
        out.append(_cmp("SO-NEWTON-CG", inst, worst, "<=", bound, precision=f"exact ratio vs bound at mpmath dps={DPS}",
                        err=abs(bound) * mpmath.mpf(10) ** (10 - DPS),
                        detail="q'_(t+1)/q'_t <= newton_cg_defended_rate(kappa_T, kappa_H, k)^2, t < 2"))
    out += _count_vs_exact("SO-NEWTON-CG", inst, q, NewtonCG(k, lam), d["j"], d["mode"])
    out += _count_vs_exact("SO-NEWTON-CG", inst, p, NewtonCG(k, lam, D=D, P=P), d["j"], d["mode"])
    return out


# ---------------------------------------------------------------- SO-SOPHIA
_SOPHIA_BUDGET = 3000


@entry("so_sophia", ["SO-SOPHIA"], st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1), "n": st.integers(2, 5), "a": st.integers(3, 20), "aD": st.integers(3, 30),
    "u": st.integers(1, 20), "tm": st.integers(1, 5), "tk": st.integers(1, 2), "rot": st.booleans()}), cost=2)
def check_sophia(d: dict) -> list[CheckResult]:
    """SO-SOPHIA: Sophia (exact diagonal Hessian) on L' = L(D^-1 .) mapped back equals Sophia on L
    with per-coordinate (eta/D_i, gamma/D_i, eps D_i), exactly, 15 steps; the theory function
    returns those; steps_to (decoupled scalar recurrences on a diagonal H) == the vector iteration,
    or both reach no t within 3000 steps (clipped steps of size eta can cycle around the minimum)."""
    rng = _rng(d["seed"])
    n, kappa = d["n"], _kappa(d["a"])
    lam, c = _spectrum(rng, n, kappa), _coeffs(rng, n)
    p = _rotated(rng, lam, c) if d["rot"] else Quadratic.from_spectrum(lam, c)
    Dv = _spectrum(rng, n, _kappa(d["aD"]))
    rng.shuffle(Dv)
    eta = Fraction(d["u"], 20)
    base = Sophia(eta)
    g0, e0 = Fraction(int(base.gamma.p), int(base.gamma.q)), Fraction(int(base.eps.p), int(base.eps.q))
    inst = f"n={n} kappa={kappa} D={[str(x) for x in Dv]} eta={eta} rotated={d['rot']} seed={d['seed']}"
    q = p.reparameterize(_diag(Dv))
    equiv = Sophia([eta / x for x in Dv], gamma=[g0 / x for x in Dv], eps=[e0 * x for x in Dv])
    out = [_cmp("SO-SOPHIA", inst, _residual(_map(_diag(Dv), exact_iterates(q, base, 15)), exact_iterates(p, equiv, 15)),
                "==", 0, precision=EXACT, detail="D^-1 Sophia(L') == Sophia(L; eta/D_i, gamma/D_i, eps D_i), t <= 15")]
    with mpmath.workdps(DPS):
        hp = bounds_second_order.sophia_equivalent_hyperparameters(eta, g0, e0, Dv)
        worst = max(max(abs(a - mpmath.mpf(eta.numerator) / eta.denominator / (mpmath.mpf(x.numerator) / x.denominator)),
                        abs(b - mpmath.mpf(g0.numerator) / g0.denominator / (mpmath.mpf(x.numerator) / x.denominator)),
                        abs(e - mpmath.mpf(e0.numerator) / e0.denominator * mpmath.mpf(x.numerator) / x.denominator))
                    for (a, b, e), x in zip(hp, Dv))
    out.append(_cmp("SO-SOPHIA", inst, worst, "==", 0, precision=f"mpmath dps={DPS}", err=mpmath.mpf(10) ** (5 - DPS),
                    detail="bounds_second_order.sophia_equivalent_hyperparameters == (eta/D, gamma/D, eps D)"))
    if not d["rot"]:
        tol = _tol(d["tm"], d["tk"])
        N = _outcome(lambda: steps_to(p, base, tol, _SOPHIA_BUDGET))  # -1: clipped steps of size eta can cycle
        cap = _SOPHIA_BUDGET if N == -1 else N + 1
        out.append(_cmp("SO-SOPHIA", inst + f" tol={tol}", N, "==", _outcome(lambda: brute_force_steps(p, base, tol, cap)),
                        precision=COUNT + " (exact rationals)",
                        detail=f"steps_to (scalar recurrences) == vector iteration (-1: none within {_SOPHIA_BUDGET} steps)"))
    return out


# ---------------------------------------------------------------- two-layer linear nets (K-FAC, GN)
def _rat(rng: Any, rows: int, cols: int) -> fmpq_mat:
    return fmpq_mat([[fmpq(int(rng.integers(-4, 5)), int(rng.integers(1, 4))) for _ in range(cols)] for _ in range(rows)])


def _full_rank(rng: Any, rows: int, cols: int, shift: int = 0) -> fmpq_mat:
    """A rational rows x cols matrix of full rank (redrawn until it is; shift * I added)."""
    for _ in range(50):
        M = _rat(rng, rows, cols) + fmpq_mat([[shift if i == j else 0 for j in range(cols)] for i in range(rows)])
        if M.rank() == min(rows, cols):
            return M
    raise AssertionError("no full-rank draw in 50 tries")


def _kron(A: fmpq_mat, B: fmpq_mat) -> fmpq_mat:
    out = fmpq_mat(A.nrows() * B.nrows(), A.ncols() * B.ncols())
    for i in range(A.nrows()):
        for j in range(A.ncols()):
            for k in range(B.nrows()):
                for m in range(B.ncols()):
                    out[i * B.nrows() + k, j * B.ncols() + m] = A[i, j] * B[k, m]
    return out


class _Net:
    """f(x) = W_b W_a x on rows X (N x n_in), targets Y (N x n_out); L = 1/(2N) ||X W_a^T W_b^T - Y||_F^2."""

    def __init__(self, X: fmpq_mat, Y: fmpq_mat) -> None:
        self.X, self.Y, self.N = X, Y, X.nrows()

    def grads(self, Wa: fmpq_mat, Wb: fmpq_mat) -> tuple[fmpq_mat, fmpq_mat, fmpq_mat]:
        H = self.X * Wa.transpose()
        R = H * Wb.transpose() - self.Y
        return Wb.transpose() * R.transpose() * self.X / self.N, R.transpose() * H / self.N, H

    def kfac(self, Wa: fmpq_mat, Wb: fmpq_mat, damp: tuple[fmpq_mat, ...], steps: int) -> list[tuple[fmpq_mat, fmpq_mat]]:
        """K-FAC with exact factors (squared loss: S_b = I, S_a = W_b^T W_b) and damping matrices
        (S_a, X_a, S_b, X_b sides); unit step."""
        out = [(Wa, Wb)]
        for _ in range(steps):
            ga, gb, H = self.grads(Wa, Wb)
            Sa, Xa = Wb.transpose() * Wb, self.X.transpose() * self.X / self.N
            Sb, Xb = _eye(Wb.nrows()), H.transpose() * H / self.N
            Wa = Wa - (Sa + damp[0]).solve(ga) * (Xa + damp[1]).inv()
            Wb = Wb - (Sb + damp[2]).solve(gb) * (Xb + damp[3]).inv()
            out.append((Wa, Wb))
        return out

    def jacobian(self, Wa: fmpq_mat, Wb: fmpq_mat) -> tuple[fmpq_mat, fmpq_mat]:
        """(J, residual): J rows (n, o) = d f_o(x_n) / d theta, theta = (vec W_a, vec W_b) row-major."""
        r, n_in, n_out = Wa.nrows(), Wa.ncols(), Wb.nrows()
        J = fmpq_mat(self.N * n_out, r * n_in + n_out * r)
        res = fmpq_mat(self.N * n_out, 1)
        H = self.X * Wa.transpose()
        Z = H * Wb.transpose()
        for k in range(self.N):
            for o in range(n_out):
                row = k * n_out + o
                res[row, 0] = Z[k, o] - self.Y[k, o]
                for i in range(r):
                    for j in range(n_in):
                        J[row, i * n_in + j] = Wb[o, i] * self.X[k, j]
                    J[row, r * n_in + o * r + i] = H[k, i]
        return J, res


def _flat(Wa: fmpq_mat, Wb: fmpq_mat) -> fmpq_mat:
    vals = [Wa[i, j] for i in range(Wa.nrows()) for j in range(Wa.ncols())] + \
           [Wb[i, j] for i in range(Wb.nrows()) for j in range(Wb.ncols())]
    return fmpq_mat([[v] for v in vals])


@entry("so_kfac_gn_linear_net", ["SO-KFAC", "SO-GN"], st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1), "r": st.integers(1, 3), "aT": st.integers(3, 20), "g": st.integers(1, 8)}), cost=2)
def check_kfac_gn(d: dict) -> list[CheckResult]:
    """SO-KFAC and SO-GN on an exact two-layer linear net under an S1 element A (kappa(A) exact):
    K-FAC (exact factors) on (A W_a, W_b A^-1) mapped back equals K-FAC on (W_a, W_b), 3 steps, with
    no damping; with factored damping gamma it equals K-FAC on L with damping gamma A^T A (S_a) and
    gamma A^-1 A^-T (X_b). Damped GN (lambda) on L' mapped back equals GN on L with damping
    lambda T^T T (2 steps); the minimum-norm (undamped) GN step changes the outputs by the same
    J p on L and L' (the corrected statement: function-space invariance)."""
    rng = _rng(d["seed"])
    r = d["r"]
    n_in, n_out, N = r + 1, r, r + 1  # N n_out = r^2 + r = rank J (parameters minus the r^2 orbit directions)
    net = _Net(_full_rank(rng, N, n_in), _rat(rng, N, n_out))
    Wa, Wb = _full_rank(rng, r, n_in, 3), _full_rank(rng, n_out, r, 3)
    A, sig = _reparam(rng, r, _kappa(d["aT"]), 0)
    Ai = A.inv()
    gam = fmpq(d["g"], 8)
    inst = f"r={r} n_in={n_in} n_out={n_out} N={N} kappa(A)={_kappa(d['aT'])} gamma={gam} seed={d['seed']}"
    zero = (fmpq_mat(r, r), fmpq_mat(n_in, n_in), fmpq_mat(n_out, n_out), fmpq_mat(r, r))
    und = net.kfac(Wa, Wb, zero, 3)
    dfd = net.kfac(A * Wa, Wb * Ai, zero, 3)
    back = [_flat(Ai * a, b * A) for a, b in dfd]
    out = [_cmp("SO-KFAC", inst, _residual(back, [_flat(a, b) for a, b in und]), "==", 0, precision=EXACT,
                detail="(A^-1 W_a', W_b' A) == K-FAC iterates on L, gamma = 0, t <= 3")]
    I_r, I_in, I_out = _eye(r) * gam, _eye(n_in) * gam, _eye(n_out) * gam
    dfd = net.kfac(A * Wa, Wb * Ai, (I_r, I_in, I_out, I_r), 2)
    und = net.kfac(Wa, Wb, (A.transpose() * A * gam, I_in, I_out, Ai * Ai.transpose() * gam), 2)
    out.append(_cmp("SO-KFAC", inst, _residual([_flat(Ai * a, b * A) for a, b in dfd], [_flat(a, b) for a, b in und]),
                    "==", 0, precision=EXACT,
                    detail="damped K-FAC on L' mapped back == K-FAC on L with damping gamma A^T A, gamma A^-1 A^-T"))
    # Gauss-Newton
    T = fmpq_mat(r * n_in + n_out * r, r * n_in + n_out * r)
    TA, TB = _kron(A, _eye(n_in)), _kron(_eye(n_out), Ai.transpose())
    for i in range(r * n_in):
        for j in range(r * n_in):
            T[i, j] = TA[i, j]
    o = r * n_in
    for i in range(n_out * r):
        for j in range(n_out * r):
            T[o + i, o + j] = TB[i, j]
    lam = gam

    def gn_run(Wa0: fmpq_mat, Wb0: fmpq_mat, D: fmpq_mat, steps: int) -> list[fmpq_mat]:
        th = _flat(Wa0, Wb0)
        out_ = [th]
        for _ in range(steps):
            a = fmpq_mat([[th[i * n_in + j, 0] for j in range(n_in)] for i in range(r)])
            b = fmpq_mat([[th[o + i * r + j, 0] for j in range(r)] for i in range(n_out)])
            J, res = net.jacobian(a, b)
            G, g = J.transpose() * J / N, J.transpose() * res / N
            th = th - (G + D * lam).solve(g)
            out_.append(th)
        return out_

    Ti = T.inv()
    back = [Ti * th for th in gn_run(A * Wa, Wb * Ai, _eye(T.nrows()), 2)]
    out.append(_cmp("SO-GN", inst, _residual(back, gn_run(Wa, Wb, T.transpose() * T, 2)), "==", 0, precision=EXACT,
                    detail="T^-1 (damped GN on L') == GN on L with damping lambda T^T T, t <= 2"))
    J, res = net.jacobian(Wa, Wb)
    Jd, resd = net.jacobian(A * Wa, Wb * Ai)
    if (J * J.transpose()).rank() < J.nrows():
        return out  # a degenerate draw: J J^T singular, the minimum-norm step is not the formula below
    p_min = -(J.transpose() * (J * J.transpose()).solve(res))
    pd_min = -(Jd.transpose() * (Jd * Jd.transpose()).solve(resd))
    moved = _F(max(abs((Ti * pd_min - p_min)[i, 0]) for i in range(p_min.nrows())))
    out.append(_cmp("SO-GN", inst, _residual([J * (Ti * pd_min)], [J * p_min]), "==", 0, precision=EXACT,
                    detail=f"minimum-norm GN: J T^-1 p' == J p (function-space step invariant); the parameter steps "
                           f"differ by {float(moved):.3g} (not invariant, the corrected statement)"))
    return out


# ---------------------------------------------------------------- SO-SHAMPOO, SO-MUON (balls)
def _mat_gap(A: list[arb_mat], B: list[arb_mat]) -> tuple[Any, Any, str]:
    cols = lambda Ms: [arb_mat([[M[i, j]] for j in range(M.ncols()) for i in range(M.nrows())]) for M in Ms]  # noqa: E731
    return _worst_ball_gap(cols(A), cols(B))


def _spd2(rng: Any) -> fmpq_mat:
    B = _full_rank(rng, 2, 2, 3)
    return B.transpose() * B + _eye(2)


@entry("so_shampoo", ["SO-SHAMPOO"], st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1), "pk": st.integers(0, 2), "e": st.integers(0, 2), "u": st.integers(1, 10),
    "c": st.integers(2, 9), "n": st.integers(2, 4), "j": st.integers(1, 4),
    "mode": st.integers(0, 1)}), cost=2)
def check_shampoo(d: dict) -> list[CheckResult]:
    """SO-SHAMPOO in arb balls (256 bits): (i) W' = Q1 W Q2^T (rational orthogonal): Shampoo(p, eps)
    on L' mapped back == Shampoo on L, 4 steps; (ii) W' = c Q W, eps = 0: mapped back == Shampoo on L
    with step eta c^(4p-2); (iii) row-aligned diagonal instance, A = diag(s): mapped back == Shampoo
    on L with per-row steps eta s_i^(4p-2); and bounds_second_order.shampoo_step_scale == c^(4p-2);
    (iv) on the diagonal instance at p = 1/2 (commuting factors: L^-1/2 G R^-1/2 = G / (eps + sum G^2)
    entrywise, rational) steps_to's certified count == the exact scalar recurrence's."""
    rng = _rng(d["seed"])
    pq = [fmpq(1, 4), fmpq(1, 2), fmpq(1)][d["pk"]]
    eps = [0, fmpq(1, 10), fmpq(1, 1000)][d["e"]]
    eta = fmpq(d["u"], 20)
    expo = int(4 * pq - 2)
    inst = f"p={pq} eps={eps} eta={eta} seed={d['seed']}"
    out = []
    prob = MatrixQuadratic(_spd2(rng), _full_rank(rng, 2, 2, 2))
    Q1, Q2 = _orthogonal(rng, 2, 1), _orthogonal(rng, 2, 1)
    rot = MatrixQuadratic(Q1 * prob.M * Q1.transpose(), Q1 * prob.E0 * Q2.transpose())
    with arb_prec(256):
        back = [arb_mat(Q1.transpose()) * E * arb_mat(Q2) for E in ball_iterates(rot, Shampoo(eta, pq, eps), 4)]
    gap, err, where = _mat_gap(back, ball_iterates(prob, Shampoo(eta, pq, eps), 4))
    out.append(_cmp("SO-SHAMPOO", inst, gap, "==", 0, precision=BALL, err=err,
                    detail=f"orthogonal Q1, Q2: mapped back == undefended, worst entry {where}, t <= 4"))
    c = fmpq(d["c"], 2)
    scaled = prob.reparameterize(Q1 * c)
    with arb_prec(256):
        back = [arb_mat(Q1.transpose()) * E / arb(c) for E in ball_iterates(scaled, Shampoo(eta, pq, 0), 3)]
    gap, err, where = _mat_gap(back, ball_iterates(prob, Shampoo(eta * c ** expo, pq, 0), 3))
    out.append(_cmp("SO-SHAMPOO", inst + f" c={c}", gap, "==", 0, precision=BALL, err=err,
                    detail=f"W' = c Q W, eps = 0: mapped back == Shampoo with step eta c^(4p-2), worst {where}"))
    with mpmath.workdps(DPS):
        v = bounds_second_order.shampoo_step_scale(mpmath.mpf(int(c.p)) / int(c.q), mpmath.mpf(int(pq.p)) / int(pq.q))
        exact = mpmath.mpf(int((c ** expo).p)) / int((c ** expo).q)
        out.append(_cmp("SO-SHAMPOO", inst + f" c={c}", v, "==", exact, precision=f"mpmath dps={DPS}",
                        err=abs(exact) * mpmath.mpf(10) ** (5 - DPS), detail="shampoo_step_scale(c, p) == c^(4p-2)"))
    n = d["n"]
    s = [fmpq(int(x), 1) for x in rng.integers(1, 6, n)]
    Mdiag = _diag([Fraction(int(x), int(y)) for x, y in zip(rng.integers(1, 9, n), rng.integers(1, 4, n))])
    Ediag = _diag([Fraction(int(x), 1) for x in rng.integers(1, 5, n)])
    aligned = MatrixQuadratic(Mdiag, Ediag)
    A = _diag(s)
    with arb_prec(256):
        back = [arb_mat(A.inv()) * E for E in ball_iterates(aligned.reparameterize(A), Shampoo(eta, pq, 0), 4)]
    per_row = [eta * x ** expo for x in s]
    gap, err, where = _mat_gap(back, ball_iterates(aligned, Shampoo(per_row, pq, 0), 4))
    out.append(_cmp("SO-SHAMPOO", inst + f" s={[str(x) for x in s]}", gap, "==", 0, precision=BALL, err=err,
                    detail=f"row-aligned, A = diag(s): mapped back == per-row steps eta s_i^(4p-2), worst {where}"))
    m_, e_ = [Mdiag[i, i] for i in range(n)], [Ediag[i, i] for i in range(n)]
    acc = [fmpq(eps)] * n
    qs = [sum((m_[i] * e_[i] ** 2 for i in range(n)), fmpq(0)) / 2]
    for _ in range(d["j"] + 1):
        g = [m_[i] * e_[i] for i in range(n)]
        acc = [acc[i] + g[i] ** 2 for i in range(n)]
        e_ = [e_[i] - eta * g[i] / acc[i] if g[i] != 0 else e_[i] for i in range(n)]
        qs.append(sum((m_[i] * e_[i] ** 2 for i in range(n)), fmpq(0)) / 2)
    out += _diag_count_vs_exact("SO-SHAMPOO", inst, aligned, Shampoo(eta, fmpq(1, 2), eps), qs, d["mode"], None)
    return out


@entry("so_muon", ["SO-MUON"], st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1), "b": st.integers(0, 9), "u": st.integers(1, 10), "c": st.integers(2, 9),
    "aT": st.integers(3, 30), "n": st.integers(2, 4), "j": st.integers(1, 40),
    "mode": st.integers(0, 1)}), cost=2)
def check_muon(d: dict) -> list[CheckResult]:
    """SO-MUON in arb balls: (i) orthogonal maps on both sides commute with Muon (exact polar
    factor), 4 steps; (ii) W' = c Q W: mapped back == Muon with step eta/c; (iii) one-sided A with
    exact singular values: the first mapped-back update A^-1 polar(A^-T G) has singular values in
    muon_step_singular_interval(sigma_min(A), sigma_max(A)); (iv) diagonal M and E_0: every
    singular direction moves by exactly eta per step (e_i -= eta sign(m_i), m_i = beta m_i + M_ii e_i,
    exact rationals), and steps_to's certified count == that recurrence's (an exactly zero m_i, where
    the polar factor is undefined, must be refused)."""
    rng = _rng(d["seed"])
    beta, eta = fmpq(d["b"], 10), fmpq(d["u"], 20)
    inst = f"beta={beta} eta={eta} seed={d['seed']}"
    prob = MatrixQuadratic(_spd2(rng), _full_rank(rng, 2, 2, 2))
    Q1, Q2 = _orthogonal(rng, 2, 1), _orthogonal(rng, 2, 1)
    rot = MatrixQuadratic(Q1 * prob.M * Q1.transpose(), Q1 * prob.E0 * Q2.transpose())
    with arb_prec(256):
        back = [arb_mat(Q1.transpose()) * E * arb_mat(Q2) for E in ball_iterates(rot, Muon(eta, beta), 4)]
    gap, err, where = _mat_gap(back, ball_iterates(prob, Muon(eta, beta), 4))
    out = [_cmp("SO-MUON", inst, gap, "==", 0, precision=BALL, err=err,
                detail=f"orthogonal Q1, Q2: mapped back == undefended, worst {where}, t <= 4")]
    c = fmpq(d["c"], 2)
    with arb_prec(256):
        back = [arb_mat(Q1.transpose()) * E / arb(c) for E in ball_iterates(prob.reparameterize(Q1 * c), Muon(eta, beta), 3)]
    gap, err, where = _mat_gap(back, ball_iterates(prob, Muon(eta / c, beta), 3))
    out.append(_cmp("SO-MUON", inst + f" c={c}", gap, "==", 0, precision=BALL, err=err,
                    detail=f"W' = c Q W: mapped back == Muon with step eta / c, worst {where}"))
    kT = _kappa(d["aT"])
    A, sig = _reparam(rng, 2, kT, 0)
    G = prob.M * prob.E0
    with arb_prec(256), mpmath.workdps(DPS):
        U = arb_mat(A.inv()) * polar(arb_mat(A.inv().transpose() * G))
        K = U.transpose() * U
        tr, det = K[0, 0] + K[1, 1], K[0, 0] * K[1, 1] - K[0, 1] * K[1, 0]
        disc = (tr * tr - 4 * det).sqrt()
        s_lo, s_hi = ((tr - disc) / 2).sqrt(), ((tr + disc) / 2).sqrt()
        lo, hi = bounds_second_order.muon_step_singular_interval(mpmath.mpf(sig[0].numerator) / sig[0].denominator,
                                                                 mpmath.mpf(sig[-1].numerator) / sig[-1].denominator)
        m_lo, r_lo = arb_to_mpf(s_lo)
        m_hi, r_hi = arb_to_mpf(s_hi)
        bound_err = max(abs(lo), abs(hi)) * mpmath.mpf(10) ** (5 - DPS)
    prec = "arb balls (256 bits) for the singular values; bound at mpmath dps=60"
    out.append(_cmp("SO-MUON", inst + f" kappa(A)={kT}", m_lo, ">=", lo, precision=prec, err=r_lo + bound_err,
                    detail="sigma_min(A^-1 polar(A^-T G)) >= 1/sigma_max(A)"))
    out.append(_cmp("SO-MUON", inst + f" kappa(A)={kT}", m_hi, "<=", hi, precision=prec, err=r_hi + bound_err,
                    detail="sigma_max(A^-1 polar(A^-T G)) <= 1/sigma_min(A)"))
    n = d["n"]
    m_ = [fmpq(int(x), int(y)) for x, y in zip(rng.integers(1, 9, n), rng.integers(1, 4, n))]
    e_ = [fmpq(int(x) * int(s), int(y)) for x, s, y in zip(rng.integers(1, 7, n), rng.choice([-1, 1], n), rng.integers(1, 4, n))]
    diag = MatrixQuadratic(_diag(m_), _diag(e_))
    mom, singular = [fmpq(0)] * n, None
    qs = [sum((m_[i] * e_[i] ** 2 for i in range(n)), fmpq(0)) / 2]
    for t in range(d["j"] + 1):
        mom = [beta * mom[i] + m_[i] * e_[i] for i in range(n)]
        if singular is None and any(x == 0 for x in mom):
            singular = t
        e_ = [e_[i] - eta * ((mom[i] > 0) - (mom[i] < 0)) for i in range(n)]
        qs.append(sum((m_[i] * e_[i] ** 2 for i in range(n)), fmpq(0)) / 2)
    out += _diag_count_vs_exact("SO-MUON", inst + f" M={[str(x) for x in m_]} E0={[str(x) for x in e_]}", diag,
                                Muon(eta, beta), qs, d["mode"], singular)
    return out
