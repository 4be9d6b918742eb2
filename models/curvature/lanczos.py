"""Extreme eigenpairs of a curvature operator: Lanczos (O(n) memory or full basis) and ARPACK.

Lanczos builds the tridiagonal T_k = Q_k^T H Q_k (alpha on the diagonal, beta beside it) by the
three-term recurrence beta_j q_{j+1} = H q_j - alpha_j q_j - beta_{j-1} q_{j-1}. Two modes:

- ``basis="none"`` (default; memory O(n): three recurrence vectors plus one accumulator per
  wanted pair, whatever the number of steps). Pass 1 runs the recurrence with local
  reorthogonalization only (q_{j+1} against q_j and q_{j-1}). In floating point the basis then
  loses orthogonality, and by Paige's theorem only along Ritz vectors that have converged: the
  result is extra copies ("ghosts") of converged Ritz values, never a wrong converged value.
  Copies are merged (two converged Ritz values closer than the convergence tolerance count
  once), so "top k" means the k largest *distinct* eigenvalues, as in exact arithmetic (one
  Krylov vector sees one copy of a multiple eigenvalue). Pass 2 regenerates q_1 .. q_k with the
  same operations and accumulates only the wanted Ritz vectors y = Q_k s; the recomputed
  alpha, beta must equal pass 1's (a determinism check for free). Cost: about twice the
  products of the full-basis mode.
- ``basis="full"``: every q_j is kept (memory k n) and w is reorthogonalized against all of
  them (classical Gram-Schmidt twice); one pass. Choose it when k n float64 fits.

The wanted Ritz vectors (with the ghost copies of converged ones) are refined by Rayleigh-Ritz
on their span (one product each). Each reported pair (lambda, y), ||y|| = 1, has
lambda = y^T H y (Rayleigh quotient) and the
residual r = ||H y - lambda y|| of a fresh product, so some eigenvalue of H lies in
[lambda - r, lambda + r] (H symmetric), whatever the rounding of the Lanczos process. Vectors
and coefficients are float64 whatever the operator's dtype. Every rank of a data-parallel
world runs the same recurrence on all-reduced products (``distributed``); ``world`` checks at
the end that the ranks computed the same coefficients.
BLAS threads are limited to 1 while torch works (threadpoolctl).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from threadpoolctl import threadpool_limits

from convrate.errors import InvalidInputError, NoConvergenceError
from convrate.models.curvature.distributed import World
from convrate.models.curvature.memory import MemoryMeter
from convrate.models.curvature.objective import NondeterministicLossError, Objective

BASES = ("none", "full", "auto")
#: basis "auto" keeps the full basis when its (steps + 2) n float64 fit in this many bytes
FULL_BASIS_BYTES = 256 * 2**20
Progress = Callable[[str, int, int], None]


@dataclass
class EigenEstimate:
    """lambda with its unit Ritz vector y and residual r = ||H y - lambda y|| (fresh product):
    some eigenvalue of H lies in [value - residual, value + residual]."""

    value: float
    residual: float
    vector: torch.Tensor
    which: str
    method: str
    matvecs: int

    @property
    def interval(self) -> tuple[float, float]:
        return self.value - self.residual, self.value + self.residual


@dataclass
class LanczosRun:
    """One Lanczos run: the tridiagonal (``alphas``, ``betas``), all Ritz values ascending
    (``ritz``, ghosts included in basis "none"), the wanted pairs (``top`` descending,
    ``bottom`` ascending) with fresh residuals, ``steps`` (= k), ``matvecs`` (all products,
    both passes and the residuals), whether the wanted pairs met ``tol`` (``converged``), the
    bytes of float64 vectors held at the peak (``vector_bytes``) and the checksum the ranks
    agreed on."""

    alphas: list[float]
    betas: list[float]
    ritz: list[float]
    top: list[EigenEstimate]
    bottom: list[EigenEstimate]
    steps: int
    matvecs: int
    basis: str
    tol: float
    converged: bool
    vector_bytes: int
    refine_products: int = 0
    checksum: str = ""


class _Space:
    """Inner products of float64 vectors: local, or all-reduced when the vectors are slices of
    global vectors sharded over ``world`` (``sharded``)."""

    def __init__(self, world: World | None = None) -> None:
        self.world = world

    def gram(self, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        """A^T B (A, B: matrices or vectors)."""
        out = (A.T if A.ndim > 1 else A) @ B
        return out if self.world is None else self.world.sum(out)

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> float:
        return float(self.gram(a, b))

    def norm(self, a: torch.Tensor) -> float:
        return math.sqrt(max(self.dot(a, a), 0.0))


LOCAL = _Space()


def _tridiag(alphas: Sequence[float], betas: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(alphas, dtype=np.float64)
    if len(a) == 1:
        return a.copy(), np.ones((1, 1))
    return eigh_tridiagonal(a, np.asarray(betas[: len(a) - 1], dtype=np.float64))


def _tridiag_eig(alphas: Sequence[float], betas: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    theta, S = _tridiag(alphas, betas)
    return torch.from_numpy(theta), torch.from_numpy(S)


def select_distinct(theta: np.ndarray, est: np.ndarray, top: int, bottom: int, tol_abs: float
                    ) -> tuple[list[int], list[int]]:
    """Indices of the ``top`` largest and ``bottom`` smallest distinct Ritz values: walking from
    each end, a value is skipped as a copy of the last one taken when both are converged
    (residual estimate <= tol_abs) and they differ by at most 2 tol_abs."""

    def walk(order: Sequence[int], count: int) -> list[int]:
        out: list[int] = []
        for i in order:
            if len(out) == count:
                break
            if out and est[i] <= tol_abs and est[out[-1]] <= tol_abs and abs(theta[i] - theta[out[-1]]) <= 2 * tol_abs:
                continue
            out.append(i)
        return out

    k = len(theta)
    return walk(range(k - 1, -1, -1), top), walk(range(k), bottom)


def _recurrence(matvec: Callable[[torch.Tensor], torch.Tensor], q0: torch.Tensor, steps: int,
                keep: torch.Tensor | None, check: Callable[[list[float], list[float], float], bool] | None,
                last_product: bool = True, space: _Space = LOCAL) -> Iterator[tuple[int, torch.Tensor, float, float]]:
    """Yields (j, q_j, alpha_j, beta_j) for j = 0 .. ; beta_j is ||r_j|| (the next vector's
    scale). With ``keep`` (a (steps, n) buffer: the full basis) q_j is stored in row j and w is
    reorthogonalized against rows 0..j; without, only q_{j-1}, q_j are held. Stops after
    ``steps``, on an invariant subspace (beta <= 1e3 u max|alpha|), or when
    ``check(alphas, betas_so_far, beta)`` says so. ``last_product=False`` yields the last
    vector without applying the operator to it (alpha, beta NaN): regeneration needs only q."""
    eps = torch.finfo(torch.float64).eps
    q_prev = torch.zeros_like(q0)
    q = q0
    beta_prev = 0.0
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(steps):
        if keep is not None:
            keep[j] = q
        if j + 1 == steps and not last_product:
            yield j, q, math.nan, math.nan
            return
        w = matvec(q)
        a = space.dot(q, w)
        if keep is not None:
            for _ in range(2):
                w = w - keep[: j + 1].T @ space.gram(keep[: j + 1].T, w)
        else:
            w = w - a * q - beta_prev * q_prev
            c = space.dot(q, w)  # local reorthogonalization (twice is enough)
            w = w - c * q
            a += c
            if j > 0:
                w = w - space.dot(q_prev, w) * q_prev
        alphas.append(a)
        b = space.norm(w)
        yield j, q, a, b
        if j + 1 == steps or b <= 1e3 * eps * max(abs(x) for x in alphas):
            return
        if check is not None and check(alphas, betas, b):
            return
        betas.append(b)
        q_prev, q, beta_prev = q, w / b, b


def lanczos_run(matvec: Callable[[torch.Tensor], torch.Tensor], n: int, max_steps: int, *, top: int = 1,
                bottom: int = 1, tol: float = 0.0, basis: str = "none", v0: torch.Tensor | None = None,
                seed: int = 0, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
                world: World | None = None, progress: Progress | None = None, meter: MemoryMeter | None = None,
                sharded: World | None = None) -> LanczosRun:
    """Lanczos for the ``top`` largest and ``bottom`` smallest distinct eigenpairs of the
    symmetric operator ``matvec`` (in ``dtype`` on ``device``; fewer when the Krylov space
    holds fewer independent directions), at most ``max_steps`` steps,
    stopping once every wanted Ritz pair's estimate beta_k |s_k| is <= tol max|theta|
    (tol 0: all steps). Start vector ``v0`` or a float64 normal draw from ``seed`` (the same on
    every rank). See the module doc for the two ``basis`` modes ("auto": "full" when the basis
    fits in ``FULL_BASIS_BYTES``, else "none"). ``sharded``: the vectors are
    this rank's slices of global vectors of length ``n`` sharded over that world (an FSDP model,
    ``sharded.ShardedObjective``): every inner product is all-reduced and ``v0`` (this rank's
    slice) must be given."""
    if basis not in BASES:
        raise InvalidInputError(f"unknown Lanczos basis mode {basis!r} (supported: {', '.join(BASES)})")
    if not (isinstance(max_steps, int) and max_steps >= 1):
        raise InvalidInputError(f"Lanczos steps must be a positive integer, got {max_steps!r}")
    if not (math.isfinite(tol) and 0 <= tol < 1):
        raise InvalidInputError(f"Lanczos tolerance must lie in [0, 1), got {tol!r}")
    if basis == "auto":
        basis = "full" if (min(max_steps, n) + 2) * n * 8 <= FULL_BASIS_BYTES and sharded is None else "none"
    dev = torch.device(device)
    space = _Space(sharded)
    if v0 is None:
        if sharded is not None:
            raise InvalidInputError("sharded Lanczos needs this rank's slice of the start vector")
        v0 = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q0 = v0.to(dev, torch.float64)
    if (sharded is None and v0.shape != (n,)) or v0.ndim != 1 or not bool(torch.isfinite(v0).all()) \
            or space.norm(q0) == 0:
        raise InvalidInputError(f"Lanczos start vector must be a finite nonzero vector of length {n}")
    n_local = q0.numel()
    q0 = q0 / space.norm(q0)
    steps = max(1, min(max_steps, n))
    calls = 0

    def mv(x: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return matvec(x.to(dtype)).to(torch.float64)

    def check(alphas: list[float], betas: list[float], b: float) -> bool:
        if progress is not None:
            progress("Lanczos", len(alphas), steps)
        if tol <= 0:
            return False
        theta, S = _tridiag(alphas, betas)
        est = b * np.abs(S[-1])
        scale = float(np.abs(theta).max())
        t_idx, b_idx = select_distinct(theta, est, top, bottom, tol * scale)
        return len(t_idx) == min(top, len(theta)) and len(b_idx) == min(bottom, len(theta)) and \
            all(est[i] <= tol * scale for i in t_idx + b_idx) and len(theta) >= top + bottom

    keep = torch.zeros(steps, n_local, dtype=torch.float64, device=dev) if basis == "full" else None
    alphas: list[float] = []
    betas: list[float] = []
    last_beta = 0.0
    with threadpool_limits(limits=1, user_api="blas"):
        for j, _, a, b in _recurrence(mv, q0, steps, keep, check, space=space):
            alphas.append(a)
            betas.append(b)
            last_beta = b
        k = len(alphas)
        betas = betas[: k - 1]
        theta, S = _tridiag(alphas, betas)
        est = last_beta * np.abs(S[-1])
        scale = float(np.abs(theta).max()) or 1.0
        tol_abs = max(tol, 0.0) * scale
        t_idx, b_idx = select_distinct(theta, est, top, bottom, tol_abs)
        # the wanted Ritz vectors and, for converged ones, their ghost copies (basis "none")
        groups = [[j for j in range(k) if j == i or (est[i] <= tol_abs and est[j] <= tol_abs
                                                      and abs(theta[j] - theta[i]) <= 2 * tol_abs)]
                  for i in dict.fromkeys(t_idx + b_idx)]
        wanted = sorted({j for grp in groups for j in grp})
        n_vec = len(wanted)
        vector_bytes = ((steps + 2 + 2 * n_vec) if basis == "full" else (4 + 2 * n_vec)) * n_local * 8
        if meter is not None:
            meter.count(vector_bytes)
        Sw = torch.from_numpy(np.ascontiguousarray(S[:, wanted])).to(dev)
        if keep is not None:
            Y = keep[:k].T @ Sw
            del keep
        else:
            Y = torch.zeros(n_local, n_vec, dtype=torch.float64, device=dev)
            drift = 0.0
            for j, q, a, b in _recurrence(mv, q0, k, None, None, last_product=False, space=space):
                Y += torch.outer(q, Sw[j])
                if j < k - 1:
                    drift = max(drift, abs(a - alphas[j]), abs(b - betas[j]))
                if progress is not None:
                    progress("Lanczos: Ritz vectors", j + 1, k)
            if not drift <= math.sqrt(torch.finfo(dtype).eps) * scale:
                raise NondeterministicLossError(
                    f"the regenerated Lanczos coefficients differ from the first pass by {drift:.2e} "
                    f"(scale {scale:.2e}): the operator is not deterministic")
        before = calls
        top_pairs, bottom_pairs = _rayleigh_ritz(mv, Y, [[wanted.index(j) for j in grp] for grp in groups],
                                                 len(t_idx), len(b_idx), f"lanczos/{basis}", space)
        refine_products = calls - before
    converged = tol > 0 and all(est[i] <= tol_abs for i in t_idx + b_idx)
    for p in top_pairs + bottom_pairs:
        p.matvecs = calls
    run = LanczosRun(alphas, betas, [float(t) for t in theta], top_pairs, bottom_pairs, k, calls, basis, tol,
                     converged, vector_bytes, refine_products=refine_products)
    w = world if world is not None else World()
    run.checksum = w.require_agreement(alphas + betas + [p.value for p in top_pairs + bottom_pairs],
                                       "the Lanczos coefficients")
    return run


def _rayleigh_ritz(mv: Callable[[torch.Tensor], torch.Tensor], Y: torch.Tensor, groups: list[list[int]], top: int,
                   bottom: int, method: str, space: _Space = LOCAL) -> tuple[list[EigenEstimate], list[EigenEstimate]]:
    """Refine the wanted Ritz vectors (columns of Y; ``groups``: the columns that are copies of
    one converged Ritz value). One fresh product per column; of each group the column with the
    smallest residual is kept (copies are near-parallel, but their quality differs). On the
    span of the kept columns, with their Gram matrix V diag(g) V^T (directions with
    g <= 1e-6 max g dropped), B = Y V g^(-1/2) is orthonormal and the Ritz pairs of
    B^T H B = W^T (Y^T H Y) W are the best approximations in the span (Courant-Fischer: the
    k-th largest is at least the k-th largest Rayleigh quotient of any k kept columns, at most
    lambda_k(H)). The ``top`` largest and ``bottom`` smallest are returned, normalized, with
    lambda the Rayleigh quotient and the residual of a fresh product."""
    cols, hcols, res = [], [], []
    for c in range(Y.shape[1]):
        y = Y[:, c] / space.norm(Y[:, c])
        hy = mv(y)
        cols.append(y)
        hcols.append(hy)
        res.append(space.norm(hy - space.dot(y, hy) * y))
    best = [min(grp, key=lambda c: res[c]) for grp in groups]
    Ys, HYs = torch.stack([cols[c] for c in best], 1), torch.stack([hcols[c] for c in best], 1)
    g, V = torch.linalg.eigh(space.gram(Ys, Ys))
    keep = g > 1e-6 * float(g.max())
    W = V[:, keep] / g[keep].sqrt()
    B, HB = Ys @ W, HYs @ W
    T = space.gram(B, HB)
    th, C = torch.linalg.eigh(0.5 * (T + T.T))
    m = len(th)

    def pair(i: int, which: str) -> EigenEstimate:
        z = B @ C[:, i]
        z = z / space.norm(z)
        hz = mv(z)
        lam = space.dot(z, hz)
        return EigenEstimate(lam, space.norm(hz - lam * z), z.cpu(), which, method, 0)

    return [pair(m - 1 - i, "LA") for i in range(min(top, m))], [pair(i, "SA") for i in range(min(bottom, m))]


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], n: int, steps: int, *,
            v0: torch.Tensor | None = None, seed: int = 0, dtype: torch.dtype = torch.float64,
            device: torch.device | str = "cpu", tol: float = 0.0, which: str = "both"
            ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Lanczos with the full basis kept and full reorthogonalization (classical Gram-Schmidt
    twice) for at most ``steps`` steps: Q^T H Q = tridiag(alpha, beta). Stops early on an
    invariant subspace or when the residual estimate beta_k |s_k| of the wanted extreme Ritz
    pair(s) (``which`` "LA", "SA" or "both") is <= tol max|theta|. Returns (all Ritz values
    ascending, all Ritz vectors as the columns of an (n, k) tensor, steps taken); memory k n.
    ``lanczos_run`` is the O(n)-memory solver for the extremes."""
    dev = torch.device(device)
    if v0 is None:
        v0 = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q0 = v0.to(dev, torch.float64)
    q0 = q0 / q0.norm()
    idx = {"LA": [-1], "SA": [0]}.get(which, [0, -1])

    def check(alphas: list[float], betas: list[float], b: float) -> bool:
        if tol <= 0:
            return False
        theta, S = _tridiag(alphas, betas)
        return max(b * abs(float(S[-1, i])) for i in idx) <= tol * float(np.abs(theta).max())

    steps = max(1, min(steps, n))
    keep = torch.zeros(steps, n, dtype=torch.float64, device=dev)
    alphas: list[float] = []
    betas: list[float] = []
    with threadpool_limits(limits=1, user_api="blas"):
        for _, _, a, b in _recurrence(lambda x: matvec(x.to(dtype)).to(torch.float64), q0, steps, keep, check):
            alphas.append(a)
            betas.append(b)
        k = len(alphas)
        theta, S = _tridiag_eig(alphas, betas[: k - 1])
        Y = keep[:k].T @ S.to(dev)
    return theta, Y.to(dtype), k


def extreme_eigenvalues(obj: Objective, which: str = "LA", k: int = 1, *, method: str = "eigsh",
                        operator: str = "hessian", tol: float = 1e-10, max_steps: int = 300,
                        seed: int = 0, basis: str = "none") -> list[EigenEstimate]:
    """Top ("LA") or bottom ("SA") k eigenvalues of the Hessian (or Gauss-Newton) operator,
    each with a fresh-product residual. ``method`` "eigsh" (ARPACK implicitly restarted
    Lanczos on a float64 LinearOperator) or "lanczos" (``lanczos_run`` with ``basis``, up to
    ``max_steps`` steps). Runs ``require_deterministic`` first."""
    if which not in ("LA", "SA"):
        raise InvalidInputError(f"which must be 'LA' or 'SA', got {which!r}")
    if not 1 <= k < obj.n:
        raise InvalidInputError(f"k must be in [1, {obj.n - 1}], got {k}")
    if not obj._checked:
        obj.require_deterministic()
    op = obj.operator(operator)
    start = obj.matvecs
    g = torch.Generator().manual_seed(seed)
    v0 = torch.randn(obj.n, generator=g, dtype=torch.float64)
    if method == "lanczos":
        run = lanczos_run(op, obj.n, max_steps, top=k if which == "LA" else 0, bottom=k if which == "SA" else 0,
                          tol=tol, basis=basis, v0=v0, dtype=obj.dtype, device=obj.device, world=obj.world)
        out = run.top if which == "LA" else run.bottom
    elif method == "eigsh":
        out = _eigsh(obj, op, which, k, tol, max_steps, v0)
    else:
        raise InvalidInputError(f"unknown eigen method {method!r} (eigsh, lanczos)")
    used = obj.matvecs - start
    for e in out:
        e.matvecs = used
    return out


def _eigsh(obj: Objective, op: Callable[[torch.Tensor], torch.Tensor], which: str, k: int, tol: float,
           max_steps: int, v0: torch.Tensor) -> list[EigenEstimate]:
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    def mv(x: np.ndarray) -> np.ndarray:
        return op(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).to(obj.device, obj.dtype)
                  ).double().cpu().numpy()

    def run(matvec: Callable[[np.ndarray], np.ndarray], want: str) -> tuple[np.ndarray, np.ndarray]:
        L = LinearOperator((obj.n, obj.n), matvec=matvec, dtype=np.float64)
        try:
            return eigsh(L, k=k, which=want, tol=tol, v0=v0.numpy(), maxiter=max(50, max_steps),
                         ncv=min(obj.n, max(2 * k + 1, 20)))
        except ArpackNoConvergence as e:
            raise NoConvergenceError(
                f"eigsh ({which}) did not converge to tol {tol:g} in {max(50, max_steps)} restarts; "
                f"{len(e.eigenvalues)} of {k} converged") from None

    with threadpool_limits(limits=1, user_api="blas"):
        if which == "LA":
            vals, vecs = run(mv, "LA")
            order = np.argsort(vals)[::-1]
        else:
            # ARPACK's tolerance is relative to |theta|, hopeless for theta ~ 0 (flat
            # directions): take the top of the shifted operator c I - H, c = 2 |lambda_max|.
            top, _ = run(mv, "LA")
            c = 2.0 * abs(float(top.max()))
            vals, vecs = run(lambda x: c * x - mv(x), "LA")
            vals = c - vals
            order = np.argsort(vals)
        out = []
        for i in order:
            lam = float(vals[i])
            y = torch.from_numpy(vecs[:, i].copy()).to(obj.device, obj.dtype)
            y = y / y.norm()
            out.append(EigenEstimate(lam, float((op(y) - lam * y).norm()), y.cpu(), which, "eigsh", 0))
    return out


__all__ = ["BASES", "EigenEstimate", "LanczosRun", "lanczos", "lanczos_run", "extreme_eigenvalues",
           "select_distinct"]
