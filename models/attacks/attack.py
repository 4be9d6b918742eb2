"""Attacks: fine-tune a copy of a released model on a Task and count steps to a target loss.

An ``Attack`` is (optimizer, learning rate, step budget, target loss). ``Attack.run`` fine-
tunes a deep copy of the model (the input is never modified) and records the trajectory
L(theta_0), L(theta_1), ... of the full training loss (dimensionless; see ``tasks``) at the
iterates, where theta_{t+1} is one optimizer step from theta_t on the batch
``task.batch(t)``. ``Trajectory.steps_to(target)`` is the first t with L(theta_t) <= target
(0 if the start already meets it; None if not within the budget). A run *diverges* when
L(theta_t) is NaN/inf or exceeds ``divergence_factor`` (default 1e3) x L(theta_0); it then
stops. Plain GD on a quadratic diverges iff lr > 2 / lambda_max over the active eigen-
directions (F1); the run flags it at the first step where the loss passes the factor.

Optimizers: the names of ``registry.REGISTRY`` (``OPTIMIZERS``), each a module of this package
with the statement that predicts it: ``first_order`` (sgd, momentum, adam, adamw, lora-sgd,
lora-adam), ``second_order`` (lbfgs, lbfgs-wolfe, newton-cg), ``gauss_newton``
(gauss-newton, kfac), ``preconditioned`` (shampoo, soap, sophia, muon). For Newton-CG,
Gauss-Newton and K-FAC the searched knob is the damping lambda (``make_attack``), with the
step multiplier ``lr`` (default 1).

Cost: ``Trajectory.costs[t]`` holds the cumulative evaluations that produced theta_t
(gradients, Hessian- and Gauss-Newton-vector products, extra backward passes; see
``registry``), ``times[t]`` the wall seconds since the start, and ``cost_ratios`` the measured
cost of each product kind relative to a gradient, so ``cost_to(target)`` reports steps,
gradient-equivalents and wall time to the target.

LoRA: ``lora-sgd`` / ``lora-adam`` train adapters of rank ``lora_rank`` (base frozen): through peft on
the attention and MLP projections of a Hugging Face model inside the attacked module
(``peft_lora``), the in-project ``lora`` on the Linear layers of anything else (zoo nets).

Runs are deterministic given ``seed`` (the RNG is forked and seeded, deterministic algorithms
requested) and the caller's RNG state is left untouched.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from convrate.errors import InvalidInputError
from convrate.models.attacks import first_order, gauss_newton, preconditioned, second_order  # noqa: F401 (register)
from convrate.models.attacks.lora import Targets, lora_wrap
from convrate.models.attacks.registry import REGISTRY, Cost, StepContext, get_spec, measure_cost_ratios
from convrate.models.attacks.peft_lora import decoder_targets, peft_wrap, uses_peft
from convrate.models.runtime import RNGStream, resolve_device
from convrate.models.tasks import Task

#: every attacker name, in registration order (first-order, second-order, Gauss-Newton, preconditioned)
OPTIMIZERS = tuple(REGISTRY)

#: progress callback: (label, done, total)
Progress = Callable[[str, int, int], None]


# ---------------------------------------------------------------- helpers
def require_finite_parameters(model: nn.Module, what: str = "model") -> None:
    """InvalidInputError naming the first parameter or buffer with a NaN or inf entry."""
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"{what} must be a torch.nn.Module, got {type(model).__name__}")
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise InvalidInputError(f"{what} has non-finite entries in {name!r}")


def _positive_finite(x: Any, what: str) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{what} must be a number, got {x!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise InvalidInputError(f"{what} must be positive and finite, got {x!r}")
    return v


def _positive_int(x: Any, what: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x < 1:
        raise InvalidInputError(f"{what} must be a positive integer, got {x!r}")
    return x


def _check_optimizer(name: Any) -> str:
    return get_spec(name).name


def _check_target(target: Any) -> float | None:
    if target is None:
        return None
    try:
        v = float(target)
    except (TypeError, ValueError):
        raise InvalidInputError(f"target loss must be a number, got {target!r}") from None
    if not math.isfinite(v):
        raise InvalidInputError(f"target loss must be finite, got {target!r}")
    return v


# ---------------------------------------------------------------- trajectory
@dataclass
class Trajectory:
    """losses[t] = full training loss after t steps (t = 0 .. steps); ``eval_losses`` pairs
    (t, test loss); ``stopped`` is 'target', 'diverged' or 'budget'."""

    optimizer: str
    lr: float
    budget: int
    target: float | None
    losses: list[float] = field(default_factory=list)
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    diverged: bool = False
    stopped: str = "budget"
    wall_s: float = 0.0
    trainable_parameters: int = 0
    costs: list[Cost] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    cost_ratios: dict[str, float] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        """Number of optimizer steps taken."""
        return len(self.losses) - 1

    @property
    def initial_loss(self) -> float:
        return self.losses[0]

    @property
    def final_loss(self) -> float:
        return self.losses[-1]

    def steps_to(self, target: float | None = None) -> int | None:
        """First t with losses[t] <= target (default: the attack's target); None if the
        recorded trajectory never gets there (not within budget, or diverged first)."""
        tgt = _check_target(self.target if target is None else target)
        if tgt is None:
            raise InvalidInputError("steps_to needs a target loss (none was given to the attack)")
        for t, v in enumerate(self.losses):
            if v <= tgt:  # NaN compares False
                return t
        return None

    def cost_at(self, t: int) -> dict[str, Any]:
        """What producing theta_t cost: steps, the counts, gradient-equivalents, wall seconds."""
        c = self.costs[t]
        return {"steps": t, **c.to_dict(), "grad_equivalents": c.equivalents(self.cost_ratios),
                "wall_s": self.times[t]}

    def cost_to(self, target: float | None = None) -> dict[str, Any] | None:
        """``cost_at(steps_to(target))``; None when the target is not reached."""
        t = self.steps_to(target)
        return None if t is None else self.cost_at(t)


# ---------------------------------------------------------------- attack
@dataclass(frozen=True)
class Attack:
    """Fine-tuning attack; see the module doc for the optimizers and the recorded quantities.

    ``stop_at_target``: stop as soon as the target is met (the trajectory then ends at
    ``steps_to``). ``eval_every`` > 0 records the test loss every that many steps.
    ``train_mode`` False (default) runs the copy in eval mode (no dropout: the loss is a
    deterministic function of the parameters).

    Second-order knobs: ``damping`` lambda (Newton-CG, Gauss-Newton, K-FAC; the searched knob),
    ``inner_steps`` (CG steps per outer step), ``lbfgs_memory`` (L-BFGS history m),
    ``exponent`` (Shampoo's preconditioner exponent p: L^-p G R^-p; None = the library's
    1/(2 order)), ``cost_ratios`` (measured product costs; None: measured at theta_0)."""

    optimizer: str
    lr: float
    budget: int
    target: float | None = None
    stop_at_target: bool = True
    divergence_factor: float = 1e3
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    lora_rank: int = 4
    lora_targets: Targets = None
    lora_extra_trainable: Targets = None
    eval_every: int = 0
    train_mode: bool = False
    seed: int = 0
    device: str = "auto"
    damping: float = 1e-3
    inner_steps: int = 10
    lbfgs_memory: int = 10
    exponent: float | None = None
    cost_ratios: tuple[tuple[str, float], ...] | None = None
    #: full-batch loss and gradient through ``curvature.distributed.BatchReduction`` (micro-batches,
    #: data-parallel ranks); None: one forward pass over the batch
    reduction: Any = None

    def __post_init__(self) -> None:
        _check_optimizer(self.optimizer)
        _positive_finite(self.lr, "learning rate")
        _positive_finite(self.damping, "damping")
        _positive_int(self.inner_steps, "inner CG steps")
        _positive_int(self.lbfgs_memory, "L-BFGS memory")
        if self.exponent is not None and not (0 < _positive_finite(self.exponent, "exponent") <= 1):
            raise InvalidInputError(f"exponent must lie in (0, 1], got {self.exponent!r}")
        _positive_int(self.budget, "step budget")
        _check_target(self.target)
        if not (math.isfinite(self.divergence_factor) and self.divergence_factor > 1):
            raise InvalidInputError(f"divergence_factor must be finite and > 1, got {self.divergence_factor!r}")
        if self.spec.lora:
            _positive_int(self.lora_rank, "LoRA rank")
        if isinstance(self.eval_every, bool) or not isinstance(self.eval_every, int) or self.eval_every < 0:
            raise InvalidInputError(f"eval_every must be a non-negative integer, got {self.eval_every!r}")

    @property
    def spec(self) -> Any:
        """The optimizer's ``registry.OptimizerSpec``."""
        return get_spec(self.optimizer)

    # ---- setup
    def _prepare(self, model: nn.Module, dev: torch.device) -> tuple[nn.Module, list[nn.Parameter]]:
        if self.spec.lora:
            peft = uses_peft(model)
            targets = self.lora_targets if self.lora_targets is not None or peft else decoder_targets(model)
            net, params = (peft_wrap if peft else lora_wrap)(model, self.lora_rank, targets, seed=self.seed,
                                                             extra_trainable=self.lora_extra_trainable)
        else:
            net = copy.deepcopy(model)
            params = [p for p in net.parameters() if p.requires_grad]
        if not params:
            raise InvalidInputError("the model has no trainable parameters (every requires_grad is False)")
        net.to(dev)
        net.train(self.train_mode)
        return net, [p for p in net.parameters() if p.requires_grad]

    # ---- run
    def run(self, model: nn.Module, task: Task, progress: Progress | None = None) -> Trajectory:
        """Fine-tune a copy of ``model`` on ``task``; the input model is not modified."""
        return self.start(model, task).advance(self.budget, progress)

    def start(self, model: nn.Module, task: Task) -> "AttackRun":
        """A paused run at theta_0 (nothing recorded yet) that ``AttackRun.advance`` continues."""
        if not isinstance(task, Task):
            raise InvalidInputError(f"task must be a convrate Task, got {type(task).__name__}")
        require_finite_parameters(model)
        return AttackRun(self, model, task)

    def steps_to(self, model: nn.Module, task: Task, target: float | None = None) -> int | None:
        """Run and return the first step with loss <= target (None: not within budget)."""
        return self.run(model, task).steps_to(target)


class AttackRun:
    """A run of ``attack`` that can be paused and continued: ``advance(budget)`` takes steps
    until the target is met, the run diverges or theta_budget is recorded, and returns the
    trajectory so far. Steps do not depend on the budget and the run keeps its own RNG stream
    (``runtime.RNGStream``), so a run advanced to b and later to b' > b records the same losses
    and counts as one advanced to b' at once; ``times`` and ``wall_s`` count seconds spent
    inside ``advance`` only. Holds a copy of the model and the optimizer state (``nbytes``)."""

    def __init__(self, attack: Attack, model: nn.Module, task: Task) -> None:
        self.attack = attack
        dev = resolve_device(attack.device)
        self._rng = RNGStream(attack.seed, dev)
        with self._rng.active():
            net, params = attack._prepare(model, dev)
            dtype = params[0].dtype if params[0].is_floating_point() else None
            self.net, self.params = net, params
            self.ctx = StepContext(net, params, task.to(dev, dtype), reduction=attack.reduction)
            spec = attack.spec
            ratios = dict(attack.cost_ratios) if attack.cost_ratios is not None else \
                measure_cost_ratios(self.ctx, spec.uses, attack.inner_steps)
            self.stepper = spec.build(params, attack, net)
        self.trajectory = Trajectory(attack.optimizer, float(attack.lr), 0, attack.target,
                                     trainable_parameters=sum(p.numel() for p in params), cost_ratios=ratios)
        self._floor: float | None = None
        self._label = f"{attack.optimizer} {spec.knob}={attack.damping if spec.knob == 'damping' else attack.lr:.3g}"

    @property
    def finished(self) -> bool:
        """Whether the run stopped on its own (target met or diverged): advancing does nothing."""
        return self.trajectory.stopped != "budget"

    @property
    def nbytes(self) -> int:
        """Estimated bytes the paused run holds: the model copy's parameters and buffers, plus
        four tensors the size of each trainable parameter (its gradient, up to two optimizer
        moments, and the copy that keys the last recorded loss, ``registry.StepContext``). Not
        counted: larger optimizer states (K-FAC's factors, L-BFGS's history) and the graph of
        the last recorded loss, kept so that the next step's gradient reuses it."""
        held = sum(t.numel() * t.element_size() for t in [*self.net.parameters(), *self.net.buffers()])
        return held + 4 * sum(p.numel() * p.element_size() for p in self.params)

    def advance(self, budget: int, progress: Progress | None = None) -> Trajectory:
        """Continue to theta_``budget`` (or an earlier stop); ``budget`` below the steps already
        taken is refused (the trajectory's prefix answers it)."""
        budget = _positive_int(budget, "step budget")
        traj = self.trajectory
        if budget < traj.steps:
            raise InvalidInputError(f"the run has taken {traj.steps} steps; cannot advance it to {budget}")
        traj.budget = budget
        if self.finished:
            return traj
        began, active = time.perf_counter(), traj.wall_s
        with self._rng.active():
            if not traj.losses:
                self._record(0, began, active, progress)
            while not self.finished and traj.steps < budget:
                self.stepper.step(self.ctx)
                self._record(traj.steps + 1, began, active, progress)
        traj.wall_s = active + time.perf_counter() - began
        return traj

    def _record(self, step: int, began: float, active: float, progress: Progress | None) -> None:
        """Record L(theta_step), its cost and time; stop on divergence, then on the target."""
        attack, ctx, traj = self.attack, self.ctx, self.trajectory
        ctx.set_step(step)
        value = ctx.record()
        traj.losses.append(value)
        traj.costs.append(ctx.cost.copy())
        traj.times.append(active + time.perf_counter() - began)
        if attack.eval_every and ctx.task.X_test is not None and step % attack.eval_every == 0:
            traj.eval_losses.append((step, ctx.task.evaluate(self.net, "test")))
        if progress is not None:
            progress(self._label, step, traj.budget)
        if self._floor is None:
            self._floor = attack.divergence_factor * max(abs(value), 1e-300)
        if not math.isfinite(value) or value > self._floor:
            traj.diverged, traj.stopped = True, "diverged"
        elif attack.stop_at_target and attack.target is not None and value <= attack.target:
            traj.stopped = "target"


def make_attack(optimizer: str, value: float, budget: int, target: float | None = None, **options: Any) -> Attack:
    """The Attack whose searched knob (``registry.OptimizerSpec.knob``: lr, or damping with
    ``lr`` = options' lr or 1) has ``value``."""
    spec = get_spec(optimizer)
    if spec.knob == "damping":
        lr = options.pop("lr", 1.0)
        options["damping"] = value
        return Attack(optimizer, lr, budget, target, **options)
    return Attack(optimizer, value, budget, target, **options)
