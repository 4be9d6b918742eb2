"""Curvature of a model sharded over ranks (FSDP2 ``fully_shard``): finite-difference products.

When a model does not fit one device its parameters are sharded: rank r holds a slice of every
parameter (FSDP2: rows of dim 0, ``torch.chunk`` layout) and all-gathers the full weights only
for the forward and backward of a layer. Double backward through sharded parameters is not
supported upstream: ``autograd.grad(..., create_graph=True)`` with respect to the sharded
parameters fails (the forward uses the all-gathered copies; the property test shows it), so
H v by double backward is out of reach. First derivatives work, and the gradient comes back
sharded (a reduce-scatter), which gives the product by central differences,

    H v ~ (grad L(theta + eps v) - grad L(theta - eps v)) / (2 eps),

error eps^2/6 ||D^4 L[v, v, v, .]|| (the second-order terms cancel) plus the rounding of the
two gradients ~ 2 u ||grad L|| / eps, with eps = u^(1/3) max(1, ||theta||) / ||v||
(``objective.fd_step``; float64: ~1e-10 relative on O(1) networks).

``ShardedObjective`` keeps the data sharded too (rank r: examples ``World.shard``), uses a sum
loss divided by the global count, and sets FSDP's gradient divide factor to 1, so the
reduce-scatter *sums* the ranks' gradient shards: the exact global gradient, sharded. Vectors
(theta, v, Lanczos vectors) are this rank's slices; inner products are all-reduced
(``lanczos_run(..., sharded=world)``). Memory per rank: the model shard plus Lanczos' few
vectors, each 1/W of n.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from convrate.errors import InvalidInputError
from convrate.models.curvature.distributed import World
from convrate.models.curvature.objective import LOSSES, _rows, fd_step, loss_sum, loss_targets, loss_terms
from convrate.models.io import unwrap_output


def shard_module(module: nn.Module) -> nn.Module:
    """FSDP2 ``fully_shard`` on every submodule that owns parameters directly, then the root;
    gradients are summed across ranks (divide factor 1)."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    for m in list(module.modules())[1:]:
        if any(True for _ in m.parameters(recurse=False)):
            fully_shard(m)
    fully_shard(module)
    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
    return module


class ShardedObjective:
    """L(theta) of ``module`` sharded over ``world`` (FSDP2) on data sharded over ``world``;
    ``theta``: this rank's slices of every trainable parameter, concatenated in
    ``named_parameters`` order. ``n`` is the global parameter count, ``n_local`` this rank's."""

    def __init__(self, module: nn.Module, inputs: Any, targets: torch.Tensor, *, loss: str, world: World,
                 dtype: torch.dtype = torch.float64) -> None:
        if loss not in LOSSES:
            raise InvalidInputError(f"unknown loss {loss!r} (supported: {', '.join(LOSSES)})")
        if not world.distributed:
            raise InvalidInputError("a sharded objective needs a world of at least 2 ranks")
        self.world, self.dtype, self.loss_name = world, dtype, loss
        self.device = torch.device("cpu")
        module = copy.deepcopy(module).to(dtype=dtype).eval()
        if dtype == torch.float64:  # Hugging Face decoders: no float32 RMSNorm / softmax inside
            from convrate.models.families.decoder_float64 import exact_float64

            exact_float64(module)
        self.module = shard_module(module)
        self.params = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        self.n = sum(p.numel() for _, p in self.params)
        self.n_local = sum(p.to_local().numel() for _, p in self.params)
        mine = world.shard(int(targets.shape[0]))
        self.inputs = _rows(inputs, mine)
        self.targets = _rows(targets, mine)
        self.n_terms = world.sum_int(loss_terms(loss, self.targets) if len(mine) else 0)
        self.matvecs = 0

    # ------------------------------------------------------------ vectors
    def local(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a global flat vector (the layout of ``theta``)."""
        from torch.distributed.tensor import distribute_tensor

        if full.shape != (self.n,):
            raise InvalidInputError(f"vector must have shape ({self.n},), got {list(full.shape)}")
        out, i = [], 0
        for _, p in self.params:
            part = full[i:i + p.numel()].reshape(p.shape).to(self.dtype)
            out.append(distribute_tensor(part, p.device_mesh, p.placements, src_data_rank=None).to_local().reshape(-1))
            i += p.numel()
        return torch.cat(out)

    def full(self, local: torch.Tensor) -> torch.Tensor:
        """The global flat vector from every rank's slices (all-gather)."""
        from torch.distributed.tensor import DTensor

        out, i = [], 0
        for _, p in self.params:
            k = p.to_local().numel()
            piece = local[i:i + k].reshape(p.to_local().shape)
            out.append(DTensor.from_local(piece, p.device_mesh, p.placements, shape=p.shape, stride=p.stride())
                       .full_tensor().reshape(-1))
            i += k
        return torch.cat(out)

    @property
    def theta(self) -> torch.Tensor:
        return torch.cat([p.to_local().detach().reshape(-1) for _, p in self.params]).clone()

    def _set(self, theta: torch.Tensor) -> None:
        i = 0
        with torch.no_grad():
            for _, p in self.params:
                loc = p.to_local()
                loc.copy_(theta[i:i + loc.numel()].reshape(loc.shape))
                i += loc.numel()

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> float:
        return self.world.sum_float(float(a @ b))

    # ------------------------------------------------------------ derivatives
    def _forward_loss(self) -> torch.Tensor:
        x = self.inputs
        out = self.module(**x) if isinstance(x, dict) else self.module(x)
        return loss_sum(self.loss_name, unwrap_output(out), loss_targets(self.loss_name, self.targets)) / self.n_terms

    def gradient(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """This rank's slice of grad L(theta) (FSDP's reduce-scatter sums the ranks' shares)."""
        saved = self.theta
        if theta is not None:
            self._set(theta)
        try:
            for _, p in self.params:
                p.grad = None
            self._forward_loss().backward()
            # a parameter the loss does not use (e.g. BERT's pooler) has no gradient: zero
            return torch.cat([(p.grad.to_local() if p.grad is not None else torch.zeros_like(p.to_local())).reshape(-1)
                              for _, p in self.params]).detach().clone()
        finally:
            self._set(saved)

    def loss(self) -> float:
        with torch.no_grad():
            return self.world.sum_float(float(self._forward_loss()))

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """This rank's slice of H v by central differences of sharded gradients (module doc)."""
        self.matvecs += 1
        theta = self.theta
        nt, nv = math.sqrt(self.dot(theta, theta)), math.sqrt(self.dot(v, v))
        eps = fd_step(torch.tensor([nt]), torch.tensor([nv]), self.dtype)
        return (self.gradient(theta + eps * v) - self.gradient(theta - eps * v)) / (2 * eps)


__all__ = ["ShardedObjective", "shard_module"]
