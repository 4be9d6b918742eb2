"""Optimizers on the quadratic model q(e) = 1/2 e^T H e (minimizer e = 0, gradient g = H e),
as frozen dataclasses, with their one-step update rules.

Each linear method (``GD``, ``PreconditionedGD``, ``HeavyBall``, ``Nesterov``, ``GDSchedule``,
``Newton``, ``LM``) is written once over a "ring": exact rationals (flint ``fmpq_mat``, no
rounding at all) or arb balls (``arb_mat``, rigorous enclosures); ``CG`` runs exactly in
``numerics.krylov``. ``Adam`` / ``RMSprop`` / ``Adagrad`` (square roots) and ``CubicNewton``
(a secular equation) are irrational and run only in arb ball arithmetic, so every iterate is a
ball that provably contains the exact iterate.

Update rules (e_{-1} = e_0 wherever a previous iterate appears, i.e. zero initial momentum):
  GD              e+ = e - eta H e
  PreconditionedGD e+ = e - eta P H e                         (P > 0)
  HeavyBall       e+ = e - eta P H e + beta (e - e-)           (P = I unless given)
  Nesterov        y = e + beta (e - e-),  e+ = y - eta P H y
  GDSchedule      e+ = e - eta_t H e,  t = 0, 1, ..., len(steps) - 1
  Newton          e+ = e - H^-1 H e  (= 0 on a quadratic)
  LM              e+ = e - (H + lam D)^-1 H e                 (D = I unless given, D > 0)
  Adam            m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2,
                  e+_i = e_i - eta_i (m_i/(1-b1^t)) / (sqrt(v_i/(1-b2^t)) + eps_i)
  RMSprop         v = b v + (1-b) g^2,  e+_i = e_i - eta_i g_i / (sqrt(v_i) + eps_i)
  Adagrad         s = s + g^2,          e+_i = e_i - eta_i g_i / (sqrt(s_i) + eps_i)
  CubicNewton     e+ = e + s,  s = argmin g^T s + 1/2 s^T H s + (M/6) ||T s||^3
                  (T = I unless given): s = -(H + (M/2) r D)^-1 g, D = T^T T, where r = ||T s||
                  is the unique root of psi(r) = s(r)^T D s(r) - r^2 (decreasing in r).
Steps eta and eps may be per-coordinate sequences for the adaptive methods (statement A).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import flint
from flint import arb, arb_mat, fmpq, fmpq_mat

from convrate.errors import InvalidInputError, PrecisionError
from convrate.numerics.quadratic import Quadratic, arb_prec, fmpq_matrix, require_spd_exact, to_fmpq

__all__ = ["GD", "PreconditionedGD", "HeavyBall", "Nesterov", "GDSchedule", "CG", "Newton", "LM",
           "Adam", "RMSprop", "Adagrad", "CubicNewton", "Optimizer", "LINEAR", "ADAPTIVE",
           "run_exact", "run_ball", "iter_ball", "at_prec"]


def _positive(x: Any, what: str) -> fmpq:
    q = to_fmpq(x, what)
    if q <= 0:
        raise InvalidInputError(f"{what} must be positive, got {x}")
    return q


def _unit_interval(x: Any, what: str) -> fmpq:
    q = to_fmpq(x, what)
    if not (0 <= q < 1):
        raise InvalidInputError(f"{what} must lie in [0, 1), got {x}")
    return q


def _per_coord(x: Any, what: str, *, allow_zero: bool) -> tuple[fmpq, ...] | fmpq:
    if isinstance(x, (list, tuple)) or (hasattr(x, "__len__") and not isinstance(x, str)):
        vals = tuple(to_fmpq(v, f"{what}[{i}]") for i, v in enumerate(x))
        if not vals:
            raise InvalidInputError(f"{what} is empty")
    else:
        vals = (to_fmpq(x, what),)
    for i, v in enumerate(vals):
        if v < 0 or (v == 0 and not allow_zero):
            raise InvalidInputError(f"{what} must be {'nonnegative' if allow_zero else 'positive'}, got {v}"
                                    + (f" at coordinate {i}" if len(vals) > 1 else ""))
    return vals if len(vals) > 1 or isinstance(x, (list, tuple)) else vals[0]


def _spd(P: Any, n: int, what: str) -> fmpq_mat:
    M = fmpq_matrix(P, what)
    if M.nrows() != n or M.ncols() != n:
        raise InvalidInputError(f"{what} must be {n}x{n}, got {M.nrows()}x{M.ncols()}")
    require_spd_exact(M, what)
    return M


# ---------------------------------------------------------------- dataclasses
@dataclass(frozen=True)
class GD:
    """Fixed-step gradient descent, step eta > 0."""

    step: Any

    def __post_init__(self) -> None:
        _positive(self.step, "step")


@dataclass(frozen=True)
class PreconditionedGD:
    """e+ = e - eta P H e with P symmetric positive definite."""

    step: Any
    P: Any

    def __post_init__(self) -> None:
        _positive(self.step, "step")


@dataclass(frozen=True)
class _MomentumMethod:
    """Step eta > 0, momentum beta in [0, 1), optional preconditioner P (shared fields)."""

    step: Any
    momentum: Any
    P: Any = None

    def __post_init__(self) -> None:
        _positive(self.step, "step")
        _unit_interval(self.momentum, "momentum")


@dataclass(frozen=True)
class HeavyBall(_MomentumMethod):
    """Polyak heavy ball, step eta > 0, momentum beta in [0, 1), optional preconditioner P."""


@dataclass(frozen=True)
class Nesterov(_MomentumMethod):
    """Nesterov's accelerated gradient (constant momentum beta in [0, 1)), optional P."""


@dataclass(frozen=True)
class GDSchedule:
    """Gradient descent with the finite schedule eta_0, eta_1, ... (each > 0)."""

    steps: tuple[Any, ...]

    def __post_init__(self) -> None:
        if len(self.steps) == 0:
            raise InvalidInputError("step schedule is empty")
        for i, s in enumerate(self.steps):
            _positive(s, f"steps[{i}]")


@dataclass(frozen=True)
class CG:
    """Conjugate gradients (exact rational arithmetic, at most n steps)."""


@dataclass(frozen=True)
class Newton:
    """Exact Newton: e+ = e - H^-1 g (one step on a quadratic)."""


@dataclass(frozen=True)
class LM:
    """Levenberg-Marquardt / damped Newton: e+ = e - (H + lam D)^-1 H e, lam > 0, D > 0 (I if None)."""

    damping: Any
    D: Any = None

    def __post_init__(self) -> None:
        _positive(self.damping, "damping")


@dataclass(frozen=True)
class Adam:
    """Adam with bias correction; step and eps scalar or per coordinate (eps >= 0)."""

    step: Any
    beta1: Any = fmpq(9, 10)
    beta2: Any = fmpq(999, 1000)
    eps: Any = fmpq(1, 10**8)

    def __post_init__(self) -> None:
        _per_coord(self.step, "step", allow_zero=False)
        _per_coord(self.eps, "eps", allow_zero=True)
        _unit_interval(self.beta1, "beta1")
        _unit_interval(self.beta2, "beta2")
        if to_fmpq(self.beta2) == 0:
            raise InvalidInputError("beta2 must lie in (0, 1), got 0")


@dataclass(frozen=True)
class RMSprop:
    """RMSprop (no bias correction, no momentum): v = b v + (1-b) g^2, e -= eta g / (sqrt v + eps)."""

    step: Any
    beta: Any = fmpq(99, 100)
    eps: Any = fmpq(1, 10**8)

    def __post_init__(self) -> None:
        _per_coord(self.step, "step", allow_zero=False)
        _per_coord(self.eps, "eps", allow_zero=True)
        _unit_interval(self.beta, "beta")


@dataclass(frozen=True)
class Adagrad:
    """Adagrad: s = s + g^2, e -= eta g / (sqrt s + eps)."""

    step: Any
    eps: Any = fmpq(1, 10**10)

    def __post_init__(self) -> None:
        _per_coord(self.step, "step", allow_zero=False)
        _per_coord(self.eps, "eps", allow_zero=True)


@dataclass(frozen=True)
class CubicNewton:
    """Cubic-regularized Newton with constant M > 0 and regularizer (M/6) ||T s||^3 (T = I if None)."""

    M: Any
    T: Any = None

    def __post_init__(self) -> None:
        _positive(self.M, "M")


Optimizer = (GD | PreconditionedGD | HeavyBall | Nesterov | GDSchedule | CG | Newton | LM | Adam
             | RMSprop | Adagrad | CubicNewton)
LINEAR = (GD, PreconditionedGD, HeavyBall, Nesterov, GDSchedule, Newton, LM)
ADAPTIVE = (Adam, RMSprop, Adagrad)


# ---------------------------------------------------------------- rings
class _Exact:
    """Exact rationals: fmpq / fmpq_mat."""

    def scalar(self, x: Any) -> fmpq:
        return to_fmpq(x)

    def mat(self, A: fmpq_mat) -> fmpq_mat:
        return A


class _Ball:
    """arb balls at the current flint precision (the caller sets it)."""

    def scalar(self, x: Any) -> arb:
        return arb(to_fmpq(x))

    def mat(self, A: fmpq_mat) -> arb_mat:
        return arb_mat(A)


def _identity(n: int) -> fmpq_mat:
    I = fmpq_mat(n, n)
    for i in range(n):
        I[i, i] = 1
    return I


def _linear_iter(problem: Quadratic, opt: Any, R: Any) -> Iterator[Any]:
    """e_0, e_1, ... of a linear method in ring R (endless, except a schedule ends with it)."""
    n = problem.n
    H = R.mat(problem.H)
    e = R.mat(problem.e0)
    if not isinstance(opt, LINEAR):
        raise InvalidInputError(f"{type(opt).__name__} is not a linear method")
    PH = H
    if isinstance(opt, PreconditionedGD) or (isinstance(opt, (HeavyBall, Nesterov)) and opt.P is not None):
        PH = R.mat(_spd(opt.P, n, "P")) * H
    if isinstance(opt, LM):
        D = _identity(n) if opt.D is None else _spd(opt.D, n, "D")
        K = H + R.mat(D) * R.scalar(opt.damping)
    yield e
    if isinstance(opt, GDSchedule):
        for s in opt.steps:
            e = e - (H * e) * R.scalar(s)
            yield e
        return
    if isinstance(opt, (GD, PreconditionedGD)):
        eta = R.scalar(opt.step)
        while True:
            e = e - (PH * e) * eta
            yield e
    if isinstance(opt, (HeavyBall, Nesterov)):
        eta, beta = R.scalar(opt.step), R.scalar(opt.momentum)
        prev = e
        while True:
            if isinstance(opt, HeavyBall):
                new = e - (PH * e) * eta + (e - prev) * beta
            else:
                y = e + (e - prev) * beta
                new = y - (PH * y) * eta
            prev, e = e, new
            yield e
    if isinstance(opt, Newton):
        while True:
            e = e - H.solve(H * e)
            yield e
    while True:  # LM
        e = e - K.solve(H * e)
        yield e


def _take(it: Iterator[Any], steps: int, opt: Any) -> list[Any]:
    out = list(itertools.islice(it, steps + 1))
    if len(out) < steps + 1:
        raise InvalidInputError(f"schedule has {len(out) - 1} steps, {steps} requested")
    return out


def run_exact(problem: Quadratic, opt: Any, steps: int) -> list[fmpq_mat]:
    """Iterates e_0..e_steps in exact rational arithmetic (linear methods and CG)."""
    if isinstance(opt, CG):
        from convrate.numerics.krylov import cg_run
        return cg_run(problem.H, problem.e0, steps)
    if not isinstance(opt, LINEAR):
        raise InvalidInputError(f"{type(opt).__name__} involves irrational operations; use run_ball")
    return _take(_linear_iter(problem, opt, _Exact()), steps, opt)


# ---------------------------------------------------------------- ball iterations
def _coords(v: arb_mat) -> list[arb]:
    return [v[i, 0] for i in range(v.nrows())]


def _column(xs: Sequence[arb]) -> arb_mat:
    return arb_mat([[x] for x in xs])


def _expand(x: Any, n: int, what: str) -> list[arb]:
    v = _per_coord(x, what, allow_zero=True)
    vals = list(v) if isinstance(v, tuple) else [v] * n
    if len(vals) != n:
        raise InvalidInputError(f"{what} has {len(vals)} coordinates, the problem has {n}")
    return [arb(q) for q in vals]


def _adaptive_iter(problem: Quadratic, opt: Any) -> Iterator[arb_mat]:
    n = problem.n
    H = arb_mat(problem.H)
    e = arb_mat(problem.e0)
    eta = _expand(opt.step, n, "step")
    eps = _expand(opt.eps, n, "eps")
    acc1 = [arb(0)] * n
    acc2 = [arb(0)] * n
    yield e
    for t in itertools.count(1):
        g = _coords(H * e)
        x = _coords(e)
        if isinstance(opt, Adam):
            b1, b2 = arb(to_fmpq(opt.beta1)), arb(to_fmpq(opt.beta2))
            acc1 = [b1 * m + (1 - b1) * gi for m, gi in zip(acc1, g)]
            acc2 = [b2 * v + (1 - b2) * gi * gi for v, gi in zip(acc2, g)]
            c1, c2 = 1 - b1 ** t, 1 - b2 ** t
            num = [m / c1 for m in acc1]
            den = [(v / c2).sqrt() for v in acc2]
        elif isinstance(opt, RMSprop):
            b = arb(to_fmpq(opt.beta))
            acc2 = [b * v + (1 - b) * gi * gi for v, gi in zip(acc2, g)]
            num, den = g, [v.sqrt() for v in acc2]
        else:  # Adagrad
            acc2 = [v + gi * gi for v, gi in zip(acc2, g)]
            num, den = g, [v.sqrt() for v in acc2]
        new = []
        for i in range(n):
            d = den[i] + eps[i]
            if not d.is_finite() or d.contains(0):
                raise PrecisionError(f"{type(opt).__name__} step {t}: denominator sqrt(v)+eps of coordinate {i} "
                                     f"is not certified nonzero at {flint.ctx.prec} bits ({d})")
            new.append(x[i] - eta[i] * num[i] / d)
        e = _column(new)
        yield e


def _cubic_step(H: arb_mat, D: arb_mat, M: arb, g: arb_mat, max_iter: int) -> arb_mat:
    """Certified enclosure of s = argmin g^T s + 1/2 s^T H s + (M/6) (s^T D s)^(3/2), for every g
    in the ball g. The root r of psi(r) = s(r)^T D s(r) - r^2, s(r) = -(H + (M/2) r D)^-1 g, lies in
    [0, ||T H^-1 g||] (psi decreases); bisection keeps only certain sign decisions, so the final
    [lo, hi] brackets r for every g in the ball, and s is enclosed by solving with r in [lo, hi]."""
    def s_of(r: arb) -> arb_mat:
        return -(H + D * (M * r / 2)).solve(g)

    def psi(r: arb) -> arb:
        s = s_of(r)
        return (s.transpose() * D * s)[0, 0] - r * r

    s0 = s_of(arb(0))
    top = (s0.transpose() * D * s0)[0, 0]
    if top == 0:
        return s0
    lo, hi = arb(0), top.abs_upper().sqrt().upper()
    for _ in range(max_iter):
        mid = (lo + hi) / 2
        v = psi(mid)
        if v > 0:
            lo = mid
        elif v < 0:
            hi = mid
        else:
            break
    return s_of(lo.union(hi))


def _cubic_iter(problem: Quadratic, opt: CubicNewton) -> Iterator[arb_mat]:
    n = problem.n
    H = arb_mat(problem.H)
    if opt.T is None:
        D = arb_mat(_identity(n))
    else:
        T = fmpq_matrix(opt.T, "T")
        if T.nrows() != n or T.ncols() != n:
            raise InvalidInputError(f"T must be {n}x{n}, got {T.nrows()}x{T.ncols()}")
        if T.det() == 0:
            from convrate.errors import SingularReparameterizationError
            raise SingularReparameterizationError(f"T is singular: exact rank {T.rank()} < {n}")
        D = arb_mat(T.transpose() * T)
    M = arb(to_fmpq(opt.M))
    e = arb_mat(problem.e0)
    yield e
    while True:
        e = e + _cubic_step(H, D, M, H * e, flint.ctx.prec + 16)
        yield e


def iter_ball(problem: Quadratic, opt: Any, prec: int = 256) -> Iterator[arb_mat]:
    """e_0, e_1, ... as arb balls at ``prec`` bits (rigorous enclosures of the exact iterates),
    for every optimizer except CG. The flint precision is set to ``prec`` while each iterate is
    computed. Raises PrecisionError when a denominator cannot be certified nonzero."""
    if isinstance(opt, ADAPTIVE):
        gen = _adaptive_iter(problem, opt)
    elif isinstance(opt, CubicNewton):
        gen = _cubic_iter(problem, opt)
    elif isinstance(opt, LINEAR):
        gen = _linear_iter(problem, opt, _Ball())
    else:
        raise InvalidInputError(f"{type(opt).__name__} has no ball iteration (CG runs exactly: use run_exact)")
    return at_prec(gen, prec)


def at_prec(gen: Iterator[Any], prec: int) -> Iterator[Any]:
    """Run each step of a ball generator at ``prec`` bits (flint's precision is global state)."""
    while True:
        with arb_prec(prec):
            try:
                e = next(gen)
            except StopIteration:
                return
        yield e


def run_ball(problem: Quadratic, opt: Any, steps: int, prec: int = 256) -> list[arb_mat]:
    """Iterates e_0..e_steps as arb balls at ``prec`` bits (see ``iter_ball``)."""
    return _take(iter_ball(problem, opt, prec), steps, opt)
