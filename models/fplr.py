"""Is a claimed model an FPLR of a reference? Solve for T in the symmetry groups and check it.

Given reference weights theta and claimed weights theta', find T in the supported groups
(THEORY.md S1, S2, S4-S7 and the permutations; see ``symmetry``) with T theta = theta', and
accept it when

    residual = max over parameter tensors p of ||(T theta)_p - theta'_p||_F / ||theta'_p||_F
             <= rtol,   rtol = sqrt(u)   (u: unit roundoff of the coarser of the two dtypes).

Why sqrt(u): storing an exact T theta in a dtype of unit roundoff u perturbs each entry by a
relative u, and the float64 solve adds O(kappa u_64); half the digits is far above both, and
far below what any training step changes (a relative update of 1e-8 in float64, 2.4e-4 in
float32).

T is solved in stages, in the groups' composition order (``discover_symmetries`` lists
permutations before the scalings of the same units, and a decoder's norm scalings and
residual rotation before its attention and MLP groups): each stage solves its groups from
the equations no later group disturbs (``fplr_solve.usable_slots``), then applies them to the
reference, so the next stage sees the reference already carrying them. Consecutive diagonal
groups (S2 relu chains, S6, S7 norms) form one joint stage; every other group is a stage of its
own. The solvers (``fplr_solve``, ``fplr_permutation``):

* diagonal groups: joint least squares on the log-ratios of the weights, signs by majority;
* gl (S1, S5): least squares for A from the better conditioned side; rope (S4): the same fit,
  then projected onto RoPE's commutant -- a claimed QK map that does not commute with RoPE
  leaves a residual far above rtol (no T: the audit calls the model outside the class, its
  function having changed);
* orthogonal (S7 residual stream): orthogonal Procrustes on the embedding (and an untied
  lm_head's columns);
* permutation: a linear assignment on a scale-invariant similarity of the units' subspaces,
  so T = P D or P A is found and a defense that permutes units cannot hide.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from convrate.errors import InvalidInputError, SingularReparameterizationError
from convrate.models.io import LoadedModel
from convrate.models.elements import VECTOR_KINDS
from convrate.models.families import discover_symmetries, llama
from convrate.models.fplr_permutation import solve_permutation
from convrate.models.fplr_solve import slot_block, solve_diagonal, solve_general, solve_orthogonal, usable_slots
from convrate.models.symmetry import TorchReparameterization, TorchSymmetry



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


def _relative_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b||_F / ||b||_F (||a - b||_F when b = 0) in float64. Both norms are taken of the
    tensors divided by m, the largest |entry| of either (one rounding per entry), so entries
    beyond sqrt(float64 max) ~ 1e154 do not overflow the squares."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    diff = a - b
    m = max(float(diff.abs().max()), float(b.abs().max())) if b.numel() else 0.0
    if not 0 < m < math.inf:  # 0, inf or NaN: nothing to scale
        d, s = float(diff.norm()), float(b.norm())
    else:
        d, s = float((diff / m).norm()), float((b / m).norm())
        if s == 0:
            d *= m
    return d / s if s > 0 else d


def parameter_distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """name -> ||a_p - b_p||_F / ||b_p||_F (absolute when b_p = 0), computed in float64
    (``_relative_distance``)."""
    return {n: _relative_distance(a[n], y) for n, y in b.items()}


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
    ("log-ratios" for diagonal groups, "producer" / "consumer" for gl and rope, "procrustes",
    "assignment"); ``conditioning`` sigma_min / sigma_max of the solve (gl, rope, orthogonal),
    of the log-ratio system (diagonal), or the smallest matched similarity (permutation);
    ``residual`` max over its slots of
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
                "kappa_A_by_kind": self.record.kappa_A_by_kind() if self.record is not None else None,
                "groups": len(self.groups), "sign_mismatches": self.sign_mismatches, "reason": self.reason,
                "worst_parameters": [{"name": n, "residual": r} for n, r in worst],
                "group_fits": [g.to_json() for g in self.groups]}


# ---------------------------------------------------------------- public entry
def _stages(syms: Sequence[TorchSymmetry]) -> list[list[TorchSymmetry]]:
    """Consecutive diagonal groups form one stage; every other group is a stage of its own."""
    out: list[list[TorchSymmetry]] = []
    for g in syms:
        if g.element_kind in VECTOR_KINDS and out and out[-1][0].element_kind in VECTOR_KINDS:
            out[-1].append(g)
        else:
            out.append([g])
    return out


def _default_symmetries(reference: Any, claimed: Any, ref_mod: nn.Module, cl_mod: nn.Module,
                        permutations: bool) -> list[TorchSymmetry]:
    """The reference's groups, permutations included; for a decoder whose claimed model is
    folded but the reference is not, the residual rotation too (it acts after the fold)."""
    source = reference if isinstance(reference, LoadedModel) else claimed
    if isinstance(source, LoadedModel):
        syms = discover_symmetries(source, permutations=permutations)
    else:
        syms = discover_symmetries(ref_mod, input_shape=_sequential_input_shape(ref_mod), permutations=permutations)
    if llama.is_decoder(ref_mod) and llama.is_folded(cl_mod) and not any(s.kind == "residual-rotation" for s in syms):
        k = sum(1 for s in syms if s.kind == "rmsnorm")
        syms = syms[:k] + [llama.residual_rotation(ref_mod)] + syms[k:]
    return syms


def infer_reparameterization(reference: Any, claimed: Any, symmetries: Sequence[TorchSymmetry] | None = None,
                             rtol: float | None = None, permutations: bool = True) -> FPLRFit:
    """Find T in the symmetry groups with T theta_reference = theta_claimed (module doc).
    ``reference`` / ``claimed``: LoadedModel or nn.Module of the same architecture (else
    ArchitectureMismatchError); ``symmetries`` default: ``discover_symmetries`` of the
    reference, with its permutation groups unless ``permutations`` is False; ``rtol`` default
    ``default_rtol`` of the two dtypes."""
    check_same_architecture(reference, claimed)
    ref_mod, cl_mod = _module(reference), _module(claimed)
    ref_dtype, cl_dtype = next(ref_mod.parameters()).dtype, next(cl_mod.parameters()).dtype
    tol = default_rtol(ref_dtype, cl_dtype) if rtol is None else float(rtol)
    if not (math.isfinite(tol) and tol > 0):
        raise InvalidInputError(f"rtol must be a finite number > 0, got {rtol!r}")
    syms = (_default_symmetries(reference, claimed, ref_mod, cl_mod, permutations) if symmetries is None
            else list(symmetries))
    ref, cl = float64_parameters(ref_mod), float64_parameters(cl_mod)
    for n, t in list(ref.items()) + list(cl.items()):
        if not bool(torch.isfinite(t).all()):
            raise InvalidInputError(f"parameter {n!r} has non-finite (NaN/Inf) entries")

    work = dict(ref)
    items: list[tuple[TorchSymmetry, torch.Tensor]] = []
    fits: list[GroupFit] = []
    mismatches = 0
    stages = _stages(syms)
    failure = ""
    for k, stage in enumerate(stages):
        later = [g for st in stages[k + 1:] for g in st]
        kind = stage[0].element_kind
        solved: list[tuple[TorchSymmetry, torch.Tensor | None, str, float | None, str]] = []
        if kind in VECTOR_KINDS:
            elems, cond, mm = solve_diagonal(stage, work, cl, usable_slots(stage, later))
            mismatches += mm
            solved = [(g, e, "log-ratios", cond, "") for g, e in zip(stage, elems)]
        elif kind == "permutation":
            P, worst, note = solve_permutation(stage[0], work, cl, usable_slots(stage, later, same_axis=True))
            solved = [(stage[0], P, "assignment", worst, note)]
        elif kind == "orthogonal":
            solved = [(stage[0], *solve_orthogonal(stage[0], work, cl, usable_slots(stage, later)))]
        else:
            solved = [(stage[0], *solve_general(stage[0], work, cl, usable_slots(stage, later)))]
        for g, e, side, cond, note in solved:
            fits.append(GroupFit(g.name, g.family, g.kind, g.width, None, side, cond, None, note))
            if e is None:
                failure = failure or f"group {g.name} not identifiable ({note})"
                continue
            if g.element_kind == "permutation" and torch.equal(e, g.identity()):
                continue  # units in their reference order: T has no factor here (and R1 stores none)
            try:
                e = g.validate(e)
                work.update(g.apply(work, e))
            except (InvalidInputError, SingularReparameterizationError) as exc:
                failure = failure or f"the solved element of {g.name} is not in its group ({exc})"
                continue
            items.append((g, e))
        if failure:
            break
    if failure:
        return FPLRFit(None, None, math.inf, None, tol, fits, sign_mismatches=mismatches, reason=failure)
    candidate = TorchReparameterization(items, {"defense": "inferred"})
    per_param = parameter_distance(work, cl)
    residual = max(per_param.values(), default=0.0)
    solved_by_name = {g.name: (g, e) for g, e in candidate.items}
    by_name = {g.name: g for g in syms}
    fits = [GroupFit(gf.name, gf.family, gf.kind, gf.width,
                     solved_by_name[gf.name][0].kappa(solved_by_name[gf.name][1]) if gf.name in solved_by_name else 1.0,
                     gf.side, gf.conditioning, _group_residual(by_name[gf.name], work, cl),
                     gf.note if gf.name in solved_by_name else (gf.note + "; identity").lstrip("; "))
            for gf in fits]
    ok = residual <= tol
    kappa = candidate.kappa_T(list(ref)) if ok else None
    reason = "" if ok else (f"residual {residual:.3e} > rtol {tol:.3e} (worst parameter "
                            f"{max(per_param, key=per_param.get)!r})")
    return FPLRFit(candidate if ok else None, candidate, residual, kappa, tol, fits, per_param, mismatches, reason)


def _group_residual(g: TorchSymmetry, mapped: Mapping[str, torch.Tensor], cl: Mapping[str, torch.Tensor]) -> float:
    worst = 0.0
    for s in g.acting_slots:
        worst = max(worst, _relative_distance(slot_block(mapped[s.param], s, g.width), slot_block(cl[s.param], s, g.width)))
    return worst


__all__ = ["ArchitectureMismatchError", "FPLRFit", "GroupFit", "architecture_signature", "check_same_architecture",
           "default_rtol", "float64_parameters", "infer_reparameterization", "parameter_distance", "slot_block",
           "unit_roundoff"]
