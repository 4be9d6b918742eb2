"""Measurements of the inserted form on real networks (THEORY.md I, PREC-ALPHA, M): slowdown vs
alpha with C trainable, C frozen and after the merge; function error vs alpha per dtype.

``inserted_sweep`` runs, for each alpha, the learning-rate search of ``experiments`` on the grown
release with C trainable ("inserted"), with every inserted factor frozen ("inserted:C-frozen",
statement I's one-sided preconditioner) and on the merged model ("inserted:merge", statement M),
against the undefended run (K = 1 in ``SweepRun``; here K = alpha). ``kappa_T`` of a run is
kappa(C) (T = C^-1 (x) I with C frozen). ``error_vs_alpha`` measures the preservation deviation of
``inserted.preservation`` per dtype on a grid of alpha, and the largest safe alpha per dtype.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from convrate.models.attacks import Progress, lr_search
from convrate.models.chains import find_chains, freeze_inserted, merge_chains
from convrate.models.defense import PRESERVATION_DTYPES, PRESERVATION_TOLERANCE, _reference
from convrate.models.experiments import SearchProfile, SweepRun, _set_slowdown, best_trajectory
from convrate.models.inserted import InsertedSpecDef, grow, largest_safe_alpha, preservation
from convrate.models.io import LoadedModel, dtype_name
from convrate.models.tasks import Task

VARIANTS = ("inserted", "inserted:C-frozen", "inserted:merge")


def inserted_sweep(model: LoadedModel, task: Task, *, alphas: Sequence[float], k: int, optimizers: Sequence[str],
                   target: float, search: SearchProfile, layers: str | None = None, side: str = "output",
                   wrap: Callable[[nn.Module], nn.Module] = lambda m: m, seed: int = 0,
                   baseline: dict[str, SweepRun] | None = None, progress: Progress | None = None,
                   **attack_options: Any) -> list[SweepRun]:
    """Runs for every alpha x variant x optimizer (module doc); the undefended runs come from
    ``baseline`` (optimizer -> the K = 1 run of the same task, target and search) or are run here
    and returned first."""
    runs: list[SweepRun] = []
    base = dict(baseline or {})
    jobs = [(None, "none")] * (len(optimizers) > len(base)) + [(a, v) for a in alphas for v in VARIANTS]
    total, done = len(jobs) * len(optimizers), 0
    for alpha, variant in jobs:
        if alpha is None:
            attacked, kappa = wrap(model.module), 1.0
        else:
            res = InsertedSpecDef(k, alpha, layers=layers, side=side).apply(model)
            chains = find_chains(res.model)
            kappa = max(i.kappa_C for i in res.layers)
            module = {"inserted": res.model.module, "inserted:C-frozen": freeze_inserted(res.model.module, chains),
                      "inserted:merge": merge_chains(res.model, chains).module}[variant]
            attacked = wrap(module)
        for opt in optimizers:
            if alpha is None and opt in base:
                continue
            if progress is not None:
                progress(f"{model.kind} {variant} alpha={alpha or 1:g} {opt}", done, total)
            sr = lr_search(attacked, task, opt, target, search.budget, grid=list(search.grid), refine=search.refine,
                           refine_rounds=search.refine_rounds, seed=seed, **attack_options)
            run = SweepRun(model.kind, variant, float(alpha or 1.0), kappa, opt, sr,
                           best_trajectory(attacked, task, sr, seed, **attack_options))
            if alpha is None:
                base[opt] = run
            _set_slowdown(run, base.get(opt))
            runs.append(run)
            done += 1
    return runs


def error_vs_alpha(model: LoadedModel, alphas: Sequence[float], *, k: int, layers: str | None = None,
                   side: str = "output", dtypes: Sequence[torch.dtype] = PRESERVATION_DTYPES,
                   alpha_max: float = 1e16) -> dict[str, Any]:
    """Per dtype: the preservation deviation at each alpha (``inserted.preservation``: max relative
    output deviation on the probes against the float64 original) and the largest safe alpha
    (``inserted.largest_safe_alpha``), with the dtype's tolerance."""
    d = InsertedSpecDef(k, 2.0, layers=layers, side=side)
    plans = d.plan(model)
    probes = model.probe_inputs()
    ref64 = _reference(model, probes)
    tol = dict(PRESERVATION_TOLERANCE)
    curve: dict[str, list[dict[str, float]]] = {dtype_name(t): [] for t in dtypes}
    for a in alphas:
        g, _ = grow(model, plans, k, float(a), side, torch.float64)
        for t in dtypes:
            p = preservation(g.module, model.module, probes, ref64, t, tol)
            curve[dtype_name(t)].append({"alpha": float(a), "deviation": p.deviation, "tolerance": p.tolerance})
    safe = {dtype_name(t): largest_safe_alpha(model, plans, k, side, t, alpha_max, probes, ref64, tol) for t in dtypes}
    return {"layers": [p.name for p in plans], "k": k, "side": side, "curve": curve, "safe_alpha": safe,
            "tolerance": {dtype_name(t): tol[t] for t in dtypes},
            "finite": {n: all(math.isfinite(c["deviation"]) for c in v) for n, v in curve.items()}}


__all__ = ["VARIANTS", "error_vs_alpha", "inserted_sweep"]
