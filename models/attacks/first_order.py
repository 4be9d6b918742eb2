"""First-order and adaptive attackers (torch.optim), and the stepper every torch optimizer uses.

    sgd        theta <- theta - lr g                          (GD with full batch; statements F1, B)
    momentum   heavy ball, m <- beta m + g, theta <- theta - lr m       (F2: a Krylov method)
    adam       Adam(betas, eps)                                         (A)
    adamw      AdamW(betas, eps, weight_decay)                          (A)
    lora-sgd   sgd on LoRA adapters of rank ``lora_rank`` (base frozen; ``lora``)
    lora-adam  adam on LoRA adapters
One step costs one gradient.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from convrate.models.attacks.registry import OptimizerSpec, StepContext, register

if TYPE_CHECKING:
    from convrate.models.attacks.attack import Attack


class TorchStepper:
    """One ``torch.optim`` optimizer (or several over disjoint parameter sets): the counted
    gradient, then each optimizer's ``step``."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    def step(self, ctx: StepContext) -> None:
        ctx.closure()
        for opt in self.optimizers:
            opt.step()


def _sgd(params: list[nn.Parameter], a: "Attack", net: nn.Module) -> TorchStepper:
    return TorchStepper(torch.optim.SGD(params, lr=a.lr))


def _momentum(params: list[nn.Parameter], a: "Attack", net: nn.Module) -> TorchStepper:
    return TorchStepper(torch.optim.SGD(params, lr=a.lr, momentum=a.momentum))


def _adam(params: list[nn.Parameter], a: "Attack", net: nn.Module) -> TorchStepper:
    return TorchStepper(torch.optim.Adam(params, lr=a.lr, betas=a.betas, eps=a.eps))


def _adamw(params: list[nn.Parameter], a: "Attack", net: nn.Module) -> TorchStepper:
    return TorchStepper(torch.optim.AdamW(params, lr=a.lr, betas=a.betas, eps=a.eps, weight_decay=a.weight_decay))


for _spec in (
        OptimizerSpec("sgd", "first-order", "F1, B", _sgd, description="gradient descent"),
        OptimizerSpec("momentum", "first-order", "F2", _momentum, description="heavy ball"),
        OptimizerSpec("adam", "adaptive", "A", _adam, description="Adam"),
        OptimizerSpec("adamw", "adaptive", "A", _adamw, description="AdamW"),
        OptimizerSpec("lora-sgd", "first-order", "F1, B", _sgd, lora=True, description="SGD on LoRA adapters"),
        OptimizerSpec("lora-adam", "adaptive", "A", _adam, lora=True, description="Adam on LoRA adapters")):
    register(_spec)
