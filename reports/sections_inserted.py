"""SpecDef as the paper builds it: an inserted compensation layer (THEORY.md I, PREC-ALPHA, M).

On the digits MLP and MiniLM: slowdown vs alpha per optimizer for the grown release with C
trainable, with C frozen and after the merge (``models.experiments_inserted.inserted_sweep``), next
to the absorbed SpecDef pair (geometric and spike profiles) at K = alpha (from the slowdown
section's sweeps when it ran with the same settings, else run here); the function error vs alpha per
dtype with the largest safe alpha marked (real networks: ``error_vs_alpha``; an exact layer:
``numerics.inserted.InsertedProblem`` with the rigorous PREC-ALPHA bound and the measured and
certified safe alpha at the dtype's preservation tolerance).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

from convrate.reports.document import Figure, Section

if TYPE_CHECKING:
    from convrate.reports.builder import Context

#: the preservation tolerance per dtype (``models.defense.PRESERVATION_TOLERANCE``), by PREC dtype name
_TOL = {"fp64": 1e-8, "fp32": 1e-3, "bf16": 5e-2, "fp16": 1e-2}


def _absorbed(ctx: "Context", label: str, model: Any, task: Any, cfg: Any, alphas: Sequence[float], wrap: Any,
              optimizers: Sequence[str], fill: bool) -> list[Any]:
    """The absorbed SpecDef runs (geometric, spike) and K = 1 at K in alphas: taken from the slowdown
    section's sweep when it used this task, target and search; what it lacks is run here when
    ``fill`` (the small networks), else left out (MiniLM: the slowdown section's defenses only)."""
    from convrate.models.experiments import slowdown_sweep

    wanted = ("specdef", "specdef:spike")
    rec = ctx.shared.get("sweeps", {}).get(label)
    keep: list[Any] = []
    if rec is not None and rec.cfg.target == cfg.target and rec.cfg.search == cfg.search:
        keep = [r for r in rec.runs if r.optimizer in optimizers and (r.defense == "none" or (
            r.defense in wanted and r.K in alphas))]
    have_base = {r.optimizer for r in keep if r.defense == "none"} >= set(optimizers)
    missing = [d for d in wanted if not any(r.defense == d for r in keep)]
    if have_base and (not missing or not fill):
        return keep
    kw = {} if wrap is None else {"wrap": wrap}
    run = slowdown_sweep(model, task, defenses=missing if (fill and have_base) else wanted, Ks=alphas,
                         optimizers=optimizers, target=cfg.target, search=cfg.search, seed=ctx.seed, device="cpu",
                         progress=lambda w, d, t: ctx.step(f"inserted: absorbed {w}", d, t), **kw)
    return keep + [r for r in run if not (have_base and r.defense == "none")] if have_base else run


def _row(r: Any) -> dict[str, Any]:
    d = r.to_dict()
    return {k: d[k] for k in ("defense", "K", "kappa_T", "optimizer", "best_lr", "steps", "reached", "budget",
                              "slowdown", "slowdown_is_lower_bound")}


def _slow(d: dict[str, Any]) -> str:
    if d["slowdown"] is None:
        return "-"
    return (">= " if d["slowdown_is_lower_bound"] else "") + f"{d['slowdown']:.3g}"


def inserted_section(ctx: "Context") -> Section:
    import torch

    from convrate.models import zoo
    from convrate.models.experiments import encoder_wrap
    from convrate.models.experiments_inserted import error_vs_alpha, inserted_sweep
    from convrate.models.runtime import single_thread
    from convrate.models.tasks import digits_relabel_task, minilm_tokenizer, text_task
    from convrate.theory.core import compare

    p, ip = ctx.profile, ctx.profile.inserted
    digits = digits_relabel_task(ctx.seed, standardize=False)
    text = text_task(minilm_tokenizer(), max_length=p.text_tokens, per_class=p.text_per_class, seed=ctx.seed) \
        if ip.minilm_alphas else None
    nets = [("digits MLP", p.mlp, zoo.digits_mlp(), digits, None, ip.mlp_alphas, None, ip.mlp_optimizers)]
    if ip.minilm_alphas:
        nets.append((f"MiniLM ({p.minilm_sweep_layers} layer(s))", p.minilm, zoo.minilm(n_layers=p.minilm_sweep_layers),
                     text, encoder_wrap(text, ctx.seed), ip.minilm_alphas, ip.minilm_layers, p.minilm.optimizers))
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
    with single_thread():
        for label, cfg, model, task, wrap, alphas, layers, opts in nets:
            absorbed = _absorbed(ctx, label, model, task, cfg, alphas, wrap, opts, fill=model.fmt == "zoo")
            base = {r.optimizer: r for r in absorbed if r.defense == "none"}
            kw = {} if wrap is None else {"wrap": wrap}
            runs = inserted_sweep(model, task, alphas=alphas, k=ip.k, optimizers=opts, target=cfg.target,
                                  search=cfg.search, layers=layers, seed=ctx.seed, baseline=base, device="cpu",
                                  progress=lambda w, d, t: ctx.step(f"inserted: {w}", d, t), **kw)
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
        ctx.step("inserted: precision", 0, 1)
        real = {"digits MLP": error_vs_alpha(zoo.digits_mlp(), ip.precision_alphas, k=ip.k)}
        real[f"MiniLM ({p.minilm_sweep_layers} layer(s))"] = error_vs_alpha(zoo.minilm(n_layers=p.minilm_sweep_layers),
                                                                            ip.precision_alphas, k=ip.k,
                                                                            layers=ip.minilm_layers)
    exact = _exact_table(ctx.seed, ip.precision_alphas, ip.k)
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


def _slowdown_figure(label: str, rows: Sequence[dict[str, Any]]) -> Figure:
    from convrate.reports.builder import png, pyplot

    plt = pyplot()
    opts = sorted({d["optimizer"] for d in rows})
    fig, axes = plt.subplots(1, len(opts), figsize=(4.6 * len(opts), 3.6), squeeze=False)
    for ax, opt in zip(axes[0], opts):
        for v in ("inserted", "inserted:C-frozen", "inserted:merge", "specdef", "specdef:spike"):
            pts = sorted((d["K"], d["slowdown"]) for d in rows if d["optimizer"] == opt and d["defense"] == v
                         and d["slowdown"] is not None)
            if pts:
                ax.loglog([x for x, _ in pts], [y for _, y in pts], "o-" if v.startswith("inserted") else "s--",
                          ms=4, label=v)
        ax.axhline(1, color="k", lw=0.6)
        ax.set_xlabel("alpha (inserted) / K (absorbed)")
        ax.set_ylabel("slowdown")
        ax.set_title(f"{label}: {opt}")
        ax.legend(fontsize=7)
    return Figure(f"inserted_slowdown_{label.split()[0].lower()}.png", png(fig),
                  f"{label}: slowdown vs alpha, inserted form (C trained / frozen / merged) and absorbed SpecDef.")


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


SECTIONS: list[tuple[str, Any]] = [("inserted", inserted_section)]
