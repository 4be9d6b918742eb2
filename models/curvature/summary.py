"""The curvature report of one objective: extreme eigenpairs, trace, density, memory, time.

``curvature_summary`` is what ``convrate hessian`` prints and what the audit records for each
model: Lanczos (``lanczos_run``) for the ``top`` largest and ``bottom`` smallest distinct
eigenvalues, each with the residual r = ||H y - lambda y|| of a fresh product (an eigenvalue
lies in [lambda - r, lambda + r]); optionally the Hutchinson trace with its standard error and
the SLQ spectral density. Every number is the same on every rank of a data-parallel world.
Units: eigenvalues and trace in loss units per parameter unit squared; memory in bytes
(``memory.MemoryMeter``: resident-set high-water mark of the call, and the bytes of Lanczos
vectors held by design); seconds of wall and CPU time of this process.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from convrate.models.curvature.density import slq_density
from convrate.models.curvature.lanczos import EigenEstimate, lanczos_run
from convrate.models.curvature.memory import MemoryMeter
from convrate.models.curvature.objective import Objective
from convrate.models.curvature.trace import hutchinson_trace

Progress = Callable[[str, int, int], None]


def _pair(e: EigenEstimate) -> dict[str, float]:
    return {"value": e.value, "residual": e.residual, "interval": list(e.interval)}


def curvature_summary(obj: Objective, *, top: int = 1, bottom: int = 1, tol: float = 1e-8, max_steps: int = 100,
                      basis: str = "none", trace_samples: int = 0, density_probes: int = 0,
                      density_steps: int = 60, seed: int = 0, progress: Progress | None = None) -> dict[str, Any]:
    """JSON-ready curvature report of ``obj`` (see the module doc); ``trace_samples`` 0 / ``density_probes``
    0 skip the trace / the density. Runs ``obj.require_deterministic`` first."""
    t0, c0 = time.perf_counter(), time.process_time()
    with MemoryMeter(obj.device) as meter:
        obj.require_deterministic(seed=seed + 12345)
        start = obj.matvecs
        run = lanczos_run(obj.hvp, obj.n, max_steps, top=top, bottom=bottom, tol=tol, basis=basis, seed=seed,
                          dtype=obj.dtype, device=obj.device, world=obj.world, progress=progress, meter=meter)
        trace = None
        if trace_samples:
            est, se = hutchinson_trace(obj, samples=trace_samples, seed=seed, progress=progress)
            trace = {"estimate": est, "stderr": se, "samples": trace_samples}
        density = None
        if density_probes:
            density = slq_density(obj.hvp, obj.n, steps=density_steps, probes=density_probes, seed=seed,
                                  dtype=obj.dtype, device=obj.device, progress=progress).to_json()
        loss = float(obj.loss().detach())
    return {
        "n_parameters": obj.n, "n_examples": obj.n_rows, "loss_terms": obj.n_terms, "loss": loss,
        "dtype": str(obj.dtype).removeprefix("torch."), "device": str(obj.device), "world_size": obj.world.size,
        "micro_batch": obj.micro_batch, "hvp_method": obj.hvp_method,
        "lanczos": {"steps": run.steps, "matvecs": run.matvecs, "basis": run.basis, "tol": run.tol,
                    "converged": run.converged, "checksum": run.checksum, "ritz_values": run.ritz,
                    "vector_bytes": run.vector_bytes},
        "top": [_pair(e) for e in run.top], "bottom": [_pair(e) for e in run.bottom],
        "trace": trace, "density": density, "products": obj.matvecs - start,
        "memory": meter.report(), "wall_seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
    }


__all__ = ["curvature_summary"]
