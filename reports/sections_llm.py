"""Decoder LLMs: the zoo Llama (``llama-tiny``: GQA, RoPE, SwiGLU, RMSNorm) through the statements the
report measures on real networks.

Section "llm" (planned: one job per piece, one per learning-rate search):

* **T1/T2** on the next-token loss (``models.checks``, float64 with the exact decoder path), one record
  per group kind: SpecDef K = 100 on the RoPE-QK (S4), V/O (S5), SwiGLU (S6) and RMSNorm (S7) groups; a
  Haar rotation of the residual stream of the folded model (S7; its FPLR space: every parameter but the
  norm weights); a random permutation of every KV group, head and MLP unit (P);
* **statement O** (``llm_rotation.adam_under_rotation``): under Haar residual rotations the first Adam
  step is -lr f(T g), the first-order decrease ratio lies in O's interval, GD's loss curve is unchanged
  within its rounding allowance and Adam's is not;
* **function preservation per dtype**: the largest safe K per group kind and for all groups together
  (``defense.largest_safe_strengths``; bf16 is the release dtype of real checkpoints);
* **slowdown vs K** per optimizer (``experiments.sweep_run``; LoRA through peft; in FULL the affordable
  second-order attackers) with the figures of the slowdown section;
* **Hessian extremes** (Lanczos with residuals, Hutchinson trace: ``sections_spectra``) undefended,
  defended, R1 (in phi) and R2.

Section "llm-recovery" (requires "llm"): R1 and R2 on the sweep (``sections_recovery.recovery_job``, in
float64 through the exact decoder path) and R1's cost against its bound.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from convrate.reports.builder import Planned
from convrate.reports.document import Figure, Section

if TYPE_CHECKING:
    from convrate.models.experiments import SweepRun
    from convrate.reports.builder import Context
    from convrate.reports.profiles import LLMProfile, NetSweep

LABEL = "zoo Llama"
#: SpecDef strength of the T1/T2 records (the laws hold for every element; a strong one tests them)
LAW_K = 100.0
KINDS = ("rope-qk", "gqa-vo", "swiglu", "rmsnorm")
#: Adam's learning rate for statement O (the sweep's best on this model; 1e-2 makes Adam's loss rise)
ADAM_LR = 1e-3
O_PRECISION = ("float64 (exact decoder path); first step: 16 u lr + 2 u |theta_1| per entry; GD curve: the "
               "rounding of T theta propagated through the steps (llm_rotation.adam_under_rotation)")


# ---------------------------------------------------------------- the network
@lru_cache(maxsize=None)
def llama_network(p: "LLMProfile", seed: int, law: bool = False) -> tuple[Any, Any]:
    """(the zoo Llama, its ``lm-text`` task): the attack task (``sequences`` x ``tokens``) or, with
    ``law``, the small float64 batch of the laws, O and the spectra."""
    from convrate.models import zoo
    from convrate.models.tasks import task_for

    m = zoo.llama_tiny()
    n, L = (p.law_sequences, p.law_tokens) if law else (p.sequences, p.tokens)
    return m, task_for(m, "lm-text", seed, max_length=L, sequences=n)


@lru_cache(maxsize=4)
def _attacked(p: "LLMProfile", seed: int, defense: str, K: float) -> tuple[Any, float]:
    from convrate.models.experiments import released_model

    model, task = llama_network(p, seed)
    released, kappa = released_model(model, defense, K, seed)
    return task.head(released.module), kappa


@dataclass
class LlamaSweep:
    """The zoo Llama's sweep as ``sections_recovery.recovery_job`` reads a ``SweepRecord``: label,
    settings, runs, and the model, task and wrap rebuilt where needed."""

    label: str
    cfg: "NetSweep"
    llm: "LLMProfile"
    seed: int
    runs: list["SweepRun"]

    @property
    def model(self) -> Any:
        return llama_network(self.llm, self.seed)[0]

    @property
    def task(self) -> Any:
        return llama_network(self.llm, self.seed)[1]

    @property
    def wrap(self) -> Any:
        return self.task.head


# ---------------------------------------------------------------- jobs
def sweep_job(p: "LLMProfile", seed: int, key: str, defense: str, K: float, optimizer: str) -> "SweepRun":
    """One learning-rate search of the first-order (``key`` "sweep") or second-order ("so") sweep."""
    from convrate.models.experiments import sweep_run
    from convrate.models.runtime import single_thread

    cfg = p.sweep if key == "sweep" else p.so
    model, task = llama_network(p, seed)
    with single_thread():
        attacked, kappa = _attacked(p, seed, defense, K)
        return sweep_run(attacked, task, model.kind, defense, K, kappa, optimizer, cfg.target, cfg.search, seed,
                         device="cpu")


def _law_records(model: Any, seed: int) -> list[tuple[str, Any, Any, list[str] | None]]:
    """(kind, attacked module, record, parameters or None = all) per group kind (module doc)."""
    import torch

    from convrate.models.defense import SpecDef
    from convrate.models.families import discover_symmetries, llama
    from convrate.models.llm_rotation import folded
    from convrate.models.symmetry import TorchReparameterization, random_element
    from convrate.models.tasks import NextTokenLM

    lm = NextTokenLM(model.module)  # parameters encoder.<name>, as every attack sees them
    syms = discover_symmetries(lm, permutations=True)
    g = torch.Generator().manual_seed(seed)
    out = [(kind, lm, SpecDef(LAW_K).reparameterization(model.with_module(lm), [s for s in syms if s.kind == kind]),
            None) for kind in KINDS]
    module, _ = folded(model)
    lmf = NextTokenLM(module)
    rot = llama.residual_rotation(lmf)
    free = [n for n, _ in lmf.named_parameters() if n not in rot.domain_params]
    out.append(("residual-rotation", lmf, TorchReparameterization([(rot, random_element(rot, g))]), free))
    perms = [(s, random_element(s, g)) for s in syms if s.element_kind == "permutation"]
    out.append(("permutations", lm, TorchReparameterization(perms), None))
    return out


def laws_job(p: "LLMProfile", seed: int) -> list[dict[str, Any]]:
    """T1 and T2 per group kind on the float64 next-token loss: check dicts."""
    from convrate.models.checks import check_t1, check_t2
    from convrate.models.runtime import single_thread

    model, task = llama_network(p, seed, law=True)
    out = []
    with single_thread():
        for kind, net, rec, params in _law_records(model, seed):
            what = (f"zoo Llama, {kind} ({len(rec.items)} groups, kappa(T)={rec.kappa_T(params):.3g}), next-token "
                    f"cross-entropy on {p.law_sequences} x {p.law_tokens} tokens")
            for f in (check_t1, check_t2):
                out.append(f(net, rec, task.X_train, task.y_train, loss="cross_entropy", params=params, device="cpu",
                             instance=what).to_dict())
    return out


def rotation_job(p: "LLMProfile", seed: int) -> dict[str, Any]:
    """Statement O measured (``adam_under_rotation``) and its checks."""
    from convrate.models.llm_rotation import adam_under_rotation
    from convrate.theory.core import compare

    model, task = llama_network(p, seed, law=True)
    res = adam_under_rotation(model, task.X_train, rotations=p.rotations, steps=p.rotation_steps, seed=seed,
                              adam_lr=ADAM_LR)
    lo, hi = res["ratio_bounds"]
    checks = []
    for i, r in enumerate(res["per_rotation"]):
        inst = f"zoo Llama (folded), Haar rotation {i} of the residual stream"
        checks += [
            compare("O", f"{inst}: first Adam step vs -lr f(T g), max excess", r["first_step_excess"], "<=", 0.0,
                    precision=O_PRECISION),
            compare("O", f"{inst}: decrease ratio ||Tg||_1/||g||_1 outside [{lo:.4g}, {hi:.4g}]",
                    max(lo - r["ratio"], r["ratio"] - hi), "<=", 0.0, precision="float64 sums of |g| (relative 1e-13)",
                    err=1e-12 * hi),
            compare("O", f"{inst}: GD loss curve vs the unrotated run, excess over the rounding allowance",
                    r["gd_excess"], "<=", 0.0, precision=O_PRECISION),
            compare("O", f"{inst}: Adam's loss after one step vs the unrotated run (Adam is not rotation "
                    "invariant)", abs(r["adam_losses"][1] - res["adam_reference_losses"][1]), ">=",
                    1e3 * res["gd_allowance"][1], precision=O_PRECISION,
                    detail="bound: 1000 x GD's rounding allowance after one step")]
    return {"result": res, "checks": [c.to_dict() for c in checks]}


def precision_job(p: "LLMProfile", seed: int) -> dict[str, Any]:
    """Largest safe SpecDef K per group kind (and all continuous groups) and dtype."""
    from convrate.models.defense import SpecDef, largest_safe_strengths
    from convrate.models.families import discover_symmetries
    from convrate.models.runtime import single_thread

    model, _ = llama_network(p, seed)
    syms = discover_symmetries(model)
    out = {}
    with single_thread():
        for kind in (*KINDS, "all"):
            mine = syms if kind == "all" else [s for s in syms if s.kind == kind]
            out[kind] = largest_safe_strengths(SpecDef(2.0), model, K_max=p.K_max, symmetries=mine)
    return out


def spectra_job(p: "LLMProfile", seed: int, K: float) -> list[dict[str, Any]]:
    """Hessian extremes and trace (all parameters, float64 exact path) undefended, SpecDef K, R1, R2."""
    from convrate.models.curvature import Objective
    from convrate.models.runtime import single_thread
    from convrate.reports.sections_spectra import _states, _summary

    model, task = llama_network(p, seed, law=True)
    out = []
    with single_thread():
        for name, mod in _states(model, K):
            obj = Objective(task.head(mod), task.X_train, task.y_train, loss="cross_entropy", device="cpu")
            out.append({"state": name, **_summary(obj, False, seed, p.spectra_steps, p.spectra_probes)})
    return out


# ---------------------------------------------------------------- section "llm"
def _jobs(p: "LLMProfile", seed: int, key: str) -> list[tuple[Any, tuple]]:
    from convrate.models.experiments import sweep_jobs

    cfg = p.sweep if key == "sweep" else p.so
    if cfg is None:
        return []
    return [(sweep_job, (p, seed, key, d, K, o)) for d, K, o in sweep_jobs(cfg.defenses, cfg.Ks, cfg.optimizers)]


def _parts(ctx: "Context") -> list[tuple[Any, tuple]]:
    p = ctx.profile.llm
    if p is None:
        return []
    return (_jobs(p, ctx.seed, "sweep") + _jobs(p, ctx.seed, "so")
            + [(laws_job, (p, ctx.seed)), (rotation_job, (p, ctx.seed)), (precision_job, (p, ctx.seed)),
               (spectra_job, (p, ctx.seed, max(p.sweep.Ks)))])


def _safe(v: dict[str, Any]) -> str:
    return f"{v['safe_K']:.3g}" + (" (no failure)" if v["passes_at_K_max"] else "")


def _assemble(ctx: "Context", results: list[Any]) -> Section:
    from convrate.models.experiments import set_slowdowns
    from convrate.reports.sections_laws import _row
    from convrate.reports.sections_slowdown import _curves_figure, _EXPLAIN, _rows, _slowdown_figure, _table

    s = Section("Decoder LLM: the zoo Llama (S4-S7, P, O, PREC, slowdown, curvature)")
    p = ctx.profile.llm
    if p is None:
        s.para("Not in this profile.")
        s.data = {}
        return s
    n1, n2 = len(_jobs(p, ctx.seed, "sweep")), len(_jobs(p, ctx.seed, "so"))
    runs, so_runs = list(results[:n1]), list(results[n1:n1 + n2])
    laws, rotation, precision, spectra = results[n1 + n2:]
    model, task = llama_network(p, ctx.seed)
    n_params = sum(q.numel() for q in model.module.parameters())
    s.para(f"The zoo Llama (`llama-tiny`): {n_params} parameters, 2 decoder layers, hidden 64, 4 query / 2 KV "
           "heads of width 16, SwiGLU 176, RMSNorm, untied, float32 release. Every float64 computation below runs "
           "RMSNorm and softmax in float64 (`decoder_float64.exact_float64`; transformers' eager decoder rounds "
           "both to float32 otherwise).")

    law_rows = ctx.record(laws)
    s.para(f"**Transformation laws (T1, T2) per group kind** on the next-token loss ({p.law_sequences} blocks of "
           f"{p.law_tokens} tokens of the attack text), float64: SpecDef K = {LAW_K:g} on each continuous kind "
           "(kappa(T) = K on one kind: no tensor carries a row and a column group of the same kind), a Haar "
           "rotation of the folded model's residual stream (T1/T2 in its FPLR space: every parameter but the "
           "norm weights), a random permutation of every KV group, head and MLP unit. Measured residual vs 0 "
           "within the round-off allowance err.")
    s.table(["statement", "instance", "measured", "rel", "bound", "err", "holds", "detail"], [_row(d) for d in law_rows])

    o, o_checks = rotation["result"], ctx.record(rotation["checks"])
    s.para(f"**Statement O** (Adam under rotations of the residual stream; {o['rotations']} Haar rotations, "
           f"{o['steps']} steps, Adam lr {o['adam_lr']:g}, GD lr {o['gd_lr']:g}, {o['n_parameters']} parameters): "
           f"O predicts the first-order decrease ratio ||Tg||_1 / ||g||_1 in [{o['ratio_bounds'][0]:.4g}, "
           f"{o['ratio_bounds'][1]:.4g}] with Haar mean {o['haar_mean_ratio']:.4g}; measured mean "
           f"{o['mean_ratio']:.4g} (s.d. {o['ratio_std']:.2g}). GD and heavy ball commute with every orthogonal T, "
           "Adam only with signed permutations.")
    s.table(["rotation", "ratio", "first-step excess", "GD max rel. difference", "GD excess", "Adam final / unrotated"],
            [[i, f"{r['ratio']:.5g}", f"{r['first_step_excess']:.2g}", f"{r['gd_max_relative_difference']:.2g}",
              f"{r['gd_excess']:.2g}", f"{r['adam_final_ratio']:.5g}"] for i, r in enumerate(o["per_rotation"])])
    s.table(["statement", "instance", "measured", "rel", "bound", "holds"],
            [[d["statement"], d["instance"], f"{float(d['measured']):.3g}", d["relation"], f"{float(d['bound']):.3g}",
              "yes" if d["holds"] else "NO"] for d in o_checks])

    s.para(f"**Function preservation per dtype**: the largest SpecDef strength K (geometric profile, searched up "
           f"to {p.K_max:g}, to 1 %) whose release keeps the max relative logit deviation on probe inputs within "
           "the tolerance of the dtype (or twice the undefended release's own deviation there), per group kind. "
           "A release in a dtype is its parameters in that dtype with the rotary frequencies in float32, as "
           "transformers loads it (`defense.release_cast`); bf16 is what real checkpoints ship.")
    dtypes = list(next(iter(precision.values())))
    s.table(["group kind", *[f"safe K {d}" for d in dtypes]],
            [[k, *[_safe(v[d]) for d in dtypes]] for k, v in precision.items()])
    s.figure(_precision_figure(precision))

    s.para(f"**Slowdown vs K** (SpecDef on every continuous group: kappa(A) = K per group and kappa(T) = K^2, since "
           "an RMSNorm scaling of the input columns of q/k/v/gate/up multiplies with the row groups there). Task: "
           f"{task.description}; target loss {p.sweep.target:g}, budget {p.sweep.search.budget} steps. LoRA "
           f"(rank 4 on q k v o gate up down) through peft. " + _EXPLAIN)
    data: dict[str, Any] = {"parameters": n_params, "task": task.description, "laws": law_rows,
                            "rotation": o, "rotation_checks": o_checks, "precision": precision}
    for key, cfg, rs in (("sweep", p.sweep, runs), ("so", p.so, so_runs)):
        if not rs:
            continue
        set_slowdowns(rs)
        rows = _rows(rs)
        data[key] = {"target": cfg.target, "budget": cfg.search.budget, "grid": list(cfg.search.grid), "runs": rows}
        label = LABEL if key == "sweep" else f"{LABEL} (second-order)"
        if key == "so":
            s.para("**Second-order and preconditioned attackers** (the affordable ones on this model: K-FAC's "
                   "vocabulary-sized factors cost seconds per step) at the same target.")
        _table(s, rows)
        prefix = "llm_" if key == "sweep" else "llm_so_"
        s.figure(_slowdown_figure(label, rows, prefix))
        s.figure(_curves_figure(label, rows, cfg.target, prefix))
    ctx.shared["llm_sweep"] = LlamaSweep(LABEL, p.sweep, p, ctx.seed, runs)

    K = max(p.sweep.Ks)
    s.para(f"**Hessian extremes** of the float64 next-token loss ({p.law_sequences} x {p.law_tokens} tokens, all "
           f"parameters): extreme Ritz values of {p.spectra_steps} Lanczos steps with fresh-product residuals, "
           f"Hutchinson trace ({p.spectra_probes} probes); undefended, SpecDef K = {K:g}, R1 (in phi: T2 makes it "
           "the undefended Hessian) and R2.")
    s.table(["state", "n", "lambda_max", "+-", "lambda_min", "+-", "trace (Hutchinson)", "+-"],
            [[r["state"], r["n"], f"{r['lambda_max']:.5g}", f"{r['lambda_max_residual']:.1e}", f"{r['lambda_min']:.5g}",
              f"{r['lambda_min_residual']:.1e}", f"{r['trace']:.5g}", f"{r['trace_stderr']:.2g}"] for r in spectra])
    data["spectra"] = spectra
    s.data = data
    return s


def _precision_figure(precision: dict[str, dict[str, dict[str, Any]]]) -> Figure:
    """Largest safe K per group kind (groups of bars) and dtype (bars); hatched: no failure up to K_max."""
    from convrate.reports.builder import png, pyplot

    plt = pyplot()
    kinds = list(precision)
    dtypes = list(precision[kinds[0]])
    fig, ax = plt.subplots(figsize=(7, 3.6))
    w = 0.8 / len(dtypes)
    for j, d in enumerate(dtypes):
        xs = [i + (j - (len(dtypes) - 1) / 2) * w for i in range(len(kinds))]
        vals = [max(precision[k][d]["safe_K"], 1.0) for k in kinds]
        bars = ax.bar(xs, vals, w, label=d)
        for b, k in zip(bars, kinds):
            if precision[k][d]["passes_at_K_max"]:
                b.set_hatch("//")
    ax.set_yscale("log")
    ax.set_xticks(range(len(kinds)), kinds, fontsize=8)
    ax.set_ylabel("largest safe K")
    ax.set_title("zoo Llama: largest safe SpecDef K per group kind and dtype (hatched: none failed)", fontsize=9)
    ax.legend(fontsize=7)
    return Figure("llm_safe_K.png", png(fig), "zoo Llama: the largest SpecDef strength whose release keeps the logits "
                                              "within the dtype's tolerance, per group kind and dtype.")


# ---------------------------------------------------------------- section "llm-recovery"
def cost_job() -> dict[str, Any]:
    """R1's extra parameters for SpecDef on every continuous group of the zoo Llama, and the bound."""
    from convrate.models import zoo
    from convrate.models.defense import SpecDef
    from convrate.models.recovery import r1_extra_parameters

    model = zoo.llama_tiny()
    cost = r1_extra_parameters(SpecDef(10).reparameterization(model))
    total = sum(q.numel() for q in model.module.parameters())
    return {"network": LABEL, "groups": cost["groups"], "model_parameters": total,
            "defended_parameters": cost["pair_parameters"], "extra_parameters": cost["extra_parameters"],
            "bound": float(cost["bound"]), "bound_exact": str(cost["bound"]), "within_bound": cost["within_bound"],
            "percent_of_model": 100.0 * cost["extra_parameters"] / total}


def _recovery_parts(ctx: "Context") -> list[tuple[Any, tuple]]:
    from convrate.reports.sections_recovery import recovery_job

    rec = ctx.shared.get("llm_sweep")
    if rec is None:
        return []
    keep = [r for r in rec.runs if r.optimizer in ctx.profile.llm.recovery_optimizers]
    return [(recovery_job, (replace(rec, runs=keep), ctx.seed)), (cost_job, ())]


def _recovery_assemble(ctx: "Context", results: list[Any]) -> Section:
    from convrate.reports.sections_recovery import _steps
    from convrate.theory.core import compare

    s = Section("Decoder LLM: recoveries on the zoo Llama (R1, R2) and their cost")
    if not results:
        s.para("Not in this profile.")
        s.data = {}
        return s
    (rows, checks), cost = results
    checks = checks + [compare("R1", f"{LABEL}: R1 extra parameters vs the linear bound", cost["extra_parameters"],
                               "<=", Fraction(cost["bound_exact"]), precision="exact integer / rational",
                               detail=f"{cost['groups']} groups").to_dict()]
    recorded = ctx.record(checks)
    s.para("As in the recoveries section, on the zoo Llama's sweep, in float64 through the exact decoder path: R1 "
           "trains phi with theta' = T phi at the undefended run's best learning rate (LoRA: the in-project adapters "
           "on phi, drawn as peft draws them); R2 canonicalizes the defended release (RoPE-commutant and V/O "
           "factors balanced, SwiGLU and RMSNorm diagonals; the groups share tensors, so they are swept jointly and "
           "compared by their factors) and attacks it at the rate searched on the canonical undefended model.")
    s.table(["defense", "K", "optimizer", "slowdown", "R1 steps / undefended", "R1 curve gap", "R2 steps",
             "R2 canonical K=1", "R2 curve gap", "R2 / undefended best"],
            [[r["defense"], f"{r['K']:g}", r["optimizer"],
              "-" if r["slowdown"] is None else (">= " if r["slowdown_is_lower_bound"] else "") + f"{r['slowdown']:.3g}",
              f"{_steps(r['r1_steps'], r['budget'])} / {_steps(r['undefended_steps'], r['budget'])}",
              f"{r['r1_curve_gap']:.2g}", _steps(r["r2_steps"], r["budget"]),
              _steps(r["r2_canonical_undefended_steps"], r["budget"]), f"{r['r2_curve_gap']:.2g}",
              "-" if r["r2_vs_undefended"] is None else f"{r['r2_vs_undefended']:.3g}"] for r in rows])
    s.para(f"R1's cost: {cost['extra_parameters']} extra parameters (the frozen A and A^-1 of {cost['groups']} groups: "
           f"{cost['percent_of_model']:.3g} % of the model's {cost['model_parameters']}) against the bound "
           f"{cost['bound']:.6g}; R2 costs none.")
    s.table(["statement", "instance", "measured", "rel", "bound", "holds"],
            [[d["statement"], d["instance"], f"{float(d['measured']):.3g}", d["relation"], f"{float(d['bound']):.3g}",
              "yes" if d["holds"] else "NO"] for d in recorded])
    s.data = {"runs": rows, "checks": recorded, "cost": cost}
    return s


llm_section = Planned(_parts, _assemble)
llm_recovery_section = Planned(_recovery_parts, _recovery_assemble)
SECTIONS: list[tuple[Any, ...]] = [("llm", llm_section), ("llm-recovery", llm_recovery_section, ("llm",))]

