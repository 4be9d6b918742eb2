"""convrate.models.curvature: Hessian and Gauss-Newton products of real networks, Lanczos, trace.

Rooms: ``objective`` (L(theta) on fixed data, H v, G v, finite-difference H v, determinism
check), ``distributed`` (the data-parallel reduction over torch.distributed ranks, and the local
launcher), ``lanczos`` (extreme eigenpairs with residual bounds, O(n) memory by default),
``trace`` (Hutchinson), ``density`` (stochastic Lanczos quadrature), ``memory`` (peak-memory
meter), ``summary`` (the curvature report of one objective, shared by ``convrate hessian`` and
the audit), ``sharded`` (curvature of an FSDP-sharded model by finite differences). Curvature
knows nothing of defenses or attacks.
"""
from __future__ import annotations

from convrate.models.curvature.distributed import RankDisagreementError, World, launch
from convrate.models.curvature.lanczos import EigenEstimate, LanczosRun, extreme_eigenvalues, lanczos, lanczos_run
from convrate.models.curvature.memory import MemoryMeter
from convrate.models.curvature.objective import (
    DEFAULT_HVP_METHOD,
    FINITE_DIFFERENCE,
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
           "FINITE_DIFFERENCE", "benchmark_hvp", "dense_hessian", "EigenEstimate", "LanczosRun", "lanczos",
           "lanczos_run", "extreme_eigenvalues", "hutchinson_trace", "resolve_device", "World", "launch",
           "RankDisagreementError", "MemoryMeter"]
