"""Quasi-Newton and Hessian-free Newton attackers.

    lbfgs        torch.optim.LBFGS, one iteration per step, memory m = ``lbfgs_memory``, fixed
                 step t = lr (t = min(1, 1/||g||_1) lr at the first step), no line search.
                 One gradient per step. Statement SO-LBFGS: theta_t lies in theta_0 + the span of
                 past gradients (a Krylov method on a quadratic), so F2 bounds it by CG.
    lbfgs-wolfe  the same with the strong-Wolfe line search (initial trial t = lr); every
                 function evaluation of the line search is a counted gradient. SO-LBFGS: with an
                 exact line search on a quadratic it produces the CG iterates for every m >= 1.
    newton-cg    Hessian-free truncated Newton: p = CG_k((H + lambda I) p = -g), k =
                 ``inner_steps`` CG steps on convrate's own Hessian-vector products
                 (``curvature.Objective.hvp``), stopped early at nonpositive curvature;
                 theta <- theta + lr p. Cost per step: one gradient and up to k HVPs.
                 Statement SO-NEWTON-CG: on L' it equals, mapped back by T^-1, CG preconditioned
                 by P = T^-1 T^-T on H + lambda T^T T; invariant when lambda = 0 and CG solves
                 exactly (statement N), slowed through the inner solve and the damping otherwise.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from convrate.models.attacks.registry import OptimizerSpec, StepContext, flat, register, unflat

if TYPE_CHECKING:
    from convrate.models.attacks.attack import Attack

Matvec = Callable[[torch.Tensor], torch.Tensor]


def truncated_cg(A: Matvec, b: torch.Tensor, iters: int, precondition: Matvec | None = None,
                 rtol: float = 1e-12) -> tuple[torch.Tensor, int, bool]:
    """At most ``iters`` steps of (preconditioned) conjugate gradients on A x = b from x = 0.

    With z = P r (P = I unless ``precondition``): alpha = r^T z / d^T A d, x += alpha d,
    r -= alpha A d, beta = r_new^T z_new / r^T z, d = z_new + beta d. Stops when
    sqrt(r^T P r) <= rtol sqrt(b^T P b) (a test in the P-norm, so it is unchanged when the
    problem is mapped by a reparameterization T with P = T^-1 T^-T, statement P), or at
    nonpositive curvature d^T A d <= 0: then x so far is returned, or at the first step the
    steepest-descent direction scaled by |d^T A d| (b ||b||^2 / |b^T A b|; b itself if that
    is 0). Returns (x, products used, stopped at negative curvature)."""
    x = torch.zeros_like(b)
    r = b.clone()
    z = r if precondition is None else precondition(r)
    rz = float(r @ z)
    stop = rtol * max(rz, 0.0) ** 0.5
    d = z.clone()
    used = 0
    for j in range(iters):
        if max(rz, 0.0) ** 0.5 <= stop or rz == 0.0:
            break
        Ad = A(d)
        used += 1
        curv = float(d @ Ad)
        if curv <= 0.0:
            if j == 0:
                return (b * (float(b @ b) / abs(curv)) if curv != 0.0 else b.clone()), used, True
            return x, used, True
        alpha = rz / curv
        x = x + alpha * d
        r = r - alpha * Ad
        z = r if precondition is None else precondition(r)
        rz_new = float(r @ z)
        d = z + (rz_new / rz) * d
        rz = rz_new
    return x, used, False


class NewtonCG:
    """theta <- theta + lr CG_k(H + lambda I, -g) (module doc)."""

    def __init__(self, params: list[nn.Parameter], lr: float, damping: float, inner: int) -> None:
        self.params, self.lr, self.damping, self.inner = params, lr, damping, inner
        self.negative_curvature_steps = 0

    def step(self, ctx: StepContext) -> None:
        g = flat(ctx.gradient())
        lam = self.damping
        p, _, neg = truncated_cg(lambda v: ctx.hvp(v) + lam * v, -g, self.inner)
        self.negative_curvature_steps += int(neg)
        with torch.no_grad():
            for prm, dp in zip(self.params, unflat(p, self.params)):
                prm.add_(dp, alpha=self.lr)


class LBFGSStepper:
    """torch.optim.LBFGS with max_iter = 1: one L-BFGS iteration per step, the history kept
    across steps; its closure is the context's counted (cached) closure."""

    def __init__(self, params: list[nn.Parameter], a: "Attack", wolfe: bool) -> None:
        self.opt = torch.optim.LBFGS(params, lr=a.lr, max_iter=1, max_eval=26, history_size=a.lbfgs_memory,
                                     tolerance_grad=0.0, tolerance_change=0.0,
                                     line_search_fn="strong_wolfe" if wolfe else None)

    def step(self, ctx: StepContext) -> None:
        self.opt.step(ctx.closure)


register(OptimizerSpec("lbfgs", "quasi-newton", "SO-LBFGS, F2", lambda ps, a, net: LBFGSStepper(ps, a, False),
                       description="L-BFGS (torch), fixed step"))
register(OptimizerSpec("lbfgs-wolfe", "quasi-newton", "SO-LBFGS, F2", lambda ps, a, net: LBFGSStepper(ps, a, True),
                       grid=(0.1, 0.3, 1.0, 3.0), description="L-BFGS (torch), strong-Wolfe line search"))
register(OptimizerSpec("newton-cg", "second-order", "SO-NEWTON-CG, N, LM",
                       lambda ps, a, net: NewtonCG(ps, a.lr, a.damping, a.inner_steps), knob="damping", uses=("hvp",),
                       description="Hessian-free truncated Newton (CG on H + lambda I)"))
