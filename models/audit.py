"""The audit of a claimed training-resistance defense (``convrate audit``), as one plain dict.

``audit(claimed, reference)`` returns a JSON-ready dict; it is ``audit.json`` and the only
source of the numbers in ``audit.md`` / ``audit.html``. Stages:

1. **Function deviation** (with a reference): max|f(x; theta') - f(x; theta)| / max|f(x; theta)|
   on ``profile.probes`` deterministic probe inputs (``LoadedModel.probe_inputs``), both
   models evaluated in float64; tolerance ``defense.PRESERVATION_TOLERANCE`` of the coarser
   dtype. **Weight distance** max_p ||theta'_p - theta_p|| / ||theta'_p||.
2. **FPLR fit** (``fplr.infer_reparameterization``): T, its residual, kappa(T); then the class
   (``audit_verdict.classify``).
3. **Curvature** of reference and claimed on the task's training loss (``curvature.Objective``,
   float64): ``profile.lanczos_steps`` Lanczos steps (``curvature.lanczos_run``: the full basis
   when it fits in 256 MiB, else O(n) memory) give the top and bottom Ritz pairs, each with the
   residual r = ||H y - lambda y|| of a fresh product (some eigenvalue lies within r), and all
   Ritz values (the spectra figure); tr(H) by Hutchinson with its standard error; the peak
   memory of the call. Parameters: all (zoo); the defended attention pairs (BERT). BERT models
   of the default profile are evaluated in micro-batches (``profile.micro_batch``), the
   attacks' full-batch gradients too (``curvature.distributed.BatchReduction``).
   With T found, T2 and Ostrowski predict lambda_max(H') in [lambda_max(H) / sigma_max(T)^2,
   lambda_max(H) / sigma_min(T)^2] (``theory.bounds.ostrowski_interval``); reported with the
   measured value (both are Lanczos estimates, so this is a consistency check, not a proof).
4. **Attacks** for each optimizer of the profile (SGD, Adam): the target is chosen from the
   baseline's own attack (the reference; without one, the claimed model's canonical point):
   a pilot runs every learning rate of the grid for ceil(pilot_fraction * budget) steps and
   takes L_min, the lowest loss seen; target = L_0^(1-p) L_min^p with p = TARGET_PROGRESS,
   the fraction p of the progress in log-loss (losses span orders of magnitude; L_min = 0
   falls back to L_0 - p (L_0 - L_min)). Since L_min < target < L_0, the baseline reaches
   the target within the pilot budget at some grid lr, and a slowdown up to
   budget / pilot_budget is measured exactly (beyond it a lower bound).
   Then ``attacks.lr_search`` (same grid, refinement, seed, budget; successive halving with
   incumbent pruning, which returns the unpruned search's best lr) on the baseline, the
   claimed model, R2 (the claimed model canonicalized) and R1 (theta' = T phi with the
   inferred T, class fplr only); the baseline's grid trials are read off the pilot's runs
   where they decide them, and the loss curves are the best trials' own. ``work`` in the
   result says what was run and what was saved.
5. **Recoveries**: R2 ``recovery.canonicalize`` (0 extra parameters), with the distance of
   claimed and reference from their canonical points and the gap between the two canonical
   weights (R2 predicts 0 for an FPLR pair, up to round-off); R1 ``recovery.r1_module``.
6. **Verdict** with its evidence (``audit_verdict.decide``).

Tasks: ``digits-relabel`` (``tasks.digits_relabel_task``, pixels / 16 as the zoo's digits
models are trained; zoo models with 64 inputs or 1x8x8 images and 10 outputs) and ``text``
(``tasks.text_task`` with the MiniLM tokenizer, for BERT models with MiniLM's vocabulary: the
encoder under a fresh linear head seeded by ``seed``, embeddings frozen, as the report's
``experiments.encoder_wrap``), and for decoder LMs ``lm-text`` / ``lm-tokens`` (``lm_tasks``: next-token
prediction in blocks of ``text_max_length`` tokens, every parameter trained under
``tasks.NextTokenLM``). ``auto`` picks by architecture. Units: losses are mean
cross-entropies (nats), eigenvalues in loss units per parameter unit squared, steps are
optimizer steps.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from convrate.errors import ConvrateError, InvalidInputError
from convrate.models.attacks import LRSearchResult, Slowdown, get_spec, log_grid, lr_search, make_attack
from convrate.models.audit_verdict import RECOVERY_THRESHOLD, SLOWDOWN_THRESHOLD, classify, decide, ratio_json
from convrate.models.curvature import MemoryMeter, Objective, hutchinson_trace, lanczos_run
from convrate.models.curvature.distributed import BatchReduction
from convrate.models.defense import PRESERVATION_TOLERANCE, _reference, _rel_dev
from convrate.models.experiments import encoder_wrap
from convrate.models.fplr import (check_same_architecture, float64_parameters, infer_reparameterization,
                                  parameter_distance, unit_roundoff)
from convrate.models.io import HF_CONFIG, LoadedModel, _read_json, load_model
from convrate.models.recovery import R1Module, canonicalize, distance_to_canonical, r1_extra_parameters, r1_module
from convrate.models.symmetry import TorchReparameterization
from convrate.models.families import discover_symmetries
from convrate.models.runtime import is_small, single_thread
from convrate.models.tasks import TASKS, Task, is_decoder, task_for, task_name_for
from convrate.theory.bounds import ostrowski_interval

SCHEMA = "convrate-audit/1"
#: fraction of the baseline's best pilot progress log L_0 - log L_min the target asks for
TARGET_PROGRESS = 0.9

Progress = Callable[[str, int, int], None]


class AuditError(ConvrateError):
    """The audit cannot be carried out on these inputs (no task, no progress, ...)."""


# ---------------------------------------------------------------- profiles
@dataclass(frozen=True)
class AuditProfile:
    """Budgets of one audit: ``budget`` steps per attack run; lr grids
    ``log_grid(lo, hi, per_decade)`` per model format and optimizer (``lr_ranges``: (fmt,
    optimizer, lo, hi), fmt "zoo", "hf" (BERT) or "lm" (decoder LMs; "hf" when the profile has
    no "lm" range: ``format_of``)) with ``refine`` points each
    side of the best; ``pilot_fraction`` of the budget for the target pilot; Lanczos steps,
    Hutchinson samples, probe inputs; text task size (decoders: block length
    ``text_max_length``); BERT: keep the first ``bert_layers`` encoder layers (None: all;
    decoders are never truncated)."""

    name: str
    budget: int
    pilot_fraction: float
    optimizers: tuple[str, ...]
    lr_ranges: tuple[tuple[str, str, float, float], ...]
    per_decade: int
    refine: int
    lanczos_steps: int
    trace_samples: int
    probes: int
    text_per_class: int | None
    text_max_length: int
    bert_layers: int | None
    #: Hugging Face models: examples per forward pass of the full-batch gradients (attacks) and of
    #: the Hessian products (``curvature.distributed``; bounds memory, same sums); None: one pass
    micro_batch: int | None = None

    def format_of(self, model: LoadedModel) -> str:
        """The ``lr_ranges`` key of ``model``: "lm" for a decoder LM when the profile has "lm"
        ranges, else its ``fmt`` ("zoo" | "hf")."""
        if is_decoder(model) and any(f == "lm" for f, _, _, _ in self.lr_ranges):
            return "lm"
        return model.fmt

    def optimizers_for(self, fmt: str) -> tuple[str, ...]:
        """The profile's optimizers that apply to a model of format ``fmt``: those with a range."""
        have = {(f, o) for f, o, _, _ in self.lr_ranges}
        return tuple(o for o in self.optimizers if (fmt, o) in have)

    def grid(self, optimizer: str, fmt: str = "zoo") -> list[float]:
        """The learning rates tried for ``optimizer`` on a model of format ``fmt`` (zoo | hf)."""
        for f, o, lo, hi in self.lr_ranges:
            if (f, o) == (fmt, optimizer):
                return log_grid(lo, hi, self.per_decade)
        raise InvalidInputError(f"profile {self.name!r} has no learning-rate range for {optimizer!r} on {fmt!r} models")

    @property
    def pilot_budget(self) -> int:
        return max(1, math.ceil(self.pilot_fraction * self.budget))

    def minimum_work(self, fmt: str) -> dict[str, int]:
        """Work every audit of this profile does on a model of format ``fmt``, whatever the
        losses: ``pilot_steps`` = G = sum over the optimizers of |grid| (each pilot trial has no
        target and a budget >= 1, so it takes at least one step, even if it then diverges) and
        ``hvps`` = 2 (2 + 1 + trace_samples) Hessian-vector products (baseline and claimed model:
        the determinism check's two, Lanczos' first, one per Hutchinson sample). The pilot's
        steps are G * pilot_budget exactly when no pilot trial diverges; the searches, Lanczos'
        other steps and the Rayleigh-Ritz products come on top (they depend on the losses)."""
        grid_points = sum(len(self.grid(o, fmt)) for o in self.optimizers_for(fmt))
        return {"pilot_steps": grid_points, "pilot_steps_without_divergence": grid_points * self.pilot_budget,
                "hvps": 2 * (2 + 1 + self.trace_samples)}

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "grids": {f"{f}:{o}": self.grid(o, f) for f, o, _, _ in self.lr_ranges},
                "pilot_budget": self.pilot_budget}


#: the default profile's attackers: every registered one except the LoRA variants (``models.attacks``)
DEFAULT_ATTACKERS = ("sgd", "adam", "momentum", "adamw", "lbfgs", "lbfgs-wolfe", "newton-cg", "gauss-newton", "kfac",
                     "shampoo", "soap", "sophia", "muon")
#: their lr (damping for newton-cg, gauss-newton, kfac) ranges, zoo and Hugging Face models alike;
#: Gauss-Newton (CG on full GN products) applies to zoo models only
SECOND_ORDER_RANGES = (("momentum", 1e-5, 1.0), ("adamw", 1e-5, 1.0), ("lbfgs", 1e-4, 1.0), ("lbfgs-wolfe", 0.1, 1.0),
                       ("newton-cg", 1e-4, 10.0), ("gauss-newton", 1e-4, 10.0), ("kfac", 1e-4, 10.0),
                       ("shampoo", 1e-5, 1.0), ("soap", 1e-5, 1.0), ("sophia", 1e-5, 1.0), ("muon", 1e-5, 1.0))

PROFILES: dict[str, AuditProfile] = {
    "quick": AuditProfile("quick", budget=60, pilot_fraction=0.25, optimizers=("sgd", "adam"),
                          lr_ranges=(("zoo", "sgd", 1e-2, 10.0), ("zoo", "adam", 1e-3, 1.0),
                                     ("hf", "sgd", 1e-3, 1.0), ("hf", "adam", 1e-5, 1e-2),
                                     ("lm", "sgd", 1e-3, 10.0), ("lm", "adam", 1e-4, 1e-1)),
                          per_decade=1, refine=1, lanczos_steps=16, trace_samples=8, probes=8,
                          text_per_class=8, text_max_length=16, bert_layers=1),
    "default": AuditProfile("default", budget=400, pilot_fraction=0.25, optimizers=DEFAULT_ATTACKERS,
                            lr_ranges=(("zoo", "sgd", 1e-5, 10.0), ("zoo", "adam", 1e-5, 1.0),
                                       ("hf", "sgd", 1e-5, 10.0), ("hf", "adam", 1e-6, 1e-1),
                                       ("lm", "sgd", 1e-4, 10.0), ("lm", "adam", 1e-5, 1.0))
                            + tuple((f, o, lo, hi) for f in ("zoo", "hf", "lm") for o, lo, hi in SECOND_ORDER_RANGES
                                    if not (f != "zoo" and o == "gauss-newton")),
                            per_decade=2, refine=2, lanczos_steps=60, trace_samples=32, probes=16,
                            text_per_class=None, text_max_length=32, bert_layers=None, micro_batch=16),
}


def shape_of(profile: AuditProfile) -> AuditProfile:
    """``profile`` with its attackers, task, micro-batch and Lanczos mode (O(n) wherever the
    full basis of 8 steps exceeds ``FULL_BASIS_BYTES``) but the least work: one knob value per
    attacker (the low end of an lr range, the high end of a damping range: the mildest step),
    a budget of 2 steps for the pilot and the searches (SOAP's first step only sets up its
    preconditioner), no refinement, 8 Lanczos steps and 2 Hutchinson samples (the fewest
    ``hutchinson_trace`` takes). Every attacker then runs on every variant; the peak memory is
    the profile's (a fixed number of Lanczos vectors, optimizer states of fixed size)."""
    mild = tuple((f, o, x, x) for f, o, lo, hi in profile.lr_ranges
                 for x in [hi if get_spec(o).knob == "damping" else lo])
    return replace(profile, name=f"{profile.name}-shape", budget=2, pilot_fraction=1.0, lr_ranges=mild, refine=0,
                   lanczos_steps=8, trace_samples=2)


def get_profile(profile: str | AuditProfile) -> AuditProfile:
    if isinstance(profile, AuditProfile):
        return profile
    if profile not in PROFILES:
        raise InvalidInputError(f"unknown audit profile {profile!r} (supported: {', '.join(PROFILES)})")
    return PROFILES[profile]


# ---------------------------------------------------------------- loading
def load_for_audit(path: str | Path, profile: str | AuditProfile = "quick") -> LoadedModel:
    """``load_model`` with the profile's BERT truncation (first ``bert_layers`` layers;
    decoders whole)."""
    prof = get_profile(profile)
    p = Path(path)
    n_layers = None
    if prof.bert_layers is not None and (p / HF_CONFIG).is_file() and not (p / "arch.json").exists() \
            and _read_json(p / HF_CONFIG).get("model_type") == "bert":
        total = _read_json(p / HF_CONFIG).get("num_hidden_layers")
        if isinstance(total, int) and not isinstance(total, bool) and total > prof.bert_layers:
            n_layers = prof.bert_layers
    return load_model(p, n_layers=n_layers)


# ---------------------------------------------------------------- tasks
def attack_module(model: LoadedModel, module: nn.Module, task: Task, seed: int) -> nn.Module:
    """What the attacker fine-tunes: a zoo module itself; a BERT encoder (or its R1 module)
    under the task's fresh classification head with the embedding tables frozen
    (``experiments.encoder_wrap``, the report's convention; seed ``seed``, the same head for
    every variant); a decoder LM (or its R1 module) under ``tasks.NextTokenLM``, every
    parameter trained (as ``convrate attack``). Never modifies ``module``."""
    if model.fmt == "zoo":
        return module
    if is_decoder(model):  # a causal LM under its own shifted head (NextTokenLM); every parameter trains
        return task.head(module, seed=seed)
    if isinstance(module, R1Module):
        net = encoder_wrap(task, seed, freeze_embeddings=False)(module)
        net.encoder.phi.embeddings.requires_grad_(False)
        return net
    return encoder_wrap(task, seed)(module)


def _curvature_params(model: LoadedModel, net: nn.Module, group_params: Sequence[str]) -> list[str]:
    if model.fmt == "zoo":
        return [n for n, p in net.named_parameters() if p.requires_grad]
    return [f"encoder.{n}" for n in group_params]


# ---------------------------------------------------------------- pieces
def _jsonable(x: Any) -> Any:
    """Plain JSON types: non-finite floats -> None, Fractions -> float, tuples -> lists."""
    if isinstance(x, bool) or x is None or isinstance(x, (int, str)):
        return x
    if isinstance(x, (float, Fraction)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    if isinstance(x, Path):
        return str(x)
    return str(x)


def function_deviation(reference: LoadedModel, claimed: LoadedModel, n: int, seed: int) -> float:
    """max|f(x; theta') - f(x; theta)| / max|f(x; theta)| on ``n`` probe inputs, float64."""
    probes = reference.probe_inputs(n=n, seed=seed)
    return _rel_dev(_reference(claimed, probes), _reference(reference, probes))


def coarser_dtype(*dtypes: torch.dtype) -> torch.dtype:
    return max(dtypes, key=unit_roundoff)


def curvature(net: nn.Module, task: Task, params: Sequence[str], profile: AuditProfile, seed: int,
              device: str, micro_batch: int | None = None) -> dict[str, Any]:
    """Top / bottom Ritz pairs with fresh-product residuals, all Ritz values, Hutchinson trace,
    and the peak memory of the call (``curvature.MemoryMeter``). Lanczos keeps its basis when
    it fits in ``FULL_BASIS_BYTES`` (one pass), else runs in O(n) memory (two passes);
    ``micro_batch`` examples per forward pass (fresh double-backward products)."""
    obj = Objective(net, task.X_train, task.y_train, loss=task.loss, params=params, device=device,
                    micro_batch=micro_batch, hvp_method="double_backward" if micro_batch else None)
    with MemoryMeter(obj.device) as meter:
        obj.require_deterministic(seed=seed + 12345)
        run = lanczos_run(obj.hvp, obj.n, profile.lanczos_steps, top=1, bottom=1, basis="auto", seed=seed,
                          dtype=obj.dtype, device=obj.device, meter=meter)
        trace, se = hutchinson_trace(obj, samples=profile.trace_samples, seed=seed)
        loss = float(obj.loss().detach())
    pair = {e.which: {"value": e.value, "residual": e.residual} for e in run.top + run.bottom}
    return {"n_parameters": obj.n, "loss": loss, "lanczos_steps": run.steps, "lanczos_basis": run.basis,
            "products": obj.matvecs, "lambda_max": pair["LA"], "lambda_min": pair["SA"], "trace": trace,
            "trace_se": se, "ritz_values": list(run.ritz), "micro_batch": micro_batch, "memory": meter.report()}


def _ostrowski(ref_curv: Mapping[str, Any], cl_curv: Mapping[str, Any], record: TorchReparameterization,
               names: Sequence[str]) -> dict[str, Any]:
    lo, hi = record.singular_value_range(names)
    lam = ref_curv["lambda_max"]["value"]
    if lam <= 0:
        return {"applies": False, "note": "lambda_max(H) <= 0"}
    a, b = ostrowski_interval(lam, 1.0 / hi, 1.0 / lo)
    meas = cl_curv["lambda_max"]
    slack = meas["residual"] + ref_curv["lambda_max"]["residual"] / lo**2
    return {"applies": True, "measured": meas["value"], "interval": [float(a), float(b)], "slack": slack,
            "consistent": float(a) - slack <= meas["value"] <= float(b) + slack}


def _search_json(res: LRSearchResult, grid: Sequence[float]) -> dict[str, Any]:
    edge = res.best_lr <= min(grid) * (1 + 1e-9) or res.best_lr >= max(grid) * (1 - 1e-9)
    return {"best_lr": res.best_lr, "best_steps": res.best_steps, "reached": res.reached, "budget": res.budget,
            "best_lr_at_grid_edge": edge, "wall_s": res.wall_s, "steps_run": res.steps_run,
            "steps_unpruned": res.steps_unpruned, "trials_from_pilot": sum(t.source == "known" for t in res.table),
            "table": [{"lr": t.lr, "steps": t.steps, "diverged": t.diverged, "final_loss": t.final_loss,
                       "budget": t.budget, "stage": t.stage, "ran": t.ran, "source": t.source} for t in res.table]}


def pilot_target(net: nn.Module, task: Task, optimizer: str, grid: Sequence[float], budget: int, seed: int,
                 device: str, runs: dict[float, Any] | None = None, **attack_options: Any) -> dict[str, Any]:
    """target = L_0^(1 - p) L_min^p with p = TARGET_PROGRESS (L_0 - p (L_0 - L_min) when
    L_min = 0), L_min the lowest finite loss of the baseline over every grid lr within
    ``budget`` steps (module doc). ``runs`` collects the pilot's trajectories by lr (the
    baseline's search reads its grid trials off them: ``attacks.lr_search(known=...)``)."""
    l0, lmin, best_lr = None, math.inf, None
    steps = diverged = 0
    for lr in grid:
        traj = make_attack(optimizer, lr, budget, None, seed=seed, device=device, **attack_options).run(net, task)
        if runs is not None:
            runs[lr] = traj
        steps += traj.steps
        diverged += traj.diverged
        l0 = traj.initial_loss
        finite = [v for v in traj.losses if math.isfinite(v)]
        if finite and min(finite) < lmin:
            lmin, best_lr = min(finite), lr
    assert l0 is not None
    if not lmin < l0:
        raise AuditError(f"the baseline makes no progress with {optimizer} at any learning rate of the grid within "
                         f"{budget} steps (loss {l0:.4g}); no target can be set")
    target = l0 ** (1 - TARGET_PROGRESS) * lmin ** TARGET_PROGRESS if lmin > 0 else l0 - TARGET_PROGRESS * (l0 - lmin)
    return {"target": target, "initial_loss": l0, "pilot_min_loss": lmin,
            "pilot_best_lr": best_lr, "pilot_budget": budget, "progress": TARGET_PROGRESS,
            "pilot_steps_run": steps, "pilot_trials_diverged": diverged}


def kappa_evidence(kappa_A: Mapping[str, float], kappa_T: float) -> str:
    """The evidence sentence on the strength of T: kappa(A) per group kind, and why kappa(T)
    can exceed all of them (row and column groups of one tensor multiply)."""
    s = "kappa(A) per group kind: " + ", ".join(f"{k} {v:.4g}" for k, v in kappa_A.items()) + "."
    if kappa_T > 1.01 * max(kappa_A.values(), default=1.0):
        s += (f" kappa(T) = {kappa_T:.4g} exceeds each of them because groups acting on the rows and on the columns "
              "of one tensor multiply there (a norm scaling the input columns of a projection whose output rows "
              "another group scales): each group's strength is its kappa(A); the worst-case references (T3, B) "
              "scale with kappa(T).")
    return s


def run_attacks(nets: Mapping[str, nn.Module], baseline: str, task: Task, prof: AuditProfile, fmt: str,
                optimizers: Sequence[str], seed: int, device: str, reduce: Mapping[str, Any],
                report: Callable[[str], None] | None, tick: Callable[[str], None]
                ) -> tuple[dict[str, Any], dict[str, dict[str, LRSearchResult]]]:
    """The attack stage of every audit: per optimizer, the target from a pilot on ``baseline``
    (``pilot_target``), then the learning-rate search of every variant in ``nets`` (the
    baseline's search reuses the pilot's runs), each with its best trial's loss curve. Returns
    (the JSON ``attacks`` block, the searches by optimizer and variant); ``tick`` marks each
    optimizer's stage, ``report`` the progress within it."""
    attacks: dict[str, Any] = {}
    searches: dict[str, dict[str, LRSearchResult]] = {}
    for opt in optimizers:
        tick(f"attack {opt}")
        grid = prof.grid(opt, fmt)
        pilot: dict[float, Any] = {}
        tgt = pilot_target(nets[baseline], task, opt, grid, prof.pilot_budget, seed, device, runs=pilot, **reduce)
        mine, curves = {}, {}
        for v, net in nets.items():
            res = lr_search(net, task, opt, tgt["target"], prof.budget, grid=grid, refine=prof.refine,
                            per_decade=prof.per_decade, seed=seed, device=device,
                            known=pilot if v == baseline else None, **reduce,
                            progress=None if report is None else
                            (lambda label, i, n, v=v, opt=opt: report(f"attack {opt}: {v} lr {i}/{n}")))
            mine[v] = res
            # the best trial's own curve: the same run as re-running the best lr (attacks.search)
            curves[v] = {"lr": res.best_lr, "losses": list(res.best_losses)}
        searches[opt] = mine
        attacks[opt] = {"target": tgt, "baseline": baseline,
                        "searches": {v: _search_json(s, grid) for v, s in mine.items()}, "curves": curves}
    return attacks, searches


def _work(attacks: Mapping[str, Any], curv: Mapping[str, Any]) -> dict[str, Any]:
    """What the audit ran (the pilots' steps; the searches' steps) and what it did not have to
    (``attacks.search``: incumbent pruning, successive halving, trials read off the pilot, best
    curves not re-run), and the peak memory of the curvature calls."""
    searches = [s for a in attacks.values() for s in a["searches"].values()]
    run = sum(s["steps_run"] for s in searches)
    bound = sum(s["steps_unpruned"] for s in searches)
    return {"pilot_steps_run": sum(a["target"]["pilot_steps_run"] for a in attacks.values()),
            "attack_steps_run": run, "attack_steps_unpruned": bound,
            "attack_steps_saved": bound - run,
            "trials": sum(len(s["table"]) for s in searches),
            "trials_pruned": sum(1 for s in searches for t in s["table"] if t["budget"] < s["budget"]),
            "trials_from_pilot": sum(s["trials_from_pilot"] for s in searches),
            "best_curves_rerun": 0,
            "curvature_peak_rss": max((c["memory"]["peak_rss"] for c in curv.values() if "memory" in c), default=None),
            "curvature_basis": sorted({c["lanczos_basis"] for c in curv.values() if "lanczos_basis" in c})}


# ---------------------------------------------------------------- the audit
def audit(claimed: LoadedModel, reference: LoadedModel | None = None, *, task: str = "auto",
          profile: str | AuditProfile = "quick", seed: int = 0, device: str = "auto",
          progress: Progress | None = None) -> dict[str, Any]:
    """Audit ``claimed`` (against ``reference`` when given); see the module doc. Returns the
    JSON-ready dict of ``audit.json`` (schema in README, "convrate audit").

    Zoo models (thousands of parameters) and decoders up to ``runtime.SMALL_MODEL_PARAMETERS``
    on the CPU run with one torch thread: their kernels are too small to gain from intra-op
    parallelism, and on shared cores the threads contend (the
    quick digits audit took 62 s with 2 threads vs 13 s with 1 at load 4 on 2 cores)."""
    if isinstance(claimed, LoadedModel) and (claimed.fmt == "zoo" or (is_decoder(claimed) and
                                                                     is_small(claimed.module, device))):
        with single_thread():
            return _audit(claimed, reference, task, profile, seed, device, progress)
    return _audit(claimed, reference, task, profile, seed, device, progress)


def _audit(claimed: LoadedModel, reference: LoadedModel | None, task: str, profile: str | AuditProfile,
           seed: int, device: str, progress: Progress | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    prof = get_profile(profile)
    if not isinstance(claimed, LoadedModel) or not (reference is None or isinstance(reference, LoadedModel)):
        raise InvalidInputError("audit expects LoadedModel inputs (see convrate.models.load_model)")
    from convrate.models.audit_inserted import audit_grown, resolve_chains  # releases that grew (inserted layers)

    chains = resolve_chains(claimed, reference)
    if chains:
        return audit_grown(claimed, reference, chains, task=task, profile=prof, seed=seed, device=device,
                           progress=progress)
    if reference is not None:
        check_same_architecture(reference, claimed)
    task_name = task_name_for(claimed, task)
    the_task = task_for(claimed, task_name, seed, max_length=prof.text_max_length, per_class=prof.text_per_class)
    syms = discover_symmetries(reference if reference is not None else claimed)
    group_params = list(dict.fromkeys(n for s in syms for n in s.params))
    has_ref = reference is not None
    fmt = prof.format_of(claimed)
    optimizers = prof.optimizers_for(fmt)
    stages = ["function", "fplr", "canonicalize", "curvature"] + [f"attack {o}" for o in optimizers]
    done = 0

    def tick(label: str) -> None:
        nonlocal done
        if progress is not None:
            progress(label, done, len(stages))
        done += 1

    result: dict[str, Any] = {
        "schema": SCHEMA, "model": claimed.source, "reference": reference.source if has_ref else None,
        "architecture": {"kind": claimed.kind, "format": claimed.fmt, "dtype": str(claimed.dtype).removeprefix("torch."),
                         "n_layers": claimed.info.get("n_layers")},
        "task": {"name": the_task.name, "kind": task_name, "description": the_task.description,
                 "n_train": the_task.n_train, "loss": the_task.loss},
        "profile": prof.to_json(), "seed": seed,
        "thresholds": {"slowdown": SLOWDOWN_THRESHOLD, "recovery": RECOVERY_THRESHOLD,
                       "target_progress": TARGET_PROGRESS},
        "symmetry_groups": len(syms),
        "model_parameters": sum(p.numel() for p in claimed.module.parameters()),
    }

    # 1-2: function, weights, T
    tick("function deviation")
    fit = None
    if has_ref:
        dev = function_deviation(reference, claimed, prof.probes, seed)
        ftol = PRESERVATION_TOLERANCE[coarser_dtype(reference.dtype, claimed.dtype)]
        wd = max(parameter_distance(float64_parameters(claimed), float64_parameters(reference)).values())
        tick("FPLR fit")
        fit = infer_reparameterization(reference, claimed)  # the groups and their permutations
        cls = classify(has_reference=True, function_deviation=dev, function_tolerance=ftol, weight_distance=wd,
                       fplr_found=fit.found, rtol=fit.rtol)
        result.update(function_deviation=dev, function_tolerance=ftol, weight_distance=wd, fplr=fit.to_json(),
                      kappa_T=fit.kappa_T, kappa_A=fit.record.kappa_A_by_kind() if fit.found else None)
    else:
        tick("FPLR fit")
        cls = "unreferenced"
        result.update(function_deviation=None, function_tolerance=None, weight_distance=None, fplr=None,
                      kappa_T=None, kappa_A=None)
    result["class"] = cls
    record = fit.record if (fit is not None and cls == "fplr") else None

    # R2 (and R1 with T): the recovered models; R2 is also the baseline without a reference
    tick("canonicalize")
    canon, _ = canonicalize(claimed, syms)
    canonical: dict[str, Any] = {"claimed": distance_to_canonical(claimed, syms)}
    if has_ref:
        canon_ref, _ = canonicalize(reference, syms)
        canonical["reference"] = distance_to_canonical(reference, syms)
        gap = parameter_distance(float64_parameters(canon), float64_parameters(canon_ref))
        canonical["gap"] = max(gap.values())
    result["canonical"] = canonical
    nets: dict[str, nn.Module] = {}
    if has_ref:
        nets["reference"] = attack_module(reference, reference.module, the_task, seed)
    nets["claimed"] = attack_module(claimed, claimed.module, the_task, seed)
    nets["R2"] = attack_module(claimed, canon.module, the_task, seed)
    extra = {"R2": 0}
    if record is not None:
        nets["R1"] = attack_module(claimed, r1_module(claimed.module, record), the_task, seed)
        cost = r1_extra_parameters(record)
        extra["R1"] = cost["extra_parameters"]
        result["r1_cost"] = cost
    baseline = "reference" if has_ref else "R2"

    # 3: curvature of the baseline and the claimed model
    tick("curvature")
    micro = prof.micro_batch if claimed.fmt == "hf" else None
    reduce = {"reduction": BatchReduction(micro_batch=micro)} if micro else {}
    names = _curvature_params(claimed, nets["claimed"], group_params)
    curv: dict[str, Any] = {k: curvature(nets[k], the_task, names, prof, seed, device, micro)
                            for k in (baseline, "claimed")}
    if record is not None:
        curv["ostrowski"] = _ostrowski(curv["reference"], curv["claimed"], record,
                                       [n.removeprefix("encoder.") for n in names])
    result["curvature"] = curv

    # 4: attacks
    attacks, searches = run_attacks(nets, baseline, the_task, prof, fmt, optimizers, seed, device, reduce,
                                    None if progress is None else
                                    (lambda label: progress(label, done - 1, len(stages))), tick)
    slowdown = {o: Slowdown.between(s[baseline], s["claimed"]) for o, s in searches.items()}
    recovered = {r: {o: Slowdown.between(s[baseline], s[r]) for o, s in searches.items()} for r in extra if has_ref}
    result["attacks"] = attacks
    result["work"] = _work(attacks, curv)
    result["slowdown"] = {o: ratio_json(r) for o, r in slowdown.items()}
    result["recovered_slowdown"] = {r: {o: ratio_json(x) for o, x in d.items()} for r, d in recovered.items()}
    result["extra_parameters"] = extra
    n = result["model_parameters"]
    result["extra_parameters_fraction"] = {r: (k / n if n else 0.0) for r, k in extra.items()}

    # 6: verdict
    verdict, evidence = decide(cls, slowdown, recovered, extra, n)
    edges = [f"{o} ({v})" for o, a in attacks.items() for v, s in a["searches"].items() if s["best_lr_at_grid_edge"]]
    if edges:
        evidence.append("best learning rate at the edge of the grid for " + ", ".join(edges)
                        + ": a wider grid might change these step counts.")
    if has_ref and fit is not None and fit.found and cls in ("fplr", "identical"):
        evidence.insert(0, f"T found with residual {fit.residual:.3g} <= {fit.rtol:.3g}; kappa(T) = "
                           f"{fit.kappa_T:.4g}; function deviation {result['function_deviation']:.3g} "
                           f"<= {result['function_tolerance']:.3g}.")
        evidence.insert(1, kappa_evidence(fit.record.kappa_A_by_kind(), fit.kappa_T))
    elif has_ref:
        evidence.insert(0, f"function deviation {result['function_deviation']:.3g} (tolerance "
                           f"{result['function_tolerance']:.3g}); no T: {fit.reason if fit else ''}.")
    result["verdict"] = verdict
    result["evidence"] = evidence
    result["wall_seconds"] = time.perf_counter() - t0
    if progress is not None:
        progress("done", len(stages), len(stages))
    return _jsonable(result)


__all__ = ["AuditError", "AuditProfile", "PROFILES", "SCHEMA", "shape_of", "TASKS", "TARGET_PROGRESS", "audit",
           "attack_module", "curvature", "function_deviation", "get_profile", "load_for_audit",
           "pilot_target"]
