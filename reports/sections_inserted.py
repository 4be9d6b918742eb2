"""SpecDef as the paper builds it: an inserted compensation layer (THEORY.md I, PREC-ALPHA, M).

On the digits MLP and MiniLM (the precision curve also on the zoo Llama when the profile names its layers):
slowdown vs alpha per optimizer for the grown release with C trainable, with C frozen and after
the merge (``models.experiments_inserted.inserted_release``; one job per search), next to the
absorbed SpecDef pair (geometric and spike profiles) at K = alpha (from the slowdown section's
sweeps; what they lack is run here); the function error vs alpha per
dtype with the largest safe alpha marked (real networks: ``error_vs_alpha``; an exact layer:
``numerics.inserted.InsertedProblem`` with the rigorous PREC-ALPHA bound and the measured and
certified safe alpha at the dtype's preservation tolerance).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Sequence

from convrate.reports.builder import Planned
from convrate.reports.document import Figure, Section

if TYPE_CHECKING:
    from convrate.models.experiments import SweepRun
    from convrate.reports.builder import Context
    from convrate.reports.profiles import NetSweep, ReportProfile

#: the preservation tolerance per dtype (``models.defense.PRESERVATION_TOLERANCE``), by PREC dtype name
_TOL = {"fp64": 1e-8, "fp32": 1e-3, "bf16": 5e-2, "fp16": 1e-2}


def _nets(p: "ReportProfile") -> list[tuple[str, "NetSweep", tuple[float, ...], str | None, tuple[str, ...]]]:
    """(label, sweep settings, alphas, layer pattern, optimizers) of the swept networks: the digits
    MLP and, when the profile has MiniLM alphas, MiniLM (the slowdown section's labels and settings)."""
    ip = p.inserted
    nets = [("digits MLP", p.mlp, tuple(ip.mlp_alphas), None, tuple(ip.mlp_optimizers))]
    if ip.minilm_alphas:
        nets.append((f"MiniLM ({p.minilm_sweep_layers} layer(s))", p.minilm, tuple(ip.minilm_alphas), ip.minilm_layers,
                     tuple(p.minilm.optimizers)))
    return nets


@lru_cache(maxsize=4)
def _grown(p: "ReportProfile", seed: int, label: str, alpha: float, variant: str) -> tuple[Any, float]:
    """The attacked module of one (alpha, variant) and kappa(C) (``experiments_inserted.inserted_release``)."""
    from convrate.models.experiments_inserted import inserted_release
    from convrate.reports.sections_slowdown import network

    layers = dict((n[0], n[3]) for n in _nets(p))[label]
    model, _, wrap = network(p, seed, label)
    module, kappa = inserted_release(model, alpha, variant, k=p.inserted.k, layers=layers)
    return (module if wrap is None else wrap(module)), kappa


def inserted_job(p: "ReportProfile", seed: int, label: str, alpha: float, variant: str, optimizer: str
                 ) -> tuple[str, "SweepRun"]:
    """One learning-rate search on a grown release (one job of the report builder); slowdown unset."""
    from convrate.models.experiments import sweep_run
    from convrate.models.runtime import single_thread
    from convrate.reports.sections_slowdown import network

    cfg = dict((n[0], n[1]) for n in _nets(p))[label]
    model, task, _ = network(p, seed, label)
    with single_thread():
        attacked, kappa = _grown(p, seed, label, alpha, variant)
        return label, sweep_run(attacked, task, model.kind, variant, alpha, kappa, optimizer, cfg.target, cfg.search,
                                seed, device="cpu")


def precision_job(p: "ReportProfile", name: str) -> tuple[str, dict[str, Any]]:
    """``error_vs_alpha`` on one network (digits MLP, MiniLM truncated to the sweep layers, zoo Llama)."""
    from convrate.models import zoo
    from convrate.models.experiments_inserted import error_vs_alpha
    from convrate.models.runtime import single_thread

    ip = p.inserted
    with single_thread():
        if name == "digits MLP":
            return name, error_vs_alpha(zoo.digits_mlp(), ip.precision_alphas, k=ip.k)
        if name == "zoo Llama":  # decoder releases: float32 rotary frequencies in every dtype
            return name, error_vs_alpha(zoo.llama_tiny(), ip.precision_alphas, k=ip.k, layers=ip.llm_layers)
        return name, error_vs_alpha(zoo.minilm(n_layers=p.minilm_sweep_layers), ip.precision_alphas, k=ip.k,
                                    layers=ip.minilm_layers)


def _absorbed_have(ctx: "Context", label: str, alphas: Sequence[float], optimizers: Sequence[str]) -> list[Any]:
    """The slowdown section's runs this section shows: K = 1 and the absorbed SpecDef pair
    (geometric, spike) at K in alphas, for these optimizers."""
    rec = ctx.shared.get("sweeps", {}).get(label)
    if rec is None:
        return []
    return [r for r in rec.runs if r.optimizer in optimizers and (r.defense == "none" or (
        r.defense in _ABSORBED and r.K in alphas))]


#: the absorbed pair shown next to the inserted form (zoo networks; MiniLM: what its sweep ran)
_ABSORBED = ("specdef", "specdef:spike")


def _parts(ctx: "Context") -> list[tuple[Any, tuple]]:
    """One job per search: the inserted variants x alpha x optimizer, and what the slowdown
    section did not run of K = 1 and (zoo networks) the absorbed pair at K = alpha; one job per
    precision curve, and the exact layer's table."""
    from convrate.models.experiments_inserted import VARIANTS
    from convrate.reports.sections_slowdown import sweep_job

    p = ctx.profile
    parts: list[tuple[Any, tuple]] = []
    for label, _, alphas, _, opts in _nets(p):
        have = {(r.defense, r.K, r.optimizer) for r in _absorbed_have(ctx, label, alphas, opts)}
        wanted = [("none", 1.0)] + ([(d, float(a)) for d in _ABSORBED for a in alphas] if label == "digits MLP" else [])
        parts += [(sweep_job, (p, ctx.seed, "first-order", label, d, K, o))
                  for d, K in wanted for o in opts if (d, K, o) not in have]
        parts += [(inserted_job, (p, ctx.seed, label, float(a), v, o)) for a in alphas for v in VARIANTS for o in opts]
    names = ["digits MLP"] + ([f"MiniLM ({p.minilm_sweep_layers} layer(s))"] if p.inserted.minilm_precision else []) \
        + (["zoo Llama"] if p.inserted.llm_layers is not None else [])
    parts += [(precision_job, (p, n)) for n in names]
    parts.append((_exact_table, (ctx.seed, tuple(p.inserted.precision_alphas), p.inserted.k)))
    return parts


def _row(r: Any) -> dict[str, Any]:
    d = r.to_dict()
    return {k: d[k] for k in ("defense", "K", "kappa_T", "optimizer", "best_lr", "steps", "reached", "budget",
                              "slowdown", "slowdown_is_lower_bound")}


def _slow(d: dict[str, Any]) -> str:
    if d["slowdown"] is None:
        return "-"
    return (">= " if d["slowdown_is_lower_bound"] else "") + f"{d['slowdown']:.3g}"


def _assemble(ctx: "Context", results: list[Any]) -> Section:
    """The tables and figures from the jobs of ``_parts`` (slowdowns against the K = 1 runs)."""
    import torch

    from convrate.models.experiments import set_slowdowns
    from convrate.models.experiments_inserted import VARIANTS
    from convrate.reports.sections_slowdown import network
    from convrate.theory.core import compare

    p, ip = ctx.profile, ctx.profile.inserted
    searched: dict[str, list[Any]] = {}
    real: dict[str, Any] = {}
    for r in results[:-1]:
        if isinstance(r[1], dict):  # a precision curve
            real[r[0]] = r[1]
        else:
            searched.setdefault(r[0], []).append(r[1])
    exact = results[-1]
    s = Section("SpecDef with an inserted layer: slowdown, frozen vs trained C, merge, precision (I, PREC-ALPHA, M)")
    s.para(f"The paper's construction: each chosen Linear W = U Sigma V^T is released as W' (top-{ip.k} singular "
           "values x alpha) followed by a new layer C = U diag(1/d) U^T, C W' = W (output side). 'inserted' trains "
           "everything (C too: statement I's joint law -eta (C C^T G + G W'^T W')), 'C frozen' trains W' only (the "
           "one-sided preconditioner C C^T, kappa(T) = kappa(C) = alpha), 'merge' multiplies C W' out first "
           "(statement M: the original model, minus the inserted parameters). Next to them: the absorbed SpecDef "
           "pair at K = alpha (geometric and spike profiles). Slowdown = steps / steps of the undefended model at "
           "each one's best learning rate ('>=' when the budget was hit).")
    data: dict[str, Any] = {"networks": {}, "k": ip.k}
    checks = []
    for label, cfg, alphas, layers, opts in _nets(p):
        model = network(p, ctx.seed, label)[0]
        mine = searched.get(label, [])
        runs_all = _absorbed_have(ctx, label, alphas, opts) + [r for r in mine if r.defense not in VARIANTS]
        grown = [r for r in mine if r.defense in VARIANTS]
        set_slowdowns(runs_all + grown)
        absorbed = sorted(runs_all, key=lambda r: (r.defense != "none", r.defense, r.K, opts.index(r.optimizer)))
        runs = sorted(grown, key=lambda r: (r.K, VARIANTS.index(r.defense), opts.index(r.optimizer)))
        base = {r.optimizer: r for r in absorbed if r.defense == "none"}
        rows = [_row(r) for r in absorbed] + [_row(r) for r in runs]
        data["networks"][label] = {"alphas": list(alphas), "layers": layers or "all Linear", "target": cfg.target,
                                   "budget": cfg.search.budget, "runs": rows}
        s.para(f"**{label}** (layers: {layers or 'every Linear'}; target {cfg.target:g}, budget "
               f"{cfg.search.budget} steps).")
        s.table(["variant", "alpha / K", "kappa(C) / kappa(T)", "optimizer", "best lr", "steps", "slowdown"],
                [[d["defense"], f"{d['K']:g}", f"{d['kappa_T']:.4g}", d["optimizer"], f"{d['best_lr']:.3g}",
                  str(d["steps"]) if d["reached"] else f">{d['budget']}", _slow(d)] for d in rows])
        s.figure(_slowdown_figure(label, rows))
        if model.dtype == torch.float64:  # M in float64: the merged run is the undefended one
            for r in runs:
                b = base.get(r.optimizer)
                if r.defense == "inserted:merge" and b is not None and b.search.best_steps is not None:
                    checks.append(compare("M", f"{label}, alpha={r.K:g}, {r.optimizer}: steps after the merge vs "
                                               "the undefended model", r.search.best_steps or -1, "==",
                                          b.search.best_steps, precision="exact (integer step counts)"))
    data["precision"] = {"real": real, "exact": exact}
    s.para("Precision (PREC-ALPHA, corrected): the chain's rounding error grows like u rho with rho = "
           "||C||_2 ||W'||_2 / ||W||_2 = alpha (k below the side's width), not like u alpha sigma_1 / sigma_k. "
           "Real networks: max relative output deviation on probe inputs (the release in each dtype against the "
           "float64 original) vs alpha, with the largest safe alpha per dtype (tolerance of models.defense; "
           "bisection in log alpha). Exact layer: a 16x16 layer with singular values geometric over one decade, "
           "k = 4, built in rationals; error against the exact function, the rigorous bound, and the measured "
           "and certified safe alpha at the same tolerances.")
    s.table(["network", "dtype", "tolerance", "largest safe alpha"],
            [[net, dt, f"{r['tolerance'][dt]:.0e}", _alpha(v) + (" (no failure up to 1e16)" if v >= 1e16 else "")]
             for net, r in real.items() for dt, v in r["safe_alpha"].items()])
    s.table(["dtype (exact layer)", "tolerance", "measured safe alpha", "cause", "certified safe alpha", "growth exponent"],
            [[e["dtype"], f"{e['rtol']:.0e}", _alpha(e["safe"]), e["cause"], _alpha(e["certified"]),
              "-" if e["growth"] is None else f"{e['growth']:.3f}"] for e in exact["table"]])
    s.figure(_precision_figure(real, exact))
    recorded = ctx.record(checks)
    data["checks"] = recorded
    s.data = data
    return s


def _alpha(a: float) -> str:
    """A safe alpha for a table; 0 means even alpha = 1 (the undefended layer) fails."""
    return "none (alpha = 1 fails)" if a < 1 else f"{a:.3g}"


def _exact_table(seed: int, alphas: Sequence[float], k: int) -> dict[str, Any]:
    from convrate.numerics.fp_precision import DTYPES, controlled_pair, growth_exponent
    from convrate.numerics.inserted import InsertedProblem

    W, _, X = controlled_pair(seed, 16, 16, 1, 16)
    prob = InsertedProblem(W, X, k)
    curve, table = [], []
    for d in DTYPES:
        for a in alphas:
            fe = prob.evaluate_K(a, d)
            curve.append({"dtype": d, "alpha": float(a), "max_rel": fe.max_rel, "overflow": fe.overflow,
                          "bound_max_rel": None if fe.bound_rel is None else float(max(fe.bound_rel))})
        meas = prob.safe_K_search(d, _TOL[d])
        cert = prob.safe_K_search(d, _TOL[d], certified=True)
        table.append({"dtype": d, "rtol": _TOL[d], "safe": meas.K, "cause": meas.cause, "certified": cert.K,
                      "growth": growth_exponent(prob, d, Ks=list(alphas)).exponent})
    return {"curve": curve, "table": table}


#: one colour per variant in every panel (Okabe-Ito, colour-blind-safe)
_VARIANT_COLORS = {"inserted": "#0072B2", "inserted:C-frozen": "#E69F00", "inserted:merge": "#009E73",
                   "specdef": "#D55E00", "specdef:spike": "#CC79A7"}


def _slowdown_figure(label: str, rows: Sequence[dict[str, Any]]) -> Figure:
    """Slowdown vs alpha (inserted) / K (absorbed), one panel per optimizer; one colour per variant,
    marker = defense (``reports.style``); open markers with a caret are lower bounds (the defended
    run hit its budget)."""
    from convrate.reports import style
    from convrate.reports.builder import png, pyplot

    plt = pyplot()
    opts = sorted({d["optimizer"] for d in rows})
    fig, axes = plt.subplots(1, len(opts), figsize=(4.6 * len(opts), 3.6), squeeze=False)
    for ax, opt in zip(axes[0], opts):
        shown = [d for d in rows if d["optimizer"] == opt and d["slowdown"] is not None]
        ax.set_ylim(*style.log_limits([1.0] + [d["slowdown"] * (1.6 if d["slowdown_is_lower_bound"] else 1)
                                               for d in shown]))
        for v, color in _VARIANT_COLORS.items():
            pts = sorted((d["K"], d["slowdown"], bool(d["slowdown_is_lower_bound"])) for d in shown if d["defense"] == v)
            if pts:
                xs, ys, lower = [x for x, _, _ in pts], [y for _, y, _ in pts], [lb for _, _, lb in pts]
                ax.plot(xs, ys, "-" if v.startswith("inserted") else "--", color=color, lw=1.2, label=v)
                style.mark_points(ax, xs, ys, lower, color, style.defense_marker(v))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhline(1, color="k", lw=0.6)
        ax.set_xlabel("alpha (inserted) / K (absorbed)")
        ax.set_ylabel("slowdown")
        ax.set_title(f"{label}: {opt}")
        ax.legend(fontsize=7)
    fig.suptitle("open markers with a caret: lower bounds (budget hit)", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return Figure(f"inserted_slowdown_{label.split()[0].lower()}.png", png(fig),
                  f"{label}: slowdown vs alpha, inserted form (C trained / frozen / merged) and absorbed SpecDef; "
                  "open markers with a caret are lower bounds (the defended run hit its budget).")


def _precision_figure(real: dict[str, Any], exact: dict[str, Any]) -> Figure:
    from convrate.reports.builder import png, pyplot

    plt = pyplot()
    panels = list(real.items()) + [("exact layer", None)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    for ax, (name, r) in zip(axes[0], panels):
        if r is not None:
            for dt, pts in r["curve"].items():
                ok = [c for c in pts if math.isfinite(c["deviation"]) and c["deviation"] > 0]
                line, = ax.loglog([c["alpha"] for c in ok], [c["deviation"] for c in ok], "o-", ms=3, label=dt)
                ax.axhline(r["tolerance"][dt], color=line.get_color(), lw=0.6, ls=":")
                if r["safe_alpha"][dt] < 1e16:
                    ax.axvline(r["safe_alpha"][dt], color=line.get_color(), lw=0.8, ls="--")
        else:
            for e in exact["table"]:
                pts = [c for c in exact["curve"] if c["dtype"] == e["dtype"] and not c["overflow"] and c["max_rel"] > 0]
                line, = ax.loglog([c["alpha"] for c in pts], [c["max_rel"] for c in pts], "o-", ms=3, label=e["dtype"])
                b = [c for c in pts if c["bound_max_rel"] is not None]
                ax.loglog([c["alpha"] for c in b], [c["bound_max_rel"] for c in b], "-", lw=0.7, color=line.get_color())
                if 1 <= e["safe"] < 1e16:
                    ax.axvline(e["safe"], color=line.get_color(), lw=0.8, ls="--")
        ax.set_xlabel("alpha")
        ax.set_ylabel("max relative output error")
        ax.set_title(name)
        ax.legend(fontsize=7)
    return Figure("inserted_precision.png", png(fig), "Function error vs alpha per dtype (dashed: largest safe alpha; "
                  "dotted: tolerance; thin solid, exact layer: rigorous PREC-ALPHA bound).")


inserted_section = Planned(_parts, _assemble)
#: the absorbed pair and K = 1 come from the slowdown section's sweeps (Context.shared["sweeps"])
SECTIONS: list[tuple[Any, ...]] = [("inserted", inserted_section, ("slowdown",))]
