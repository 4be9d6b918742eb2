"""Preconditioned attackers built from the gradient's own statistics.

    shampoo  pytorch-optimizer's ``Shampoo`` (Gupta et al. 2018): for a matrix W with gradients
             G_s, L = eps I + sum_s G_s G_s^T, R = eps I + sum_s G_s^T G_s, W <- W - lr L^-p G R^-p;
             every tensor of order k gets one factor per mode. ``exponent`` p overrides the
             library's 1/(2k) (1/4 for matrices, 1/2 for vectors). One gradient per step.
             Statement SO-SHAMPOO: equivariant under orthogonal maps on either side, slowed by
             a one-sided scaling like kappa(A)^|2 - 4p| on row-aligned instances.
    soap     pytorch-optimizer's ``SOAP`` (Vyas et al. 2024): Adam in the eigenbasis of Shampoo's
             L and R (weight decay 0). SO-SHAMPOO's orthogonal equivariance; Adam (statement A)
             on row-aligned instances.
    sophia   the published rule (Liu et al. 2023, Algorithm 3) with the Gauss-Newton-Bartlett
             estimator: m = b1 m + (1 - b1) g; every k steps h = b2 h + (1 - b2) B g^ (.) g^, g^ the
             gradient of the loss at labels sampled from the model (softmax; squared loss:
             z + N(0, I)), B the batch size; theta <- theta - lr clip(m / max(gamma h, eps), 1).
             b1 = 0.96, b2 = 0.99, gamma = 0.01, eps = 1e-12, k = 10; weight decay 0. One
             gradient per step plus one every k steps. Statement SO-SOPHIA.
    muon     ``torch.optim.Muon`` (orthogonalized Nesterov momentum, 5 Newton-Schulz steps,
             ``adjust_lr_fn="match_rms_adamw"`` so one lr serves both) on every 2-D parameter and
             AdamW on the others (biases, convolution kernels, norms), weight decay 0. One
             gradient per step. Statement SO-MUON.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator

import torch
from torch import nn

from convrate.models.attacks.first_order import TorchStepper
from convrate.models.attacks.registry import OptimizerSpec, StepContext, register

if TYPE_CHECKING:
    from convrate.models.attacks.attack import Attack

#: Sophia's published defaults (Liu et al. 2023): betas, gamma (rho), eps, Hessian refresh period k
SOPHIA_BETAS = (0.96, 0.99)
SOPHIA_GAMMA = 0.01
SOPHIA_EPS = 1e-12
SOPHIA_PERIOD = 10


@contextlib.contextmanager
def _shampoo_exponent(p: float | None) -> Iterator[None]:
    """While active, pytorch-optimizer's Shampoo takes every preconditioner to the power -p
    (its root function computes M^(-1/power); power = 1/p)."""
    if p is None:
        yield
        return
    import pytorch_optimizer.optimizer.shampoo as library

    root = library.compute_power_svd
    library.compute_power_svd = lambda matrix, power: root(matrix, 1.0 / p)
    try:
        yield
    finally:
        library.compute_power_svd = root


class ShampooStepper:
    def __init__(self, params: list[nn.Parameter], lr: float, exponent: float | None) -> None:
        from pytorch_optimizer import Shampoo

        self.opt, self.exponent = Shampoo(params, lr=lr), exponent

    def step(self, ctx: StepContext) -> None:
        ctx.closure()
        with _shampoo_exponent(self.exponent):
            self.opt.step()
        ctx.invalidate()  # the library transposes p.grad in place


class Sophia:
    """The published Sophia rule with the GNB estimator (module doc)."""

    def __init__(self, params: list[nn.Parameter], lr: float, betas: tuple[float, float] = SOPHIA_BETAS,
                 gamma: float = SOPHIA_GAMMA, eps: float = SOPHIA_EPS, period: int = SOPHIA_PERIOD) -> None:
        self.params, self.lr, self.betas, self.gamma, self.eps, self.period = params, lr, betas, gamma, eps, period
        self.m = [torch.zeros_like(p) for p in params]
        # h: the moving average of the curvature estimates
        self.h = [torch.zeros_like(p) for p in params]
        self.t = 0

    def estimate(self, ctx: StepContext) -> list[torch.Tensor]:
        """B g^ (.) g^ with g^ the gradient at sampled labels (one counted gradient)."""
        X, y = ctx.batch()
        with torch.enable_grad():
            z = ctx.task.forward(ctx.net, X)
            with torch.no_grad():
                if ctx.task.loss == "cross_entropy":
                    y_hat = torch.multinomial(torch.softmax(z.float() if z.dtype == torch.float16 else z, -1), 1)[:, 0]
                else:
                    y_hat = z + torch.randn_like(z)
            g_hat = torch.autograd.grad(ctx.task.loss_fn(z, y_hat), self.params, allow_unused=True)
        ctx.count("gradients")
        B = z.shape[0]
        return [torch.zeros_like(p) if g is None else B * g * g for p, g in zip(self.params, g_hat)]

    def step(self, ctx: StepContext) -> None:
        grads = ctx.gradient()
        b1, b2 = self.betas
        if self.t % self.period == 0:
            for h, e in zip(self.h, self.estimate(ctx)):
                h.mul_(b2).add_(e, alpha=1 - b2)
        self.t += 1
        with torch.no_grad():
            for p, m, h, g in zip(self.params, self.m, self.h, grads):
                m.mul_(b1).add_(g, alpha=1 - b1)
                p.sub_(self.lr * torch.clamp(m / torch.clamp(self.gamma * h, min=self.eps), -1.0, 1.0))


def _muon(params: list[nn.Parameter], a: "Attack", net: nn.Module) -> TorchStepper:
    mats = [p for p in params if p.ndim == 2]
    rest = [p for p in params if p.ndim != 2]
    opts: list[torch.optim.Optimizer] = []
    if mats:
        opts.append(torch.optim.Muon(mats, lr=a.lr, weight_decay=0.0, adjust_lr_fn="match_rms_adamw"))
    if rest:
        opts.append(torch.optim.AdamW(rest, lr=a.lr, betas=a.betas, eps=a.eps, weight_decay=0.0))
    return TorchStepper(*opts)


def _soap(params: list[nn.Parameter], a: "Attack", net: nn.Module) -> TorchStepper:
    from pytorch_optimizer import SOAP

    return TorchStepper(SOAP(params, lr=a.lr, weight_decay=0.0))


register(OptimizerSpec("shampoo", "preconditioned", "SO-SHAMPOO",
                       lambda ps, a, net: ShampooStepper(ps, a.lr, a.exponent),
                       description="Shampoo (pytorch-optimizer), exponent p"))
register(OptimizerSpec("soap", "preconditioned", "SO-SHAMPOO, A", _soap, description="SOAP (pytorch-optimizer)"))
register(OptimizerSpec("sophia", "preconditioned", "SO-SOPHIA", lambda ps, a, net: Sophia(ps, a.lr),
                       description="Sophia (published rule, GNB estimator)"))
register(OptimizerSpec("muon", "preconditioned", "SO-MUON", _muon, description="Muon (torch) + AdamW"))
