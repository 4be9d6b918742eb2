"""The learning-rate search's shortcuts return what an unpruned search returns.

Successive halving over the grid, incumbent pruning and answers read off known prefix
trajectories change the work, not the result: the best lr, its step count and its loss curve
equal those of the unpruned search (every lr run once with the whole budget), and the curve
equals a fresh run of the best lr; a trial answered from a prefix equals the same trial run.
All runs are deterministic float64 full-batch attacks, so equality is exact.
"""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from convrate.models.attacks import Attack, log_grid, lr_search
from convrate.models.attacks.search import halving_budgets
from convrate.models.tasks import tensor_task
from convrate.models.testing import mlp_arch, random_zoo


def _problem(seed: int):
    model = random_zoo(mlp_arch([4, 6, 3]), seed).module
    g = torch.Generator().manual_seed(1000 + seed)
    X = torch.randn(24, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (24,), generator=g)
    return model, tensor_task(X, y, loss="cross_entropy", seed=seed)


@settings(max_examples=8)
@given(optimizer=st.sampled_from(["sgd", "momentum", "adam"]), seed=st.integers(0, 50),
       frac=st.sampled_from([0.3, 0.6, 0.9]))
def test_pruned_searches_equal_the_unpruned_one(optimizer, seed, frac):
    model, task = _problem(seed)
    target, budget = frac * task.evaluate(model), 96
    grid = log_grid(1e-3, 30.0, per_decade=1)
    full = lr_search(model, task, optimizer, target, budget, grid=grid, refine=1, seed=seed, device="cpu", prune=False)
    assert all(t.budget == budget for t in full.table)
    for schedule in ("halving", "descending"):
        res = lr_search(model, task, optimizer, target, budget, grid=grid, refine=1, seed=seed, device="cpu",
                        schedule=schedule)
        assert (res.best_lr, res.best_steps) == (full.best_lr, full.best_steps), schedule
        assert res.best_losses == full.best_losses
        assert sorted(t.lr for t in res.table) == sorted(t.lr for t in full.table)
        # each lr reruns prefixes of its own run: the rounds before the deciding one sum to at most
        # 4/3 of the last cap below its stopping step s, so it costs at most s + 4/3 s (plus rounding)
        assert res.steps_run <= 7 / 3 * full.steps_run + len(halving_budgets(budget)) * len(res.table)
    fresh = Attack(optimizer, full.best_lr, budget, target, seed=seed, device="cpu").run(model, task)
    assert tuple(fresh.losses) == full.best_losses


@settings(max_examples=6)
@given(optimizer=st.sampled_from(["sgd", "adam"]), seed=st.integers(0, 50), pilot=st.sampled_from([5, 16, 64]))
def test_known_prefixes_answer_trials_exactly(optimizer, seed, pilot):
    model, task = _problem(seed)
    target, budget = 0.5 * task.evaluate(model), 64
    grid = log_grid(1e-2, 30.0, per_decade=1)
    known = {lr: Attack(optimizer, lr, pilot, None, seed=seed, device="cpu").run(model, task) for lr in grid}
    plain = lr_search(model, task, optimizer, target, budget, grid=grid, refine=1, seed=seed, device="cpu")
    fast = lr_search(model, task, optimizer, target, budget, grid=grid, refine=1, seed=seed, device="cpu", known=known)
    assert (fast.best_lr, fast.best_steps, fast.best_losses) == (plain.best_lr, plain.best_steps, plain.best_losses)
    by = {t.lr: t for t in plain.table}
    for t in fast.table:
        p = by[t.lr]
        assert (t.steps, t.diverged, t.final_loss, t.budget) == (p.steps, p.diverged, p.final_loss, p.budget)
        if t.source == "known":
            assert t.ran <= p.ran and t.lr in known
    assert fast.steps_run <= plain.steps_run


def test_halving_budgets():
    assert halving_budgets(3000) == [47, 188, 752, 3000]
    assert halving_budgets(1) == [1] and halving_budgets(64) == [16, 64] and halving_budgets(16) == [16]
