"""Slowdown vs defense strength K per optimizer on the digits MLP, the digits CNN and MiniLM,
with the attacks' loss curves (``models.experiments``: one job per (network, defense, K,
optimizer) learning-rate search, run in parallel by the report builder)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Sequence

from convrate.reports.document import Figure, Section

if TYPE_CHECKING:
    from convrate.models.experiments import SweepRun
    from convrate.reports.builder import Context
    from convrate.reports.profiles import NetSweep, ReportProfile


def network_labels(p: "ReportProfile") -> list[tuple[str, "NetSweep"]]:
    """(label, sweep settings) of the swept networks, in display order."""
    return [("digits MLP", p.mlp), ("digits CNN", p.cnn), (f"MiniLM ({p.minilm_sweep_layers} layer(s))", p.minilm)]


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


def sweep_job(p: "ReportProfile", seed: int, label: str, defense: str, K: float, optimizer: str
              ) -> tuple[str, "SweepRun", str]:
    """One learning-rate search of a sweep: (label, the run, the task's description)."""
    from convrate.models.experiments import sweep_run
    from convrate.models.runtime import single_thread

    cfg = dict(network_labels(p))[label]
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


def _parts(ctx: "Context") -> list[tuple[Any, tuple]]:
    """One job per search; the long ones (CNN, MiniLM) first, so that they start early."""
    from convrate.models.experiments import sweep_jobs

    jobs = []
    for label, cfg in network_labels(ctx.profile):
        jobs += [(sweep_job, (ctx.profile, ctx.seed, label, d, K, o)) for d, K, o in
                 sweep_jobs(cfg.defenses, cfg.Ks, cfg.optimizers)]
    return sorted(jobs, key=lambda j: j[1][2] == "digits MLP")


def _steps(d: dict[str, Any]) -> str:
    return str(d["steps"]) if d["reached"] else f">{d['budget']}"


def _slow(d: dict[str, Any]) -> str:
    if d["slowdown"] is None:
        return "-"
    return (">= " if d["slowdown_is_lower_bound"] else "") + f"{d['slowdown']:.3g}"


def _assemble(ctx: "Context", results: list[tuple[str, "SweepRun", str]]) -> Section:
    from convrate.models.experiments import set_slowdowns, sweep_jobs, within_reference

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
    by = {(label, r.defense, r.K, r.optimizer): (r, desc) for label, r, desc in results}
    for label, cfg in network_labels(ctx.profile):
        runs = [by[label, d, K, o][0] for d, K, o in sweep_jobs(cfg.defenses, cfg.Ks, cfg.optimizers)]
        description = by[label, "none", 1.0, cfg.optimizers[0]][1]
        set_slowdowns(runs)
        sweeps[label] = SweepRecord(label, cfg, ctx.profile, ctx.seed, runs)
        rows = [r.to_dict() for r in runs]
        for d, r in zip(rows, runs):
            d["within_reference"] = within_reference(r)
        data["networks"][label] = {"target": cfg.target, "budget": cfg.search.budget, "grid": list(cfg.search.grid),
                                   "task": description, "runs": rows}
        s.para(f"**{label}**: task {description}; target loss {cfg.target:g}, budget {cfg.search.budget} steps.")
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


def _planned() -> Any:
    from convrate.reports.builder import Planned

    return Planned(_parts, _assemble)


slowdown_section = _planned()
SECTIONS: list[tuple[str, Any]] = [("slowdown", slowdown_section)]
