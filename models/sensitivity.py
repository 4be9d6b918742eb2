"""Step-count sensitivity: how far a steps-to-target count moves under rounding-level changes.

A count N = first t with L(theta_t) <= target is a discontinuous function of the trajectory:
near the edge of stability -- where the best learning rate of a search sits by construction --
the dynamics amplify any perturbation, and float64 results that differ at 1e-15 between two
CPUs (BLAS kernels sum in different orders) become different counts (observed: MiniLM SGD 46
vs 45 steps, digits-MLP R2 SGD 678-687). A count is therefore reported with a *sensitivity
range*: the counts of the same attack (optimizer, learning rate, budget, target, seed) started
from ``runs`` perturbed copies theta_0 (1 + delta), delta_i uniform in [-ulps u, ulps u]
(u the unit roundoff of each parameter's dtype, 2^-53 for float64; ``ulps`` = 4 by default),
together with the unperturbed count.

Why perturb the start: a machine with other kernels perturbs every operation at the rounding
level; the trajectory's instability amplifies a perturbation the same way wherever it enters,
so a rounding-level change of theta_0 exercises the same amplification at the cost of one run
each. Seeds would measure something else (the task and the full-batch order are fixed; a seed
changes LoRA's initialization or the data, a perturbation far above rounding). The range is an
estimate from a few samples, not a bound: ``overlap`` (used by ``convrate report --compare``)
accepts two reports' counts of the same quantity when their ranges intersect. Cost: ``runs``
extra attacks per reported count, only at the best learning rate.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import nn

from convrate.errors import InvalidInputError
from convrate.models.attacks import make_attack
from convrate.models.tasks import Task

#: perturbed starts per reported count, and their size in units of roundoff
DEFAULT_RUNS = 3
DEFAULT_ULPS = 4.0

Count = int | None  # None: the target was not reached within the budget (> budget)


def _key(n: Count) -> float:
    return float("inf") if n is None else float(n)


def count_range(counts: Sequence[Count]) -> list[Count]:
    """[lo, hi] of counts, None standing for "not reached within the budget" (+infinity)."""
    if not counts:
        raise InvalidInputError("a count range needs at least one count")
    lo, hi = min(counts, key=_key), max(counts, key=_key)
    return [lo, hi]


def within(n: Count, rng: Sequence[Count]) -> bool:
    """lo <= n <= hi (None = +infinity)."""
    return _key(rng[0]) <= _key(n) <= _key(rng[1])


def overlap(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """Two ranges [lo, hi] intersect (None = +infinity); works for counts and for ratios."""
    return _key(a[0]) <= _key(b[1]) and _key(b[0]) <= _key(a[1])


def ratio_range(num: Sequence[Count], den: Sequence[Count]) -> list[float | None] | None:
    """Range of num / den over the two count ranges (a slowdown's range): [lo_num / hi_den,
    hi_num / lo_den]; None when a denominator may be 0 or unreached (the ratio is undefined)."""
    if den[0] in (None, 0) or den[1] is None or num[0] is None:
        return None
    return [num[0] / den[1], None if num[1] is None else num[1] / den[0]]


@dataclass(frozen=True)
class StepSensitivity:
    """A count and its sensitivity range (module doc)."""

    nominal: Count
    perturbed: tuple[Count, ...]
    ulps: float
    budget: int

    @property
    def range(self) -> list[Count]:
        return count_range([self.nominal, *self.perturbed])

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "perturbed": list(self.perturbed), "range": self.range,
                "method": f"start theta_0 (1 + delta), |delta_i| <= {self.ulps:g} u, {len(self.perturbed)} runs"}


def perturb_start(model: nn.Module, ulps: float, seed: int) -> nn.Module:
    """A copy of ``model`` with every floating-point parameter multiplied by (1 + delta),
    delta_i uniform in [-ulps u, ulps u], u = unit roundoff of its dtype (seeded)."""
    g = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            if p.is_floating_point():
                u = torch.finfo(p.dtype).eps / 2
                delta = (2 * torch.rand(p.shape, generator=g, dtype=torch.float64) - 1) * ulps * u
                p.mul_((1 + delta).to(p.device, p.dtype))
    return out


_MISSING: Any = object()


def step_sensitivity(model: nn.Module, task: Task, optimizer: str, lr: float, target: float, budget: int, *,
                     runs: int = DEFAULT_RUNS, ulps: float = DEFAULT_ULPS, seed: int = 0, nominal: Count = _MISSING,
                     **attack_options: Any) -> StepSensitivity:
    """The steps-to-``target`` count of the attack ``make_attack(optimizer, lr, budget, target,
    seed)`` on ``model`` (``lr`` is the searched knob: the learning rate, or the damping of a damped
    second-order method) and its counts from ``runs`` perturbed starts (module doc). ``nominal``
    skips the unperturbed run when the caller already has its count (e.g. a search's best steps)."""
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise InvalidInputError(f"runs must be a positive integer, got {runs!r}")
    if not (ulps > 0):
        raise InvalidInputError(f"ulps must be positive, got {ulps!r}")
    atk = make_attack(optimizer, lr, budget, target, seed=seed, **attack_options)
    if nominal is _MISSING:
        nominal = atk.steps_to(model, task)
    perturbed = tuple(atk.steps_to(perturb_start(model, ulps, 1_000_003 * (seed + 1) + i), task) for i in range(runs))
    return StepSensitivity(nominal, perturbed, float(ulps), int(budget))


__all__ = ["DEFAULT_RUNS", "DEFAULT_ULPS", "StepSensitivity", "count_range", "overlap", "perturb_start",
           "ratio_range", "step_sensitivity", "within"]
