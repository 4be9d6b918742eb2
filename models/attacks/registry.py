"""The optimizer registry of the attacks: one ``OptimizerSpec`` per attacker name, the step
context every attacker works through, and the cost accounting.

An attacker is a ``Stepper``: ``step(ctx)`` moves the live network's parameters once. It reads
the loss and gradient only through ``ctx.closure()`` and curvature only through ``ctx.hvp`` /
``ctx.gnvp`` (or declares extra backward passes with ``ctx.count``), so every evaluation it
pays for is counted in ``ctx.cost``:

    gradients   loss-and-gradient evaluations on the step's batch (one forward + backward each;
                line-search evaluations included; the gradient at an iterate where the loss was
                already evaluated is counted once)
    hvps        Hessian-vector products H v (``curvature.Objective.hvp``, double backward)
    gnvps       Gauss-Newton products G v (``curvature.Objective.gnvp``)
    backwards   extra backward passes through a retained graph (K-FAC's factor statistics)

*Gradient-equivalents* = gradients + sum_k r_k * count_k, with r_k the cost of one product of
kind k relative to one gradient, measured on the attacked model at theta_0
(``measure_cost_ratios``: minimum over repeats of interleaved timings, so the least disturbed
by other processes). Counts are exact and deterministic; the ratios (hence the equivalents)
are timings and vary a little from run to run, like wall time.

``OptimizerSpec.knob`` names the hyperparameter a learning-rate search tunes: ``lr`` for most
attackers, ``damping`` (lambda, with step multiplier ``lr`` = 1) for Newton-CG, Gauss-Newton
and K-FAC. ``statement`` names the statement of THEORY.md that predicts the attacker's
behaviour under a reparameterization T.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

import torch
from torch import nn

from convrate.errors import InvalidInputError

if TYPE_CHECKING:
    from convrate.models.attacks.attack import Attack
    from convrate.models.tasks import Task

#: curvature-product kinds whose cost is measured relative to one gradient
COST_KINDS = ("hvp", "gnvp", "backward")


@dataclass
class Cost:
    """Cumulative evaluation counts of an attack (see the module doc)."""

    gradients: int = 0
    hvps: int = 0
    gnvps: int = 0
    backwards: int = 0

    def copy(self) -> "Cost":
        return Cost(self.gradients, self.hvps, self.gnvps, self.backwards)

    def equivalents(self, ratios: Mapping[str, float]) -> float:
        """gradients + r_hvp hvps + r_gnvp gnvps + r_backward backwards (gradient-equivalents)."""
        return (self.gradients + ratios.get("hvp", 0.0) * self.hvps + ratios.get("gnvp", 0.0) * self.gnvps
                + ratios.get("backward", 0.0) * self.backwards)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class Stepper(Protocol):
    def step(self, ctx: "StepContext") -> None: ...


@dataclass(frozen=True)
class OptimizerSpec:
    """One attacker: ``build(params, attack, net)`` returns its Stepper. ``family``: first-order,
    adaptive, quasi-newton, second-order, gauss-newton, preconditioned; ``uses``: the curvature
    products it calls (their cost ratios are measured); ``grid``: a learning-rate (damping)
    grid of its own, used instead of the caller's when the caller gives none for it."""

    name: str
    family: str
    statement: str
    build: Callable[[list[nn.Parameter], "Attack", nn.Module], Stepper]
    knob: str = "lr"
    uses: tuple[str, ...] = ()
    lora: bool = False
    grid: tuple[float, ...] | None = None
    description: str = ""


REGISTRY: dict[str, OptimizerSpec] = {}


def register(spec: OptimizerSpec) -> OptimizerSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"optimizer {spec.name!r} registered twice")
    if spec.knob not in ("lr", "damping") or any(k not in COST_KINDS for k in spec.uses):
        raise ValueError(f"optimizer {spec.name!r}: bad knob {spec.knob!r} or product kinds {spec.uses}")
    REGISTRY[spec.name] = spec
    return spec


def get_spec(name: Any) -> OptimizerSpec:
    if name not in REGISTRY:
        raise InvalidInputError(f"unknown optimizer {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflat(v: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    out, i = [], 0
    for p in like:
        out.append(v[i:i + p.numel()].view_as(p))
        i += p.numel()
    return out


# ---------------------------------------------------------------- the step context
#: copies of the trainable parameters, in order (the key of a cached evaluation)
Snapshot = tuple[torch.Tensor, ...]


class StepContext:
    """The live network ``net`` with trainable ``params``, the task (on the run's device and
    dtype), the current step's batch, and counted evaluations (module doc)."""

    def __init__(self, net: nn.Module, params: list[nn.Parameter], task: "Task", reduction: Any = None) -> None:
        self.net, self.params, self.task = net, params, task
        #: full-batch loss and gradient summed over micro-batches and ranks
        #: (``curvature.distributed.BatchReduction``); None: one forward pass
        self.reduction = reduction
        self.cost = Cost()
        self.step_index = 0
        self._cache: tuple[int, Snapshot, float] | None = None  # (step, params, loss) with p.grad set
        self._pending: tuple[int, Snapshot, torch.Tensor] | None = None  # (step, params, loss graph)
        self._objective: tuple[Any, Any] | None = None

    # ---- batches
    def set_step(self, step: int) -> None:
        self.step_index = step

    def batch(self) -> tuple[Any, torch.Tensor]:
        return self.task.batch(self.step_index)

    @property
    def full_batch(self) -> bool:
        return self.task.batch_indices(self.step_index) is None

    def theta(self) -> torch.Tensor:
        return flat([p.detach() for p in self.params]).clone()

    def _snapshot(self) -> Snapshot:
        """A copy of the parameters (one per tensor: no flat concatenation), the key of a cached
        evaluation."""
        return tuple(p.detach().clone() for p in self.params)

    def _same(self, key: tuple[int, Snapshot] | None) -> bool:
        """Whether ``key`` was taken at this step at parameters equal, entry by entry, to the
        current ones (NaN never equals: such an evaluation is redone)."""
        return key is not None and key[0] == self.step_index and all(
            torch.equal(a, p.detach()) for a, p in zip(key[1], self.params))

    # ---- loss and gradient
    def loss_graph(self) -> torch.Tensor:
        """L(theta) on the step's batch with its autograd graph (not counted: the forward pass of
        a gradient evaluation)."""
        X, y = self.batch()
        return self.task.loss_fn(self.task.forward(self.net, X), y)

    def record(self) -> float:
        """The full training loss at the current parameters (a measurement, not counted). With a
        full batch its graph is kept, so the next ``closure`` only runs the backward pass."""
        if not self.full_batch:
            return self.task.evaluate(self.net)
        if self._cache is not None and self._same((self._cache[0], self._cache[1])):
            return self._cache[2]
        if self.reduction is not None:  # no graph is kept: the gradient is taken now, piece by piece
            self.closure()
            return self._cache[2]
        loss = self.loss_graph()
        self._pending = (self.step_index, self._snapshot(), loss)
        if self._cache is not None and self._cache[0] != self.step_index:
            self._cache = None  # an earlier step's evaluation: never matched again, its copy is freed
        return float(loss.detach())

    def closure(self) -> torch.Tensor:
        """Loss on the step's batch with p.grad = its gradient; counted once per parameter value
        (a repeated call at the same parameters returns the cached evaluation). The loss comes
        back as a float64 scalar: torch's L-BFGS line search compares these values, and a float32
        tensor would round a float64 network's loss to 24 bits."""
        if self._cache is not None and self._same((self._cache[0], self._cache[1])):
            return torch.tensor(self._cache[2], dtype=torch.float64)
        if self.reduction is not None and self.full_batch:
            for p in self.params:
                p.grad = None
            with torch.enable_grad():
                value = self.reduction.loss_and_backward(self.net, self.task)
            self.cost.gradients += 1
            self._cache = (self.step_index, self._snapshot(), value)
            return torch.tensor(value, dtype=torch.float64)
        with torch.enable_grad():
            if self._pending is not None and self._same((self._pending[0], self._pending[1])):
                snapshot, loss = self._pending[1], self._pending[2]  # the parameters equal it: reused
            else:
                snapshot, loss = self._snapshot(), self.loss_graph()
            self._pending = None
            for p in self.params:
                p.grad = None
            loss.backward()
        self.cost.gradients += 1
        value = float(loss.detach())
        self._cache = (self.step_index, snapshot, value)
        return torch.tensor(value, dtype=torch.float64)

    def gradient(self) -> list[torch.Tensor]:
        """The gradient on the step's batch (via ``closure``)."""
        self.closure()
        return [torch.zeros_like(p) if p.grad is None else p.grad.detach() for p in self.params]

    def invalidate(self) -> None:
        """Forget the cached evaluation (a stepper changed p.grad or the parameters in place)."""
        self._cache = self._pending = None

    def count(self, kind: str, n: int = 1) -> None:
        """Count ``n`` evaluations of ``kind`` (gradients, backwards) done by the stepper itself."""
        if kind == "gradients":
            self.cost.gradients += n
        elif kind == "backwards":
            self.cost.backwards += n
        else:
            raise ValueError(f"unknown cost kind {kind!r}")

    # ---- curvature products (convrate's own: curvature.Objective)
    def objective(self) -> Any:
        """``curvature.Objective`` of the step's batch (the loss of the task), rebuilt when the
        batch changes; products are taken at ``theta()``."""
        from convrate.models.curvature import Objective

        idx = self.task.batch_indices(self.step_index)
        key = None if idx is None else idx
        if self._objective is None or not _same_index(self._objective[0], key):
            X, y = self.batch()
            loss = self.task.loss
            targets = y  # next-token ids (n, T) stay per sequence: the Objective flattens them per piece
            if loss == "squared" and not y.is_floating_point():
                with torch.no_grad():
                    n_out = self.task.forward(self.net, X).shape[-1]
                targets = torch.nn.functional.one_hot(y, n_out).to(self.params[0].dtype)
            names = [n for n, p in self.net.named_parameters() if p.requires_grad]
            red = self.reduction if idx is None else None
            obj = Objective(self.net, X, targets, loss=loss, params=names, dtype=self.params[0].dtype,
                            device=self.params[0].device, world=None if red is None else red.world,
                            micro_batch=None if red is None else red.micro_batch)
            self._objective = (key, obj)
        return self._objective[1]

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H(theta) v on the step's batch (flat vectors), counted."""
        self.cost.hvps += 1
        return self.objective().hvp(v, theta=self.theta())

    def gnvp(self, v: torch.Tensor) -> torch.Tensor:
        """G(theta) v on the step's batch (flat vectors), counted."""
        self.cost.gnvps += 1
        return self.objective().gnvp(v, theta=self.theta())


def _same_index(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(torch.equal(a, b))


# ---------------------------------------------------------------- cost ratios
def measure_cost_ratios(ctx: StepContext, kinds: tuple[str, ...], inner: int = 1, repeats: int = 3) -> dict[str, float]:
    """Cost of one product of each kind relative to one gradient, at the context's current
    parameters, min over ``repeats`` interleaved rounds. hvp and gnvp: the amortized cost of
    ``inner`` products at one theta (the graph built once per theta, then ``inner`` backward passes
    through it, as Newton-CG and Gauss-Newton do); backward: one extra backward pass through
    a retained graph. Nothing is counted in ``ctx.cost``."""
    if not kinds:
        return {}
    obj = ctx.objective() if ("hvp" in kinds or "gnvp" in kinds) else None
    theta = ctx.theta()
    v = torch.ones_like(theta) / max(1, theta.numel()) ** 0.5
    inner = max(1, int(inner))
    best: dict[str, float] = {k: float("inf") for k in ("gradient",) + kinds}
    for r in range(repeats):
        t0 = time.perf_counter()
        loss = ctx.loss_graph()
        torch.autograd.grad(loss, ctx.params, allow_unused=True)
        best["gradient"] = min(best["gradient"], time.perf_counter() - t0)
        for kind in ("hvp", "gnvp"):
            if kind in kinds:
                shifted = theta * (1 + (r + 1) * 2.0 ** -40)  # a new theta: the objective builds a fresh graph
                product = obj.hvp if kind == "hvp" else obj.gnvp
                t0 = time.perf_counter()
                for _ in range(inner):
                    product(v, theta=shifted)
                best[kind] = min(best[kind], (time.perf_counter() - t0) / inner)
        if "backward" in kinds:
            loss = ctx.loss_graph()
            t0 = time.perf_counter()
            torch.autograd.grad(loss, ctx.params, retain_graph=True, allow_unused=True)
            best["backward"] = min(best["backward"], time.perf_counter() - t0)
    g = max(best.pop("gradient"), 1e-12)
    return {k: float(v / g) for k, v in best.items()}


__all__ = ["COST_KINDS", "Cost", "OptimizerSpec", "REGISTRY", "StepContext", "Stepper", "flat",
           "get_spec", "measure_cost_ratios", "register", "unflat"]
