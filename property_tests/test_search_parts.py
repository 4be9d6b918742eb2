"""The learning-rate search's parts on hand-built values, checked exactly: the log grid, which
trial is best, trials answered from a known prefix trajectory, the slowdown ratios, and
lr_search's bookkeeping (defaults, round order, pause limit, seconds, device, cost probe)."""
from __future__ import annotations

import itertools
import math
import time

import pytest
import torch
from torch import nn

from convrate.errors import InvalidInputError
from convrate.models.attacks import Attack, LRSearchResult, LRTrial, Slowdown, Trajectory, log_grid, lr_search, slowdown
from convrate.models.attacks import attack as attack_module
from convrate.models.attacks.attack import AttackRun
from convrate.models.attacks.registry import get_spec
from convrate.models.attacks.search import _best, _first_at_most, _from_prefix
from convrate.models.tasks import tensor_task
from convrate.models.testing import mlp_arch, random_zoo


def _trial(lr: float, steps: int | None, loss: float = 1.0, diverged: bool = False,
           cost: dict | None = None) -> LRTrial:
    return LRTrial(lr, steps, diverged, loss, 100, "grid", 0.0, cost)


def _result(steps: int | None, budget: int = 100, cost: dict | None = None) -> LRSearchResult:
    return LRSearchResult("sgd", 0.5, budget, 0.1, steps, (_trial(0.1, steps, cost=cost),), 0.0)


# ---------------------------------------------------------------- grid
def test_log_grid_values_and_checks():
    assert log_grid(1e-2, 1.0, 1) == [10.0 ** -2, 10.0 ** -1, 1.0]
    assert log_grid(1.0, 1.0, 3) == [1.0]  # lo = hi is one point
    assert log_grid(0.2, 0.9, 1) == []
    assert log_grid() == log_grid(1e-5, 10.0, 2) == [10.0 ** (k / 2) for k in range(-10, 3)]
    assert log_grid(10.0, per_decade=25) == [10.0]  # the default high end is 10: 10^(1 + 1/25) = 10.96 is past it
    for args, what in (((0, 1, 1), "grid low end"), ((1e-3, -1, 1), "grid high end"), ((1e-3, 1, 0), "points per decade")):
        with pytest.raises(InvalidInputError, match=f"^{what} must be"):
            log_grid(*args)
    with pytest.raises(InvalidInputError, match="exceeds"):
        log_grid(2.0, 1.0, 1)


# ---------------------------------------------------------------- the best trial
def test_best_trial():
    # fewest steps wins; a tie goes to the lower final loss even at the larger lr, then the smaller lr
    assert _best([_trial(0.1, 9, 0.2), _trial(1.0, 7, 0.4), _trial(0.3, 7, 0.3)]).lr == 0.3
    assert _best([_trial(1.0, 7, 0.3), _trial(0.3, 7, 0.3)]).lr == 0.3
    # none reached: the non-diverged trial with the lowest final loss, though a diverged one is lower
    assert _best([_trial(0.1, None, 0.01, diverged=True), _trial(0.3, None, 0.9), _trial(1.0, None, 0.5)]).lr == 1.0
    # all diverged: the lowest finite final loss (NaN counts as +inf, wherever it stands)
    assert _best([_trial(0.01, None, math.nan, True), _trial(1.0, None, 1e9, True)]).lr == 1.0
    assert _first_at_most([3.0, 2.0, 1.0], 2.0) == 1 and _first_at_most([3.0, math.nan], 2.0) is None


# ---------------------------------------------------------------- known prefixes
def _known(losses: list[float], lr: float = 0.1) -> dict[float, Trajectory]:
    return {lr: Trajectory("sgd", lr, len(losses) - 1, None, losses=list(losses))}


@pytest.mark.parametrize("losses, budget, target, expected", [
    ([2.0, 1.0, 0.5, 0.25], 3, 0.5, ([2.0, 1.0, 0.5], False)),           # the target, met with equality
    ([2.0, 1.0, 0.9, 0.8], 2, 0.5, ([2.0, 1.0, 0.9], False)),            # the budget, reached inside the prefix
    ([2.0, 1500.0, 2500.0, 1.0], 3, 0.5, ([2.0, 1500.0, 2500.0], True)),  # diverged: above 1e3 |L_0| = 2000
    ([2.0, 2000.0, 1.0], 2, 0.5, ([2.0, 2000.0, 1.0], False)),            # exactly at 1e3 |L_0| is not divergence
    ([0.5, 700.0, 0.1], 2, 0.2, ([0.5, 700.0], True)),                    # |L_0| < 1: the factor of |L_0| itself
    ([2.0, math.nan, 0.1], 2, 0.5, ([2.0, math.nan], True)),              # NaN diverges
    ([2.0, 1.0, 0.9], 5, 0.5, None),                                      # the prefix ends first: undecided
    ([], 5, 0.5, None),
])
def test_trials_answered_from_a_prefix(losses, budget, target, expected):
    got = _from_prefix(_known(losses), 0.1, budget, target, 1e3)
    if expected is None:
        assert got is None
        return
    traj, cut, diverged = got
    assert traj.losses == losses and (diverged, len(cut)) == (expected[1], len(expected[0]))
    assert all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(cut, expected[0]))


def test_prefix_learning_rates_match_to_1e_12():
    known = _known([2.0, 1.0, 0.4])
    assert _from_prefix(known, 0.1 * (1 + 1e-13), 2, 0.5, 1e3) is not None
    assert _from_prefix(known, 0.1 * (1 + 1e-10), 2, 0.5, 1e3) is None
    assert _from_prefix(None, 0.1, 2, 0.5, 1e3) is None


# ---------------------------------------------------------------- slowdown
def test_slowdown_between_and_cost_ratio():
    base = _result(10, cost={"grad_equivalents": 20.0, "wall_s": 0.0})
    cases = [(_result(30), 3.0, False), (_result(None, budget=100), 10.0, True)]
    for defended, ratio, lower in cases:
        sd = Slowdown.between(base, defended)
        assert (sd.undefended, sd.defended, sd.ratio, sd.is_lower_bound) == (base, defended, ratio, lower)
    for undefended in (_result(None), _result(0)):
        sd = Slowdown.between(undefended, _result(30))
        assert (sd.undefended, sd.ratio, sd.is_lower_bound) == (undefended, None, False) and sd.defended.best_steps == 30
    sd = Slowdown.between(base, _result(30, cost={"grad_equivalents": 50.0, "wall_s": 1.0}))
    assert sd.cost_ratio() == 2.5 and sd.cost_ratio("grad_equivalents") == 2.5
    assert sd.cost_ratio("wall_s") is None  # an undefended cost of 0 gives no ratio
    assert Slowdown.between(base, _result(None)).cost_ratio() is None
    assert Slowdown.between(_result(10), _result(30, cost={"grad_equivalents": 1.0})).cost_ratio() is None


def _tiny():
    model = random_zoo(mlp_arch([3, 4, 2]), 1).module
    g = torch.Generator().manual_seed(7)
    task = tensor_task(torch.randn(12, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (12,), generator=g),
                       loss="cross_entropy", seed=7)
    return model, task


def test_slowdown_passes_the_search_options_to_both_searches():
    model, task = _tiny()
    sd = slowdown(model, model, task, "sgd", 0.9 * task.evaluate(model), 20, grid=[0.3, 1.0], refine=0, device="cpu")
    assert [sorted(t.lr for t in r.table) for r in (sd.undefended, sd.defended)] == [[0.3, 1.0], [0.3, 1.0]]
    assert sd.ratio == 1.0


# ---------------------------------------------------------------- lr_search's defaults and checks
def test_lr_search_defaults():
    """Without options: SGD's grid log_grid(1e-5, 10, 2); 2 points refined on each side of the
    best, spaced 10^(1/(2 x 3)); one round; seed 0 (LoRA draws its adapters: the seed shows)."""
    model, task = _tiny()
    target = 0.95 * task.evaluate(model)
    res = lr_search(model, task, "sgd", target, 6)
    assert sorted(t.lr for t in res.table if t.stage == "grid") == log_grid(1e-5, 10.0, 2)
    best = _best([t for t in res.table if t.stage == "grid"]).lr
    r = 10.0 ** (1 / 6)
    assert sorted(t.lr for t in res.table if t.stage == "refine1") == pytest.approx(
        sorted([best / r**2, best / r, best * r, best * r**2]), rel=1e-12)
    opts = dict(grid=[0.01, 0.1], refine=0, device="cpu")
    by_seed = {s: lr_search(model, task, "lora-sgd", 0.0, 5, seed=s, **opts) for s in (0, 1)}
    default = lr_search(model, task, "lora-sgd", 0.0, 5, **opts)
    assert default.best_losses == by_seed[0].best_losses != by_seed[1].best_losses


def test_lr_search_grid_sources_and_result_fields():
    """No grid: the optimizer's own grid (L-BFGS with line search), else log_grid(1e-5, 10,
    per_decade); the result names the optimizer and target it was searched for."""
    model, task = _flat()
    wolfe = lr_search(model, task, "lbfgs-wolfe", 0.0, 2, refine=0, device="cpu")
    assert sorted(t.lr for t in wolfe.table) == sorted(get_spec("lbfgs-wolfe").grid) == [0.1, 0.3, 1.0, 3.0]
    coarse = lr_search(model, task, "sgd", 0.25, 2, per_decade=1, refine=0, device="cpu")
    assert sorted(t.lr for t in coarse.table) == log_grid(1e-5, 10.0, 1)
    fine = lr_search(model, task, "sgd", 0.25, 1, per_decade=25, refine=0, device="cpu")
    assert sorted(t.lr for t in fine.table) == log_grid(1e-5, 10.0, 25) and max(t.lr for t in fine.table) == 10.0
    assert (coarse.optimizer, coarse.target, coarse.budget) == ("sgd", 0.25, 2)


def test_lr_search_argument_checks():
    model, task = _tiny()
    assert not [t for t in lr_search(model, task, "sgd", 0.1, 4, grid=[0.1], refine_rounds=0, device="cpu").table
                if t.stage != "grid"]
    for bad in (True, 1.5, -1):
        with pytest.raises(InvalidInputError, match="refine must"):
            lr_search(model, task, "sgd", 0.1, 4, grid=[0.1], refine=bad)
        with pytest.raises(InvalidInputError, match="refine_rounds must"):
            lr_search(model, task, "sgd", 0.1, 4, grid=[0.1], refine_rounds=bad)
    with pytest.raises(InvalidInputError, match="^step budget must"):
        lr_search(model, task, "sgd", 0.1, 0, grid=[0.1])
    with pytest.raises(InvalidInputError, match="^grid learning rate must be positive"):
        lr_search(model, task, "sgd", 0.1, 4, grid=[0.1, -1.0])


def test_lr_search_reports_progress_and_runs_the_grid_largest_first():
    model, task = _tiny()
    calls = []
    res = lr_search(model, task, "sgd", 0.0, 4, grid=[0.01, 1.0, 0.1], refine=1, refine_rounds=2, device="cpu",
                    progress=lambda *a: calls.append(a))
    assert [t.lr for t in res.table][:3] == [1.0, 0.1, 0.01]  # insertion order: the first round's
    assert calls and all(c[0] == "lr search sgd" and c[2] == 3 + 2 * 1 * 2 for c in calls)
    assert [c[1] for c in calls] == sorted(c[1] for c in calls) and calls[-1][1] == len(res.table)


def test_lr_search_measures_product_costs_once():
    """A method paying curvature products gets their cost ratios measured once (or as given),
    and its trials' gradient-equivalents use them; a first-order method has none."""
    model, task = _tiny()
    opts = dict(grid=[1.0], refine=0, device="cpu")
    res = lr_search(model, task, "newton-cg", 0.9 * task.evaluate(model), 10, **opts)
    assert set(res.cost_ratios) == {"hvp"} and res.cost_ratios["hvp"] > 0 and res.reached
    given = lr_search(model, task, "newton-cg", 0.9 * task.evaluate(model), 10, cost_ratios=(("hvp", 2.5),), **opts)
    assert given.cost_ratios == {"hvp": 2.5}
    c = given.best_cost
    assert c["grad_equivalents"] == c["gradients"] + 2.5 * c["hvps"] and c["hvps"] > 0
    assert lr_search(model, task, "sgd", 0.0, 3, **opts).cost_ratios == {}


def test_refinement_is_pruned_by_the_incumbent_and_known_prefixes_decide_trials():
    model, task = _tiny()
    target = 0.9 * task.evaluate(model)
    res = lr_search(model, task, "sgd", target, 200, grid=[0.3, 1.0, 3.0], refine=1, device="cpu")
    grid_best = min(t.steps for t in res.table if t.stage == "grid" and t.steps is not None)
    assert all(t.budget <= grid_best for t in res.table if t.stage == "refine1")
    # a prefix as long as the budget decides every grid trial: none is run
    known = {lr: Attack("sgd", lr, 200, None, seed=0, device="cpu").run(model, task) for lr in (0.3, 1.0, 3.0)}
    fast = lr_search(model, task, "sgd", target, 200, grid=[0.3, 1.0, 3.0], refine=1, device="cpu", known=known)
    grid = [t for t in fast.table if t.stage == "grid"]
    assert len(grid) == 3 and all(t.source == "known" and t.ran == 0 and t.wall_s == 0.0 for t in grid)
    assert all(t.cost is not None for t in grid if t.steps is not None)
    assert (fast.best_lr, fast.best_steps) == (res.best_lr, res.best_steps)
    # the divergence factor of the attack options applies to prefixes too: 10 x L_0 here
    walk = Trajectory("sgd", 1.0, 3, None, losses=[1.0, 5.0, 20.0, 0.1])
    one = lr_search(model, task, "sgd", 0.05, 3, grid=[1.0], refine=0, device="cpu", known={1.0: walk},
                    divergence_factor=10.0)
    assert [(t.source, t.diverged, t.final_loss) for t in one.table] == [("known", True, 20.0)]


# ---------------------------------------------------------------- lr_search's bookkeeping
class _Zero(nn.Module):
    """Logits 0 x (W x + b): the loss is ln 2 at every parameter value and the gradient is 0, so
    every learning rate gives the same constant curve (no target below ln 2 is ever met)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.0 * self.lin(x)


def _flat():
    return _Zero(), _tiny()[1]


def _advances(monkeypatch) -> list[tuple[float, int, float, float]]:
    """Record every ``AttackRun.advance``: (lr, budget, seconds it added to the run, final loss)."""
    calls = []
    original = AttackRun.advance

    def spy(self, budget, progress=None):
        before = self.trajectory.wall_s
        traj = original(self, budget, progress)
        calls.append((self.attack.lr, budget, traj.wall_s - before, traj.final_loss))
        return traj

    monkeypatch.setattr(AttackRun, "advance", spy)
    return calls


def test_halving_rounds_run_survivors_by_loss_then_larger_lr(monkeypatch):
    """Round 1 (16 steps) runs the grid largest first; round 2 runs the survivors lowest final
    loss first, ties to the larger lr (on the flat model every loss ties)."""
    calls = _advances(monkeypatch)
    model, task = _tiny()
    res = lr_search(model, task, "sgd", 0.0, 100, grid=[0.3, 3.0, 10.0], refine=0, device="cpu")
    assert not res.reached and [c[1] for c in calls][:3] == [16, 16, 16]
    assert [c[0] for c in calls[:3]] == [10.0, 3.0, 0.3]
    loss = {c[0]: c[3] for c in calls[:3]}
    by_loss = sorted(loss, key=lambda lr: (loss[lr], -lr))
    assert by_loss != [10.0, 3.0, 0.3]  # the losses do not follow the lr here: the order is seen
    assert [c[0] for c in calls if c[1] == 64] == by_loss
    calls.clear()
    model, task = _flat()
    lr_search(model, task, "sgd", 0.0, 20, grid=[0.1, 0.3, 0.2], refine=0, device="cpu")
    assert [(c[0], c[1]) for c in calls] == [(0.3, 16), (0.2, 16), (0.1, 16), (0.3, 20), (0.2, 20), (0.1, 20)]


def test_paused_runs_stay_within_pause_bytes(monkeypatch):
    """With every run estimated at 100 bytes and pause_bytes 100, exactly one run is held
    between rounds (the first of each round: the others rerun from the start): on the flat model
    no lr decides early, so the held lr runs 100 steps and the others 16 + 64 + 100."""
    monkeypatch.setattr(AttackRun, "nbytes", property(lambda self: 100))
    model, task = _flat()
    for limit, ran in ((100, [100, 180, 180]), (99, [180, 180, 180]), (300, [100, 100, 100])):
        res = lr_search(model, task, "sgd", 0.0, 100, grid=[0.1, 0.2, 0.3], refine=0, device="cpu", pause_bytes=limit)
        assert [(t.lr, t.ran, t.source) for t in res.table] == [(0.3, ran[0], "run"), (0.2, ran[1], "run"),
                                                                  (0.1, ran[2], "run")], limit


def test_trial_and_search_seconds_add_up(monkeypatch):
    """On a clock that ticks one second per reading: each trial's wall_s is the seconds its
    runs spent inside ``advance`` over every round (paused or rerun), and the search's wall_s
    covers them all and no more than the call."""
    ticks = itertools.count(10**6)
    monkeypatch.setattr(time, "perf_counter", lambda: float(next(ticks)))
    calls = _advances(monkeypatch)
    model, task = _tiny()
    for pause in (0, None):
        calls.clear()
        before = time.perf_counter()
        res = lr_search(model, task, "sgd", 0.0, 100, grid=[0.3, 3.0, 10.0], refine=1, device="cpu",
                        pause_bytes=pause)
        after = time.perf_counter()
        spent: dict[float, float] = {}
        for lr, _, secs, _ in calls:
            spent[lr] = spent.get(lr, 0.0) + secs
        assert {t.lr: t.wall_s for t in res.table} == spent and all(s > 0 for s in spent.values())
        assert sum(spent.values()) <= res.wall_s < after - before


def test_lr_search_starts_each_run_on_the_device_with_one_cost_probe(monkeypatch):
    """Every run, and the probe measuring product costs, resolves the search's device; the probe
    (a started run that takes no step) exists only for a method paying products whose ratios
    were not given, and measures them with the search's inner CG steps."""
    devices, inner = [], []
    resolve, measure = attack_module.resolve_device, attack_module.measure_cost_ratios
    monkeypatch.setattr(attack_module, "resolve_device", lambda d: devices.append(d) or resolve(d))
    monkeypatch.setattr(attack_module, "measure_cost_ratios",
                        lambda ctx, uses, k: inner.append((uses, k)) or measure(ctx, uses, k))
    model, task = _tiny()
    opts = dict(grid=[1.0], refine=0, device="cpu")
    for optimizer, extra, runs, probes in (("sgd", {}, 1, [((), 10)]),
                                           ("newton-cg", {"inner_steps": 3}, 2, [(("hvp",), 3)]),
                                           ("newton-cg", {"cost_ratios": (("hvp", 2.5),)}, 1, [])):
        devices.clear(), inner.clear()
        lr_search(model, task, optimizer, 0.0, 4, **opts, **extra)
        assert devices == ["cpu"] * runs and inner == probes, optimizer


def test_refinement_skips_only_lrs_tried_to_1e_12():
    """A refinement point 5e-10 (relative) away from a tried lr is tried; on the flat model the
    best is the smallest lr (equal losses), so 0.01 x 10^(+-1/4) are the refinement points."""
    model, task = _flat()
    near = 0.01 * 10.0 ** 0.25 * (1 + 5e-10)
    res = lr_search(model, task, "sgd", 0.0, 3, grid=[0.01, near], refine=1, device="cpu")
    refined = sorted(t.lr for t in res.table if t.stage == "refine1")
    assert refined == pytest.approx([0.01 / 10.0 ** 0.25, 0.01 * 10.0 ** 0.25], rel=1e-12) and len(res.table) == 4
    same = lr_search(model, task, "sgd", 0.0, 3, grid=[0.01, 0.01 * 10.0 ** 0.25 * (1 + 1e-13)], refine=1,
                     device="cpu")
    assert len(same.table) == 3
