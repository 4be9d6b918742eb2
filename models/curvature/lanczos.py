"""Extreme eigenpairs of a curvature operator: Lanczos and ARPACK, with residual bounds.

Each reported eigenpair (lambda, y), ||y|| = 1, carries the residual r = ||H y - lambda y||
of a fresh product, so some eigenvalue of H lies in [lambda - r, lambda + r] (H symmetric).
BLAS threads are limited to 1 while torch works (threadpoolctl); the torch intra-op pool does
the parallel work.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from convrate.errors import InvalidInputError, NoConvergenceError
from convrate.models.curvature.objective import Objective

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


def _residual(op: Callable, y: torch.Tensor, lam: float) -> float:
    return float((op(y) - lam * y).norm())


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], n: int, steps: int, *,
            v0: torch.Tensor | None = None, seed: int = 0, dtype: torch.dtype = torch.float64,
            device: torch.device | str = "cpu", tol: float = 0.0, which: str = "both"
            ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Lanczos with full reorthogonalization (classical Gram-Schmidt applied twice) for at
    most ``steps`` steps: Q^T H Q = tridiag(alpha, beta). Stops early on an invariant
    subspace or when the Lanczos residual estimate beta_j |s_{j,last}| of the wanted extreme
    Ritz pair(s) is <= tol * max|theta|. Returns (Ritz values ascending, Ritz vectors as
    columns of an (n, k) tensor, steps taken)."""
    dev = torch.device(device)
    if v0 is None:
        g = torch.Generator().manual_seed(seed)
        v0 = torch.randn(n, generator=g, dtype=torch.float64)
    q = v0.to(dev, dtype)
    q = q / q.norm()
    steps = max(1, min(steps, n))
    Q = torch.zeros(steps, n, dtype=dtype, device=dev)
    alphas: list[float] = []
    betas: list[float] = []
    Q[0] = q
    k = 0
    for j in range(steps):
        w = matvec(Q[j])
        a = float(Q[j] @ w)
        alphas.append(a)
        k = j + 1
        for _ in range(2):
            w = w - Q[:k].T @ (Q[:k] @ w)
        b = float(w.norm())
        done = j + 1 == steps or b <= 1e3 * torch.finfo(dtype).eps * max(abs(x) for x in alphas)
        if not done and tol > 0 and (j + 1) % 5 == 0:
            theta, S = _tridiag_eig(alphas, betas)
            idx = {"LA": [-1], "SA": [0]}.get(which, [0, -1])
            est = max(b * abs(float(S[-1, i])) for i in idx)
            done = est <= tol * float(theta.abs().max())
        if done:
            break
        betas.append(b)
        Q[j + 1] = w / b
    theta, S = _tridiag_eig(alphas, betas[: k - 1])
    Y = Q[:k].T @ S.to(dev, dtype)
    return theta, Y, k


def _tridiag_eig(alphas: Sequence[float], betas: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    k = len(alphas)
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if k > 1:
        b = torch.tensor(betas[: k - 1], dtype=torch.float64)
        T += torch.diag(b, 1) + torch.diag(b, -1)
    return torch.linalg.eigh(T)


def extreme_eigenvalues(obj: Objective, which: str = "LA", k: int = 1, *, method: str = "eigsh",
                        operator: str = "hessian", tol: float = 1e-10, max_steps: int = 300,
                        seed: int = 0) -> list[EigenEstimate]:
    """Top ("LA") or bottom ("SA") k eigenvalues of the Hessian (or Gauss-Newton) operator,
    each with a fresh-product residual. ``method`` "eigsh" (ARPACK implicitly restarted
    Lanczos on a float64 LinearOperator) or "lanczos" (own, full reorthogonalization, up to
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
    with threadpool_limits(limits=1, user_api="blas"):
        if method == "eigsh":
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
            pairs = [(float(vals[i]), torch.from_numpy(vecs[:, i].copy())) for i in order]
        elif method == "lanczos":
            theta, Y, _ = lanczos(op, obj.n, max_steps, v0=v0, dtype=obj.dtype, device=obj.device,
                                  tol=tol, which=which)
            idx = list(range(len(theta)))[::-1][:k] if which == "LA" else list(range(len(theta)))[:k]
            pairs = [(float(theta[i]), Y[:, i]) for i in idx]
        else:
            raise InvalidInputError(f"unknown eigen method {method!r} (eigsh, lanczos)")
        out = []
        for lam, y in pairs:
            y = y.to(obj.device, obj.dtype)
            y = y / y.norm()
            out.append(EigenEstimate(lam, _residual(op, y, lam), y.cpu(), which, method, 0))
    used = obj.matvecs - start
    for e in out:
        e.matvecs = used
    return out
