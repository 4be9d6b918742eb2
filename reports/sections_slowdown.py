"""Slowdown vs defense strength K per optimizer on the digits MLP, the digits CNN and MiniLM,
with the attacks' loss curves, for the first-order attackers and (a section of its own) the
second-order and preconditioned ones (``models.experiments``: one job per (network, defense, K,
optimizer) learning-rate search, run in parallel by the report builder)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Sequence

from convrate.reports.builder import Planned
from convrate.reports.document import Figure, Section

if TYPE_CHECKING:
    from convrate.models.experiments import SweepRun
    from convrate.reports.builder import Context
    from convrate.reports.profiles import NetSweep, ReportProfile


def network_labels(p: "ReportProfile", key: str = "first-order") -> list[tuple[str, "NetSweep"]]:
    """(label, sweep settings) of the networks whose profile entry is set (``key`` "so": the
    second-order entries ``*_so``), in display order."""
    suffix = "_so" if key == "so" else ""
    entries = [("digits MLP", getattr(p, "mlp" + suffix)), ("digits CNN", getattr(p, "cnn" + suffix)),
               (f"MiniLM ({p.minilm_sweep_layers} layer(s))", getattr(p, "minilm" + suffix))]
    return [(label, cfg) for label, cfg in entries if cfg is not None]


@lru_cache(maxsize=None)
def network(p: "ReportProfile", seed: int, label: str) -> tuple[Any, Any, Any]:
    """(model, task, wrap) of a swept network, built once per process (zoo models come from
    the cache; MiniLM is truncated to the profile's sweep layers under the seeded head)."""
    from convrate.models import zoo
    from convrate.models.experiments import encoder_wrap
    from convrate.models.tasks import digits_relabel_task, minilm_tokenizer, text_task

    if label == "digits MLP":
        return zoo.digits_mlp(), digits_relabel_task(seed, standardize=False), None
    if label == "digits CNN":
        return zoo.digits_cnn(), digits_relabel_task(seed, standardize=False, image=True), None
    text = text_task(minilm_tokenizer(), max_length=p.text_tokens, per_class=p.text_per_class, seed=seed)
    return zoo.minilm(n_layers=p.minilm_sweep_layers), text, encoder_wrap(text, seed)


@lru_cache(maxsize=8)
def _attacked(p: "ReportProfile", seed: int, label: str, defense: str, K: float) -> tuple[Any, float]:
    from convrate.models.experiments import released_model

    model, _, wrap = network(p, seed, label)
    released, kappa = released_model(model, defense, K, seed)
    return (released.module if wrap is None else wrap(released.module)), kappa


def sweep_job(p: "ReportProfile", seed: int, key: str, label: str, defense: str, K: float, optimizer: str
              ) -> tuple[str, "SweepRun", str]:
    """One learning-rate search of a sweep: (label, the run, the task's description)."""
    from convrate.models.experiments import sweep_run
    from convrate.models.runtime import single_thread

    cfg = dict(network_labels(p, key))[label]
    model, task, _ = network(p, seed, label)
    with single_thread():
        attacked, kappa = _attacked(p, seed, label, defense, K)
        run = sweep_run(attacked, task, model.kind, defense, K, kappa, optimizer, cfg.target, cfg.search, seed,
                        device="cpu")
    return label, run, task.description


@dataclass
class SweepRecord:
    """A network's sweep as later sections reuse it (recoveries run at its learning rates);
    ``model``, ``task``, ``wrap`` are rebuilt where needed (``network``), so the record travels
    between processes as settings and runs."""

    label: str
    cfg: "NetSweep"
    profile: "ReportProfile"
    seed: int
    runs: list["SweepRun"]

    @property
    def model(self) -> Any:
        return network(self.profile, self.seed, self.label)[0]

    @property
    def task(self) -> Any:
        return network(self.profile, self.seed, self.label)[1]

    @property
    def wrap(self) -> Any:
        return network(self.profile, self.seed, self.label)[2]


def _jobs(ctx: "Context", key: str) -> list[tuple[Any, tuple]]:
    """One job per search; the long ones (CNN, MiniLM) first, so that they start early."""
    from convrate.models.experiments import sweep_jobs

    jobs = []
    for label, cfg in network_labels(ctx.profile, key):
        jobs += [(sweep_job, (ctx.profile, ctx.seed, key, label, d, K, o)) for d, K, o in
                 sweep_jobs(cfg.defenses, cfg.Ks, cfg.optimizers)]
    return sorted(jobs, key=lambda j: j[1][3] == "digits MLP")


def _runs(ctx: "Context", key: str, results: Sequence[Any]) -> list[tuple[str, "NetSweep", list["SweepRun"], str]]:
    """(label, settings, runs in sweep order with their slowdowns, task description) per network."""
    from convrate.models.experiments import set_slowdowns, sweep_jobs

    by = {(label, r.defense, r.K, r.optimizer): (r, desc) for label, r, desc in results}
    out = []
    for label, cfg in network_labels(ctx.profile, key):
        runs = [by[label, d, K, o][0] for d, K, o in sweep_jobs(cfg.defenses, cfg.Ks, cfg.optimizers)]
        set_slowdowns(runs)
        out.append((label, cfg, runs, by[label, "none", 1.0, cfg.optimizers[0]][1]))
    return out


def _steps(d: dict[str, Any]) -> str:
    return (str(d["steps"]) if d["reached"] else f">{d['budget']}") + _sensitivity_suffix(d)


def _sensitivity_suffix(d: dict[str, Any]) -> str:
    """" [lo, hi]" when the count's sensitivity range (models.sensitivity) is not a single count."""
    rng = d.get("steps_range")
    if not rng or rng[0] == rng[1]:
        return ""
    return " [" + ", ".join(str(v) if v is not None else f">{d['budget']}" for v in rng) + "]"


def _num(x: Any) -> str:
    return "-" if x is None else f"{x:.3g}"


def _slow(d: dict[str, Any]) -> str:
    if d["slowdown"] is None:
        return "-"
    return (">= " if d["slowdown_is_lower_bound"] else "") + f"{d['slowdown']:.3g}"


_EXPLAIN = (
    "Each cell is a learning-rate search (log grid, pruned, refined around the best; the same grid for every K; "
    "for newton-cg, gauss-newton and kfac the searched knob is the damping, marked (d)) for the fewest full-batch "
    "steps to reach the target loss; slowdown = steps(K) / steps(K=1) for the same optimizer ('>=' when the defended "
    "search hit the budget). Cost to the target: gradient-equivalents (gradients and line-search evaluations, plus "
    "Hessian-vector products, Gauss-Newton products and K-FAC's extra backward passes weighted by their cost "
    "relative to a gradient, measured on the attacked model) and wall seconds (measured on a shared machine); cost "
    "slowdown = gradient-equivalents(K) / (K=1). The prediction is the local-quadratic statement of THEORY.md: "
    "kappa(T)^2 for GD-like methods (T3 with F1/B), kappa(T) for tuned Krylov methods (F2; L-BFGS: SO-LBFGS), "
    "kappa(T) as the spread of effective step sizes for Shampoo at p = 1/4, Sophia and Muon (SO-SHAMPOO, SO-SOPHIA, "
    "SO-MUON), 1 for the covariant second-order methods in their exact undamped limit (Newton-CG: SO-NEWTON-CG, "
    "K-FAC: SO-KFAC); Adam and SOAP (statement A: the first power of D on the step sizes) and Gauss-Newton (SO-GN: "
    "invariant in function space only) have none. On a nonconvex loss started far from the attacker's minimum the "
    "prediction is a comparison, not a theorem.")


def _rows(runs: Sequence["SweepRun"]) -> list[dict[str, Any]]:
    from convrate.models.experiments import within_reference

    rows = [r.to_dict() for r in runs]
    for d, r in zip(rows, runs):
        d["within_reference"] = within_reference(r)
    return rows


def _table(s: Section, rows: Sequence[dict[str, Any]]) -> None:
    s.table(["defense", "K", "kappa(T)", "optimizer", "best lr (damping)", "steps", "grad-equiv.", "wall s",
             "slowdown", "cost slowdown", "prediction (statement)", "<= pred."],
            [[d["defense"], f"{d['K']:g}", f"{d['kappa_T']:.4g}", d["optimizer"],
              f"{d['best_lr']:.3g}" + (" (d)" if d.get("knob") == "damping" else ""), _steps(d),
              _num(d.get("grad_equivalents")), _num(d.get("wall_to_target_s")), _slow(d), _num(d.get("cost_slowdown")),
              "-" if d["reference"] is None else f"{d['reference']:.3g} ({d['reference_formula']}; "
                                                 f"{d.get('reference_statement') or '-'})",
              {None: "-", True: "yes", False: "no"}[d["within_reference"]]] for d in rows])


def _assemble(ctx: "Context", results: list[Any]) -> Section:
    s = Section("Slowdown vs defense strength on real networks")
    s.para(_EXPLAIN)
    data: dict[str, Any] = {"networks": {}}
    ctx.shared["sweeps"] = sweeps = {}
    for label, cfg, runs, description in _runs(ctx, "first-order", results):
        sweeps[label] = SweepRecord(label, cfg, ctx.profile, ctx.seed, runs)
        rows = _rows(runs)
        data["networks"][label] = {"target": cfg.target, "budget": cfg.search.budget, "grid": list(cfg.search.grid),
                                   "task": description, "runs": rows}
        s.para(f"**{label}**: task {description}; target loss {cfg.target:g}, budget {cfg.search.budget} steps.")
        _table(s, rows)
        s.figure(_slowdown_figure(label, rows))
        s.figure(_curves_figure(label, rows, cfg.target))
    absorbed = _adam_absorption(data["networks"])
    if absorbed:
        s.para("Statement A on real networks: slowdown of SGD divided by that of Adam at the same defense "
               "and K (how much of the defense the adaptive optimizer absorbs).")
        s.table(["network", "defense", "K", "slowdown sgd", "slowdown adam", "sgd / adam"],
                [[a["network"], a["defense"], f"{a['K']:g}", f"{a['sgd']:.3g}", f"{a['adam']:.3g}",
                  f"{a['ratio']:.3g}"] for a in absorbed])
    data["adam_absorption"] = absorbed
    s.data = data
    return s


def _adam_absorption(networks: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for label, net in networks.items():
        by = {(d["defense"], d["K"], d["optimizer"]): d for d in net["runs"]}
        for (dfn, K, opt), d in by.items():
            a = by.get((dfn, K, "adam"))
            if opt != "sgd" or dfn == "none" or a is None or d["slowdown"] is None or not a["slowdown"]:
                continue
            out.append({"network": label, "defense": dfn, "K": K, "sgd": d["slowdown"], "adam": a["slowdown"],
                        "ratio": d["slowdown"] / a["slowdown"]})
    return out


def _name(label: str) -> str:
    return label.split(" (")[0].lower().replace(" ", "_")


def _slowdown_figure(label: str, rows: Sequence[dict[str, Any]], prefix: str = "") -> Figure:
    """Small multiples: one row per defense, one column per attacker family; colour = attacker,
    marker = defense (``reports.style``); open markers with a caret are lower bounds; the
    kappa(T), kappa(T)^2 references are clipped to the data's range."""
    from convrate.reports.builder import png, pyplot
    from convrate.reports import style

    plt = pyplot()
    runs = [d for d in rows if d["defense"] != "none" and d["slowdown"] is not None]
    defenses = list(dict.fromkeys(d["defense"] for d in runs)) or ["specdef"]
    panels = style.panels_for(d["optimizer"] for d in runs) or [("-", [])]
    fig, axes = plt.subplots(len(defenses), len(panels), figsize=(3.3 * len(panels) + 0.6, 2.7 * len(defenses) + 0.4),
                             squeeze=False, sharex=True)
    for i, dfn in enumerate(defenses):
        mine = [d for d in runs if d["defense"] == dfn]
        ylim = style.log_limits([1.0] + [d["slowdown"] for d in mine])
        kap = sorted({(d["K"], d["kappa_T"]) for d in mine})
        for j, (family, attackers) in enumerate(panels):
            ax = axes[i][j]
            for opt in attackers:
                pts = sorted((d["K"], d["slowdown"], d["slowdown_is_lower_bound"]) for d in mine if d["optimizer"] == opt)
                if not pts:
                    continue
                color = style.attacker_color(opt)
                ax.plot([1] + [k for k, _, _ in pts], [1] + [v for _, v, _ in pts], ls=style.attacker_line(opt), color=color,
                        lw=1.3, label=opt)
                style.mark_points(ax, [k for k, _, _ in pts], [v for _, v, _ in pts], [lb for _, _, lb in pts], color,
                                  style.defense_marker(dfn))
            if kap:
                xs = [1.0] + [k for k, _ in kap]
                style.clipped_reference(ax, xs, [1.0] + [t for _, t in kap], "kappa(T)", ylim, "--", 0)
                style.clipped_reference(ax, xs, [1.0] + [t * t for _, t in kap], "kappa(T)^2", ylim, ":", 1)
            ax.axhline(1, color="grey", lw=0.5)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_ylim(*ylim)
            if i == 0:
                ax.set_title(family, fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{dfn}\nslowdown (steps ratio)", fontsize=8)
            if i == len(defenses) - 1:
                ax.set_xlabel("defense strength K", fontsize=8)
            ax.tick_params(labelsize=7)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6, loc="lower left", framealpha=0.8)
    fig.suptitle(f"{label}: slowdown vs K (open markers with a caret: lower bounds, budget hit)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return Figure(f"{prefix}slowdown_{_name(label)}.png", png(fig),
                  f"{label}: measured slowdown at the best learning rate (damping) vs K, one row per defense and one "
                  "column per attacker family, with the kappa(T) and kappa(T)^2 references clipped to the data's range.")


def _curves_figure(label: str, rows: Sequence[dict[str, Any]], target: float, prefix: str = "") -> Figure:
    """One panel per attacker (its colour): the undefended run thick, each defended run with the
    defense's marker, lighter for smaller K; the target dotted; y-range from the data."""
    from convrate.reports.builder import png, pyplot
    from convrate.reports import style

    plt = pyplot()
    opts = list(dict.fromkeys(d["optimizer"] for d in rows))
    ncols = min(5, len(opts))
    nrows = math.ceil(len(opts) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows + 0.4), squeeze=False)
    Ks = sorted({d["K"] for d in rows if d["defense"] != "none"})
    for ax in axes.flat[len(opts):]:
        ax.axis("off")
    for ax, opt in zip(axes.flat, opts):
        color = style.attacker_color(opt)
        mine = [d for d in rows if d["optimizer"] == opt]
        start = max((d["losses"][0] for d in mine if d["losses"]), default=1.0)
        ys_all = [v for d in mine for v in d["losses"] if v is not None and math.isfinite(v) and v <= 10 * start] + [target]
        for d in mine:
            ys = d["losses"]
            if d["defense"] == "none":
                ax.plot(range(len(ys)), ys, "-", color=color, lw=2.2, label="undefended", zorder=3)
            else:
                alpha = 0.35 + 0.65 * (Ks.index(d["K"]) + 1) / max(1, len(Ks))
                ax.plot(range(len(ys)), ys, "-", color=color, lw=0.9, alpha=alpha, marker=style.defense_marker(d["defense"]),
                        markevery=max(1, len(ys) // 6), ms=3.5, label=f"{d['defense']} K={d['K']:g}")
        ax.axhline(target, color="k", ls=":", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylim(*style.log_limits(ys_all, pad=1.3))
        ax.set_title(opt, fontsize=8, fontweight="bold")
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=5, ncol=2)
    axes[0][0].set_ylabel("training loss", fontsize=7)
    fig.tight_layout()
    return Figure(f"{prefix}curves_{_name(label)}.png", png(fig), f"{label}: loss curves of the attacks at each run's best "
                                                         "learning rate (damping); markers name the defense, darker "
                                                         "lines larger K; dotted: target.")


def checks_job(seed: int) -> list[dict[str, Any]]:
    """The exact second-order statements on the real loss (digits MLP, SpecDef K = 100)."""
    from convrate.models import zoo
    from convrate.models.experiments import second_order_checks
    from convrate.models.runtime import single_thread
    from convrate.models.tasks import digits_relabel_task

    with single_thread():
        return [c if isinstance(c, dict) else c.to_dict() for c in
                second_order_checks(zoo.digits_mlp(), digits_relabel_task(seed, standardize=False), 100.0, seed=seed)]


def _so_parts(ctx: "Context") -> list[tuple[Any, tuple]]:
    return _jobs(ctx, "so") + [(checks_job, (ctx.seed,))]


def _so_assemble(ctx: "Context", results: list[Any]) -> Section:
    """The second-order and preconditioned attackers (L-BFGS, Newton-CG, Gauss-Newton, K-FAC, Shampoo,
    SOAP, Sophia, Muon) on the same networks and targets; when the first-order sweep ran in this
    report, its rows join each network's table and figure, so every attacker is listed."""
    s = Section("Second-order and preconditioned attackers vs defense strength")
    s.para("Does the defense slow second-order optimization? The attackers of statements SO-* on the networks and "
           "targets of the previous section. " + _EXPLAIN)
    data: dict[str, Any] = {"networks": {}}
    earlier = ctx.shared.get("sweeps", {})
    for label, cfg, runs, description in _runs(ctx, "so", results[:-1]):
        rows = _rows(runs)
        first = [d for d in _rows(earlier[label].runs)] if label in earlier else []
        data["networks"][label] = {"target": cfg.target, "budget": cfg.search.budget, "grid": list(cfg.search.grid),
                                   "grids": {o: list(g) for o, g in cfg.search.grids}, "task": description,
                                   "runs": rows, "first_order_runs_merged": len(first)}
        s.para(f"**{label}**: task {description}; target loss {cfg.target:g}, budget {cfg.search.budget} steps"
               + (f"; the first {len(first)} rows are the first-order attackers of the previous section" if first else "")
               + ".")
        _table(s, first + rows)
        s.figure(_slowdown_figure(label + " (all attackers)" if first else label, first + rows, "so_"))
        s.figure(_curves_figure(label, rows, cfg.target, "so_"))
    checks = ctx.record(results[-1])
    s.para("Exact statements on the real loss (digits MLP, SpecDef K = 100): k CG steps on the defended release, "
           "mapped back by T^-1, equal CG preconditioned by T^-1 T^-T with damping lambda T^T T on the original, for "
           "the Hessian (SO-NEWTON-CG) and the Gauss-Newton matrix (SO-GN).")
    s.table(["statement", "instance", "measured", "rel", "bound", "holds"],
            [[d["statement"], d["instance"], f"{d['measured']:.3g}", d["relation"], f"{d['bound']:.3g}",
              "yes" if d["holds"] else "no"] for d in checks])
    data["real_network_checks"] = checks
    s.data = data
    return s


def _parts(ctx: "Context") -> list[tuple[Any, tuple]]:
    return _jobs(ctx, "first-order")


slowdown_section = Planned(_parts, _assemble)
second_order_section = Planned(_so_parts, _so_assemble)
#: the second-order section merges the first-order rows (Context.shared["sweeps"]): built after it
SECTIONS: list[tuple[Any, ...]] = [("slowdown", slowdown_section),
                                   ("slowdown-second-order", second_order_section, ("slowdown",))]
