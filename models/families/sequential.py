"""Family: zoo ``nn.Sequential`` MLPs and CNNs (THEORY.md S2).

S2 ``relu-linear`` / ``relu-conv`` / ``relu-conv-linear``: consecutive Linear / Conv2d layers
of an ``nn.Sequential`` separated only by positively homogeneous per-channel maps (ReLU,
LeakyReLU, MaxPool2d, AvgPool2d, Flatten): W_a -> D W_a, b_a -> D b_a, W_b -> W_b D^-1
(Conv2d: per output / input channel; across a flatten each channel covers H*W consecutive
features).

P ``relu-permutation`` (not discovered by default): the same slots permuted (A = P, kappa 1):
ReLU commutes with permutations, so with a positive diagonal D the group is A = P D (THEORY S2),
written as the permutation followed by the S2 scaling.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from convrate.models.symmetry import Slot, TorchSymmetry, record_shapes

HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, nn.Identity)
AFFINE = (nn.Linear, nn.Conv2d)
KINDS = ("relu-linear", "relu-conv", "relu-conv-linear")
PERMUTATION_KINDS = ("relu-permutation",)


def sequential_symmetries(net: nn.Sequential, input_shape: Sequence[int]) -> list[TorchSymmetry]:
    mods = list(net)
    shapes: list[tuple[int, ...]] = []
    p0 = next(net.parameters())
    x = torch.zeros((1, *input_shape), device=p0.device, dtype=p0.dtype)
    with torch.no_grad():
        for m in mods:
            x = m(x)
            shapes.append(tuple(x.shape[1:]))
    idx = [i for i, m in enumerate(mods) if isinstance(m, AFFINE)]
    out: list[TorchSymmetry] = []
    for a, b in zip(idx, idx[1:]):
        between = mods[a + 1:b]
        if not all(isinstance(m, HOMOGENEOUS) for m in between):
            continue
        ma, mb = mods[a], mods[b]
        r = ma.out_features if isinstance(ma, nn.Linear) else ma.out_channels
        slots = [Slot(f"{a}.weight", 0, 0, r, "A")]
        if ma.bias is not None:
            slots.append(Slot(f"{a}.bias", 0, 0, r, "A"))
        if isinstance(mb, nn.Conv2d):
            if not isinstance(ma, nn.Conv2d) or mb.in_channels != r:
                continue
            kind, rep = "relu-conv", 1
        elif isinstance(ma, nn.Linear):
            kind, rep = "relu-linear", 1
        else:  # Conv2d -> ... -> Flatten -> Linear
            flat = [j for j in range(a + 1, b) if isinstance(mods[j], nn.Flatten)]
            if len(flat) != 1:
                continue
            pre = shapes[flat[0] - 1]
            if len(pre) != 3 or pre[0] != r:
                continue
            kind, rep = "relu-conv-linear", pre[1] * pre[2]
        if mb.weight.shape[1] != r * rep:
            continue
        slots.append(Slot(f"{b}.weight", 1, 0, r * rep, "A_invT", rep))
        named = dict(net.named_parameters())
        out.append(record_shapes(TorchSymmetry("P", "relu-permutation", f"relu-permutation:{a}->{b}", r,
                                               tuple(slots), layer=a, element="permutation"), named))
        out.append(record_shapes(TorchSymmetry("S2", kind, f"{kind}:{a}->{b}", r, tuple(slots), layer=a), named))
    return out
