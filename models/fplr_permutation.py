"""The permutation P of T = P D or T = P A (``fplr``): which claimed unit is which reference unit.

A permutation group's unit i owns, on every slot, a block of ``repeat`` consecutive indices
(one ReLU or SwiGLU unit: a row or a column; an attention head or a KV group: d or G d rows or
columns). The groups still unsolved at this stage act *within* units (a positive or signed
scale of a unit, RoPE's A or V/O's B on a head), so the row space of a unit's block -- its
subspace, of dimension up to ``repeat`` -- is the same in the reference and in the claimed
model, whatever the scale or the within-head map. The similarity of reference unit i and
claimed unit j is the mean over the usable parts (one part per Linear: its weight and bias
slots side by side) of the subspace overlap

    s_ij = ||U_i U'_j^T||_F^2 / max(k_i, k'_j)  in [0, 1]

(U orthonormal bases of the two row spaces, k their ranks; for one row |cos|^2 of the two
vectors: invariant under any nonzero scale, sign included). s = 1 on the true pairing; P
maximizes sum s over assignments (``scipy.optimize.linear_sum_assignment``, O(r^3)). The
smallest matched similarity is reported; an ambiguous pairing (tied units) is left to the
residual check of the whole T.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from convrate.models.elements import permutation_matrix
from convrate.models.symmetry import Slot, TorchSymmetry

U64 = 2.0 ** -53


def _unit_blocks(X: torch.Tensor, slot: Slot, r: int) -> torch.Tensor:
    """(r, repeat, rest) float64: unit i's block of the slot."""
    V = X.detach().to(torch.float64).movedim(slot.axis, 0)[slot.start:slot.stop]
    return V.reshape(r, slot.repeat, -1)


def _bases(B: torch.Tensor) -> torch.Tensor:
    """Orthonormal row-space bases of the units' blocks (r, k, rest), rows beyond a unit's
    numerical rank (singular value <= k u_64 sigma_1 per unit) set to zero."""
    if B.shape[1] == 1:
        n = B.norm(dim=2, keepdim=True)
        return torch.where(n > 0, B / torch.where(n > 0, n, 1.0), 0.0)
    _, S, Vh = torch.linalg.svd(B, full_matrices=False)
    keep = S > (S[:, :1] * B.shape[1] * U64)
    return Vh * keep[:, :, None]


def _overlap(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """s_ij = ||U_i V_j^T||_F^2 / max(k_i, k_j) for all pairs (module doc)."""
    k = (U.abs().sum(2) > 0).sum(1).to(torch.float64)
    kv = (V.abs().sum(2) > 0).sum(1).to(torch.float64)
    G = torch.einsum("iar,jbr->ijab", U, V).pow(2).sum((2, 3))
    return G / torch.maximum(k[:, None], kv[None, :]).clamp_min(1.0)


def solve_permutation(g: TorchSymmetry, ref: Mapping[str, torch.Tensor], cl: Mapping[str, torch.Tensor],
                      usable: set[Slot]) -> tuple[torch.Tensor | None, float, str]:
    """(P or None, smallest matched similarity, note): P[j, i] = 1 when claimed unit j is
    reference unit i (so P X_reference = X_claimed up to the within-unit maps)."""
    from scipy.optimize import linear_sum_assignment

    r = g.width
    parts: dict[tuple[str, str], list[Slot]] = {}
    for s in g.acting_slots:
        if s in usable:
            parts.setdefault((s.param.rsplit(".", 1)[0], s.op), []).append(s)
    if not parts:
        return None, 0.0, "no slot free of unsolved groups acting across units"
    S = torch.zeros(r, r, dtype=torch.float64)
    for slots in parts.values():
        Bref = torch.cat([_unit_blocks(ref[s.param], s, r) for s in slots], 2)
        Bcl = torch.cat([_unit_blocks(cl[s.param], s, r) for s in slots], 2)
        S += _overlap(_bases(Bref), _bases(Bcl))
    S /= len(parts)
    rows, cols = linear_sum_assignment(S.numpy(), maximize=True)
    perm = np.empty(r, dtype=np.int64)
    perm[cols] = rows
    worst = float(S[torch.as_tensor(rows), torch.as_tensor(cols)].min())
    return permutation_matrix(perm), worst, f"smallest matched similarity {worst:.6f}"


__all__ = ["solve_permutation"]
