"""Slowdown vs defense strength K per optimizer on the digits MLP, the digits CNN and MiniLM,
with the attacks' loss curves (``models.experiments.slowdown_sweep``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from convrate.reports.document import Figure, Section

if TYPE_CHECKING:
    from convrate.models.experiments import SweepRun
    from convrate.reports.builder import Context
    from convrate.reports.profiles import NetSweep


@dataclass
class SweepRecord:
    """A network's sweep as later sections reuse it (recoveries run at its learning rates)."""

    label: str
    cfg: "NetSweep"
    model: Any
    task: Any
    wrap: Any
    runs: list["SweepRun"]


def _sweep(ctx: "Context", label: str, cfg: "NetSweep", model: Any, task: Any, wrap: Any = None) -> list["SweepRun"]:
    from convrate.models.experiments import slowdown_sweep
    from convrate.models.runtime import single_thread

    def step(what: str, done: int, total: int) -> None:
        ctx.step(f"slowdown: {what}", done, total)

    with single_thread():
        kw = {} if wrap is None else {"wrap": wrap}
        return slowdown_sweep(model, task, defenses=cfg.defenses, Ks=cfg.Ks, optimizers=cfg.optimizers,
                              target=cfg.target, search=cfg.search, seed=ctx.seed, progress=step, device="cpu", **kw)


def _steps(d: dict[str, Any]) -> str:
    return (str(d["steps"]) if d["reached"] else f">{d['budget']}") + _sensitivity_suffix(d)


def _sensitivity_suffix(d: dict[str, Any]) -> str:
    """" [lo, hi]" when the count's sensitivity range (models.sensitivity) is not a single count."""
    rng = d.get("steps_range")
    if not rng or rng[0] == rng[1]:
        return ""
    return " [" + ", ".join(str(v) if v is not None else f">{d['budget']}" for v in rng) + "]"


def _slow(d: dict[str, Any]) -> str:
    if d["slowdown"] is None:
        return "-"
    return (">= " if d["slowdown_is_lower_bound"] else "") + f"{d['slowdown']:.3g}"


def slowdown_section(ctx: "Context") -> Section:
    from convrate.models import zoo
    from convrate.models.experiments import encoder_wrap, within_reference
    from convrate.models.tasks import digits_relabel_task, minilm_tokenizer, text_task

    p = ctx.profile
    digits = digits_relabel_task(ctx.seed, standardize=False)
    images = digits_relabel_task(ctx.seed, standardize=False, image=True)
    text = text_task(minilm_tokenizer(), max_length=p.text_tokens, per_class=p.text_per_class, seed=ctx.seed)
    nets = [
        ("digits MLP", p.mlp, zoo.digits_mlp(), digits, None),
        ("digits CNN", p.cnn, zoo.digits_cnn(), images, None),
        (f"MiniLM ({p.minilm_sweep_layers} layer(s))", p.minilm, zoo.minilm(n_layers=p.minilm_sweep_layers), text,
         encoder_wrap(text, ctx.seed)),
    ]
    s = Section("Slowdown vs defense strength on real networks")
    s.para("Each cell is a learning-rate search (log grid, pruned, refined around the best; the same grid "
           "for every K) for the fewest full-batch steps to reach the target loss; slowdown = steps(K) / "
           "steps(K=1) for the same optimizer ('>=' when the defended search hit the budget). The reference "
           "is the local-quadratic prediction of THEORY.md: kappa(T)^2 for GD-like methods (T3 with F1/B), "
           "kappa(T) for a tuned Krylov method (F2); adaptive methods have none (statement A: a diagonal "
           "defense acts on them to the first power of D). On a nonconvex loss started far from the "
           "attacker's minimum the reference is a comparison, not a theorem.")
    data: dict[str, Any] = {"networks": {}}
    ctx.shared["sweeps"] = sweeps = {}
    for label, cfg, model, task, wrap in nets:
        runs = _sweep(ctx, label, cfg, model, task, wrap)
        sweeps[label] = SweepRecord(label, cfg, model, task, wrap, runs)
        rows = [r.to_dict() for r in runs]
        for d, r in zip(rows, runs):
            d["within_reference"] = within_reference(r)
        data["networks"][label] = {"target": cfg.target, "budget": cfg.search.budget, "grid": list(cfg.search.grid),
                                   "task": task.description, "runs": rows}
        s.para(f"**{label}**: task {task.description}; target loss {cfg.target:g}, budget {cfg.search.budget} steps.")
        s.table(["defense", "K", "kappa(T)", "optimizer", "best lr", "steps", "slowdown", "reference", "<= ref"],
                [[d["defense"], f"{d['K']:g}", f"{d['kappa_T']:.4g}", d["optimizer"], f"{d['best_lr']:.3g}", _steps(d),
                  _slow(d), "-" if d["reference"] is None else f"{d['reference']:.3g} ({d['reference_formula']})",
                  {None: "-", True: "yes", False: "no"}[d["within_reference"]]] for d in rows])
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


def _slowdown_figure(label: str, rows: Sequence[dict[str, Any]]) -> Figure:
    from convrate.reports.builder import png, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    groups: dict[tuple[str, str], list[tuple[float, float, bool]]] = {}
    kap: dict[float, float] = {}
    for d in rows:
        if d["defense"] != "none" and d["slowdown"] is not None:
            groups.setdefault((d["defense"], d["optimizer"]), []).append((d["K"], d["slowdown"], d["slowdown_is_lower_bound"]))
            kap[d["K"]] = max(kap.get(d["K"], 0.0), d["kappa_T"])
    for (dfn, opt), pts in sorted(groups.items()):
        pts.sort()
        line, = ax.loglog([1] + [k for k, _, _ in pts], [1] + [v for _, v, _ in pts], "o-", label=f"{opt}, {dfn}")
        lb = [(k, v) for k, v, lower in pts if lower]
        if lb:
            ax.loglog([k for k, _ in lb], [v for _, v in lb], "^", color=line.get_color(), markersize=9)
    if kap:
        ks = sorted(kap)
        ax.loglog([1] + ks, [1] + [kap[k] for k in ks], "k:", label="kappa(T)")
        ax.loglog([1] + ks, [1] + [kap[k] ** 2 for k in ks], "k--", label="kappa(T)^2")
    ax.axhline(1, color="grey", lw=0.5)
    ax.set_xlabel("defense strength K")
    ax.set_ylabel("slowdown (steps ratio)")
    ax.set_title(f"{label}: slowdown vs K (triangles: lower bounds)")
    ax.legend(fontsize=7, ncol=2)
    name = label.split(" (")[0].lower().replace(" ", "_")
    return Figure(f"slowdown_{name}.png", png(fig), f"{label}: measured slowdown at the best learning rate vs K, "
                                                    "with the kappa(T) and kappa(T)^2 references.")


def _curves_figure(label: str, rows: Sequence[dict[str, Any]], target: float) -> Figure:
    from convrate.reports.builder import png, pyplot

    plt = pyplot()
    opts = list(dict.fromkeys(d["optimizer"] for d in rows))
    fig, axes = plt.subplots(1, len(opts), figsize=(4 * len(opts), 3.4), squeeze=False)
    for ax, opt in zip(axes[0], opts):
        for d in rows:
            if d["optimizer"] == opt:
                tag = "undefended" if d["defense"] == "none" else f"{d['defense']} K={d['K']:g}"
                ax.semilogy(range(len(d["losses"])), d["losses"], label=f"{tag} (lr {d['best_lr']:.2g})", lw=1)
        ax.axhline(target, color="k", ls=":", lw=0.8)
        ax.set_title(opt)
        ax.set_xlabel("step")
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("training loss")
    name = label.split(" (")[0].lower().replace(" ", "_")
    return Figure(f"curves_{name}.png", png(fig), f"{label}: loss curves of the attacks at each run's best "
                                                  "learning rate (dotted: target).")


SECTIONS: list[tuple[str, Any]] = [("slowdown", slowdown_section)]
