"""Measurements of the inserted form on real networks (THEORY.md I, PREC-ALPHA, M): slowdown vs
alpha with C trainable, C frozen and after the merge; function error vs alpha per dtype.

``inserted_release`` gives, for an alpha, the module the learning-rate search of ``experiments``
(``sweep_run``) attacks: the grown release with C trainable ("inserted"), with every inserted
factor frozen ("inserted:C-frozen", statement I's one-sided preconditioner) or the merged model
("inserted:merge", statement M); slowdowns are against the undefended run (K = 1 in
``SweepRun``; here K = alpha). ``kappa_T`` of a run is
kappa(C) (T = C^-1 (x) I with C frozen). ``error_vs_alpha`` measures the preservation deviation of
``inserted.preservation`` per dtype on a grid of alpha, and the largest safe alpha per dtype.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from convrate.models.chains import find_chains, freeze_inserted, merge_chains
from convrate.models.defense import PRESERVATION_DTYPES, PRESERVATION_TOLERANCE, _reference
from convrate.models.inserted import InsertedSpecDef, grow, largest_safe_alpha, preservation
from convrate.models.io import LoadedModel, dtype_name

VARIANTS = ("inserted", "inserted:C-frozen", "inserted:merge")


def inserted_release(model: LoadedModel, alpha: float, variant: str, *, k: int, layers: str | None = None,
                     side: str = "output") -> tuple[nn.Module, float]:
    """The module attacked for one variant of ``VARIANTS`` at ``alpha`` and kappa(C) (the largest over
    the inserted layers): the grown release, it with every inserted factor frozen, or it merged."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} (one of {', '.join(VARIANTS)})")
    res = InsertedSpecDef(k, alpha, layers=layers, side=side).apply(model)
    chains = find_chains(res.model)
    kappa = max(i.kappa_C for i in res.layers)
    if variant == "inserted":
        return res.model.module, kappa
    if variant == "inserted:C-frozen":
        return freeze_inserted(res.model.module, chains), kappa
    return merge_chains(res.model, chains).module, kappa


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


__all__ = ["VARIANTS", "error_vs_alpha", "inserted_release"]
