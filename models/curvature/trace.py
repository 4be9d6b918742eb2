"""Stochastic trace of a curvature operator (Hutchinson)."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from convrate.errors import InvalidInputError
from convrate.models.curvature.objective import Objective


def rademacher(n: int, generator: torch.Generator) -> torch.Tensor:
    """z in {-1, +1}^n, float64, from ``generator`` (the same draw on every rank)."""
    return (torch.randint(0, 2, (n,), generator=generator) * 2 - 1).to(torch.float64)


def hutchinson_trace(obj: Objective, samples: int = 32, seed: int = 0, operator: str = "hessian",
                     progress: Callable[[str, int, int], None] | None = None) -> tuple[float, float]:
    """tr(H) ~ mean of z^T H z over ``samples`` Rademacher z (E z z^T = I, so the mean is
    unbiased); returns (estimate, standard error = sample std / sqrt(samples))."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise InvalidInputError(f"samples must be an integer >= 2, got {samples}")
    op = obj.operator(operator)
    g = torch.Generator().manual_seed(seed)
    vals = []
    with threadpool_limits(limits=1, user_api="blas"):
        for i in range(samples):
            z = rademacher(obj.n, g).to(obj.device, obj.dtype)
            vals.append(float(z @ op(z)))
            if progress is not None:
                progress("Hutchinson trace", i + 1, samples)
    a = np.array(vals)
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(samples))
