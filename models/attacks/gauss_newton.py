"""Gauss-Newton / natural-gradient attackers.

    gauss-newton  damped Gauss-Newton: p = CG_k((G + lambda I) p = -g) with convrate's own
                  Gauss-Newton products (``curvature.Objective.gnvp``: G = (1/N) sum_n J_n^T
                  (hess ell_n) J_n, which for cross-entropy is the Fisher: a natural-gradient step),
                  k = ``inner_steps``; theta <- theta + lr p. One gradient and up to k GN products
                  per step (small models). Statement SO-GN.
    kfac          K-FAC with exact factors (Martens & Grosse 2015; convolutions as in Grosse &
                  Martens 2016): for each Linear / Conv2d layer with weight W (out x in) and bias,
                  W~ = [W | b] acting on inputs a~ = (a, 1) (convolutions: unfolded patches),
                      X = (1/N) sum_{n,p} a~ a~^T,   S = (1/(N P)) sum_{n,p,c} u u^T,
                  u = dz / ds^T B_n^T e_c the backpropagated c-th column of the output-curvature
                  square root (hess ell_n = B_n^T B_n: cross-entropy B = diag(sqrt p)(I - 1 p^T),
                  squared loss B = I), N examples, P positions (tokens, pixels); step
                      W~ <- W~ - lr (S + gamma I)^-1 grad_W~ (X + gamma I)^-1,   gamma = sqrt(lambda),
                  and theta <- theta - lr g / lambda for every parameter outside such a layer.
                  One gradient and C extra backward passes (C outputs) per step. Statement SO-KFAC:
                  across an S1 pair or S2 group X and S transform as A X A^T and A^-T S A^-1, so with
                  gamma -> 0 the step maps by T exactly; gamma breaks it like LM's damping.
                  On R1 (``recovery.r1_module``) the trained layers are phi's, which the forward at
                  T phi does not run: the factors come from one more forward through phi's own
                  layers (``recovery.through_phi``, the same function), counted as one more
                  backward pass (a forward costs no more); the gradient stays that at T phi.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from convrate.errors import InvalidInputError
from convrate.models.attacks.registry import OptimizerSpec, StepContext, flat, register, unflat
from convrate.models.attacks.second_order import truncated_cg

if TYPE_CHECKING:
    from convrate.models.attacks.attack import Attack


class GaussNewton:
    """theta <- theta + lr CG_k(G + lambda I, -g) (module doc)."""

    def __init__(self, params: list[nn.Parameter], lr: float, damping: float, inner: int) -> None:
        self.params, self.lr, self.damping, self.inner = params, lr, damping, inner

    def step(self, ctx: StepContext) -> None:
        g = flat(ctx.gradient())
        lam = self.damping
        p, _, _ = truncated_cg(lambda v: ctx.gnvp(v) + lam * v, -g, self.inner)
        with torch.no_grad():
            for prm, dp in zip(self.params, unflat(p, self.params)):
                prm.add_(dp, alpha=self.lr)


def kfac_layers(net: nn.Module, params: list[nn.Parameter]) -> list[nn.Module]:
    """Linear and (ungrouped) Conv2d layers whose weight and bias are all trained parameters."""
    ids = {id(p) for p in params}
    out = []
    for m in net.modules():
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1):
            if id(m.weight) in ids and (m.bias is None or id(m.bias) in ids):
                out.append(m)
    return out


def _rows(m: nn.Module, a: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Layer inputs as rows (N P, in~), the bias column appended, and P (positions per example)."""
    if isinstance(m, nn.Conv2d):
        cols = F.unfold(a, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
        n, d, P = cols.shape
        rows = cols.transpose(1, 2).reshape(n * P, d)
    else:
        n = a.shape[0]
        rows = a.reshape(-1, a.shape[-1])
        P = rows.shape[0] // n
    if m.bias is not None:
        rows = torch.cat([rows, torch.ones(rows.shape[0], 1, dtype=rows.dtype, device=rows.device)], 1)
    return rows, P


def _out_rows(m: nn.Module, u: torch.Tensor) -> torch.Tensor:
    if isinstance(m, nn.Conv2d):
        return u.movedim(1, -1).reshape(-1, u.shape[1])
    return u.reshape(-1, u.shape[-1])


def output_curvature_roots(z: torch.Tensor, loss: str) -> list[torch.Tensor]:
    """w_c = B^T e_c per example (rows of z's shape), c = 1..C, with hess ell = B^T B: cross-entropy
    B = diag(sqrt p)(I - 1 p^T) (so w_c = sqrt(p_c)(e_c - p)), squared loss B = I."""
    C = z.shape[-1]
    eye = torch.eye(C, dtype=z.dtype, device=z.device)
    if loss == "cross_entropy":
        p = torch.softmax(z.detach(), -1)
        return [p[..., c:c + 1].sqrt() * (eye[c] - p) for c in range(C)]
    return [eye[c].expand_as(z) for c in range(C)]


def kfac_factors(ctx: StepContext, layers: list[nn.Module]) -> tuple[list[torch.Tensor], dict[nn.Module, Any]]:
    """(gradient of the batch loss, {layer: (X, S)}); counts one gradient and C backward passes."""
    inputs: dict[nn.Module, torch.Tensor] = {}
    outputs: dict[nn.Module, torch.Tensor] = {}

    def hook(m: nn.Module, inp: Any, out: torch.Tensor) -> None:
        inputs[m], outputs[m] = inp[0].detach(), out

    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.enable_grad():
            X, y = ctx.batch()
            z = ctx.task.forward(ctx.net, X)
            grads = torch.autograd.grad(ctx.task.loss_fn(z, y), ctx.params, retain_graph=True, allow_unused=True)
            ctx.count("gradients")
            if any(m not in outputs for m in layers):  # R1: phi's layers (module doc)
                from convrate.models.recovery import through_phi

                with through_phi(ctx.net):
                    z = ctx.task.forward(ctx.net, X)
                ctx.count("backwards")
            missing = [m for m in layers if m not in outputs]
            if missing:
                raise InvalidInputError(f"K-FAC: {len(missing)} trained layer(s) (first {missing[0]}) do not run "
                                        "in the model's forward pass, so they have no factors")
            N = z.shape[0]
            outs = [outputs[m] for m in layers]
            S: dict[nn.Module, torch.Tensor] = {}
            for w in output_curvature_roots(z, ctx.task.loss):
                us = torch.autograd.grad(z, outs, grad_outputs=w, retain_graph=True, allow_unused=True)
                ctx.count("backwards")
                for m, u in zip(layers, us):
                    if u is not None:
                        r = _out_rows(m, u.detach())
                        S[m] = S.get(m, 0) + r.T @ r
    finally:
        for h in handles:
            h.remove()
    factors = {}
    for m in layers:
        rows, P = _rows(m, inputs[m])
        out = m.weight.shape[0]
        s = S.get(m)
        s = torch.zeros(out, out, dtype=rows.dtype, device=rows.device) if s is None else s / (N * P)
        factors[m] = (rows.T @ rows / N, s)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(ctx.params, grads)]
    return grads, factors


def kfac_direction(grad_w: torch.Tensor, X: torch.Tensor, S: torch.Tensor, left: torch.Tensor,
                   right: torch.Tensor) -> torch.Tensor:
    """(S + left)^-1 grad_w (X + right)^-1 for a layer's (out, in~) gradient and damping matrices."""
    a = torch.linalg.solve(S + left, grad_w)
    return torch.linalg.solve(X + right, a.T).T


class KFAC:
    """K-FAC with exact factors and factored damping gamma = sqrt(lambda) (module doc)."""

    def __init__(self, net: nn.Module, params: list[nn.Parameter], lr: float, damping: float) -> None:
        self.params, self.lr, self.damping = params, lr, damping
        self.layers = kfac_layers(net, params)

    def step(self, ctx: StepContext) -> None:
        grads, factors = kfac_factors(ctx, self.layers)
        gamma = self.damping ** 0.5
        index = {id(p): i for i, p in enumerate(self.params)}
        steps = [g / self.damping for g in grads]
        for m in self.layers:
            X, S = factors[m]
            w = index[id(m.weight)]
            gw = grads[w].reshape(m.weight.shape[0], -1)
            if m.bias is not None:
                gw = torch.cat([gw, grads[index[id(m.bias)]].reshape(-1, 1)], 1)
            eye_s = gamma * torch.eye(S.shape[0], dtype=S.dtype, device=S.device)
            eye_x = gamma * torch.eye(X.shape[0], dtype=X.dtype, device=X.device)
            d = kfac_direction(gw, X, S, eye_s, eye_x)
            if m.bias is not None:
                steps[index[id(m.bias)]] = d[:, -1].reshape(m.bias.shape)
                d = d[:, :-1]
            steps[w] = d.reshape(m.weight.shape)
        with torch.no_grad():
            for p, s in zip(self.params, steps):
                p.sub_(s, alpha=self.lr)


def _gn(params: list[nn.Parameter], a: "Attack", net: nn.Module) -> GaussNewton:
    return GaussNewton(params, a.lr, a.damping, a.inner_steps)


register(OptimizerSpec("gauss-newton", "gauss-newton", "SO-GN, LM", _gn, knob="damping", uses=("gnvp",),
                       description="damped Gauss-Newton (CG on G + lambda I)"))
register(OptimizerSpec("kfac", "gauss-newton", "SO-KFAC", lambda ps, a, net: KFAC(net, ps, a.lr, a.damping),
                       knob="damping", uses=("backward",), description="K-FAC, exact factors"))
