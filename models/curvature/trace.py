"""Stochastic trace of a curvature operator (Hutchinson)."""
from __future__ import annotations

import math

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from convrate.errors import InvalidInputError
from convrate.models.curvature.objective import Objective


def hutchinson_trace(obj: Objective, samples: int = 32, seed: int = 0, operator: str = "hessian"
                     ) -> tuple[float, float]:
    """tr(H) ~ mean of z^T H z over Rademacher z; returns (estimate, standard error)."""
    if samples < 2:
        raise InvalidInputError(f"samples must be >= 2, got {samples}")
    op = obj.operator(operator)
    g = torch.Generator().manual_seed(seed)
    vals = []
    with threadpool_limits(limits=1, user_api="blas"):
        for _ in range(samples):
            z = (torch.randint(0, 2, (obj.n,), generator=g) * 2 - 1).to(obj.device, obj.dtype)
            vals.append(float(z @ op(z)))
    a = np.array(vals)
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(samples))
