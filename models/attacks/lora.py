"""LoRA: low-rank adapters on chosen ``nn.Linear`` layers, base weights frozen.

A wrapped layer computes y = W x + b + s B A x with A (r x in), B (out x r), s = alpha / r.
At start A ~ U(-1/sqrt(in), 1/sqrt(in)) (drawn from a generator seeded with ``seed``) and
B = 0, so B A x = 0 exactly and the wrapped model computes exactly the base function.
Only A and B (and parameters matching ``extra_trainable``) are trainable. ``lora_merge``
folds the adapters back: W <- W + s B A. In the S1 language of THEORY.md the adapter is a
factorized pair (A, B) with the GL(r) symmetry (A, B) -> (G A, B G^-1).
"""
from __future__ import annotations

import copy
import math
import re
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from convrate.errors import InvalidInputError

Targets = str | Sequence[str] | None


def lora_a_init(rank: int, in_features: int, generator: torch.Generator | None) -> torch.Tensor:
    """A ~ U(-1/sqrt(in), 1/sqrt(in)) of shape (rank, in), float64, from ``generator`` (the
    distribution of peft's default Kaiming-uniform(a = sqrt 5) init)."""
    bound = 1.0 / math.sqrt(in_features)
    return (torch.rand(rank, in_features, generator=generator, dtype=torch.float64) * 2 - 1) * bound


class LoRALinear(nn.Module):
    """y = base(x) + s (x A^T) B^T, s = alpha / rank; ``base`` frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        w = base.weight
        self.rank = int(rank)
        self.scaling = float(alpha if alpha is not None else rank) / self.rank
        A = lora_a_init(self.rank, base.in_features, generator)
        self.lora_A = nn.Parameter(A.to(device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, self.rank, device=w.device, dtype=w.dtype))

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight W + s B A (a tensor, differentiable in A and B)."""
        return self.base.weight + self.scaling * (self.lora_B @ self.lora_A)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scaling * F.linear(F.linear(x, self.lora_A), self.lora_B)

    def merged(self) -> nn.Linear:
        """A plain Linear with weight W + s B A (trainable)."""
        w = self.base.weight
        out = nn.Linear(self.in_features, self.out_features, bias=self.base.bias is not None,
                        device=w.device, dtype=w.dtype)
        with torch.no_grad():
            out.weight.copy_(self.weight)
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scaling={self.scaling}"


def _patterns(targets: Targets, what: str) -> list[re.Pattern[str]] | None:
    if targets is None:
        return None
    pats = [targets] if isinstance(targets, str) else list(targets)
    out = []
    for p in pats:
        try:
            out.append(re.compile(p))
        except re.error as exc:
            raise InvalidInputError(f"{what} pattern {p!r} is not a regular expression: {exc}") from None
    return out


def _matches(name: str, pats: list[re.Pattern[str]] | None) -> bool:
    return pats is None or any(p.search(name) for p in pats)


def _set_child(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def lora_targets(model: nn.Module, targets: Targets = None) -> list[str]:
    """Names of the ``nn.Linear`` modules of ``model`` that ``targets`` selects (None: every
    Linear; a regex or list of regexes: names where any matches, ``re.search``)."""
    pats = _patterns(targets, "LoRA target")
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and n and _matches(n, pats)]


def lora_wrap(model: nn.Module, rank: int, targets: Targets = None, *, alpha: float | None = None,
              seed: int = 0, extra_trainable: Targets = None) -> tuple[nn.Module, list[nn.Parameter]]:
    """(copy of ``model`` with LoRA of rank ``rank`` on the selected Linear layers, its
    trainable parameters). The input model is not modified. Every parameter of the copy is
    frozen except the adapters and those whose name matches ``extra_trainable`` (e.g. a new
    classification head: ``"^head"``)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise InvalidInputError(f"LoRA rank must be a positive integer, got {rank!r}")
    if alpha is not None and not (math.isfinite(alpha) and alpha > 0):
        raise InvalidInputError(f"LoRA alpha must be positive and finite, got {alpha!r}")
    if isinstance(model, LoRALinear) or any(isinstance(m, LoRALinear) for m in model.modules()):
        raise InvalidInputError("the model already carries LoRA adapters; merge them first (lora_merge)")
    names = lora_targets(model, targets)
    if not names:
        raise InvalidInputError(f"no nn.Linear layer of the model matches the LoRA targets {targets!r}")
    net = copy.deepcopy(model)
    for p in net.parameters():
        p.requires_grad_(False)
    extra = _patterns(extra_trainable, "extra_trainable")
    if extra is not None:
        for n, p in net.named_parameters():
            if _matches(n, extra):
                p.requires_grad_(True)
    g = torch.Generator().manual_seed(int(seed))
    for n in names:  # named_modules order: deterministic
        _set_child(net, n, LoRALinear(net.get_submodule(n), rank, alpha, g))
    params = [p for p in net.parameters() if p.requires_grad]
    return net, params


def lora_merge(model: nn.Module) -> nn.Module:
    """Copy of ``model`` with every LoRALinear replaced by the plain Linear W + s B A; every
    parameter of the result is trainable. The input is not modified."""
    net = copy.deepcopy(model)
    if isinstance(net, LoRALinear):
        return net.merged()
    names = [n for n, m in net.named_modules() if isinstance(m, LoRALinear)]
    for n in names:
        _set_child(net, n, net.get_submodule(n).merged())
    for p in net.parameters():
        p.requires_grad_(True)
    return net


def lora_parameter_count(model: nn.Module) -> int:
    """Number of adapter parameters r (in + out) summed over the LoRALinear layers."""
    return sum(m.lora_A.numel() + m.lora_B.numel() for m in model.modules() if isinstance(m, LoRALinear))


__all__ = ["LoRALinear", "lora_a_init", "lora_wrap", "lora_merge", "lora_targets", "lora_parameter_count"]
