"""Is a claimed model an FPLR of a reference? Solve for T per symmetry group and check it.

Given reference weights theta and claimed weights theta', find T in the supported groups
(THEORY.md S1, S2; see ``symmetry``) with T theta = theta', and accept it when

    residual = max over parameter tensors p of ||(T theta)_p - theta'_p||_F / ||theta'_p||_F
             <= rtol,   rtol = sqrt(u)   (u: unit roundoff of the coarser of the two dtypes).

Why sqrt(u): storing an exact T theta in a dtype of unit roundoff u perturbs each entry by a
relative u, and the float64 solve below adds O(kappa u_64); half the digits is far above
both, and far below what any training step changes (a relative update of 1e-8 in float64,
2.4e-4 in float32).

Solves (all in float64, on the reference's groups):

* **S2** (positive diagonal D per ReLU group; groups chain, so one tensor is scaled by the
  rows of one group and the columns of the previous one). Every entry with
  sign(theta'_k) = sign(theta_k) != 0 gives one linear equation in the log-scales a = log d:

      log|theta'_k| - log|theta_k| = sum over slots s covering k of (+a_{s,j} for op "A",
                                                                    -a_{s,j} for op "A_invT")

  (j the group coordinate of k). All S2 groups are solved jointly by least squares through
  the normal equations (A^T A) a = A^T y; A^T A has integer entries (exact in float64), a
  unit with no equation gets a = 0 (minimum norm). Positivity holds by construction
  (d = exp a); sign changes and zero/non-zero mismatches are counted and show up in the
  residual. Error: with per-equation data error delta (rounding: |delta_k| <= 6u +
  u |y_k|), ||a_hat - a||_2 <= ||delta||_2 / sigma_min(A).
* **S1** (A in GL(r) per attention head pair). With X = [W_a | b_a] the group's "A" slots
  as an (r, p) block and Y its "A_invT" slots as (r, q): X' = A X and Y' = A^-T Y, i.e.
  Y'^T A = Y^T. A is solved by least squares from the better conditioned side (larger
  sigma_min / sigma_max of X, resp. Y'): A_hat = X' X^+ or A_hat = (Y'^T)^+ Y^T; the other
  side is checked by the residual. Error: with E = X' - A X, ||A_hat - A||_2 <= ||E||_2 /
  sigma_min(X) (likewise for Y'). A side with sigma_min / sigma_max < sqrt(u_64) does not
  determine A; when both sides are that degenerate the group is reported as not
  identifiable and no T is returned.

Permutations (the P of S2's A = P D) are not searched: a unit-permuted model is reported
as function-preserving without a T (``audit`` class ``function-preserving-other``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from convrate.errors import InvalidInputError, SingularReparameterizationError
from convrate.models.io import LoadedModel
from convrate.models.symmetry import Slot, TorchReparameterization, TorchSymmetry
from convrate.models.families import discover_symmetries

U64 = 2.0 ** -53


class ArchitectureMismatchError(InvalidInputError):
    """The reference and the claimed model are not the same architecture."""


# ---------------------------------------------------------------- helpers
def _module(model: Any) -> nn.Module:
    m = getattr(model, "module", model)
    if not isinstance(m, nn.Module):
        raise InvalidInputError(f"expected a LoadedModel or torch.nn.Module, got {type(model).__name__}")
    return m


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = eps / 2 of a floating dtype (float64: 2^-53, float32: 2^-24)."""
    return float(torch.finfo(dtype).eps) / 2


def default_rtol(*dtypes: torch.dtype) -> float:
    """sqrt(u) of the coarsest dtype given (module doc)."""
    return math.sqrt(max(unit_roundoff(d) for d in dtypes))


def float64_parameters(model: Any) -> dict[str, torch.Tensor]:
    """name -> detached float64 copy of every parameter."""
    return {n: p.detach().to(torch.float64).clone() for n, p in _module(model).named_parameters()}


def parameter_distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """name -> ||a_p - b_p||_F / ||b_p||_F (absolute when b_p = 0), computed in float64."""
    out = {}
    for n, y in b.items():
        d = float((a[n].to(torch.float64) - y.to(torch.float64)).norm())
        s = float(y.to(torch.float64).norm())
        out[n] = d / s if s > 0 else d
    return out


def architecture_signature(model: Any) -> list[tuple[str, str]]:
    """(name, description) for every module (type; leaf modules also their repr, which
    carries widths, kernel sizes, slopes, eps) and every parameter (shape). Dtypes are not
    part of the architecture."""
    sig: list[tuple[str, str]] = []
    for name, m in _module(model).named_modules():
        leaf = not any(True for _ in m.children())
        sig.append((name or "<root>", repr(m) if leaf else type(m).__name__))
    sig += [(n, f"parameter {list(p.shape)}") for n, p in _module(model).named_parameters()]
    return sig


def check_same_architecture(reference: Any, claimed: Any) -> None:
    """ArchitectureMismatchError naming the first difference (one line); the kinds of two
    LoadedModels are compared too."""
    if isinstance(reference, LoadedModel) and isinstance(claimed, LoadedModel) and reference.kind != claimed.kind:
        raise ArchitectureMismatchError(f"architectures differ: the reference is a {reference.kind}, "
                                        f"the claimed model a {claimed.kind}")
    a, b = architecture_signature(reference), architecture_signature(claimed)
    for (na, da), (nb, db) in zip(a, b):
        if (na, da) != (nb, db):
            raise ArchitectureMismatchError(
                f"architectures differ: the reference has {na!r}: {da}, the claimed model has {nb!r}: {db}")
    if len(a) != len(b):
        extra, who = (a, "reference") if len(a) > len(b) else (b, "claimed model")
        n, d = extra[min(len(a), len(b))]
        raise ArchitectureMismatchError(f"architectures differ: only the {who} has {n!r}: {d}")


def slot_block(X: torch.Tensor, slot: Slot, width: int) -> torch.Tensor:
    """The (width, -1) float64 block of ``X`` a slot acts on (the layout ``symmetry`` uses:
    the slot's axis moved to the front, ``repeat`` consecutive indices per coordinate)."""
    V = X.detach().to(torch.float64).movedim(slot.axis, 0)[slot.start:slot.stop]
    if V.shape[0] != width * slot.repeat:
        raise InvalidInputError(f"slot {slot.param}[{slot.start}:{slot.stop}] does not have {width} x {slot.repeat} entries")
    return V.reshape(width, -1)


def _sequential_input_shape(module: nn.Module) -> tuple[int, ...] | None:
    """(in_features,) of an nn.Sequential starting with a Linear (what S2 discovery needs for
    a bare module); None otherwise (a CNN needs a LoadedModel with its input_shape)."""
    if isinstance(module, nn.Sequential) and len(module) and isinstance(module[0], nn.Linear):
        return (module[0].in_features,)
    return None


# ---------------------------------------------------------------- results
@dataclass(frozen=True)
class GroupFit:
    """One group's solved element: ``kappa`` = kappa(element); ``side`` the equations used
    ("log-ratios" for S2, "producer" / "consumer" for S1); ``conditioning`` sigma_min /
    sigma_max of the solve (S1) or of A (S2); ``residual`` max over its slots of
    ||(T theta) - theta'|| / ||theta'|| on the slot's block; ``note`` any problem."""

    name: str
    family: str
    kind: str
    width: int
    kappa: float | None
    side: str
    conditioning: float | None
    residual: float | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("name", "family", "kind", "width", "kappa", "side",
                                              "conditioning", "residual", "note")}


@dataclass
class FPLRFit:
    """Outcome of ``infer_reparameterization``: ``record`` is T when ``residual <= rtol``
    (else None; ``candidate`` keeps the solved T for diagnosis when one could be built);
    ``kappa_T`` = kappa(T) over the whole parameter vector (None without a record);
    ``param_residuals`` per parameter tensor; ``sign_mismatches`` S2 entries whose sign
    (or zero pattern) differs; ``reason`` why no record was returned."""

    record: TorchReparameterization | None
    candidate: TorchReparameterization | None
    residual: float
    kappa_T: float | None
    rtol: float
    groups: list[GroupFit] = field(default_factory=list)
    param_residuals: dict[str, float] = field(default_factory=dict)
    sign_mismatches: int = 0
    reason: str = ""

    @property
    def found(self) -> bool:
        return self.record is not None

    def to_json(self) -> dict[str, Any]:
        worst = sorted(self.param_residuals.items(), key=lambda kv: -kv[1])[:5]
        return {"found": self.found, "residual": self.residual, "rtol": self.rtol, "kappa_T": self.kappa_T,
                "kappa_A_max": self.record.kappa_A() if self.record is not None else None,
                "groups": len(self.groups), "sign_mismatches": self.sign_mismatches, "reason": self.reason,
                "worst_parameters": [{"name": n, "residual": r} for n, r in worst],
                "group_fits": [g.to_json() for g in self.groups]}


# ---------------------------------------------------------------- S2: joint log-ratio solve
def _coords(shape: Sequence[int], slot: Slot) -> torch.Tensor:
    """Group coordinate of every entry of a tensor of ``shape`` under ``slot`` (-1 outside)."""
    idx = torch.arange(shape[slot.axis])
    c = torch.where((idx >= slot.start) & (idx < slot.stop), (idx - slot.start) // slot.repeat, -1)
    view = [1] * len(shape)
    view[slot.axis] = shape[slot.axis]
    return c.reshape(view).expand(*shape).reshape(-1)


def _solve_s2(groups: Sequence[TorchSymmetry], ref: Mapping[str, torch.Tensor],
              cl: Mapping[str, torch.Tensor]) -> tuple[list[torch.Tensor], float, int]:
    """Joint least squares for the log-scales of every S2 group (module doc). Returns the
    elements d = exp(a), sigma_min / sigma_max of A (over the unknowns that have
    equations) and the number of sign / zero-pattern mismatches."""
    from scipy import sparse

    offsets = np.cumsum([0] + [g.width for g in groups])
    n_unknowns = int(offsets[-1])
    slots_by_param: dict[str, list[tuple[int, Slot]]] = {}
    for gi, g in enumerate(groups):
        for s in g.slots:
            slots_by_param.setdefault(s.param, []).append((gi, s))
    rows, cols, vals, ys = [], [], [], []
    n_eq, mismatches = 0, 0
    for name, slots in slots_by_param.items():
        r = ref[name].reshape(-1).numpy()
        c = cl[name].reshape(-1).numpy()
        usable = (r != 0) & (c != 0) & (np.sign(r) == np.sign(c))
        mismatches += int(((r != 0) | (c != 0)).sum() - usable.sum())
        keep = np.nonzero(usable)[0]
        ys.append(np.log(np.abs(c[keep]) / np.abs(r[keep])))
        eq = np.arange(n_eq, n_eq + keep.size)
        for gi, s in slots:
            co = _coords(tuple(ref[name].shape), s).numpy()[keep]
            hit = co >= 0
            rows.append(eq[hit])
            cols.append(offsets[gi] + co[hit])
            vals.append(np.full(int(hit.sum()), 1.0 if s.op == "A" else -1.0))
        n_eq += keep.size
    A = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(n_eq, n_unknowns))
    y = np.concatenate(ys)
    AtA = (A.T @ A).toarray()
    Aty = A.T @ y
    a, *_ = np.linalg.lstsq(AtA, Aty, rcond=None)
    active = np.diag(AtA) > 0
    ev = np.linalg.eigvalsh(AtA[np.ix_(active, active)]) if active.any() else np.ones(1)
    cond = float(math.sqrt(max(ev[0], 0.0) / ev[-1]))
    elems = [torch.from_numpy(np.exp(a[offsets[i]:offsets[i + 1]])) for i in range(len(groups))]
    return elems, cond, mismatches


# ---------------------------------------------------------------- S1: per-group least squares
def _rel_cond(M: torch.Tensor) -> float:
    s = torch.linalg.svdvals(M)
    return float(s[-1] / s[0]) if float(s[0]) > 0 else 0.0


def _solve_s1(g: TorchSymmetry, ref: Mapping[str, torch.Tensor], cl: Mapping[str, torch.Tensor]
              ) -> tuple[torch.Tensor | None, str, float]:
    """(A_hat or None, side used, conditioning of that side) (module doc)."""
    r = g.width
    A_slots = [s for s in g.slots if s.op == "A"]
    B_slots = [s for s in g.slots if s.op == "A_invT"]
    X = torch.cat([slot_block(ref[s.param], s, r) for s in A_slots], 1)
    Xc = torch.cat([slot_block(cl[s.param], s, r) for s in A_slots], 1)
    Y = torch.cat([slot_block(ref[s.param], s, r) for s in B_slots], 1) if B_slots else None
    Yc = torch.cat([slot_block(cl[s.param], s, r) for s in B_slots], 1) if B_slots else None
    cx = _rel_cond(X)
    cy = _rel_cond(Yc) if Yc is not None else 0.0
    if max(cx, cy) < math.sqrt(U64):
        return None, "none", max(cx, cy)
    if cx >= cy:
        return torch.linalg.lstsq(X.T, Xc.T, driver="gelsd").solution.T, "producer", cx
    return torch.linalg.lstsq(Yc.T, Y.T, driver="gelsd").solution, "consumer", cy


# ---------------------------------------------------------------- public entry
def infer_reparameterization(reference: Any, claimed: Any, symmetries: Sequence[TorchSymmetry] | None = None,
                             rtol: float | None = None) -> FPLRFit:
    """Find T in the supported symmetry groups with T theta_reference = theta_claimed (module
    doc). ``reference`` / ``claimed``: LoadedModel or nn.Module of the same architecture
    (else ArchitectureMismatchError); ``symmetries`` default: ``discover_symmetries`` of
    the reference; ``rtol`` default ``default_rtol`` of the two dtypes."""
    check_same_architecture(reference, claimed)
    ref_mod, cl_mod = _module(reference), _module(claimed)
    ref_dtype, cl_dtype = next(ref_mod.parameters()).dtype, next(cl_mod.parameters()).dtype
    tol = default_rtol(ref_dtype, cl_dtype) if rtol is None else float(rtol)
    if not (math.isfinite(tol) and tol > 0):
        raise InvalidInputError(f"rtol must be a finite number > 0, got {rtol!r}")
    if symmetries is None:
        source = reference if isinstance(reference, LoadedModel) else claimed
        if isinstance(source, LoadedModel):
            syms = discover_symmetries(source)
        else:
            syms = discover_symmetries(ref_mod, input_shape=_sequential_input_shape(ref_mod))
    else:
        syms = list(symmetries)
    ref, cl = float64_parameters(ref_mod), float64_parameters(cl_mod)
    for n, t in list(ref.items()) + list(cl.items()):
        if not bool(torch.isfinite(t).all()):
            raise InvalidInputError(f"parameter {n!r} has non-finite (NaN/Inf) entries")

    s2 = [g for g in syms if g.family == "S2"]
    s1 = [g for g in syms if g.family == "S1"]
    overlap = {n for g in s2 for n in g.params} & {n for g in s1 for n in g.params}
    if overlap:
        return FPLRFit(None, None, math.inf, None, tol,
                       reason=f"S1 and S2 groups share parameters ({sorted(overlap)[:3]}); not supported")
    items: list[tuple[TorchSymmetry, torch.Tensor]] = []
    fits: list[tuple[TorchSymmetry, str, float | None, str]] = []
    mismatches = 0
    if s2:
        elems, cond, mismatches = _solve_s2(s2, ref, cl)
        for g, e in zip(s2, elems):
            items.append((g, e))
            fits.append((g, "log-ratios", cond, ""))
    unidentified = []
    for g in s1:
        A, side, cond = _solve_s1(g, ref, cl)
        if A is None:
            unidentified.append(g.name)
            fits.append((g, side, cond, "both sides rank-deficient: A not determined"))
            continue
        items.append((g, A))
        fits.append((g, side, cond, ""))
    groups_out = [GroupFit(g.name, g.family, g.kind, g.width, None, side, cond, None, note)
                  for g, side, cond, note in fits]
    if unidentified:
        return FPLRFit(None, None, math.inf, None, tol, groups_out, sign_mismatches=mismatches,
                       reason=f"{len(unidentified)} group(s) not identifiable, e.g. {unidentified[0]}")
    try:
        candidate = TorchReparameterization(items, {"defense": "inferred"})
    except SingularReparameterizationError as e:
        return FPLRFit(None, None, math.inf, None, tol, groups_out, sign_mismatches=mismatches,
                       reason=f"the solved element is singular ({e})")
    mapped = candidate.apply(ref)
    per_param = parameter_distance(mapped, cl)
    residual = max(per_param.values(), default=0.0)
    solved = {g.name: (g, e) for g, e in candidate.items}
    groups_out = [GroupFit(gf.name, gf.family, gf.kind, gf.width, solved[gf.name][0].kappa(solved[gf.name][1]),
                           gf.side, gf.conditioning, _group_residual(solved[gf.name][0], mapped, cl), gf.note)
                  for gf in groups_out]
    ok = residual <= tol
    kappa = candidate.kappa_T(list(ref)) if ok else None
    reason = "" if ok else (f"residual {residual:.3e} > rtol {tol:.3e} (worst parameter "
                            f"{max(per_param, key=per_param.get)!r})")
    return FPLRFit(candidate if ok else None, candidate, residual, kappa, tol, groups_out, per_param,
                   mismatches, reason)


def _group_residual(g: TorchSymmetry, mapped: Mapping[str, torch.Tensor], cl: Mapping[str, torch.Tensor]) -> float:
    worst = 0.0
    for s in g.slots:
        a, b = slot_block(mapped[s.param], s, g.width), slot_block(cl[s.param], s, g.width)
        nb = float(b.norm())
        d = float((a - b).norm())
        worst = max(worst, d / nb if nb > 0 else d)
    return worst


__all__ = ["ArchitectureMismatchError", "FPLRFit", "GroupFit", "architecture_signature", "check_same_architecture",
           "default_rtol", "float64_parameters", "infer_reparameterization", "parameter_distance", "slot_block",
           "unit_roundoff"]
