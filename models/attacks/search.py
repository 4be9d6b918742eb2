"""Learning-rate search and slowdown ratios for attacks.

``lr_search`` runs an attack over a log grid of learning rates (default 1e-5 .. 1e1, two
points per decade, or the optimizer's own grid), then on a finer log grid around the best, and
returns the lr with the fewest steps. For Newton-CG, Gauss-Newton and K-FAC the searched knob is
the damping (``registry.OptimizerSpec.knob``); ``lr`` below then means that value. Each trial
records its cost to the target (steps, gradients, curvature products, gradient-equivalents with
the product cost ratios measured once per search, wall seconds). ``slowdown`` runs it on an
undefended and a defended model and returns the ratio of best step counts (dimensionless), and
the ratios of gradient-equivalents and wall time at those best runs.

Work the search does not do, without changing what it returns:
- *pruning*: a trial runs only up to the incumbent's step count (it stops as soon as it cannot
  beat the best count so far; ties are still seen, as the trial may reach the target exactly at
  that count). The lr with the fewest steps is therefore the same as an unpruned search's; ties
  are broken by the final loss, which a tied trial has computed in full. When no lr reaches
  the target there is never an incumbent and every trial runs its whole budget, so the
  fallback (lowest final loss) is unchanged too. Only the table's ``budget`` / ``ran`` of
  slower trials differ from an unpruned search.
- *successive halving over the grid*: rounds with budgets max(16, budget/64), x4, ..., budget; each
  round takes every live lr (not diverged, not yet decided) up to the round's budget (and the
  incumbent's count), continuing the run its previous round paused (``AttackRun``: the same
  steps as one run to the longer budget). An lr is dropped only when it diverged (it diverges at
  the same step in a longer run) or, after the round in which the first lr met the target,
  because it did not meet the target within a budget at most the incumbent's (so it needs
  more steps than the best). So the fewest-steps lr is the unpruned one; what changes is the
  order of work: an lr that is stable but slow (e.g. Adam at too large a rate, which neither
  diverges nor converges) costs a round's budget instead of the whole budget before a fast one
  is found, and from the second round on the lr with the lowest loss so far runs first, so
  the others are capped by its count. Paused runs hold a copy of the model and its optimizer
  state each (``AttackRun.nbytes``); past ``pause_bytes`` in all, an lr is rerun from the start in
  its next round instead (the same trial; such reruns cost at most 1/3 of the last round's budget
  per lr, as rounds grow 4x). With every run paused, an lr costs exactly the steps of its
  longest trial.
- *known prefixes*: ``known`` maps learning rates to trajectories already run from the same
  model, task, optimizer, seed and attack options with no target stop (e.g. the audit's pilot).
  A trial at such an lr is the prefix cut at the first step that meets the target or diverges
  (runs are deterministic and a trial differs from the prefix only in where it stops), so when
  the prefix decides it (target met, divergence, or budget reached within the prefix) it is
  answered from it (``source`` "known", 0 steps run).
- *best curve*: ``best_losses`` is the best trial's own loss curve, the same deterministic run
  as re-running the best lr to the target with the whole budget (the best trial either met
  the target within its budget, where both stop, or ran the whole budget).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from torch import nn

from convrate.errors import InvalidInputError
from convrate.models.attacks.attack import (Attack, AttackRun, Progress, Trajectory, _check_optimizer, _check_target,
                                            _positive_finite, _positive_int, make_attack, require_finite_parameters)
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
    this trial ran under, which pruning may set below the search's budget); ``ran``: optimizer
    steps executed at this lr in the whole search (0 when answered from a known prefix, ``source``
    "known"; else "run"); ``wall_s``: seconds spent running them."""

    lr: float
    steps: int | None
    diverged: bool
    final_loss: float
    budget: int
    stage: str
    wall_s: float
    cost: dict[str, Any] | None = None
    ran: int = 0
    source: str = "run"


def _rank(tr: LRTrial) -> tuple[int, int, float, float]:
    """Order of trials that met the target: fewer steps, not diverged, lower final loss (at
    most the target, so never NaN), smaller lr."""
    return (tr.steps, int(tr.diverged), tr.final_loss, tr.lr)


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
    best_losses: tuple[float, ...] = ()

    @property
    def reached(self) -> bool:
        return self.best_steps is not None

    @property
    def steps_run(self) -> int:
        """Optimizer steps the search executed (trials answered from known prefixes: 0)."""
        return sum(t.ran for t in self.table)

    @property
    def steps_unpruned(self) -> int:
        """Steps an unpruned search of the same trials would take at most (each trial its whole
        budget): the yardstick of what pruning and known prefixes saved."""
        return len(self.table) * self.budget

    @property
    def knob(self) -> str:
        """What ``best_lr`` and the table's lr values are: "lr" or "damping"."""
        return get_spec(self.optimizer).knob

    @property
    def best_cost(self) -> dict[str, Any] | None:
        """Cost to the target of the best trial (steps, counts, gradient-equivalents, wall s)."""
        rows = [tr for tr in self.table if tr.lr == self.best_lr and tr.steps == self.best_steps and tr.cost]
        return rows[0].cost if rows and self.reached else None


def lr_search(model: nn.Module, task: Task, optimizer: str, target: float, budget: int, *,
              grid: Sequence[float] | None = None, refine: int = 2, refine_rounds: int = 1,
              per_decade: int = 2, prune: bool = True, seed: int = 0, device: str = "auto",
              progress: Progress | None = None, known: Mapping[float, Trajectory] | None = None,
              schedule: str = "halving", pause_bytes: int | None = None, **attack_options: Any) -> LRSearchResult:
    """Steps to ``target`` for each lr of ``grid`` (default: the optimizer's own grid, else
    ``log_grid(1e-5, 10, per_decade)``), then ``refine`` log-spaced points on each side of the
    best (spacing 10^(1/(per_decade (refine+1))), shrinking by (refine+1) each round).

    With ``prune`` a trial runs only up to the incumbent's step count (a slower lr cannot
    win); its row then records that smaller budget. ``schedule`` "halving" (with ``prune``)
    runs the grid in successive-halving rounds (``halving_budgets``: every live lr, largest
    first, up to max(16, budget/64), then the survivors -- not diverged, lowest loss first --
    up to 4x that, ...) and stops after the first round in which some lr meets the target;
    "descending" runs each lr once, largest first. ``known``: prefix trajectories (module
    doc). Either way the returned lr is the one with the fewest steps among all lrs, as an
    unpruned search's (module doc). ``pause_bytes`` (default ``PAUSE_BYTES``; 0: rerun every
    round from the start) bounds the estimated memory of the runs paused between rounds."""
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
        # a run measures the ratios when it starts (``AttackRun``): the probe takes no step
        probe = make_attack(optimizer, lrs[0], 1, seed=seed, device=device, **attack_options).start(model, task)
        attack_options["cost_ratios"] = tuple(sorted(probe.trajectory.cost_ratios.items()))
    if schedule not in SCHEDULES:
        raise InvalidInputError(f"unknown lr-search schedule {schedule!r} (supported: {', '.join(SCHEDULES)})")
    table: dict[float, LRTrial] = {}
    curves: dict[float, list[float]] = {}
    limit = PAUSE_BYTES if pause_bytes is None else pause_bytes
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise InvalidInputError(f"pause_bytes must be a non-negative integer, got {pause_bytes!r}")
    paused: dict[float, AttackRun] = {}
    n_total = len(set(lrs)) + 2 * refine * refine_rounds
    factor = float(attack_options.get("divergence_factor", Attack.divergence_factor))

    def incumbent() -> int | None:
        return min((tr.steps for tr in table.values() if tr.steps is not None), default=None)

    def attempt(lr: float, stage: str, cap: int) -> LRTrial:
        best = incumbent()
        b = min(cap, best) if (prune and best is not None and best >= 1) else cap
        prefix = _from_prefix(known, lr, b, tgt, factor)
        before = table[lr].ran if lr in table else 0
        if prefix is not None:
            traj, losses, diverged = prefix
            steps = _first_at_most(losses, tgt)
            tr = LRTrial(lr, steps, diverged, losses[-1], b, stage, 0.0,
                         traj.cost_at(steps) if steps is not None else None, before, "known")
        else:
            run = paused.pop(lr, None)  # paused below b: a live lr's next cap exceeds its last one
            if run is None:
                run = make_attack(optimizer, lr, b, tgt, seed=seed, device=device, **attack_options).start(model, task)
            steps0, wall0 = max(run.trajectory.steps, 0), run.trajectory.wall_s
            traj = run.advance(b)
            losses = traj.losses
            tr = LRTrial(lr, traj.steps_to(tgt), traj.diverged, traj.final_loss, b, stage,
                         (table[lr].wall_s if lr in table else 0.0) + traj.wall_s - wall0, traj.cost_to(tgt),
                         before + traj.steps - steps0, "run")
            if not run.finished and sum(r.nbytes for r in paused.values()) + run.nbytes <= limit:
                paused[lr] = run
        table[lr] = tr  # a later (longer) trial of the same lr replaces the earlier one
        curves[lr] = list(losses)
        if progress is not None:
            progress(f"lr search {optimizer}", len(table), n_total)
        return tr

    grid_lrs = sorted(set(lrs), reverse=True)
    caps = halving_budgets(budget) if (prune and schedule == "halving") else [budget]
    alive = grid_lrs
    for cap in caps:  # successive halving: every live lr up to cap, then the survivors up to 4 cap, ...
        for lr in alive:
            attempt(lr, "grid", cap)
        if incumbent() is not None:
            break  # every lr that has not met the target within its budget needs more steps than the best
        # survivors, lowest loss first: the likeliest to meet the target runs first and caps the others
        alive = sorted((lr for lr in alive if not table[lr].diverged),
                       key=lambda lr: (table[lr].final_loss if math.isfinite(table[lr].final_loss) else math.inf, -lr))
    paused.clear()  # refinement tries new lrs, each once
    ratio = 10.0 ** (1.0 / per_decade)
    for rnd in range(refine_rounds):
        if refine == 0:
            break
        centre = _best(list(table.values())).lr
        ratio = ratio ** (1.0 / (refine + 1))
        for j in range(refine, 0, -1):
            for lr in (centre * ratio**j, centre / ratio**j):
                if not any(math.isclose(lr, x, rel_tol=1e-12) for x in table):
                    attempt(lr, f"refine{rnd + 1}", budget)
    rows = tuple(table.values())
    best = _best(rows)
    ratios = dict(attack_options["cost_ratios"]) if "cost_ratios" in attack_options else {}
    return LRSearchResult(optimizer, tgt, budget, best.lr, best.steps, rows, time.perf_counter() - start, ratios,
                          tuple(curves[best.lr]))


#: default bound on the estimated bytes of the runs the halving rounds pause (``AttackRun.nbytes``)
PAUSE_BYTES = 512 * 2**20

#: first budget of the successive-halving rounds (a fraction of the search's budget, at least
#: HALVING_MIN steps: when runs are rerun instead of paused, shorter rounds cost more than they save)
#: and the factor between rounds
HALVING_FIRST = 1 / 64
HALVING_MIN = 16
HALVING_FACTOR = 4
SCHEDULES = ("halving", "descending")


def halving_budgets(budget: int) -> list[int]:
    """The round budgets max(16, ceil(budget / 64)), x 4, ..., ending with ``budget``."""
    caps = []
    b = max(HALVING_MIN, math.ceil(budget * HALVING_FIRST))
    while b < budget:
        caps.append(b)
        b *= HALVING_FACTOR
    return caps + [budget]


def _first_at_most(losses: Sequence[float], target: float) -> int | None:
    return next((t for t, v in enumerate(losses) if v <= target), None)


def _from_prefix(known: Mapping[float, Trajectory] | None, lr: float, budget: int, target: float,
                 factor: float) -> tuple[Trajectory, list[float], bool] | None:
    """(the prefix, losses, diverged) of a trial at ``lr`` with ``budget`` and ``target``, read
    off a known prefix trajectory when the prefix decides it (see the module doc), else None.
    Mirrors ``Attack.run``: at each step the loss is recorded, then divergence (non-finite, or
    above factor x max(|L_0|, 1e-300)) stops the run, then the target does, then the budget."""
    if not known:
        return None
    traj = next((tr for x, tr in known.items() if math.isclose(x, lr, rel_tol=1e-12)), None)
    if traj is None or not traj.losses:
        return None
    losses = traj.losses
    floor = factor * max(abs(losses[0]), 1e-300)
    for t, v in enumerate(losses):
        if t > budget:
            break
        if not math.isfinite(v) or v > floor:
            return traj, losses[: t + 1], True
        if v <= target or t == budget:
            return traj, losses[: t + 1], False
    return None  # the prefix ends before the trial is decided


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
