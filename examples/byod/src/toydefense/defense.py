"""A toy defense: rescale the units of every hidden ReLU layer of an ``nn.Sequential`` MLP.

For consecutive Linear layers a -> ReLU -> b and a positive vector d (one entry per hidden
unit), relu(d * z) = d * relu(z), so

    W_a <- diag(d) W_a,   b_a <- d * b_a,   W_b <- W_b diag(d)^-1

computes the same function. d is geometric from sqrt(K) to 1/sqrt(K) (kappa(D) = K) in a
seeded random order. ``defend`` also returns T as convrate's record so that convrate can
check the claim; ``defend_without_T`` lets convrate infer it.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from convrate.byod import takes_weights

STRENGTH = 100.0
SEED = 0


def _scales(width: int, generator: torch.Generator, K: float) -> torch.Tensor:
    if width == 1:
        return torch.ones(1, dtype=torch.float64)
    expo = 0.5 - torch.arange(width, dtype=torch.float64) / (width - 1)
    return (K ** expo)[torch.randperm(width, generator=generator)]


def _rescale(model: nn.Sequential, K: float, seed: int) -> tuple[nn.Sequential, list[torch.Tensor]]:
    out = copy.deepcopy(model)
    linears = [m for m in out if isinstance(m, nn.Linear)]
    g = torch.Generator().manual_seed(seed)
    scales = []
    with torch.no_grad():
        for a, b in zip(linears, linears[1:]):
            d = _scales(a.out_features, g, K).to(a.weight.dtype)
            a.weight.mul_(d[:, None])
            if a.bias is not None:
                a.bias.mul_(d)
            b.weight.div_(d[None, :])
            scales.append(d)
    return out, scales


def defend(model: nn.Sequential, K: float = STRENGTH, seed: int = SEED):
    """(defended model, T): T as a convrate TorchReparameterization on the model's S2 groups."""
    from convrate.models import TorchReparameterization, discover_symmetries

    defended, scales = _rescale(model, K, seed)
    first = next(m for m in model if isinstance(m, nn.Linear))
    groups = discover_symmetries(model, input_shape=(first.in_features,))
    return defended, TorchReparameterization(list(zip(groups, scales)), {"defense": "toydefense", "K": K})


def defend_without_T(model: nn.Sequential) -> nn.Sequential:
    """Only the defended model: convrate infers T from the two sets of weights."""
    return _rescale(model, STRENGTH, SEED)[0]


@takes_weights
def defend_weights(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same defense on a weights dict {"0.weight": ..., "0.bias": ..., "2.weight": ...}."""
    out = {k: v.clone() for k, v in weights.items()}
    layers = sorted({int(k.split(".")[0]) for k in out if k.endswith(".weight")})
    g = torch.Generator().manual_seed(SEED)
    for a, b in zip(layers, layers[1:]):
        d = _scales(out[f"{a}.weight"].shape[0], g, STRENGTH).to(out[f"{a}.weight"].dtype)
        out[f"{a}.weight"] = out[f"{a}.weight"] * d[:, None]
        if f"{a}.bias" in out:
            out[f"{a}.bias"] = out[f"{a}.bias"] * d
        out[f"{b}.weight"] = out[f"{b}.weight"] / d[None, :]
    return out
