"""Spectral density of a curvature operator by stochastic Lanczos quadrature (SLQ).

For a Rademacher probe z (||z||^2 = n) and m Lanczos steps from q_1 = z / sqrt(n), the
tridiagonal T_m = S diag(theta) S^T gives the Gauss quadrature

    z^T f(H) z / n  ~  sum_j tau_j f(theta_j),      tau_j = S_{1j}^2,  sum_j tau_j = 1,

exact for polynomials f of degree < 2m. Averaging over probes, the spectral measure
(1/n) sum_i delta(t - lambda_i) is approximated by the nodes theta_{p,j} with weights
tau_{p,j} / probes, and the density by its convolution with a Gaussian of width ``sigma``
(a fraction of the spectrum's span). Only the coefficients are kept: memory O(n) per probe
(``lanczos`` pass 1 without a basis). With f(t) = t the quadrature is exact: n sum_j tau_j
theta_j = z^T H z, Hutchinson's estimate with the same probes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from convrate.errors import InvalidInputError
from convrate.models.curvature.lanczos import _recurrence, _tridiag
from convrate.models.curvature.trace import rademacher


@dataclass
class SpectralDensity:
    """Quadrature nodes and weights per probe, the smoothed density on ``grid``, and the
    trace n * mean_p sum_j tau_pj theta_pj with its standard error over probes."""

    nodes: list[list[float]]
    weights: list[list[float]]
    grid: list[float]
    density: list[float]
    sigma: float
    steps: int
    trace: float
    trace_se: float

    def to_json(self) -> dict:
        return {"nodes": self.nodes, "weights": self.weights, "grid": self.grid, "density": self.density,
                "sigma": self.sigma, "steps": self.steps, "probes": len(self.nodes), "trace": self.trace,
                "trace_se": self.trace_se}


def slq_density(matvec: Callable[[torch.Tensor], torch.Tensor], n: int, *, steps: int = 60, probes: int = 4,
                seed: int = 0, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
                grid_points: int = 400, sigma_fraction: float = 0.01,
                progress: Callable[[str, int, int], None] | None = None) -> SpectralDensity:
    """SLQ with ``probes`` Rademacher probes (seeded by ``seed``; the same on every rank) and
    ``steps`` Lanczos steps each; see the module doc."""
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise InvalidInputError(f"density probes must be a positive integer, got {probes!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InvalidInputError(f"density steps must be a positive integer, got {steps!r}")
    dev = torch.device(device)
    g = torch.Generator().manual_seed(seed + 1_000_003)
    nodes, weights = [], []
    with threadpool_limits(limits=1, user_api="blas"):
        for p in range(probes):
            z = rademacher(n, g).to(dev)
            q0 = z / math.sqrt(n)
            alphas, betas = [], []
            for _, _, a, b in _recurrence(lambda x: matvec(x.to(dtype)).to(torch.float64), q0, min(steps, n),
                                          None, None):
                alphas.append(a)
                betas.append(b)
                if progress is not None:
                    progress(f"density probe {p + 1}/{probes}", len(alphas), min(steps, n))
            theta, S = _tridiag(alphas, betas[: len(alphas) - 1])
            nodes.append([float(t) for t in theta])
            weights.append([float(s) ** 2 for s in S[0]])
    lo = min(min(t) for t in nodes)
    hi = max(max(t) for t in nodes)
    span = max(hi - lo, 1e-12 * max(abs(lo), abs(hi), 1.0))
    sigma = sigma_fraction * span
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, grid_points)
    dens = np.zeros_like(grid)
    for th, w in zip(nodes, weights):
        for t, tw in zip(th, w):
            dens += tw * np.exp(-0.5 * ((grid - t) / sigma) ** 2)
    dens /= probes * sigma * math.sqrt(2 * math.pi)
    traces = np.array([n * sum(t * w for t, w in zip(th, ws)) for th, ws in zip(nodes, weights)])
    se = float(traces.std(ddof=1) / math.sqrt(probes)) if probes > 1 else float("nan")
    return SpectralDensity(nodes, weights, grid.tolist(), dens.tolist(), sigma, min(steps, n),
                           float(traces.mean()), se)


__all__ = ["SpectralDensity", "slq_density"]
