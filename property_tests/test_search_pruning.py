"""The learning-rate search's shortcuts return what an unpruned search returns.

Successive halving over the grid, incumbent pruning and answers read off known prefix
trajectories, and runs paused between halving rounds and continued, change the work, not the result: the best lr, its step count and its loss curve
equal those of the unpruned search (every lr run once with the whole budget), and the curve
equals a fresh run of the best lr; a trial answered from a prefix equals the same trial run.
All runs are deterministic float64 full-batch attacks, so equality is exact.
"""
from __future__ import annotations

import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from convrate.errors import InvalidInputError
from convrate.models.attacks import OPTIMIZERS, Attack, get_spec, log_grid, lr_search, make_attack
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


# ---------------------------------------------------------------- paused runs
def _state(traj, run):
    return (traj.losses, [c.to_dict() for c in traj.costs], traj.diverged, traj.stopped,
            [p.detach().clone() for p in run.params])


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@settings(max_examples=3)
@given(seed=st.integers(0, 50), cuts=st.lists(st.integers(1, 23), min_size=1, max_size=3))
def test_a_paused_run_continued_equals_one_run(optimizer, seed, cuts):
    """Advancing to b1 < b2 < ... < 24, with another run of the same seed advanced in between
    (its RNG draws must not leak into this one: Sophia samples labels at every step), records
    what one run to 24 records, bit for bit; the caller's RNG is untouched."""
    model, task = _problem(seed)
    lr = 0.3 if get_spec(optimizer).knob == "lr" else 1.0
    attack = make_attack(optimizer, lr, 24, 0.2 * task.evaluate(model), seed=seed, device="cpu")
    whole = attack.start(model, task)
    whole.advance(24)
    torch.manual_seed(seed)
    caller = torch.get_rng_state()
    split, other = attack.start(model, task), make_attack(optimizer, 2 * lr, 24, None, seed=seed, device="cpu").start(model, task)
    for b in sorted(set(cuts)) + [24]:
        if b >= max(split.trajectory.steps, 0):
            split.advance(b)
            other.advance(min(b + 3, 24))
    assert torch.equal(torch.get_rng_state(), caller)
    a, b = _state(whole.trajectory, whole), _state(split.trajectory, split)
    assert a[:4] == b[:4]
    assert all(torch.equal(x, y) for x, y in zip(a[4], b[4]))
    assert whole.trajectory.losses == attack.run(model, task).losses


def test_paused_run_accounting():
    """A finished run does not move; a budget below the steps taken is refused; wall seconds
    count time inside ``advance`` only (a pause of 0.3 s between advances is not counted)."""
    model, task = _problem(3)
    run = make_attack("adam", 0.01, 50, None, seed=3, device="cpu").start(model, task)
    t0 = time.perf_counter()
    run.advance(2)
    inside = time.perf_counter() - t0
    time.sleep(0.3)
    t0 = time.perf_counter()
    traj = run.advance(4)
    inside += time.perf_counter() - t0
    assert traj.steps == 4 and traj.budget == 4 and traj.stopped == "budget" and not run.finished
    assert traj.times == sorted(traj.times) and traj.times[-1] <= traj.wall_s <= inside < 0.3
    with pytest.raises(InvalidInputError, match="taken 4 steps"):
        run.advance(3)
    done = make_attack("sgd", 0.5, 50, task.evaluate(model), seed=3, device="cpu").start(model, task)
    assert done.advance(10).stopped == "target" and done.finished and done.advance(40).steps == 0
    assert run.nbytes == 5 * sum(p.numel() * 8 for p in model.parameters())
    ctx = run.ctx  # what a paused run keys its last recorded loss by: one copy of the parameters
    assert ctx._cache is None and ctx._pending[0] == 4 and len(ctx._pending[1]) == len(run.params)
    for bad in (-1, 1.5, True):
        with pytest.raises(InvalidInputError, match="pause_bytes"):
            lr_search(model, task, "sgd", 0.1, 5, pause_bytes=bad)


@settings(max_examples=6)
@given(optimizer=st.sampled_from(["sgd", "momentum", "adam", "sophia"]), seed=st.integers(0, 50),
       frac=st.sampled_from([0.3, 0.6, 0.9]))
def test_pausing_between_rounds_changes_only_the_work(optimizer, seed, frac):
    """The halving search with every run paused between rounds, with room for one paused run,
    and with none (every round reruns from the start) fills the same table; paused, an lr's
    run costs exactly its last trial's steps (to the target, or its budget, or fewer when it
    diverged), and rerunning costs more whenever some lr went past the first round."""
    model, task = _problem(seed)
    target, budget, grid = frac * task.evaluate(model), 200, log_grid(1e-3, 30.0, per_decade=1)
    one = make_attack(optimizer, grid[0], 1, seed=seed, device="cpu").start(model, task).nbytes
    res = {pb: lr_search(model, task, optimizer, target, budget, grid=grid, refine=1, seed=seed, device="cpu",
                         pause_bytes=pb) for pb in (None, one, 0)}

    def table(r):
        return [(t.lr, t.steps, t.diverged, t.final_loss, t.budget, t.stage,
                 t.cost and {k: v for k, v in t.cost.items() if k != "wall_s"}) for t in r.table]

    assert table(res[None]) == table(res[one]) == table(res[0])
    assert res[None].best_losses == res[one].best_losses == res[0].best_losses
    for t in res[None].table:
        assert t.ran == t.steps if t.steps is not None else (t.ran <= t.budget if t.diverged else t.ran == t.budget)
    assert res[None].steps_run <= res[one].steps_run <= res[0].steps_run
    if any(t.budget > halving_budgets(budget)[0] and t.stage == "grid" for t in res[0].table):
        assert res[None].steps_run < res[0].steps_run
