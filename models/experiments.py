"""Slowdown sweeps on real networks: steps-to-target vs defense strength K per optimizer.

For a released model theta_0, a defense D and strengths K, each optimizer runs a learning-rate
search (``attacks.lr_search``) on the undefended model and on D_K(theta_0); the *slowdown* is

    S(K, opt) = N_opt(D_K theta_0) / N_opt(theta_0),     N = fewest steps to L <= target

over the searched learning rates (a lower bound budget / N when the defended search does not
reach the target). Next to it stand the local-quadratic references of THEORY.md (statements
T3, F1/B, F2, A): the GD count scales with kappa(H') <= kappa(T)^2 kappa(H) (asymptotic GD
slowdown <= kappa(T)^2 / (1 - kappa(H)^-2), ``bounds.gd_slowdown_bound``), a tuned Krylov
method (heavy ball) with sqrt(kappa), i.e. <= kappa(T); the adaptive methods see a diagonal
defense only to the first power of D (statement A). On a nonconvex loss started far from the
attacker's minimum these are references the measurement is reported against, not theorems.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from torch import nn

from convrate.models.attacks import Attack, LRSearchResult, Progress, Slowdown, lr_search
from convrate.errors import InvalidInputError
from convrate.models.defense import Defense, defense_by_name
from convrate.models.io import LoadedModel
from convrate.models.sensitivity import ratio_range, step_sensitivity
from convrate.models.tasks import Task

#: exponent p of the local-model reference kappa(T)^p per optimizer (F1/B: GD-like methods see
#: kappa(H') <= kappa(T)^2 kappa(H); F2: a tuned Krylov method converges at sqrt(kappa); the
#: adaptive methods: no bound in THEORY.md, statement A says diagonal T acts to the first power)
REFERENCE_EXPONENT = {"sgd": 2.0, "momentum": 1.0, "lora-sgd": 2.0}


@dataclass(frozen=True)
class SearchProfile:
    """Learning-rate search settings shared by every run of a sweep."""

    budget: int
    grid: tuple[float, ...]
    refine: int = 2
    refine_rounds: int = 1
    #: perturbed starts per reported count at the best lr (``models.sensitivity``; 0: none)
    sensitivity: int = 0


@dataclass
class SweepRun:
    """One (defense, K, optimizer) search, its best trajectory and its slowdown."""

    model: str
    defense: str
    K: float
    kappa_T: float
    optimizer: str
    search: LRSearchResult
    losses: list[float]
    slowdown: float | None = None
    slowdown_is_lower_bound: bool = False
    #: the count's sensitivity range (``models.sensitivity``), when the search profile asks for it
    sensitivity: Any = None
    slowdown_range: list[float | None] | None = None

    @property
    def reference(self) -> float | None:
        p = REFERENCE_EXPONENT.get(self.optimizer)
        return None if p is None else self.kappa_T ** p

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "defense": self.defense, "K": self.K, "kappa_T": self.kappa_T,
            "optimizer": self.optimizer, "best_lr": self.search.best_lr, "steps": self.search.best_steps,
            "reached": self.search.reached, "budget": self.search.budget, "target": self.search.target,
            "slowdown": self.slowdown, "slowdown_is_lower_bound": self.slowdown_is_lower_bound,
            "reference": self.reference, "reference_formula": _formula(self.optimizer),
            "trials": len(self.search.table), "search_seconds": round(self.search.wall_s, 2),
            "losses": self.losses,
            **_sensitivity_fields(self),
        }


def _sensitivity_fields(run: "SweepRun") -> dict[str, Any]:
    """steps_range / slowdown_range (``convrate report --compare`` checks numbers against them)."""
    if run.sensitivity is None:
        return {}
    return {"steps_range": run.sensitivity.range, "sensitivity": run.sensitivity.to_dict(),
            "slowdown_range": run.slowdown_range}


def _formula(optimizer: str) -> str:
    p = REFERENCE_EXPONENT.get(optimizer)
    return "none (adaptive; statement A)" if p is None else ("kappa(T)^2" if p == 2 else "kappa(T)")


def best_trajectory(model: nn.Module, task: Task, search: LRSearchResult, seed: int = 0,
                    **attack_options: Any) -> list[float]:
    """The loss curve L(theta_t) of the search's best learning rate, to the target or budget."""
    atk = Attack(search.optimizer, search.best_lr, search.budget, search.target, seed=seed, **attack_options)
    return atk.run(model, task).losses


def sweep_defense(name: str, K: float, seed: int = 0) -> Defense:
    """A sweep's defense by name: "specdef" (geometric profile), "specdef:spike" (the spike
    profile, THEORY's SPECDEF-OPT correction), "diagonal" (seeded coordinate order)."""
    base, _, profile = name.partition(":")
    if base == "specdef":
        return defense_by_name("specdef", K, profile=profile or "geometric")
    if profile:
        raise InvalidInputError(f"defense {name!r}: only specdef takes a profile (specdef:geometric, specdef:spike)")
    return defense_by_name(base, K, seed=seed)


def slowdown_sweep(model: LoadedModel, task: Task, *, defenses: Sequence[str], Ks: Sequence[float],
                   optimizers: Sequence[str], target: float, search: SearchProfile,
                   wrap: Callable[[nn.Module], nn.Module] = lambda m: m, seed: int = 0,
                   progress: Progress | None = None, **attack_options: Any) -> list[SweepRun]:
    """Runs for K = 1 (undefended, once per optimizer) and every defense x K > 1 x optimizer
    (defenses named as in ``sweep_defense``).

    ``wrap`` turns the (defended) released module into the attacked one (e.g. an encoder
    with a classification head and frozen embeddings); it must not depend on K."""
    name = model.kind
    base: dict[str, SweepRun] = {}
    runs: list[SweepRun] = []
    jobs = [("none", 1.0)] + [(d, float(K)) for d in defenses for K in Ks if K > 1]
    total = len(jobs) * len(optimizers)
    done = 0
    for dname, K in jobs:
        if dname == "none":
            released, kappa = model, 1.0
        else:
            result = sweep_defense(dname, K, seed).apply(model)
            released, kappa = result.model, result.record.kappa_T()
        attacked = wrap(released.module)
        for opt in optimizers:
            if progress is not None:
                progress(f"{name} {dname} K={K:g} {opt}", done, total)
            res = lr_search(attacked, task, opt, target, search.budget, grid=list(search.grid),
                            refine=search.refine, refine_rounds=search.refine_rounds, seed=seed, **attack_options)
            run = SweepRun(name, dname, K, kappa, opt, res,
                           best_trajectory(attacked, task, res, seed, **attack_options))
            if search.sensitivity:
                run.sensitivity = step_sensitivity(attacked, task, opt, res.best_lr, target, search.budget,
                                                   runs=search.sensitivity, seed=seed, nominal=res.best_steps,
                                                   **attack_options)
            if dname == "none":
                base[opt] = run
            _set_slowdown(run, base.get(opt))
            runs.append(run)
            done += 1
    return runs


def _set_slowdown(run: SweepRun, base: SweepRun | None) -> None:
    """``attacks.Slowdown.between`` the undefended and this run's searches."""
    if base is not None:
        sd = Slowdown.between(base.search, run.search)
        run.slowdown, run.slowdown_is_lower_bound = sd.ratio, sd.is_lower_bound
        if base.sensitivity is not None and run.sensitivity is not None:
            run.slowdown_range = ratio_range(run.sensitivity.range, base.sensitivity.range)


def within_reference(run: SweepRun) -> bool | None:
    """Whether the measured slowdown is at most the local-model reference (None: no reference
    or no finite slowdown). A lower-bound slowdown above the reference counts as exceeding it."""
    ref = run.reference
    if ref is None or run.slowdown is None or not math.isfinite(run.slowdown):
        return None
    return run.slowdown <= ref




def encoder_wrap(task: Task, seed: int = 0, freeze_embeddings: bool = True) -> Callable[[nn.Module], nn.Module]:
    """``wrap`` for a BERT-family encoder: a copy of it under the task's classification head
    (``Task.head``, seeded, identical for every K), its embedding tables frozen when
    ``freeze_embeddings`` (the attacker fine-tunes the encoder layers, where the S1 defense acts,
    and the head)."""
    import copy

    def wrap(encoder: nn.Module) -> nn.Module:
        net = task.head(copy.deepcopy(encoder), seed=seed)
        if freeze_embeddings:  # by name, so that a wrapped encoder (e.g. R1's phi.embeddings) matches too
            for name, p in net.encoder.named_parameters():
                if "embeddings." in name:
                    p.requires_grad_(False)
        return net

    return wrap


__all__ = ["SearchProfile", "SweepRun", "slowdown_sweep", "sweep_defense", "best_trajectory", "within_reference",
           "encoder_wrap", "REFERENCE_EXPONENT"]
