"""Exact versions of the second-order and preconditioned attackers (statements SO-*).

On the quadratic q(e) = 1/2 e^T H e (``Quadratic``, g = H e), in exact rationals (flint fmpq):
  LBFGS(m, step=None, P=None)  two-loop L-BFGS with memory m and H_0 = gamma_k P (P = I unless
        given; gamma_k = s^T y / y^T P y), exact line search t = -g^T d / d^T H d when ``step`` is
        None, else torch's fixed-step rule (t = min(1, 1/||g||_1) step at the first iteration,
        t = step after; a pair is stored when y^T s > 1e-10, as torch.optim.LBFGS does)
  NewtonCG(k, damping, D=None, P=None)   e+ = e + x, x = k steps of CG preconditioned by P on
        (H + damping D) x = -g (``models.attacks.second_order.truncated_cg``'s rule, exactly)
  Sophia(step, ...)   the published rule with the exact diagonal Hessian diag(H) as the
        estimate (refreshed every ``period`` steps); per-coordinate step, gamma, eps allowed
        (statement SO-SOPHIA's equivalent hyperparameters); clip is rational
On a matrix quadratic L(W) = 1/2 tr((W - W*)^T M (W - W*)) (``MatrixQuadratic``, G = M E, E = W - W*),
in arb balls (matrix roots are irrational):
  Shampoo(step, p, eps)  L = eps I + sum G G^T, R = eps I + sum G^T G, W -= step L^-p G R^-p
        (per-row steps allowed: a vector of steps multiplies the rows)
  Muon(step, beta)      M = beta M + G, W -= step polar(M) (the exact polar factor)
Matrix powers and polar factors are exact closed forms for diagonal matrices (any size) and for
2x2 matrices (sqrt(M) = (M + sqrt(det M) I) / sqrt(tr M + 2 sqrt(det M)); polar(M) =
(M + sgn(det M) cof(M)) / sqrt(||M||_F^2 + 2 |det M|)), evaluated in arb balls: every iterate is
a ball containing the exact one. Other sizes raise.
L-BFGS and Newton-CG also run in arb balls (``ball_iterator``): with a fixed step, a preconditioner
or a truncated inner solve their exact rationals grow exponentially with the step, so
``steps_to_second_order`` counts them (and Shampoo, Muon) by a certified ball scan.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from flint import arb, arb_mat, fmpq, fmpq_mat

from convrate.errors import InvalidInputError, NoConvergenceError, PrecisionError
from convrate.numerics.krylov import inner
from convrate.numerics.optimizers import at_prec
from convrate.numerics.quadratic import Quadratic, arb_prec, fmpq_matrix, to_fmpq

__all__ = ["LBFGS", "NewtonCG", "Sophia", "Shampoo", "Muon", "MatrixQuadratic", "SECOND_ORDER", "exact_iterates",
           "ball_iterates", "ball_iterator", "MATRIX", "steps_to_second_order", "exact_iterator", "pcg_exact", "spd_power", "polar"]

_TORCH_YS = fmpq(1, 10**10)  # torch.optim.LBFGS stores a pair only when y^T s > 1e-10
_EXACT_FALLBACK_BITS = 10**6  # an undecided ball count falls back to exact rationals up to this iterate size


@dataclass(frozen=True)
class LBFGS:
    """L-BFGS with memory m: exact line search (step None) or torch's fixed-step rule; H_0 = gamma P."""

    memory: int = 10
    step: Any = None
    P: Any = None


@dataclass(frozen=True)
class NewtonCG:
    """e+ = e + PCG_k(P; H + damping D, -g), k = ``inner`` (D, P = I unless given)."""

    inner: int
    damping: Any = 0
    D: Any = None
    P: Any = None


@dataclass(frozen=True)
class Sophia:
    """Sophia with the exact diagonal Hessian; step, gamma, eps scalar or per coordinate."""

    step: Any
    beta1: Any = fmpq(24, 25)
    beta2: Any = fmpq(99, 100)
    gamma: Any = fmpq(1, 100)
    eps: Any = fmpq(1, 10**12)
    period: int = 10


@dataclass(frozen=True)
class Shampoo:
    """Shampoo with exponent p and eps; step scalar or per row."""

    step: Any
    p: Any = fmpq(1, 4)
    eps: Any = 0


@dataclass(frozen=True)
class Muon:
    """Muon with the exact polar factor and momentum beta (no Nesterov)."""

    step: Any
    beta: Any = 0


SECOND_ORDER = (LBFGS, NewtonCG, Sophia)  # on a Quadratic (exact rational iterations)
MATRIX = (Shampoo, Muon)  # on a MatrixQuadratic (ball iterations)


def _I(n: int) -> fmpq_mat:
    M = fmpq_mat(n, n)
    for i in range(n):
        M[i, i] = 1
    return M


def _vec(xs: Sequence[Any], n: int, what: str) -> list[fmpq]:
    if isinstance(xs, (list, tuple)):
        if len(xs) != n:
            raise InvalidInputError(f"{what} has {len(xs)} coordinates, the problem has {n}")
        return [to_fmpq(x, what) for x in xs]
    return [to_fmpq(xs, what)] * n


# ---------------------------------------------------------------- exact PCG and Newton-CG
def _sign(x: Any, what: str) -> int:
    """Sign of an fmpq (exact) or of an arb ball (decided on the enclosure: 0 only for the exact
    point 0; PrecisionError when the ball straddles 0)."""
    if isinstance(x, arb):
        if x > 0:
            return 1
        if x < 0:
            return -1
        if x == 0:
            return 0
        raise PrecisionError(f"sign of {what} undecided at this precision")
    return (x > 0) - (x < 0)


def pcg_exact(A: Any, b: Any, iters: int, P: Any = None) -> Any:
    """k steps of CG preconditioned by P on A x = b from 0: exactly for fmpq_mat input, as a ball
    enclosure for arb_mat input (every branch decided on the enclosure, else PrecisionError);
    stops at r = 0, at nonpositive curvature (returning x so far, or at the first step
    b |b|^2 / |b^T A b|), as ``models.attacks.second_order.truncated_cg`` (which also stops at a
    relative P-norm 1e-12)."""
    x = b * 0
    r = b
    z = r if P is None else P * r
    rz = inner(r, z)
    d = z
    for j in range(iters):
        if _sign(rz, f"r^T P r at inner step {j}") == 0:
            break
        Ad = A * d
        curv = inner(d, Ad)
        s = _sign(curv, f"d^T A d at inner step {j}")
        if s <= 0:
            if j == 0:
                return b * (inner(b, b) / abs(curv)) if s != 0 else b
            return x
        alpha = rz / curv
        x = x + d * alpha
        r = r - Ad * alpha
        z = r if P is None else P * r
        rz_new = inner(r, z)
        d = z + d * (rz_new / rz)
        rz = rz_new
    return x


# ---------------------------------------------------------------- exact iterations
def _lbfgs_iter(p: Quadratic, opt: LBFGS, ball: bool = False) -> Iterator[Any]:
    """Exact rationals (ball False; with a fixed step their size grows exponentially with the step,
    so only a few steps are practical) or arb balls at the current precision (every branch decided
    on the enclosure, else PrecisionError)."""
    n, H = p.n, p.H
    P = _I(n) if opt.P is None else fmpq_matrix(opt.P, "P")
    e = p.e0
    threshold = fmpq(0) if opt.step is None else _TORCH_YS
    if ball:
        H, P, e = arb_mat(H), arb_mat(P), arb_mat(e)
    yield e
    pairs: list[tuple[fmpq_mat, fmpq_mat, fmpq]] = []
    prev_g = None
    d = t = None
    for k in itertools.count():
        g = H * e
        if not ball and inner(g, g) == 0:
            while True:
                yield e
        if k == 0:
            d = -(P * g)
            gamma = fmpq(1)
        else:
            y, s = g - prev_g, d * t
            ys = inner(y, s)
            if ball and not (ys > threshold or ys <= threshold):
                raise PrecisionError(f"L-BFGS step {k}: y^T s vs {threshold} undecided at this precision")
            if ys > threshold:
                pairs.append((s, y, 1 / ys))
                pairs = pairs[-opt.memory:]
                gamma = ys / inner(y, P * y)
            q = -g
            al = []
            for s_i, y_i, ro in reversed(pairs):
                a = inner(s_i, q) * ro
                al.append(a)
                q = q - y_i * a
            r = (P * q) * gamma
            for (s_i, y_i, ro), a in zip(pairs, reversed(al)):
                be = inner(y_i, r) * ro
                r = r + s_i * (a - be)
            d = r
        prev_g = g
        if opt.step is None:
            t = -inner(g, d) / inner(d, H * d)
        elif k == 0:
            l1 = sum((abs(g[i, 0]) for i in range(n)), arb(0) if ball else fmpq(0))
            if ball and not (l1 > 1 or l1 <= 1):
                raise PrecisionError("L-BFGS first step: ||g||_1 vs 1 undecided at this precision")
            step = to_fmpq(opt.step)
            t = (1 / l1 if l1 > 1 else 1) * (arb(step) if ball else step)
        else:
            t = arb(to_fmpq(opt.step)) if ball else to_fmpq(opt.step)
        e = e + d * t
        yield e


def _newton_cg_iter(p: Quadratic, opt: NewtonCG, ball: bool = False) -> Iterator[Any]:
    """Exact rationals (ball False) or arb balls at the current precision (``pcg_exact`` decides
    every inner branch on the enclosure)."""
    n = p.n
    D = _I(n) if opt.D is None else fmpq_matrix(opt.D, "D")
    H = p.H
    A = H + D * to_fmpq(opt.damping, "damping")
    P = None if opt.P is None else fmpq_matrix(opt.P, "P")
    e = p.e0
    if ball:
        H, A, e = arb_mat(H), arb_mat(A), arb_mat(e)
        P = None if P is None else arb_mat(P)
    yield e
    while True:
        e = e + pcg_exact(A, -(H * e), opt.inner, P)
        yield e


def _clip(x: fmpq) -> fmpq:
    return max(min(x, fmpq(1)), fmpq(-1))


def _sophia_iter(p: Quadratic, opt: Sophia) -> Iterator[fmpq_mat]:
    n = p.n
    eta, gam, eps = _vec(opt.step, n, "step"), _vec(opt.gamma, n, "gamma"), _vec(opt.eps, n, "eps")
    b1, b2 = to_fmpq(opt.beta1), to_fmpq(opt.beta2)
    diag = [p.H[i, i] for i in range(n)]
    m, h = [fmpq(0)] * n, [fmpq(0)] * n
    e = p.e0
    yield e
    for t in itertools.count():
        g = p.H * e
        if t % opt.period == 0:
            h = [b2 * h[i] + (1 - b2) * diag[i] for i in range(n)]
        m = [b1 * m[i] + (1 - b1) * g[i, 0] for i in range(n)]
        e = fmpq_mat([[e[i, 0] - eta[i] * _clip(m[i] / max(gam[i] * h[i], eps[i]))] for i in range(n)])
        yield e


def exact_iterates(p: Quadratic, opt: Any, steps: int, prec: int = 256) -> list[Any]:
    """e_0 .. e_steps of a method of this module on a quadratic: exact fmpq_mat, except fixed-step
    L-BFGS: arb_mat balls at ``prec`` bits."""
    gen = {LBFGS: _lbfgs_iter, NewtonCG: _newton_cg_iter, Sophia: _sophia_iter}.get(type(opt))
    if gen is None:
        raise InvalidInputError(f"{type(opt).__name__} has no exact iteration here")
    with arb_prec(prec):
        it = _lbfgs_iter(p, opt, ball=True) if isinstance(opt, LBFGS) and opt.step is not None else gen(p, opt)
        return list(itertools.islice(it, steps + 1))


def exact_iterator(p: Quadratic, opt: Any) -> Iterator[fmpq_mat]:
    """The endless exact rational iteration e_0, e_1, ... (``numerics.steps.brute_force_steps``
    scans it; fixed-step L-BFGS and truncated Newton-CG are exact too, but their rationals grow
    exponentially with the step: a few steps only)."""
    return {LBFGS: _lbfgs_iter, NewtonCG: _newton_cg_iter, Sophia: _sophia_iter}[type(opt)](p, opt)


def ball_iterator(p: Any, opt: Any, prec: int) -> Iterator[Any]:
    """The endless arb-ball iteration at ``prec`` bits: fixed-step / preconditioned L-BFGS and
    Newton-CG on a ``Quadratic`` (e_t), Shampoo / Muon on a ``MatrixQuadratic`` (E_t). Every
    iterate encloses the exact one; PrecisionError where a branch of the update is undecided."""
    if isinstance(p, MatrixQuadratic) and isinstance(opt, (Shampoo, Muon)):
        gen = _shampoo_iter(p, opt) if isinstance(opt, Shampoo) else _muon_iter(p, opt)
    elif isinstance(p, Quadratic) and isinstance(opt, LBFGS):
        gen = _lbfgs_iter(p, opt, ball=True)
    elif isinstance(p, Quadratic) and isinstance(opt, NewtonCG):
        gen = _newton_cg_iter(p, opt, ball=True)
    else:
        raise InvalidInputError(f"{type(opt).__name__} has no ball iteration on a {type(p).__name__}")
    return at_prec(gen, prec)


def _sophia_scalar_steps(p: Quadratic, opt: Sophia, tol: fmpq, horizon: int) -> int:
    """Sophia on a diagonal H decouples: q_t = sum_i 1/2 H_ii e_i(t)^2 with scalar recurrences."""
    n = p.n
    eta, gam, eps = _vec(opt.step, n, "step"), _vec(opt.gamma, n, "gamma"), _vec(opt.eps, n, "eps")
    b1, b2 = to_fmpq(opt.beta1), to_fmpq(opt.beta2)
    lam = [p.H[i, i] for i in range(n)]
    state = [[p.e0[i, 0], fmpq(0), fmpq(0)] for i in range(n)]  # e, m, h per coordinate
    target = tol * p.q0
    for t in range(1, horizon + 1):
        q = fmpq(0)
        for i, s in enumerate(state):
            e, m, h = s
            if (t - 1) % opt.period == 0:
                h = b2 * h + (1 - b2) * lam[i]
            m = b1 * m + (1 - b1) * lam[i] * e
            e = e - eta[i] * _clip(m / max(gam[i] * h, eps[i]))
            state[i] = [e, m, h]
            q += lam[i] * e * e / 2
        if q <= target:
            return t
    raise NoConvergenceError(f"Sophia does not reach the target within {horizon} steps")


def steps_to_second_order(p: Any, opt: Any, tol: Any, max_steps: int = 10_000) -> int:
    """Certified smallest t <= max_steps with q_t <= tol q_0 (called by ``numerics.steps.steps_to``):
    - LBFGS with exact line search and P = I: the CG count (statement SO-LBFGS: the same iterates);
    - NewtonCG whose inner PCG solves exactly (inner >= n, or D = P = I and inner >= r, the number
      of active eigenvalues of H at e_0: every iterate stays in the r-dimensional H-invariant
      subspace K(H, e_0), where CG terminates within r steps): the closed-form LM count with damping
      matrix D, 1 when damping = 0 (Newton);
    - Sophia on a diagonal H: decoupled scalar recurrences; other Sophia: the exact iteration;
    - LBFGS with a fixed step (torch's rule) or a preconditioner P, truncated NewtonCG, and Shampoo
      / Muon on a ``MatrixQuadratic`` (L(W) = 1/2 tr(E^T M E)): the arb-ball iteration
      (``ball_iterator``) scanned by ``numerics.steps.scan_ball_count``. Every iterate is a ball
      enclosing the exact iterate, and "q_t <= tol q_0" is accepted or rejected only when the
      whole ball of q_t lies on one side of tol q_0 (branches inside the update, such as torch's
      y^T s > 1e-10, ||g||_1 > 1, the inner CG's r^T P r = 0 and curvature sign, the signs in the
      polar factor, are decided on enclosures too); an undecided comparison or a blown-up ball
      restarts the scan at twice the precision (256 bits up to 2^16). So rounding cannot flip a
      verdict: the returned t has q_t <= tol q_0 and q_s > tol q_0 for s < t, both proved.
    An exact tie q_t = tol q_0 or an exact singularity of the update (an inner CG that terminates
    exactly before ``inner`` steps outside the case above) stays undecided at every precision: on
    a Quadratic (rational iterates) the exact rational iteration then decides, while its iterates
    stay under 10^6 bits; past that, and for Shampoo / Muon (irrational iterates; also a singular
    factor with eps = 0, a singular Muon momentum), PrecisionError.
    ``numerics.steps.brute_force_steps`` (the exact rational iteration) is what these are checked
    against."""
    from convrate.numerics.steps import brute_force_steps, scan_ball_count

    tolq = to_fmpq(tol, "tol")
    name = type(opt).__name__
    if isinstance(p, MatrixQuadratic) or isinstance(opt, (Shampoo, Muon)):
        if not (isinstance(p, MatrixQuadratic) and isinstance(opt, (Shampoo, Muon))):
            raise InvalidInputError(f"{name} on a {type(p).__name__}: Shampoo and Muon (only) act on a MatrixQuadratic")
        q0 = p.loss(p.E0)
        if q0 == 0:
            return 0
        return scan_ball_count(lambda prec: ball_iterator(p, opt, prec), p.loss, tolq * q0, max_steps, name)
    if p.q0 == 0:
        return 0
    try:
        return _count_on_quadratic(p, opt, tolq, max_steps)
    except PrecisionError as exc:  # an exact tie, or an exact inner termination: decide in rationals while small
        try:
            return brute_force_steps(p, opt, tolq, max_steps, max_bits=_EXACT_FALLBACK_BITS)
        except PrecisionError as exact_exc:
            raise PrecisionError(f"{exc}; {exact_exc}") from exc


def _count_on_quadratic(p: Quadratic, opt: Any, tolq: fmpq, max_steps: int) -> int:
    """The dispatch of ``steps_to_second_order`` on a Quadratic (q_0 > 0), before any exact fallback."""
    from convrate.numerics.optimizers import CG, GD, LM
    from convrate.numerics.steps import brute_force_steps, measure_for, scan_ball_count, steps_to

    if isinstance(opt, LBFGS) and opt.step is None and opt.P is None:
        return steps_to(p, CG(), tolq, max_steps)
    if isinstance(opt, NewtonCG) and (opt.inner >= p.n or (
            opt.D is None and opt.P is None and opt.inner >= measure_for(p, GD(1)).size)):
        lam = to_fmpq(opt.damping, "damping")
        if lam == 0:
            return 1
        return steps_to(p, LM(lam, D=opt.D), tolq, max_steps)
    if isinstance(opt, Sophia):
        if p.is_diagonal:
            return _sophia_scalar_steps(p, opt, tolq, max_steps)
        return brute_force_steps(p, opt, tolq, max_steps)
    if isinstance(opt, (LBFGS, NewtonCG)):
        return scan_ball_count(lambda prec: ball_iterator(p, opt, prec), p.loss, tolq * p.q0, max_steps,
                               type(opt).__name__)
    raise InvalidInputError(f"unsupported optimizer {opt!r}")


# ---------------------------------------------------------------- matrix problems (balls)
class MatrixQuadratic:
    """L(W) = 1/2 tr(E^T M E), E = W - W*, M symmetric positive definite (m x m), W (m x n)
    held as the error E; gradient G = M E. ``reparameterize(A)``: W' = A W gives M' = A^-T M A^-1,
    E' = A E (statement T1 for a one-sided map)."""

    def __init__(self, M: Any, E0: Any) -> None:
        self.M = fmpq_matrix(M, "M")
        self.E0 = fmpq_matrix(E0, "E0")
        if self.M.nrows() != self.E0.nrows():
            raise InvalidInputError("M and E0 have different numbers of rows")

    def loss(self, E: Any) -> Any:
        M = self.M if isinstance(E, fmpq_mat) else arb_mat(self.M)
        S = E.transpose() * M * E
        return sum((S[i, i] for i in range(S.nrows())), S[0, 0] * 0) / 2

    def reparameterize(self, A: Any) -> "MatrixQuadratic":
        A = fmpq_matrix(A, "A")
        Ai = A.inv()
        return MatrixQuadratic(Ai.transpose() * self.M * Ai, A * self.E0)


def _is_diag(M: arb_mat) -> bool:
    return all(M[i, j] == 0 for i in range(M.nrows()) for j in range(M.ncols()) if i != j)


def _sqrt2(M: arb_mat) -> arb_mat:
    det = M[0, 0] * M[1, 1] - M[0, 1] * M[1, 0]
    s = det.sqrt()
    t = (M[0, 0] + M[1, 1] + 2 * s).sqrt()
    out = arb_mat(2, 2)
    for i in range(2):
        for j in range(2):
            out[i, j] = (M[i, j] + (s if i == j else 0)) / t
    return out


def spd_power(M: arb_mat, p: Any) -> arb_mat:
    """M^-p for symmetric positive definite M, p in {1/4, 1/2, 1} (2x2: nested closed-form square
    roots) or any rational p for diagonal M (arb pow)."""
    pq = to_fmpq(p, "p")
    n = M.nrows()
    if _is_diag(M):
        out = arb_mat(n, n)
        for i in range(n):
            if not M[i, i] > 0:
                raise PrecisionError(f"diagonal entry {i} of the preconditioner is not certified positive")
            out[i, i] = M[i, i] ** (-arb(pq))
        return out
    if n != 2:
        raise InvalidInputError(f"matrix powers are implemented for diagonal or 2x2 matrices, got {n}x{n}")
    if pq == 1:
        return M.inv()
    root = _sqrt2(M)
    if pq == fmpq(1, 2):
        return root.inv()
    if pq == fmpq(1, 4):
        return _sqrt2(root).inv()
    raise InvalidInputError(f"2x2 powers M^-p need p in {{1/4, 1/2, 1}}, got {p}")


def polar(M: arb_mat) -> arb_mat:
    """The polar factor U of an invertible M (M = U P): diagonal M -> sign(M_ii); 2x2 closed form."""
    n = M.nrows()
    if _is_diag(M):
        out = arb_mat(n, n)
        for i in range(n):
            if M[i, i] > 0:
                out[i, i] = 1
            elif M[i, i] < 0:
                out[i, i] = -1
            else:
                raise PrecisionError(f"sign of diagonal entry {i} is not certified")
        return out
    if n != 2 or M.ncols() != 2:
        raise InvalidInputError("polar factors are implemented for diagonal or 2x2 matrices")
    det = M[0, 0] * M[1, 1] - M[0, 1] * M[1, 0]
    if det > 0:
        sgn = 1
    elif det < 0:
        sgn = -1
    else:
        raise PrecisionError("det M is not certified nonzero")
    cof = arb_mat([[M[1, 1], -M[1, 0]], [-M[0, 1], M[0, 0]]])
    norm = (sum((M[i, j] ** 2 for i in range(2) for j in range(2)), arb(0)) + 2 * abs(det)).sqrt()
    out = arb_mat(2, 2)
    for i in range(2):
        for j in range(2):
            out[i, j] = (M[i, j] + sgn * cof[i, j]) / norm
    return out


def _shampoo_iter(p: MatrixQuadratic, opt: Shampoo) -> Iterator[arb_mat]:
    M, E = arb_mat(p.M), arb_mat(p.E0)
    m, n = E.nrows(), E.ncols()
    eps = arb(to_fmpq(opt.eps, "eps"))
    L, R = arb_mat(_I(m)) * eps, arb_mat(_I(n)) * eps
    rows = _vec(opt.step, m, "step")
    yield E
    while True:
        G = M * E
        L, R = L + G * G.transpose(), R + G.transpose() * G
        D = spd_power(L, opt.p) * G * spd_power(R, opt.p)
        E = E - arb_mat([[arb(rows[i]) * D[i, j] for j in range(n)] for i in range(m)])
        yield E


def _muon_iter(p: MatrixQuadratic, opt: Muon) -> Iterator[arb_mat]:
    M, E = arb_mat(p.M), arb_mat(p.E0)
    beta, eta = arb(to_fmpq(opt.beta, "beta")), arb(to_fmpq(opt.step, "step"))
    mom = E * 0
    yield E
    while True:
        mom = mom * beta + M * E
        E = E - polar(mom) * eta
        yield E


def ball_iterates(p: MatrixQuadratic, opt: Any, steps: int, prec: int = 256) -> list[arb_mat]:
    """E_0 .. E_steps of Shampoo / Muon on a matrix quadratic as arb balls at ``prec`` bits."""
    if not isinstance(opt, (Shampoo, Muon)):
        raise InvalidInputError(f"{type(opt).__name__} has no ball iteration on a matrix quadratic")
    return list(itertools.islice(ball_iterator(p, opt, prec), steps + 1))
