"""Slowdown sweeps on real networks: steps-to-target vs defense strength K per optimizer.

For a released model theta_0, a defense D and strengths K, each optimizer runs a learning-rate
search (``attacks.lr_search``) on the undefended model and on D_K(theta_0); the *slowdown* is

    S(K, opt) = N_opt(D_K theta_0) / N_opt(theta_0),     N = fewest steps to L <= target

over the searched learning rates (a lower bound budget / N when the defended search does not
reach the target). Next to it stand the local-quadratic references of THEORY.md (statements
T3, F1/B, F2, A, SO-*): the GD count scales with kappa(H') <= kappa(T)^2 kappa(H) (asymptotic GD
slowdown <= kappa(T)^2 / (1 - kappa(H)^-2), ``bounds.gd_slowdown_bound``), a tuned Krylov
method (heavy ball, L-BFGS: SO-LBFGS) with sqrt(kappa), i.e. <= kappa(T); the adaptive and
gradient-statistics methods (Adam: A; Shampoo at p = 1/4, SOAP: SO-SHAMPOO; Sophia: SO-SOPHIA;
Muon: SO-MUON) see a one-sided scaling as a spread kappa(T) of effective per-coordinate (per-row)
steps; the covariant second-order methods (Newton-CG with exact inner solves: SO-NEWTON-CG, K-FAC
with exact factors: SO-KFAC) are invariant in the undamped limit (1), Gauss-Newton only in
function space to first order (SO-GN). On a nonconvex loss started far from the attacker's
minimum these are references the measurement is reported against, not theorems. Each run also
reports its cost to the target (gradient-equivalents, wall seconds) and the ratio of those.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from torch import nn

from convrate.models.attacks import LRSearchResult, Progress, Slowdown, lr_search, make_attack
from convrate.errors import InvalidInputError
from convrate.models.defense import Defense, defense_by_name
from convrate.models.io import LoadedModel
from convrate.models.sensitivity import ratio_range, step_sensitivity
from convrate.models.tasks import Task

#: exponent p of the local-model prediction kappa(T)^p per optimizer, and the statement it comes
#: from (F1/B: GD-like methods see kappa(H') <= kappa(T)^2 kappa(H); F2, SO-LBFGS: a tuned Krylov
#: method converges at sqrt(kappa); SO-SHAMPOO (p = 1/4: |2 - 4p| = 1), SO-SOPHIA (clipped
#: regime), SO-MUON: a spread kappa(T) of effective steps; SO-NEWTON-CG, SO-KFAC: invariant
#: (exponent 0) in the exact, undamped limit; Adam (statement A) and SOAP: the first power of a
#: diagonal T acts on the step sizes, no bound on the count: no reference; Gauss-Newton: only the
#: function-space step is invariant (SO-GN, corrected), no count prediction)
REFERENCE_EXPONENT = {"sgd": 2.0, "momentum": 1.0, "lora-sgd": 2.0, "lbfgs": 1.0, "lbfgs-wolfe": 1.0,
                      "shampoo": 1.0, "sophia": 1.0, "muon": 1.0, "newton-cg": 0.0, "kfac": 0.0}
REFERENCE_STATEMENT = {"sgd": "B", "momentum": "F2", "lora-sgd": "B", "lbfgs": "SO-LBFGS", "lbfgs-wolfe": "SO-LBFGS",
                       "shampoo": "SO-SHAMPOO", "sophia": "SO-SOPHIA", "muon": "SO-MUON",
                       "newton-cg": "SO-NEWTON-CG", "kfac": "SO-KFAC"}


@dataclass(frozen=True)
class SearchProfile:
    """Learning-rate search settings shared by every run of a sweep."""

    budget: int
    grid: tuple[float, ...]
    refine: int = 2
    refine_rounds: int = 1
    #: perturbed starts per reported count at the best lr (``models.sensitivity``; 0: none)
    sensitivity: int = 0
    #: (optimizer, grid) pairs replacing ``grid`` for that optimizer (e.g. damping grids)
    grids: tuple[tuple[str, tuple[float, ...]], ...] = ()
    #: (optimizer, budget) pairs replacing ``budget`` for that optimizer
    budgets: tuple[tuple[str, int], ...] = ()

    def grid_for(self, optimizer: str) -> tuple[float, ...]:
        return dict(self.grids).get(optimizer, self.grid)

    def budget_for(self, optimizer: str) -> int:
        return dict(self.budgets).get(optimizer, self.budget)

    def search_options(self, optimizer: str) -> dict[str, Any]:
        """``attacks.lr_search``'s grid and refinement keywords of this profile for ``optimizer``."""
        return {"grid": list(self.grid_for(optimizer)), "refine": self.refine, "refine_rounds": self.refine_rounds}


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

    #: defended / undefended gradient-equivalents and wall seconds to the target at the best runs
    cost_slowdown: float | None = None
    wall_slowdown: float | None = None

    @property
    def reference(self) -> float | None:
        p = REFERENCE_EXPONENT.get(self.optimizer)
        return None if p is None else self.kappa_T ** p

    def to_dict(self) -> dict[str, Any]:
        cost = self.search.best_cost or {}
        return {
            "model": self.model, "defense": self.defense, "K": self.K, "kappa_T": self.kappa_T,
            "optimizer": self.optimizer, "knob": self.search.knob, "best_lr": self.search.best_lr,
            "steps": self.search.best_steps,
            "reached": self.search.reached, "budget": self.search.budget, "target": self.search.target,
            "slowdown": self.slowdown, "slowdown_is_lower_bound": self.slowdown_is_lower_bound,
            "grad_equivalents": cost.get("grad_equivalents"), "wall_to_target_s": cost.get("wall_s"),
            "cost": cost or None, "cost_ratios": self.search.cost_ratios or {},
            "cost_slowdown": self.cost_slowdown, "wall_slowdown": self.wall_slowdown,
            "reference": self.reference, "reference_formula": _formula(self.optimizer),
            "reference_statement": REFERENCE_STATEMENT.get(self.optimizer),
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
    if p is None:
        return "none (adaptive: statement A)" if optimizer in ("adam", "adamw", "lora-adam", "soap") \
            else "none (SO-GN: function space only)"
    return {2.0: "kappa(T)^2", 1.0: "kappa(T)", 0.0: "1"}.get(p, f"kappa(T)^{p:g}")


def best_trajectory(model: nn.Module, task: Task, search: LRSearchResult, seed: int = 0,
                    **attack_options: Any) -> list[float]:
    """The loss curve L(theta_t) of the search's best learning rate (damping), to the target or budget."""
    atk = make_attack(search.optimizer, search.best_lr, search.budget, search.target, seed=seed, **attack_options)
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


def sweep_jobs(defenses: Sequence[str], Ks: Sequence[float], optimizers: Sequence[str]) -> list[tuple[str, float, str]]:
    """(defense, K, optimizer) of every run of a sweep, in sweep order: K = 1 (defense
    "none", undefended) first, then every defense x K > 1, each with every optimizer."""
    jobs = [("none", 1.0)] + [(d, float(K)) for d in defenses for K in Ks if K > 1]
    return [(d, K, opt) for d, K in jobs for opt in optimizers]


def released_model(model: LoadedModel, defense: str, K: float, seed: int = 0) -> tuple[LoadedModel, float]:
    """The release a sweep attacks for (defense, K) and its kappa(T) (the model itself for "none")."""
    if defense == "none":
        return model, 1.0
    result = sweep_defense(defense, K, seed).apply(model)
    return result.model, result.record.kappa_T()


def sweep_run(attacked: nn.Module, task: Task, model_kind: str, defense: str, K: float, kappa: float,
              optimizer: str, target: float, search: SearchProfile, seed: int = 0, **attack_options: Any) -> SweepRun:
    """One run of a sweep: the lr search on ``attacked`` and its best trajectory (the best
    trial's own losses: the same deterministic run as re-running the best lr). Slowdown unset."""
    res = lr_search(attacked, task, optimizer, target, search.budget_for(optimizer), seed=seed,
                    **search.search_options(optimizer), **attack_options)
    run = SweepRun(model_kind, defense, K, kappa, optimizer, res, list(res.best_losses))
    if search.sensitivity:
        run.sensitivity = step_sensitivity(attacked, task, optimizer, res.best_lr, target, res.budget,
                                           runs=search.sensitivity, seed=seed, nominal=res.best_steps,
                                           **attack_options)
    return run


def set_slowdowns(runs: Sequence[SweepRun]) -> None:
    """Each run's slowdown against the undefended run (defense "none") of its optimizer."""
    base = {r.optimizer: r for r in runs if r.defense == "none"}
    for r in runs:
        _set_slowdown(r, base.get(r.optimizer))


def slowdown_sweep(model: LoadedModel, task: Task, *, defenses: Sequence[str], Ks: Sequence[float],
                   optimizers: Sequence[str], target: float, search: SearchProfile,
                   wrap: Callable[[nn.Module], nn.Module] = lambda m: m, seed: int = 0,
                   progress: Progress | None = None, **attack_options: Any) -> list[SweepRun]:
    """Runs for K = 1 (undefended, once per optimizer) and every defense x K > 1 x optimizer
    (defenses named as in ``sweep_defense``; order ``sweep_jobs``).

    ``wrap`` turns the (defended) released module into the attacked one (e.g. an encoder
    with a classification head and frozen embeddings); it must not depend on K."""
    jobs = sweep_jobs(defenses, Ks, optimizers)
    runs: list[SweepRun] = []
    attacked: dict[tuple[str, float], tuple[nn.Module, float]] = {}
    for done, (dname, K, opt) in enumerate(jobs):
        if (dname, K) not in attacked:
            released, kappa = released_model(model, dname, K, seed)
            attacked = {(dname, K): (wrap(released.module), kappa)}
        net, kappa = attacked[dname, K]
        if progress is not None:
            progress(f"{model.kind} {dname} K={K:g} {opt}", done, len(jobs))
        runs.append(sweep_run(net, task, model.kind, dname, K, kappa, opt, target, search, seed, **attack_options))
    set_slowdowns(runs)
    return runs


def _set_slowdown(run: SweepRun, base: SweepRun | None) -> None:
    """``attacks.Slowdown.between`` the undefended and this run's searches."""
    if base is not None:
        sd = Slowdown.between(base.search, run.search)
        run.slowdown, run.slowdown_is_lower_bound = sd.ratio, sd.is_lower_bound
        run.cost_slowdown, run.wall_slowdown = sd.cost_ratio("grad_equivalents"), sd.cost_ratio("wall_s")
        if base.sensitivity is not None and run.sensitivity is not None:
            run.slowdown_range = ratio_range(run.sensitivity.range, base.sensitivity.range)


def within_reference(run: SweepRun) -> bool | None:
    """Whether the measured slowdown is at most the local-model reference (None: no reference
    or no finite slowdown). A lower-bound slowdown above the reference counts as exceeding it."""
    ref = run.reference
    if ref is None or run.slowdown is None or not math.isfinite(run.slowdown):
        return None
    return run.slowdown <= ref




def second_order_checks(model: LoadedModel, task: Task, K: float = 100.0, *, defense: str = "specdef",
                        inner: int = 5, damping: float = 0.1, seed: int = 0) -> list[Any]:
    """SO-NEWTON-CG and SO-GN on the real loss of a small zoo model: k = ``inner`` CG steps on
    (M' + lambda I) p' = -g' at the defended release (M = H, then G), mapped back by T^-1, against k
    steps of CG preconditioned by P = T^-1 T^-T on (M + lambda T^T T) p = -g at the original, with the
    attackers' own ``truncated_cg`` and convrate's products (T dense, float64, n <= 4000).
    measured = ||T^-1 p' - p|| / ||p||; allowance 1e-6: the products agree with T2 to ~1e-14
    relative, and k <= 5 CG steps amplify that by at most the square of the condition number of
    the damped system along the Krylov space (lambda = 0.1 keeps it below 1e8 here); a wrong
    damping matrix (lambda I for lambda T^T T) or preconditioner changes p at O(1)."""
    import torch

    from convrate.models.attacks.second_order import truncated_cg
    from convrate.models.checks import dense_reparameterization
    from convrate.models.curvature import Objective
    from convrate.theory.core import compare

    result = sweep_defense(defense, K, seed).apply(model)
    objs = [Objective(m.module, task.X_train, task.y_train, loss=task.loss, device="cpu") for m in (model, result.model)]
    T = dense_reparameterization(objs[0], result.record)
    Ti = torch.linalg.inv(T)
    P, D = Ti @ Ti.T, T.T @ T
    g_u, g_d = objs[0].gradient(), objs[1].gradient()
    out = []
    for sid, kind in (("SO-NEWTON-CG", "hessian"), ("SO-GN", "gauss_newton")):
        op_u, op_d = objs[0].operator(kind), objs[1].operator(kind)
        x_d, used_d, neg_d = truncated_cg(lambda v: op_d(v) + damping * v, -g_d, inner)
        x_u, used_u, neg_u = truncated_cg(lambda v: op_u(v) + damping * (D @ v), -g_u, inner, precondition=lambda r: P @ r)
        rel = float((Ti @ x_d - x_u).norm() / x_u.norm())
        out.append(compare(sid, f"{model.kind} {defense} K={K:g} kappa(T)={result.record.kappa_T():.4g} k={inner} "
                                f"lambda={damping:g} ({kind} products)", rel, "<=", 1e-6,
                           precision="float64 autograd products; allowance argued in models.experiments.second_order_checks",
                           detail=f"||T^-1 p' - p|| / ||p||: CG on L' vs CG preconditioned by T^-1 T^-T with damping "
                                  f"lambda T^T T on L ({used_d} / {used_u} products, negative curvature {neg_d} / {neg_u})"))
    return out


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
           "encoder_wrap", "second_order_checks", "REFERENCE_EXPONENT", "REFERENCE_STATEMENT", "sweep_jobs",
           "released_model", "sweep_run", "set_slowdowns"]
