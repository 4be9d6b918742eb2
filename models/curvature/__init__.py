"""convrate.models.curvature: Hessian and Gauss-Newton products of real networks, Lanczos, trace.

Rooms: ``objective`` (L(theta) on fixed data, H v, G v, determinism check), ``lanczos``
(extreme eigenpairs with residual bounds), ``trace`` (Hutchinson). Curvature knows nothing of
defenses or attacks.
"""
from __future__ import annotations

from convrate.models.curvature.lanczos import EigenEstimate, extreme_eigenvalues, lanczos
from convrate.models.curvature.objective import (
    DEFAULT_HVP_METHOD,
    HVP_METHODS,
    LOSSES,
    NondeterministicLossError,
    Objective,
    benchmark_hvp,
    dense_hessian,
)
from convrate.models.curvature.trace import hutchinson_trace
from convrate.models.runtime import resolve_device

__all__ = ["Objective", "NondeterministicLossError", "LOSSES", "HVP_METHODS", "DEFAULT_HVP_METHOD",
           "benchmark_hvp", "dense_hessian", "EigenEstimate", "lanczos", "extreme_eigenvalues",
           "hutchinson_trace", "resolve_device"]
