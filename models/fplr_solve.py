"""Per-kind solvers of ``fplr``: the element of one group (or of a run of diagonal groups) that
maps reference weights X to claimed weights X' (all float64; the caller applies the groups
solved earlier to the reference first, so X already carries them).

Which equations a stage may use: a slot of a group in the stage is *usable* when no group
that is still unsolved (and not in the stage) acts on its parameter, except on disjoint
slices along the same axis (``usable_slots``): then X' restricted to the slot is exactly the
stage's action on X.

* **diagonal runs** (positive-diagonal, diagonal), jointly. Every entry k of a parameter whose
  stage slots are all usable, with theta_k != 0 != theta'_k (for positive groups also of equal
  sign), gives log|theta'_k| - log|theta_k| = sum over slots s covering k of (+a_{s,j} for op
  "A", -a_{s,j} for op "A_invT"), a = log|d|; least squares through the normal equations
  (A^T A) a = A^T y (integer A^T A, exact in float64; a unit without equation gets a = 0).
  Error: ||a_hat - a||_2 <= ||delta||_2 / sigma_min(A) for per-equation data error delta.
  Signs (kind diagonal): sign(theta'_k / theta_k) = sign(d_j) on entries covered by one
  signed unit; each unit takes the majority sign of its entries, and entries disagreeing with
  it are counted as mismatches (as are sign changes under a positive group and zero-pattern
  changes). Entries covered by two signed units are not supported (no family has them).
* **gl / rope** (A per group). With X = [W_a | b_a] the usable "A" slots as an (r, p) block
  and Y the usable "A_invT" slots as (r, q): X' = A X, Y'^T A = Y^T. A is solved by least
  squares from the better conditioned side (sigma_min / sigma_max of X, resp. Y'); a side
  with sigma_min / sigma_max < sqrt(u_64) does not determine A. Error: ||A_hat - A||_2 <=
  ||X' - A X||_2 / sigma_min(X). A rope group is fitted as a general A and then tested:
  its distance to RoPE's commutant ``rope.commutator_distance`` is reported, and A is replaced
  by its projection onto the commutant; a map that does not commute with RoPE is O(1) away, so
  the projected element leaves a residual far above rtol and no T is accepted.
* **orthogonal** (the residual-stream Q): every usable slot satisfies X' = Q X (A^-T = Q), so
  Q = U V^T from X' X^T = U S V^T (orthogonal Procrustes, the closest orthogonal map in the
  least-squares sense); conditioning sigma_min / sigma_max of X.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch

from convrate.errors import InvalidInputError
from convrate.models import rope
from convrate.models.symmetry import Slot, TorchSymmetry

U64 = 2.0 ** -53


def slot_block(X: torch.Tensor, slot: Slot, width: int) -> torch.Tensor:
    """The (width, -1) float64 block of ``X`` a slot acts on (the layout ``symmetry`` uses:
    the slot's axis moved to the front, ``repeat`` consecutive indices per coordinate)."""
    V = X.detach().to(torch.float64).movedim(slot.axis, 0)[slot.start:slot.stop]
    if V.shape[0] != width * slot.repeat:
        raise InvalidInputError(f"slot {slot.param}[{slot.start}:{slot.stop}] does not have {width} x {slot.repeat} entries")
    return V.reshape(width, -1)


def usable_slots(stage: Sequence[TorchSymmetry], unsolved: Sequence[TorchSymmetry],
                 same_axis: bool = False) -> set[Slot]:
    """Slots of the stage's groups whose parameter no group of ``unsolved`` (outside the stage)
    touches, except on disjoint slices of the same axis (module doc); with ``same_axis`` any
    slice of the same axis is allowed (a permutation's fingerprints are invariant under maps
    acting within its units, ``fplr_permutation``)."""
    inside = {id(g) for g in stage}
    others = [t for h in unsolved if id(h) not in inside for t in h.acting_slots]
    out = set()
    for g in stage:
        for s in g.acting_slots:
            if all(t.param != s.param or (t.axis == s.axis and (same_axis or t.stop <= s.start or s.stop <= t.start))
                   for t in others):
                out.add(s)
    return out


# ---------------------------------------------------------------- diagonal runs
def _coords(shape: Sequence[int], slot: Slot) -> torch.Tensor:
    """Group coordinate of every entry of a tensor of ``shape`` under ``slot`` (-1 outside)."""
    idx = torch.arange(shape[slot.axis])
    c = torch.where((idx >= slot.start) & (idx < slot.stop), (idx - slot.start) // slot.repeat, -1)
    view = [1] * len(shape)
    view[slot.axis] = shape[slot.axis]
    return c.reshape(view).expand(*shape).reshape(-1)


def _log_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """log(num / den) for positive float64 arrays: one division and one log (2 roundings, the
    error the S2 tolerance argues from) where the quotient is a normal float64, and
    log(num) - log(den) where it would overflow or fall below the normal range (scalings
    such as 1e200 and 1e-200, whose logs are finite)."""
    with np.errstate(over="ignore", under="ignore"):
        q = num / den
    normal = np.isfinite(q) & (q >= np.finfo(np.float64).tiny)
    return np.where(normal, np.log(np.where(normal, q, 1.0)), np.log(num) - np.log(den))


def solve_diagonal(groups: Sequence[TorchSymmetry], ref: Mapping[str, torch.Tensor], cl: Mapping[str, torch.Tensor],
                   usable: set[Slot]) -> tuple[list[torch.Tensor], float, int]:
    """Joint solve of a run of diagonal groups (module doc). Returns the elements, sigma_min /
    sigma_max of the system (over the unknowns that have equations) and the number of sign /
    zero-pattern mismatches."""
    from scipy import sparse

    offsets = np.cumsum([0] + [g.width for g in groups])
    n_unknowns = int(offsets[-1])
    signed = np.zeros(n_unknowns, dtype=bool)
    for gi, g in enumerate(groups):
        signed[offsets[gi]:offsets[gi + 1]] = g.element_kind == "diagonal"
    slots_by_param: dict[str, list[tuple[int, Slot]]] = {}
    for gi, g in enumerate(groups):
        for s in g.acting_slots:
            slots_by_param.setdefault(s.param, []).append((gi, s))
    rows, cols, vals, ys = [], [], [], []
    votes = np.zeros(n_unknowns)
    sign_eqs: list[tuple[np.ndarray, np.ndarray]] = []  # (unit, sign ratio) of singly-signed entries
    n_eq, mismatches = 0, 0
    for name, slots in slots_by_param.items():
        if not all(s in usable for _, s in slots):
            continue
        r = ref[name].reshape(-1).numpy()
        c = cl[name].reshape(-1).numpy()
        shape = tuple(ref[name].shape)
        cover = []
        for gi, s in slots:
            co = _coords(shape, s).numpy()
            cover.append((np.where(co >= 0, co + offsets[gi], -1), s))
        n_signed = sum((co >= 0) & signed[np.maximum(co, 0)] for co, _ in cover)
        if bool((n_signed > 1).any()):
            raise InvalidInputError(f"{name}: entries scaled by two sign-free diagonal groups; signs not solvable")
        nonzero = (r != 0) & (c != 0)
        ratio_sign = np.sign(c) * np.sign(r)
        fixed_sign = nonzero & (n_signed == 0)
        mismatches += int(((r != 0) | (c != 0)).sum() - nonzero.sum()) + int((fixed_sign & (ratio_sign < 0)).sum())
        usable_eq = nonzero & ~(fixed_sign & (ratio_sign < 0))
        for co, _ in cover:
            hit = (co >= 0) & signed[np.maximum(co, 0)] & nonzero
            np.add.at(votes, co[hit], ratio_sign[hit])
            sign_eqs.append((co[hit], ratio_sign[hit]))
        keep = np.nonzero(usable_eq)[0]
        ys.append(_log_ratio(np.abs(c[keep]), np.abs(r[keep])))
        eq = np.arange(n_eq, n_eq + keep.size)
        for co, s in cover:
            co = co[keep]
            hit = co >= 0
            rows.append(eq[hit])
            cols.append(co[hit])
            vals.append(np.full(int(hit.sum()), 1.0 if s.op == "A" else -1.0))
        n_eq += keep.size
    if not rows:
        raise InvalidInputError(f"{groups[0].name}: no usable equations (every slot is also moved by an unsolved group)")
    A = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(n_eq, n_unknowns))
    y = np.concatenate(ys)
    AtA = (A.T @ A).toarray()
    a, *_ = np.linalg.lstsq(AtA, A.T @ y, rcond=None)
    active = np.diag(AtA) > 0
    ev = np.linalg.eigvalsh(AtA[np.ix_(active, active)]) if active.any() else np.ones(1)
    cond = float(math.sqrt(max(ev[0], 0.0) / ev[-1]))
    sign = np.where(votes < 0, -1.0, 1.0)
    for unit, rs in sign_eqs:
        mismatches += int((rs != sign[unit]).sum())
    d = np.exp(a) * np.where(signed, sign, 1.0)
    return [torch.from_numpy(d[offsets[i]:offsets[i + 1]].copy()) for i in range(len(groups))], cond, mismatches


# ---------------------------------------------------------------- gl / rope
def _rel_cond(M: torch.Tensor) -> float:
    s = torch.linalg.svdvals(M)
    return float(s[-1] / s[0]) if s.numel() and float(s[0]) > 0 else 0.0


def solve_general(g: TorchSymmetry, ref: Mapping[str, torch.Tensor], cl: Mapping[str, torch.Tensor],
                  usable: set[Slot]) -> tuple[torch.Tensor | None, str, float, str]:
    """(A_hat or None, side used, conditioning of that side, note) for a gl or rope group
    (module doc); a rope A_hat is projected onto RoPE's commutant, the note giving its distance."""
    r = g.width
    A_slots = [s for s in g.acting_slots if s.op == "A" and s in usable]
    B_slots = [s for s in g.acting_slots if s.op == "A_invT" and s in usable]
    X = torch.cat([slot_block(ref[s.param], s, r) for s in A_slots], 1) if A_slots else None
    Xc = torch.cat([slot_block(cl[s.param], s, r) for s in A_slots], 1) if A_slots else None
    Y = torch.cat([slot_block(ref[s.param], s, r) for s in B_slots], 1) if B_slots else None
    Yc = torch.cat([slot_block(cl[s.param], s, r) for s in B_slots], 1) if B_slots else None
    cx = _rel_cond(X) if X is not None else 0.0
    cy = _rel_cond(Yc) if Yc is not None else 0.0
    if max(cx, cy) < math.sqrt(U64):
        return None, "none", max(cx, cy), "both sides rank-deficient: A not determined"
    if cx >= cy:
        A, side, cond = torch.linalg.lstsq(X.T, Xc.T, driver="gelsd").solution.T, "producer", cx
    else:
        A, side, cond = torch.linalg.lstsq(Yc.T, Y.T, driver="gelsd").solution, "consumer", cy
    note = ""
    if g.element_kind == "rope":
        dist = rope.commutator_distance(A, g.structure)
        note = f"distance of the fitted map to RoPE's commutant {dist:.2e}"
        A = rope.project(A, g.structure)
    return A, side, cond, note


# ---------------------------------------------------------------- orthogonal
def solve_orthogonal(g: TorchSymmetry, ref: Mapping[str, torch.Tensor], cl: Mapping[str, torch.Tensor],
                     usable: set[Slot]) -> tuple[torch.Tensor | None, str, float, str]:
    """Orthogonal Procrustes Q = U V^T, X' X^T = U S V^T, over the usable slots (module doc)."""
    r = g.width
    slots = [s for s in g.acting_slots if s in usable]
    if not slots:
        return None, "none", 0.0, "no slot free of unsolved groups"
    X = torch.cat([slot_block(ref[s.param], s, r) for s in slots], 1)
    Xc = torch.cat([slot_block(cl[s.param], s, r) for s in slots], 1)
    cond = _rel_cond(X)
    if cond < math.sqrt(U64):
        return None, "procrustes", cond, "the slots' reference block is rank-deficient: Q not determined"
    U, _, Vh = torch.linalg.svd(Xc @ X.T)
    return U @ Vh, "procrustes", cond, ""


__all__ = ["slot_block", "solve_diagonal", "solve_general", "solve_orthogonal", "usable_slots"]
