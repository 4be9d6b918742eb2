"""Recoveries on real networks (R1, R2) and their cost.

R1 (attacker knows T): train phi with theta' = T phi (``models.recovery.r1_module``); the
gradient in phi is T^T grad L'(T phi) = grad L(phi), so every step equals the undefended run
at the same learning rate: the steps ratio is 1 (exactly, up to the rounding of T phi). Extra
parameters: the frozen A, A^-1 (``r1_extra_parameters``), linear in model size.
R2 (attacker knows nothing): canonicalize the defended weights (``models.recovery.canonicalize``);
the balanced point is a function of the orbit, so the canonical weights, and every attack from
them, are the same for every K. Both are run at the learning rates the slowdown section found.
"""
from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING, Any

import copy

import torch

from convrate.reports.builder import Planned
from convrate.reports.document import Section

if TYPE_CHECKING:
    from convrate.reports.builder import Context
    from convrate.reports.sections_slowdown import SweepRecord

R1_PRECISION = ("float64; first-order estimate: each step's loss and gradient carry a relative rounding of "
                "about 2 gamma_m kappa_S1^2 (kappa_S1 = max kappa(A) over dense groups: S1, decoders' S4 and S5; 1 for "
                "diagonal S2, S6, S7 and permutations), "
                "adding up linearly over stable steps: |L_R1(t) - L(t)| <= (t + 1) per_step max(1, max|L|)")


def _r1_per_step(attacked: Any, task: Any, record: Any) -> float:
    """2 gamma_m kappa_S1^2, m the reduction length of the attacked model's loss (R1_PRECISION)."""
    from convrate.models import elements
    from convrate.models.checks import gamma, reduction_length
    from convrate.models.curvature import Objective

    obj = Objective(attacked, task.X_train, task.y_train, loss=task.loss, device="cpu")
    k = max((sym.kappa(e) for sym, e in record.items if not elements.is_monomial(sym.element_kind)), default=1.0)
    return 2 * gamma(reduction_length(obj)) * k**2


#: how each R2 allowance is obtained (``models.recovery.canonical_agreement``)
R2_PRECISION = {"S2": "float64; a-posteriori error of the balance sweeps + gamma_6 rounding",
                "S1": "float64; first-order (Wedin) perturbation estimate of the SVD-balanced factors",
                # decoder groups share tensors, so every group is compared by its factors
                "S4": "float64; factors: a-posteriori sweep error + first-order (Wedin) estimate of the balanced "
                      "RoPE-commutant factors",
                "S5": "float64; factors: a-posteriori sweep error + first-order (Wedin) estimate of the balanced "
                      "V/O factors",
                "S6": "float64; factors: a-posteriori error of the balance sweeps + gamma_6 rounding",
                "S7": "float64; factors: a-posteriori error of the balance sweeps + gamma_6 rounding"}


def _float64_params(module: Any) -> dict[str, torch.Tensor]:
    return {n: q.detach().to(torch.float64) for n, q in module.named_parameters()}


def _identity(m: Any) -> Any:
    return m


def _attack(module: Any, task: Any, optimizer: str, lr: float, budget: int, target: float, seed: int) -> Any:
    """One ``Attack`` run (a ``Trajectory``; ``.steps_to()`` counts to the target)."""
    from convrate.models.attacks import Attack

    return Attack(optimizer, lr, budget, target, seed=seed, device="cpu").run(module, task)


def _curve_gap(a: Any, b: Any) -> float:
    """max_t |L_a(t) - L_b(t)| / |L_b(t)| over the steps both trajectories recorded."""
    return max((abs(x - y) / max(abs(y), 1e-300) for x, y in zip(a.losses, b.losses)), default=0.0)


def _known_run(rec: "SweepRecord", optimizer: str, lr: float, losses: Any) -> Any:
    """A run already made (a search's best trial: the same deterministic run ``_attack`` would
    repeat at that lr, budget and target), as a ``Trajectory``."""
    from convrate.models.attacks import Trajectory

    return Trajectory(optimizer, lr, rec.cfg.search.budget, rec.cfg.target, losses=list(losses))


def recovery_job(rec: "SweepRecord", seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """R1 and R2 on one network's sweep (one job of the report builder): rows and check dicts."""
    from convrate.models.runtime import single_thread

    with single_thread():
        rows, checks = _network(seed, rec)
    return rows, [c.to_dict() for c in checks]


def cost_job() -> list[dict[str, Any]]:
    from convrate.models.runtime import single_thread

    with single_thread():
        return _cost_rows()


def _network(seed: int, rec: "SweepRecord") -> tuple[list[dict[str, Any]], list[Any]]:
    from convrate.models.attacks import lr_search
    from convrate.models.defense import release_cast
    from convrate.models.experiments import sweep_defense
    from convrate.models.tasks import is_decoder
    from convrate.models.recovery import canonical_agreement, canonicalize, r1_extra_parameters, r1_module
    from convrate.theory.core import compare

    wrap = rec.wrap or _identity
    # every recovery run is in float64 (a float32 release, MiniLM, is converted): float32 SGD near the
    # edge of stability amplifies its rounding beyond any per-step allowance within tens of steps
    # (a decoder runs float64 throughout: ``defense.release_cast`` lifts transformers' float32 RMSNorm and softmax)
    model = rec.model if rec.model.dtype == torch.float64 and not is_decoder(rec.model) else \
        rec.model.with_module(release_cast(copy.deepcopy(rec.model.module), torch.float64),
                              converted_from=str(rec.model.dtype))
    base = {r.optimizer: r for r in rec.runs if r.defense == "none"}
    canon0, crec0 = canonicalize(model)
    ref_params = _float64_params(model.module)
    attacked0 = wrap(canon0.module)
    r2_search = {opt: lr_search(attacked0, rec.task, opt, rec.cfg.target, rec.cfg.search.budget,
                                grid=list(rec.cfg.search.grid), refine=0, seed=seed, device="cpu") for opt in base}
    r2_lr = {opt: r.best_lr for opt, r in r2_search.items()}
    # the best trial's curve is the run at the best lr (``attacks.search``): not repeated
    r2_base = {opt: _known_run(rec, opt, r.best_lr, r.best_losses) for opt, r in r2_search.items()}
    # a float64 release is attacked exactly as the sweep did: its recorded best run is reused
    converted = model is not rec.model
    und_runs = {opt: (_attack(wrap(model.module), rec.task, opt, b.search.best_lr, rec.cfg.search.budget,
                              rec.cfg.target, seed) if converted else _known_run(rec, opt, b.search.best_lr, b.losses))
                for opt, b in base.items()}
    ranges = _sensitivity_ranges(seed, rec, wrap(model.module), attacked0, base, r2_lr, und_runs, r2_base, converted)
    rows, checks = [], []
    released: dict[tuple[str, float], Any] = {}
    defended_runs = [r for r in rec.runs if r.defense != "none"]
    for i, run in enumerate(defended_runs):
        if (run.defense, run.K) not in released:
            dres = sweep_defense(run.defense, run.K, seed).apply(model)
            released[run.defense, run.K] = (dres, *canonicalize(dres.model))
        dres, canon, crec = released[run.defense, run.K]
        b = base[run.optimizer]
        budget, target = rec.cfg.search.budget, rec.cfg.target
        inst = f"{rec.label}, {run.defense} K={run.K:g}, {run.optimizer} lr={b.search.best_lr:.3g}"
        # R1 at the undefended best learning rate
        r1_run = _attack(wrap(r1_module(dres.model.module, dres.record)), rec.task, run.optimizer,
                            b.search.best_lr, budget, target, seed)
        und = und_runs[run.optimizer]
        n_r1, n_und = r1_run.steps_to(), und.steps_to()
        gap1 = _curve_gap(r1_run, und)
        # R2: canonicalize the defended release, attack at the canonical undefended model's lr
        r2_run = _attack(wrap(canon.module), rec.task, run.optimizer, r2_lr[run.optimizer], budget, target, seed)
        n_r2, n_r20 = r2_run.steps_to(), r2_base[run.optimizer].steps_to()
        gap2 = _curve_gap(r2_run, r2_base[run.optimizer])
        cost = r1_extra_parameters(dres.record)
        rows.append({"network": rec.label, "defense": run.defense, "K": run.K, "optimizer": run.optimizer,
                     "lr": b.search.best_lr, "undefended_steps": n_und, "defended_best_steps": run.search.best_steps,
                     "slowdown": run.slowdown, "slowdown_is_lower_bound": run.slowdown_is_lower_bound,
                     "r1_steps": n_r1, "r1_ratio": None if not (n_r1 and n_und) else n_r1 / n_und,
                     "r1_curve_gap": gap1, "r1_extra_parameters": cost["extra_parameters"],
                     "r2_lr": r2_lr[run.optimizer], "r2_steps": n_r2, "r2_canonical_undefended_steps": n_r20,
                     "r2_curve_gap": gap2, "r2_vs_undefended": None if not (n_r2 and b.search.best_steps)
                     else n_r2 / b.search.best_steps, "r2_sweeps": crec.meta["sweeps"], "budget": budget,
                     **_range_fields(ranges.get(run.optimizer), run, n_r1, n_r2)})
        per_step = _r1_per_step(wrap(model.module), rec.task, dres.record)
        drift = max(abs(x - y) / ((t + 1) * max(1.0, max(abs(v) for v in und.losses)))
                    for t, (x, y) in enumerate(zip(r1_run.losses, und.losses)))
        checks.append(compare("R1", f"{inst}: loss curve of theta' = T phi vs the undefended run, per step",
                              drift, "<=", per_step, precision=R1_PRECISION,
                              detail=f"steps {n_r1} vs {n_und}; {cost['extra_parameters']} extra parameters"))
        if run.optimizer == next(iter(base)):  # the weights do not depend on the optimizer: once per K
            syms = [sym for sym, _ in crec.items]
            for g in canonical_agreement(syms, canon.module, canon0.module, crec.meta, crec0.meta, ref_params,
                                         [_float64_params(dres.model.module), ref_params]):
                checks.append(compare("R2", f"{rec.label}, {run.defense} K={run.K:g}, group {g['group']}: canonical "
                                      "weights of the defended release vs of the undefended model", g["measured"],
                                      "<=", g["allowance"], precision=R2_PRECISION[g["family"]]))
    return rows, checks


def _cost_rows() -> list[dict[str, Any]]:
    from convrate.models import zoo
    from convrate.models.defense import SpecDef
    from convrate.models.recovery import r1_extra_parameters

    out = []
    for label, model in (("digits MLP", zoo.digits_mlp()), ("digits CNN", zoo.digits_cnn()),
                         ("MiniLM (6 layers, all heads)", zoo.minilm())):
        rec = SpecDef(10).reparameterization(model)
        cost = r1_extra_parameters(rec)
        total = sum(q.numel() for q in model.module.parameters())
        out.append({"network": label, "groups": cost["groups"], "model_parameters": total,
                    "defended_parameters": cost["pair_parameters"], "extra_parameters": cost["extra_parameters"],
                    "bound": float(cost["bound"]), "bound_exact": str(cost["bound"]), "within_bound": cost["within_bound"],
                    "percent_of_model": 100.0 * cost["extra_parameters"] / total})
    return out


# ---------------------------------------------------------------- sensitivity of the counts
def _sensitivity_ranges(seed: int, rec: "SweepRecord", undefended: Any, canonical: Any, base: dict[str, Any],
                        r2_lr: dict[str, float], und_runs: dict[str, Any], r2_base: dict[str, Any],
                        converted: bool) -> dict[str, Any]:
    """Per optimizer, the sensitivity range (``models.sensitivity``) of the undefended count at its
    best lr and of the canonical (R2, K = 1) count at R2's lr. R1 replays the undefended run up to
    rounding, and R2's canonical weights agree with the K = 1 ones to rounding, so their counts are
    judged against these two ranges (the perturbations they model are of that size). A release
    attacked as the sweep did (not ``converted`` to float64) reuses the sweep's own range of that
    run (the same attack, lr, budget and seed)."""
    from convrate.models.sensitivity import step_sensitivity

    runs = rec.cfg.search.sensitivity
    if not runs:
        return {}
    budget, target = rec.cfg.search.budget, rec.cfg.target
    out = {}
    for opt, b in base.items():
        known = b.sensitivity
        if not converted and known is not None and known.budget == budget and len(known.perturbed) == runs:
            und = known
        else:
            und = step_sensitivity(undefended, rec.task, opt, b.search.best_lr, target, budget, runs=runs, seed=seed,
                                   nominal=und_runs[opt].steps_to(), device="cpu")
        can = step_sensitivity(canonical, rec.task, opt, r2_lr[opt], target, budget, runs=runs, seed=seed,
                               nominal=r2_base[opt].steps_to(), device="cpu")
        out[opt] = (und, can)
    return out


def _range_fields(pair: Any, run: Any, n_r1: Any, n_r2: Any) -> dict[str, Any]:
    """Row fields: each count's range (``<count>_range``) and whether R1 / R2 fall in them."""
    if pair is None:
        return {}
    from convrate.models.sensitivity import within

    und, can = pair
    out = {"undefended_steps_range": und.range, "r1_steps_range": und.range, "r2_steps_range": can.range,
           "r2_canonical_undefended_steps_range": can.range, "r1_within_range": within(n_r1, und.range),
           "r2_within_range": within(n_r2, can.range), "undefended_sensitivity": und.to_dict(),
           "r2_canonical_sensitivity": can.to_dict()}
    if run.sensitivity is not None:
        out["defended_best_steps_range"] = run.sensitivity.range
    return out


def _range_text(r: dict[str, Any], key: str) -> str:
    rng = r.get(f"{key}_range")
    if rng is None:
        return ""
    lo, hi = (_steps(v, r["budget"]) for v in rng)
    return f" [{lo}, {hi}]" if lo != hi else ""


def _steps(n: int | None, budget: int) -> str:
    return str(n) if n is not None else f">{budget}"


def _yes_no(x: bool | None) -> str:
    return "-" if x is None else ("yes" if x else "NO")


def _parts(ctx: "Context") -> list[tuple[Any, tuple]]:
    """One job per swept network (R1 and R2 share its canonical undefended runs), the last network
    first (MiniLM's job is the longest of the report: started first, it does not finish alone at
    the end of a parallel build), and the cost table."""
    sweeps = ctx.shared.get("sweeps", {})
    return [(recovery_job, (rec, ctx.seed)) for rec in reversed(list(sweeps.values()))] + [(cost_job, ())]


def _assemble(ctx: "Context", results: list[Any]) -> Section:
    from convrate.theory.core import compare

    rows: list[dict[str, Any]] = []
    checks: list[Any] = []
    for r, c in reversed(results[:-1]):  # the networks' display order (``_parts`` lists them reversed)
        rows += r
        checks += c
    cost = results[-1]
    checks += [compare("R1", f"{c['network']}: R1 extra parameters vs the linear bound", c["extra_parameters"], "<=",
                       Fraction(c["bound_exact"]), precision="exact integer / rational", detail=f"{c['groups']} groups")
               for c in cost]
    recorded = ctx.record(checks)
    s = Section("Recoveries on real networks (R1, R2) and their cost")
    s.para("R1 trains phi with theta' = T phi (frozen A, A^-1 inserted around each group) at the undefended "
           "run's best learning rate; R2 canonicalizes the defended release (per-unit balance for S2, "
           "SVD-balanced factors for S1) and attacks it at the learning rate searched on the canonical "
           "undefended model. 'curve gap' is the largest relative difference of the loss curves step by step "
           "(R1: vs the undefended run; R2: vs the run from canonical(undefended)). Checked in float64: R1's "
           "curve against a per-step rounding allowance (errors adding up over stable steps), and R2 at the "
           "level of the weights (canonical(defended) = canonical(undefended) group by group, within the "
           "a-posteriori balance error for S2 and a Wedin estimate for S1). R2's loss curves need not agree "
           "to rounding: the canonical weights agree to ~1e-16, but SGD at the largest stable learning rate "
           "amplifies such differences over hundreds of steps (the curve gap column shows it). All recovery "
           "runs are in float64; MiniLM's float32 release is converted first (in float32, SGD near the edge of "
           "stability amplifies rounding beyond any per-step allowance within tens of steps). Step counts carry "
           "their sensitivity range in brackets when it is not a single count (`models.sensitivity`: the counts of "
           "the same attack from a few starts theta_0 (1 + delta), |delta| <= 4 u, at the same learning rate); R1's "
           "count is judged against the undefended run's range and R2's against the canonical K = 1 run's range "
           "(the 'within range' columns): equal counts are claimed only up to that range.")
    s.table(["network", "defense", "K", "optimizer", "slowdown", "R1 steps / undefended", "R1 within range",
             "R1 curve gap", "R2 steps", "R2 canonical K=1", "R2 within range", "R2 curve gap", "R2 / undefended best"],
            [[r["network"], r["defense"], f"{r['K']:g}", r["optimizer"],
              "-" if r["slowdown"] is None else (">= " if r["slowdown_is_lower_bound"] else "") + f"{r['slowdown']:.3g}",
              f"{_steps(r['r1_steps'], r['budget'])} / {_steps(r['undefended_steps'], r['budget'])}"
              + _range_text(r, "undefended_steps"), _yes_no(r.get("r1_within_range")),
              f"{r['r1_curve_gap']:.2g}", _steps(r["r2_steps"], r["budget"]),
              _steps(r["r2_canonical_undefended_steps"], r["budget"]) + _range_text(r, "r2_canonical_undefended_steps"),
              _yes_no(r.get("r2_within_range")), f"{r['r2_curve_gap']:.2g}",
              "-" if r["r2_vs_undefended"] is None else f"{r['r2_vs_undefended']:.3g}"] for r in rows])
    s.para("Recovery cost (R1): the frozen layers A and A^-1 per group (2 r^2 for S1, 2 r for S2), against the "
           "bound 2 (r / min(n_in, n_out)) x (parameters of the pair) summed over groups, and as a share of the "
           "whole model. R2 costs no parameters.")
    s.table(["network", "groups", "model parameters", "parameters in defended pairs", "R1 extra parameters",
             "bound", "within bound", "% of model"],
            [[c["network"], c["groups"], c["model_parameters"], c["defended_parameters"], c["extra_parameters"],
              f"{c['bound']:.6g}", "yes" if c["within_bound"] else "NO", f"{c['percent_of_model']:.3g}"] for c in cost])
    s.data = {"runs": rows, "checks": recorded, "cost": cost}
    return s


recovery_section = Planned(_parts, _assemble)
SECTIONS: list[tuple[Any, ...]] = [("recovery", recovery_section, ("slowdown",))]
