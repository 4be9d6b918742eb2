"""Learning-rate search and slowdown ratios for attacks.

``lr_search`` runs an attack over a log grid of learning rates (default 1e-5 .. 1e1, two
points per decade, or the optimizer's own grid), then on a finer log grid around the best, and
returns the lr with the fewest steps. For Newton-CG, Gauss-Newton and K-FAC the searched knob is
the damping (``registry.OptimizerSpec.knob``); ``lr`` below then means that value. Each trial
records its cost to the target (steps, gradients, curvature products, gradient-equivalents with
the product cost ratios measured once per search, wall seconds). ``slowdown`` runs it on an
undefended and a defended model and returns the ratio of best step counts (dimensionless), and
the ratios of gradient-equivalents and wall time at those best runs.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

from torch import nn

from convrate.errors import InvalidInputError
from convrate.models.attacks.attack import (Attack, Progress, _check_optimizer, _check_target, _positive_finite,
                                            _positive_int, make_attack, require_finite_parameters)
from convrate.models.attacks.registry import get_spec
from convrate.models.tasks import Task


def log_grid(lo: float = 1e-5, hi: float = 10.0, per_decade: int = 2) -> list[float]:
    """10^(k / per_decade) for every integer k with lo <= 10^(k/per_decade) <= hi (ascending)."""
    lo, hi = _positive_finite(lo, "grid low end"), _positive_finite(hi, "grid high end")
    per_decade = _positive_int(per_decade, "points per decade")
    if lo > hi:
        raise InvalidInputError(f"grid low end {lo} exceeds high end {hi}")
    k0 = math.ceil(math.log10(lo) * per_decade - 1e-9)
    k1 = math.floor(math.log10(hi) * per_decade + 1e-9)
    return [10.0 ** (k / per_decade) for k in range(k0, k1 + 1)]


@dataclass(frozen=True)
class LRTrial:
    """One learning rate tried: ``steps`` to target (None: not within ``budget``, the budget
    this trial ran under, which pruning may set below the search's budget)."""

    lr: float
    steps: int | None
    diverged: bool
    final_loss: float
    budget: int
    stage: str
    wall_s: float
    cost: dict[str, Any] | None = None


def _rank(tr: LRTrial) -> tuple[float, int, float, float]:
    steps = math.inf if tr.steps is None else tr.steps
    loss = tr.final_loss if math.isfinite(tr.final_loss) else math.inf
    return (steps, int(tr.diverged), loss, tr.lr)


@dataclass(frozen=True)
class LRSearchResult:
    """Best learning rate (fewest steps; ties: lower final loss, then smaller lr; if no lr
    reaches the target: the non-diverged one with the lowest final loss) and the table."""

    optimizer: str
    target: float
    budget: int
    best_lr: float
    best_steps: int | None
    table: tuple[LRTrial, ...]
    wall_s: float
    cost_ratios: dict[str, float] | None = None

    @property
    def reached(self) -> bool:
        return self.best_steps is not None

    @property
    def knob(self) -> str:
        """What ``best_lr`` and the table's lr values are: "lr" or "damping"."""
        return get_spec(self.optimizer).knob

    @property
    def best_cost(self) -> dict[str, Any] | None:
        """Cost to the target of the best trial (steps, counts, gradient-equivalents, wall s)."""
        rows = [tr for tr in self.table if tr.lr == self.best_lr and tr.steps == self.best_steps and tr.cost]
        return rows[0].cost if rows and self.reached else None

    def steps_text(self) -> str:
        return str(self.best_steps) if self.reached else f">{self.budget}"


def lr_search(model: nn.Module, task: Task, optimizer: str, target: float, budget: int, *,
              grid: Sequence[float] | None = None, refine: int = 2, refine_rounds: int = 1,
              per_decade: int = 2, prune: bool = True, seed: int = 0, device: str = "auto",
              progress: Progress | None = None, **attack_options: Any) -> LRSearchResult:
    """Steps to ``target`` for each lr of ``grid`` (default: the optimizer's own grid, else
    ``log_grid(1e-5, 10, per_decade)``),
    tried from the largest down, then ``refine`` log-spaced points on each side of the best
    (spacing 10^(1/(per_decade (refine+1))), shrinking by (refine+1) each round).

    With ``prune`` a trial runs only up to the incumbent's step count (a slower lr cannot
    win); its row then records that smaller budget. The returned lr has the fewest steps
    among all trials."""
    _check_optimizer(optimizer)
    tgt = _check_target(target)
    if tgt is None:
        raise InvalidInputError("lr_search needs a target loss")
    budget = _positive_int(budget, "step budget")
    if isinstance(refine, bool) or not isinstance(refine, int) or refine < 0:
        raise InvalidInputError(f"refine must be a non-negative integer, got {refine!r}")
    if isinstance(refine_rounds, bool) or not isinstance(refine_rounds, int) or refine_rounds < 0:
        raise InvalidInputError(f"refine_rounds must be a non-negative integer, got {refine_rounds!r}")
    spec = get_spec(optimizer)
    if grid is None:
        grid = spec.grid if spec.grid is not None else log_grid(1e-5, 10.0, per_decade)
    lrs = [_positive_finite(x, "grid learning rate") for x in grid]
    if not lrs:
        raise InvalidInputError("the learning-rate grid is empty")
    require_finite_parameters(model)
    start = time.perf_counter()
    if spec.uses and "cost_ratios" not in attack_options:  # measured once for the whole search
        probe = make_attack(optimizer, lrs[0], 1, seed=seed, device=device, **{**attack_options, "stop_at_target": False})
        attack_options["cost_ratios"] = tuple(sorted(probe.run(model, task).cost_ratios.items()))
    table: list[LRTrial] = []
    tried: set[float] = set()
    n_total = len(set(lrs)) + 2 * refine * refine_rounds

    def attempt(lr: float, stage: str) -> None:
        if any(math.isclose(lr, x, rel_tol=1e-12) for x in tried):
            return
        tried.add(lr)
        best = min((tr.steps for tr in table if tr.steps is not None), default=None)
        b = min(budget, best) if (prune and best is not None and best >= 1) else budget
        atk = make_attack(optimizer, lr, b, tgt, seed=seed, device=device, **attack_options)
        traj = atk.run(model, task)
        table.append(LRTrial(lr, traj.steps_to(tgt), traj.diverged, traj.final_loss, b, stage, traj.wall_s,
                             traj.cost_to(tgt)))
        if progress is not None:
            progress(f"lr search {optimizer}", len(table), n_total)

    for lr in sorted(set(lrs), reverse=True):
        attempt(lr, "grid")
    ratio = 10.0 ** (1.0 / per_decade)
    for rnd in range(refine_rounds):
        if refine == 0:
            break
        centre = _best(table).lr
        ratio = ratio ** (1.0 / (refine + 1))
        for j in range(refine, 0, -1):
            attempt(centre * ratio**j, f"refine{rnd + 1}")
            attempt(centre / ratio**j, f"refine{rnd + 1}")
    best = _best(table)
    ratios = dict(attack_options["cost_ratios"]) if "cost_ratios" in attack_options else {}
    return LRSearchResult(optimizer, tgt, budget, best.lr, best.steps, tuple(table),
                          time.perf_counter() - start, ratios)


def _best(table: Sequence[LRTrial]) -> LRTrial:
    reached = [tr for tr in table if tr.steps is not None]
    if reached:
        return min(reached, key=_rank)
    stable = [tr for tr in table if not tr.diverged and math.isfinite(tr.final_loss)]
    return min(stable or table, key=lambda tr: (tr.final_loss if math.isfinite(tr.final_loss) else math.inf, tr.lr))


# ---------------------------------------------------------------- slowdown
@dataclass(frozen=True)
class Slowdown:
    """ratio = best steps (defended) / best steps (undefended). When the defended search
    does not reach the target, ratio = budget / undefended steps is a lower bound
    (``is_lower_bound``); when the undefended one does not (or needs 0 steps) it is None."""

    undefended: LRSearchResult
    defended: LRSearchResult
    ratio: float | None
    is_lower_bound: bool

    def cost_ratio(self, key: str = "grad_equivalents") -> float | None:
        """defended / undefended cost to the target at the best runs (``key``: grad_equivalents,
        wall_s, gradients, ...); None unless both reached it with a nonzero undefended cost."""
        a, b = self.undefended.best_cost, self.defended.best_cost
        if a is None or b is None or not a.get(key):
            return None
        return float(b[key]) / float(a[key])

    @property
    def text(self) -> str:
        if self.ratio is None:
            if self.undefended.best_steps == 0:
                return "undefined (the undefended model already meets the target)"
            return f"undefined (the undefended model does not reach the target within {self.undefended.budget} steps)"
        return (">= " if self.is_lower_bound else "") + f"{self.ratio:.3g}"

    @classmethod
    def between(cls, undefended: LRSearchResult, defended: LRSearchResult) -> "Slowdown":
        """The ratio of two finished searches (same task, target and budget)."""
        base = undefended.best_steps
        if base is None or base == 0:
            return cls(undefended, defended, None, False)
        if defended.best_steps is None:
            return cls(undefended, defended, defended.budget / base, True)
        return cls(undefended, defended, defended.best_steps / base, False)


def slowdown(undefended: nn.Module, defended: nn.Module, task: Task, optimizer: str, target: float,
             budget: int, **search_options: Any) -> Slowdown:
    """lr_search on both models (same task, target, budget, grid, seed) and the step ratio."""
    base = lr_search(undefended, task, optimizer, target, budget, **search_options)
    return Slowdown.between(base, lr_search(defended, task, optimizer, target, budget, **search_options))
