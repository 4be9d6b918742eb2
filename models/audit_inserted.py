"""The audit of a release that grew: inserted compensation layers (THEORY.md I, PREC-ALPHA, M).

``audit.audit`` hands a claimed model over to ``audit_grown`` when ``resolve_chains`` finds chains
of linear maps in it (``chains``: marked ones, or unmarked runs that make the architecture equal
the reference's once merged). Stages (the keys of ``audit.json``, schema in README):

1. **Chains** (``inserted.layers``): per chain the merged layer's path, the factors, which are
   inserted, the side, kappa(C), the deformation alpha = ||W'||_2 / ||W||_2 (W = the chain's
   product), the deformed directions k (singular values of C below sigma_max(C) / sqrt(kappa(C))),
   the amplification rho = prod ||F_j||_2 / ||W||_2 (PREC-ALPHA), the parameters it adds, and with a
   reference the relative residual ||W - W_ref||_F / ||W_ref||_F against its tolerance
   max(sqrt(u), ``bounds_inserted.storage_allowance``) -- storing an exactly built chain in a dtype
   of unit roundoff u moves its product by at most (2 u + u^2) ||C||_F ||W'||_F;
2. **function**: the float64 deviation from the reference (as ``audit``) and the deviation of the
   release evaluated in its own dtype (``inserted.preservation``, tolerance of ``defense``);
3. **alpha limit**: per chain whose C deforms 1 <= k < s directions, the largest safe alpha in the
   release dtype (``inserted.largest_safe_alpha``: the construction rebuilt on the merged layer with
   that k and side, bisection in log alpha, function preservation on the probes), and the certified
   one of ``bounds_inserted.certified_safe_alpha`` (rigorous, per layer, normwise); a chain whose
   rho exceeds its measured limit is reported, and a release not function-preserving in its dtype is
   class ``outside-class`` with that limit in the evidence;
4. **class**: ``fplr`` when the function is preserved, every chain matches its reference layer and
   the merged model is an FPLR of the reference (``fplr.infer_reparameterization`` with the chains'
   tolerance; T = I when the merged model equals the reference); ``unreferenced`` without one;
5. **attacks** (SGD, Adam, the profile's lr search) on the baseline (the reference; without one the
   merged model), the claimed model as released (C trainable), the claimed model with every inserted
   factor frozen (``claimed-C-frozen``: statement I's preconditioner C C^T), the merged model
   (recovery ``merge``, statement M: -N parameters), R2 (canonicalized merged model) and, when the
   merged model is an FPLR of the reference with T != I, R1. Extra parameters are counted against the
   release (the merge removes the inserted ones).
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from convrate.errors import InvalidInputError
from convrate.models.attacks import Slowdown
from convrate.models.audit_verdict import classify, decide, ratio_json
from convrate.models.chains import (Chain, factor_tensors, find_chains, freeze_inserted, inserted_parameters,
                                    merge_chains, merged_path)
from convrate.models.defense import PRESERVATION_TOLERANCE, _reference
from convrate.models.fplr import (ArchitectureMismatchError, check_same_architecture, default_rtol,
                                  float64_parameters, infer_reparameterization, parameter_distance, unit_roundoff)
from convrate.models.inserted import LayerPlan, largest_safe_alpha, preservation
from convrate.models.io import LoadedModel, dtype_name
from convrate.theory import bounds_inserted as bi

Progress = Callable[[str, int, int], None]
#: dtype names of ``bounds_precision`` by torch dtype
_FMT = {torch.float64: "fp64", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def resolve_chains(claimed: LoadedModel, reference: LoadedModel | None) -> list[Chain]:
    """The chains to merge (module doc): marked ones; with a reference also unmarked runs, if
    merging them makes the claimed architecture equal the reference's. [] when the claimed model
    has no chain to merge (then the architectures must already be equal)."""
    marked = find_chains(claimed)
    if reference is None:
        return marked
    if find_chains(reference):
        raise InvalidInputError("the reference has inserted layers; give the original model as the reference")
    try:
        check_same_architecture(reference, claimed)
        if not marked:
            return []
    except ArchitectureMismatchError:
        pass
    cands = find_chains(claimed, unmarked=True)
    err: ArchitectureMismatchError | None = None
    for cs in ([cands, marked] if len(cands) > len(marked) else [marked]):
        if not cs:
            continue
        try:
            check_same_architecture(reference, merge_chains(claimed, cs))
            return cs
        except ArchitectureMismatchError as e:
            err = e
    if err is not None:
        raise ArchitectureMismatchError(f"with its chains of linear layers merged, the release still differs from "
                                        f"the reference ({err})")
    return []


# ---------------------------------------------------------------- per-chain facts
def _svals(M: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(M.detach().to(torch.float64))


def _deformed(sv: torch.Tensor) -> int:
    """Directions C deforms: singular values below sigma_max / sqrt(kappa) (0 if kappa(C) ~ 1)."""
    kap = float(sv[0] / sv[-1])
    if kap <= 1 + 1e-6:
        return 0
    return int((sv < sv[0] / math.sqrt(kap)).sum())


def chain_report(module: nn.Module, chains: Sequence[Chain], chain: Chain, dtype: torch.dtype,
                 reference: nn.Module | None) -> dict[str, Any]:
    """The facts of one chain (module doc, stage 1)."""
    from convrate.models.chains import chain_affine

    W, b = chain_affine(module, chain)
    m, n = W.shape
    facs = factor_tensors(module, chain)
    sw = _svals(W)
    norms2 = [float(_svals(F)[0]) for F, _ in facs]
    normsF = [float(F.detach().to(torch.float64).norm()) for F, _ in facs]
    main = facs[chain.main][0]
    ins = [facs[i][0] for i in chain.inserted]
    kap = [float(s[0] / s[-1]) for s in (_svals(C) for C in ins)]
    rep: dict[str, Any] = {
        "layer": merged_path(chains, chain), "factors": list(chain.factors),
        "inserted": [chain.factors[i] for i in chain.inserted], "side": chain.side, "marked": chain.marked,
        "shape": [m, n], "inserted_parameters": sum(C.numel() for C in ins) + sum(
            facs[i][1].numel() for i in chain.inserted if facs[i][1] is not None),
        "kappa_C": max(kap), "alpha": float(_svals(main)[0] / sw[0]) if float(sw[0]) > 0 else math.inf,
        "amplification": math.prod(norms2) / float(sw[0]) if float(sw[0]) > 0 else math.inf,
        "amplification_F": math.prod(normsF) / float(W.norm()) if float(W.norm()) > 0 else math.inf,
        "meta": dict(chain.meta), "sigma_1": float(sw[0]),
    }
    rep["k"] = _deformed(_svals(ins[0])) if len(ins) == 1 else None
    if len(facs) == 2 and len(ins) == 1:
        s = ins[0].shape[0]
        rep["merge_error_bound_fp64"] = float(bi.merge_error_bound("fp64", s, m, n, normsF[chain.inserted[0]],
                                                                   normsF[chain.main]))
    fmt = _FMT[dtype]
    rep["tolerance"] = max(math.sqrt(unit_roundoff(dtype)), bi.storage_allowance(fmt, rep["amplification_F"]))
    if reference is not None:
        ref = reference.get_submodule(rep["layer"])
        Wr = ref.weight.detach().to(torch.float64)
        res = float((W - Wr).norm() / Wr.norm()) if float(Wr.norm()) > 0 else float((W - Wr).norm())
        if ref.bias is not None:
            br = ref.bias.detach().to(torch.float64)
            bb = b if b is not None else torch.zeros_like(br)
            res = max(res, float((bb - br).norm() / br.norm()) if float(br.norm()) > 0 else float((bb - br).norm()))
        rep["product_residual"] = res
        rep["matches_reference"] = res <= rep["tolerance"]
    k, side = rep["k"], chain.side
    if k is not None and side in bi.SIDES and 1 <= k < bi.side_width(side, m, n):
        sig = [float(x) for x in sw]
        rep["certified_safe_alpha"] = {
            f: bi.certified_safe_alpha(f, side, n, m, k, sig, PRESERVATION_TOLERANCE[t], per_decade=4)
            for t, f in _FMT.items()}
    return rep


def _alpha_limit(merged: LoadedModel, rep: Mapping[str, Any], dtype: torch.dtype, probes: Any,
                 ref64: torch.Tensor) -> float | None:
    """Largest safe alpha in ``dtype`` for this chain's layer (others merged), or None when C does
    not deform 1 <= k < s directions (then rho ~ 1 and PREC-ALPHA gives no alpha limit)."""
    k, side = rep["k"], rep["side"]
    m, n = rep["shape"]
    if k is None or side not in bi.SIDES or not 1 <= k < bi.side_width(side, m, n):
        return None
    lin = merged.module.get_submodule(rep["layer"])
    W = lin.weight.detach().to(torch.float64).cpu()
    U, S, Vh = torch.linalg.svd(W, full_matrices=True)
    b = lin.bias.detach().to(torch.float64).cpu() if lin.bias is not None else None
    plan = LayerPlan(rep["layer"], W, b, U, S, Vh.T)
    return largest_safe_alpha(merged, [plan], k, side, dtype, 1e16, probes, ref64)


# ---------------------------------------------------------------- the audit
def audit_grown(claimed: LoadedModel, reference: LoadedModel | None, chains: Sequence[Chain], *, task: str,
                profile: Any, seed: int, device: str, progress: Progress | None) -> dict[str, Any]:
    """Audit a grown release (module doc); the JSON-ready dict of ``audit.json``."""
    import importlib

    A = importlib.import_module("convrate.models.audit")  # (the package exports a function of that name)
    from convrate.models.families import discover_symmetries
    from convrate.models.recovery import canonicalize, distance_to_canonical, r1_extra_parameters, r1_module
    from convrate.models.tasks import task_for, task_name_for

    t0 = time.perf_counter()
    prof = A.get_profile(profile)
    chains = list(chains)
    merged = merge_chains(claimed, chains)
    task_name = task_name_for(claimed, task)
    the_task = task_for(claimed, task_name, seed, max_length=prof.text_max_length, per_class=prof.text_per_class)
    has_ref = reference is not None
    base = reference if has_ref else merged
    stages = ["chains", "function", "alpha limit", "canonicalize", "curvature"] + [f"attack {o}" for o in prof.optimizers_for(prof.format_of(claimed))]
    done = 0

    def tick(label: str) -> None:
        nonlocal done
        if progress is not None:
            progress(label, done, len(stages))
        done += 1

    n_ins = inserted_parameters(claimed.module, chains)
    result: dict[str, Any] = {
        "schema": A.SCHEMA, "model": claimed.source, "reference": reference.source if has_ref else None,
        "architecture": {"kind": claimed.kind, "format": claimed.fmt, "dtype": dtype_name(claimed.dtype),
                         "n_layers": claimed.info.get("n_layers"), "grown": True},
        "task": {"name": the_task.name, "kind": task_name, "description": the_task.description,
                 "n_train": the_task.n_train, "loss": the_task.loss},
        "profile": prof.to_json(), "seed": seed,
        "thresholds": {"slowdown": A.SLOWDOWN_THRESHOLD, "recovery": A.RECOVERY_THRESHOLD,
                       "target_progress": A.TARGET_PROGRESS},
        "model_parameters": sum(p.numel() for p in claimed.module.parameters()),
    }

    # 1: chains
    tick("chains")
    reports = [chain_report(claimed.module, chains, c, claimed.dtype, reference.module if has_ref else None)
               for c in chains]

    # 2: function, in float64 and in the release dtype
    tick("function")
    probes = base.probe_inputs(n=prof.probes, seed=seed)
    ref64 = _reference(base, probes)
    tol = dict(PRESERVATION_TOLERANCE)
    pres = preservation(claimed.module, base.module, probes, ref64, claimed.dtype, tol)
    fit = None
    if has_ref:
        dev = A.function_deviation(reference, claimed, prof.probes, seed)
        ftol = PRESERVATION_TOLERANCE[A.coarser_dtype(reference.dtype, claimed.dtype)]
        rtol = max([default_rtol(reference.dtype, claimed.dtype)] + [r["tolerance"] for r in reports])
        fit = infer_reparameterization(reference, merged, rtol=rtol)
        wd = max(parameter_distance(float64_parameters(merged), float64_parameters(reference)).values())
        matched = all(r["matches_reference"] for r in reports)
        cls = classify(has_reference=True, function_deviation=dev, function_tolerance=ftol, weight_distance=math.inf,
                       fplr_found=fit.found and matched, rtol=fit.rtol)
        result.update(function_deviation=dev, function_tolerance=ftol, weight_distance=wd, fplr=fit.to_json())
    else:
        cls = "unreferenced"
        result.update(function_deviation=None, function_tolerance=None, weight_distance=None, fplr=None)
    if cls != "outside-class" and not pres.ok:
        cls = "outside-class"

    # 3: the alpha limit in the release dtype
    tick("alpha limit")
    for r in reports:
        r["safe_alpha"] = _alpha_limit(merged, r, claimed.dtype, probes, ref64)
        r["exceeds_safe_alpha"] = r["safe_alpha"] is not None and r["amplification"] > r["safe_alpha"]
    limits = [r["safe_alpha"] for r in reports if r["safe_alpha"] is not None]
    kappa_C = max(r["kappa_C"] for r in reports)
    record = fit.record if (fit is not None and cls == "fplr") else None
    identity_T = record is None or result["weight_distance"] <= fit.rtol  # the merged model is the reference
    result["kappa_T"] = max(kappa_C, fit.kappa_T or 1.0) if record is not None else None
    result["class"] = cls
    result["inserted"] = {
        "layers": reports, "chains": len(chains), "inserted_parameters": n_ins, "release_dtype": dtype_name(claimed.dtype),
        "preservation": {"dtype": pres.dtype, "deviation": pres.deviation, "baseline": pres.baseline,
                         "tolerance": pres.tolerance, "ok": pres.ok},
        "amplification": max(r["amplification"] for r in reports), "kappa_C": kappa_C,
        "safe_alpha": min(limits) if limits else None,
        "exceeds_safe_alpha": any(r["exceeds_safe_alpha"] for r in reports),
        "merged_equals_reference": bool(has_ref and identity_T and record is not None),
    }

    # R2 on the merged model, R1 with the merged model's T (when T != I)
    tick("canonicalize")
    syms = discover_symmetries(merged)
    canon = canonicalize(merged, syms)[0] if syms else None
    canonical: dict[str, Any] = {"merged": distance_to_canonical(merged, syms)} if syms else {}
    nets: dict[str, nn.Module] = {}
    if has_ref:
        nets["reference"] = A.attack_module(reference, reference.module, the_task, seed)
    nets["claimed"] = A.attack_module(claimed, claimed.module, the_task, seed)
    nets["claimed-C-frozen"] = A.attack_module(claimed, freeze_inserted(claimed.module, chains), the_task, seed)
    nets["merge"] = A.attack_module(merged, merged.module, the_task, seed)
    extra = {"merge": -n_ins}
    if canon is not None and has_ref:
        nets["R2"] = A.attack_module(merged, canon.module, the_task, seed)
        extra["R2"] = -n_ins
    if record is not None and not identity_T:
        nets["R1"] = A.attack_module(merged, r1_module(merged.module, record), the_task, seed)
        cost = r1_extra_parameters(record)
        extra["R1"] = cost["extra_parameters"] - n_ins
        result["r1_cost"] = cost
    result["canonical"] = canonical
    baseline = "reference" if has_ref else "merge"

    # curvature of the baseline and the claimed model (Hugging Face models micro-batched as the profile says)
    tick("curvature")
    micro = prof.micro_batch if claimed.fmt == "hf" else None
    reduce = {"reduction": A.BatchReduction(micro_batch=micro)} if micro else {}
    curv = {}
    for k in (baseline, "claimed"):
        names = [n for n, p in nets[k].named_parameters() if p.requires_grad]
        if claimed.fmt != "zoo":
            names = _chain_parameter_names(nets[k], chains, reports, k == "claimed")
        curv[k] = A.curvature(nets[k], the_task, names, prof, seed, device, micro)
    result["curvature"] = curv

    # attacks
    fmt = prof.format_of(claimed)
    attacks, searches = A.run_attacks(nets, baseline, the_task, prof, fmt, prof.optimizers_for(fmt), seed, device,
                                      reduce, None if progress is None else
                                      (lambda label: progress(label, done - 1, len(stages))), tick)
    slowdown = {o: Slowdown.between(s[baseline], s["claimed"]) for o, s in searches.items()}
    frozen = {o: Slowdown.between(s[baseline], s["claimed-C-frozen"]) for o, s in searches.items()}
    recovered = {r: {o: Slowdown.between(s[baseline], s[r]) for o, s in searches.items()} for r in extra} if has_ref else {}
    result["attacks"] = attacks
    result["work"] = A._work(attacks, curv)
    result["slowdown"] = {o: ratio_json(r) for o, r in slowdown.items()}
    result["slowdown_C_frozen"] = {o: ratio_json(r) for o, r in frozen.items()}
    result["recovered_slowdown"] = {r: {o: ratio_json(x) for o, x in d.items()} for r, d in recovered.items()}
    result["extra_parameters"] = extra
    n = result["model_parameters"]
    result["extra_parameters_fraction"] = {r: (k / n if n else 0.0) for r, k in extra.items()}
    result["symmetry_groups"] = len(syms)

    verdict, evidence = _verdict(cls, slowdown, frozen, recovered, extra, n, result, has_ref)
    result["verdict"] = verdict
    result["evidence"] = evidence
    result["wall_seconds"] = time.perf_counter() - t0
    if progress is not None:
        progress("done", len(stages), len(stages))
    return A._jsonable(result)


def _chain_parameter_names(net: nn.Module, chains: Sequence[Chain], reports: Sequence[Mapping[str, Any]],
                           grown: bool) -> list[str]:
    """Curvature parameters of a wrapped HF model: the chains' factors (grown) or their merged layers."""
    prefixes = [f for c in chains for f in c.factors] if grown else [r["layer"] for r in reports]
    names = dict(net.named_parameters())
    out = [f"encoder.{p}.{w}" for p in prefixes for w in ("weight", "bias") if f"encoder.{p}.{w}" in names]
    return [n for n in out if names[n].requires_grad]


def _verdict(cls: str, slowdown: Mapping[str, Slowdown], frozen: Mapping[str, Slowdown],
             recovered: Mapping[str, Mapping[str, Slowdown]], extra: Mapping[str, int], n: int,
             result: Mapping[str, Any], has_ref: bool) -> tuple[str, list[str]]:
    from convrate.models.audit_verdict import ratio_text, slowed

    ins = result["inserted"]
    lines = [f"{ins['chains']} inserted chain(s): " + "; ".join(
        f"{r['layer']} ({r['side']} side, factors {', '.join(r['factors'])}; kappa(C) = {r['kappa_C']:.4g}, "
        f"amplification {r['amplification']:.4g})" for r in ins["layers"]) + "."]
    p = ins["preservation"]
    if not p["ok"]:
        lim = ins["safe_alpha"]
        lines.append(f"not function-preserving in {p['dtype']}: deviation {p['deviation']:.3g} > tolerance "
                     f"{p['tolerance']:.3g}; amplification (alpha) {ins['amplification']:.4g} "
                     + (f"exceeds the largest safe alpha {lim:.4g} for {p['dtype']}." if lim is not None else
                        "(no alpha limit was found for this construction)."))
    elif ins["safe_alpha"] is not None:
        lines.append(f"function-preserving in {p['dtype']} (deviation {p['deviation']:.3g} <= {p['tolerance']:.3g}); "
                     f"largest safe alpha for {p['dtype']} about {ins['safe_alpha']:.4g} against the amplification "
                     f"{ins['amplification']:.4g} used.")
    lines.append("with the inserted layers frozen: " + ", ".join(f"{ratio_text(s)} for {o}" for o, s in frozen.items())
                 + " (statement I: a one-sided preconditioner C C^T).")
    if has_ref:
        verdict, ev = decide(cls, slowdown, recovered, extra, n)
        return verdict, [*lines, *ev]
    hit = [o for o, s in slowdown.items() if slowed(s)]
    ev = [f"slowdown relative to the merged model at each optimizer's best learning rate: "
          + ", ".join(f"{ratio_text(s)} for {o}" for o, s in slowdown.items()) + "."]
    if not hit:
        return "no-defense", [*lines, *ev]
    return "fplr-defeated", [*lines, *ev, f"merging the inserted layers (statement M, {extra['merge']} parameters) "
                                          "removes it: the merged model is the baseline."]


__all__ = ["audit_grown", "chain_report", "resolve_chains"]
