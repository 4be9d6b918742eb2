"""Symmetries of torch models (THEORY.md S1, S2): discovery, group action, T as a record.

A ``TorchSymmetry`` is one group GL(r) (S1) or positive diagonal D (S2) acting on slices of
named parameters. Every slice ("slot") is a block of r (or r * repeat) consecutive indices
along one axis of one tensor, on which an element A acts as

    op "A":      X_s -> A X_s        (rows of the producing map W_a, its bias b_a)
    op "A_invT": X_s -> A^-T X_s     (the compensating side, e.g. W_b A^-1 acts on the
                                      columns of W_b as A^-T on the moved axis)

with X_s the slice moved to the front and reshaped to (r, -1) (``repeat`` consecutive
indices per group coordinate, for the channel -> feature expansion at a flatten).
So T restricted to a slot is A (x) I or A^-T (x) I up to a permutation; for disjoint
slots the singular values of T are sigma(A) on "A" slots and 1/sigma(A) on "A_invT" slots.
The architecture families that produce such groups live in ``convrate.models.families``.
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from convrate.errors import InvalidInputError, SingularReparameterizationError
from convrate.theory.bounds import recovery_extra_parameters

@dataclass(frozen=True)
class Slot:
    """``param``[start:stop] along ``axis`` (``repeat`` consecutive indices per group
    coordinate) is multiplied by A (op "A") or A^-T (op "A_invT")."""

    param: str
    axis: int
    start: int
    stop: int
    op: str
    repeat: int = 1


@dataclass(frozen=True)
class TorchSymmetry:
    """One group acting on named parameter slices: ``family`` "S1" (GL(r)) or "S2"
    (positive diagonal), ``kind`` (see module doc), ``width`` r, ``slots``."""

    family: str
    kind: str
    name: str
    width: int
    slots: tuple[Slot, ...]
    layer: int | None = None
    head: int | None = None
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.param for s in self.slots))

    def identity(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return torch.ones(self.width, dtype=dtype) if self.family == "S2" else torch.eye(self.width, dtype=dtype)

    def validate(self, element: torch.Tensor) -> torch.Tensor:
        """Check an element: S2 a finite positive vector of length r (or a positive diagonal
        matrix), S1 a finite invertible r x r matrix. Returns it as float64."""
        e = torch.as_tensor(element).detach().to(torch.float64)
        r = self.width
        if not bool(torch.isfinite(e).all()):
            raise InvalidInputError(f"{self.name}: group element has non-finite entries")
        if self.family == "S2":
            if e.shape == (r, r):
                if bool((e - torch.diag(torch.diagonal(e))).abs().max() > 0):
                    raise InvalidInputError(f"{self.name}: S2 element must be diagonal")
                e = torch.diagonal(e).clone()
            if e.shape != (r,):
                raise InvalidInputError(f"{self.name}: S2 element must have shape ({r},), got {list(e.shape)}")
            if float(e.min()) <= 0:
                raise SingularReparameterizationError(
                    f"{self.name}: S2 element must be positive (ReLU symmetry), min entry {float(e.min())}")
            return e
        if e.shape != (r, r):
            raise InvalidInputError(f"{self.name}: S1 element must have shape ({r}, {r}), got {list(e.shape)}")
        s = torch.linalg.svdvals(e)
        if float(s[-1]) <= float(s[0]) * r * torch.finfo(torch.float64).eps:
            raise SingularReparameterizationError(
                f"{self.name}: group element is singular to float64 precision (sigma_min {float(s[-1]):.3e})")
        return e

    def inverse(self, element: torch.Tensor) -> torch.Tensor:
        e = self.validate(element)
        return 1.0 / e if e.ndim == 1 else torch.linalg.inv(e)

    def transpose(self, element: torch.Tensor) -> torch.Tensor:
        e = self.validate(element)
        return e.clone() if e.ndim == 1 else e.T.clone()

    def singular_values(self, element: torch.Tensor) -> torch.Tensor:
        e = self.validate(element)
        return e.clone() if e.ndim == 1 else torch.linalg.svdvals(e)

    def kappa(self, element: torch.Tensor) -> float:
        """kappa(A) = sigma_max(A) / sigma_min(A)."""
        s = self.singular_values(element)
        return float(s.max() / s.min())

    def extra_parameters(self) -> int:
        """R1: parameters of the frozen A, A^-1 layers needed to undo this group."""
        return recovery_extra_parameters(self.family, self.width)

    def apply(self, params: Mapping[str, torch.Tensor], element: torch.Tensor) -> dict[str, torch.Tensor]:
        """New tensors for the parameters this group touches (computed in float64, returned
        in each parameter's dtype); other names are not included."""
        e = self.validate(element)
        out: dict[str, torch.Tensor] = {}
        for s in self.slots:
            if s.param not in params:
                raise InvalidInputError(f"{self.name}: parameter {s.param!r} missing")
            X = out.get(s.param, params[s.param])
            out[s.param] = _act(X, s, e, self.width)
        return out

    def apply_param(self, name: str, X: torch.Tensor, element: torch.Tensor) -> torch.Tensor:
        """The action on one parameter tensor (all of this group's slots on it)."""
        e = self.validate(element)
        for s in self.slots:
            if s.param == name:
                X = _act(X, s, e, self.width)
        return X

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "slots": [asdict(s) for s in self.slots],
                "shapes": {n: list(sh) for n, sh in self.shapes}}

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "TorchSymmetry":
        return TorchSymmetry(d["family"], d["kind"], d["name"], int(d["width"]),
                             tuple(Slot(**s) for s in d["slots"]), d.get("layer"), d.get("head"),
                             tuple((n, tuple(sh)) for n, sh in d.get("shapes", {}).items()))


def _act(X: torch.Tensor, s: Slot, e: torch.Tensor, r: int) -> torch.Tensor:
    """Apply A (op "A") or A^-T (op "A_invT") to the slot of X, in float64."""
    dtype, dev = X.dtype, X.device
    Y = X.detach().to(torch.float64).clone()
    V = Y.movedim(s.axis, 0)
    blk = V[s.start:s.stop]
    if blk.shape[0] != r * s.repeat:
        raise InvalidInputError(f"slot {s.param}[{s.start}:{s.stop}] does not have {r} x {s.repeat} entries")
    M = blk.reshape(r, -1)
    e = e.to(dev)
    if e.ndim == 1:
        M = M * (e if s.op == "A" else 1.0 / e)[:, None]
    elif s.op == "A":
        M = e @ M
    else:
        M = torch.linalg.solve(e.T, M)
    V[s.start:s.stop] = M.reshape(blk.shape)
    return Y.to(dtype)


# ---------------------------------------------------------------- the record T
@dataclass
class TorchReparameterization:
    """T = the composition of (symmetry, element) pairs; ``meta`` says which defense made it.
    Groups act on disjoint slices (attention) or are diagonal (S2 chains), so the order
    of composition does not matter."""

    items: list[tuple[TorchSymmetry, torch.Tensor]]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.items = [(s, s.validate(e)) for s, e in self.items]

    @property
    def param_names(self) -> list[str]:
        return list(dict.fromkeys(n for s, _ in self.items for n in s.params))

    def apply(self, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """T theta for a name -> tensor mapping (untouched names passed through)."""
        out = dict(params)
        for s, e in self.items:
            out.update(s.apply(out, e))
        return out

    def inverse(self) -> "TorchReparameterization":
        return TorchReparameterization([(s, s.inverse(e)) for s, e in reversed(self.items)],
                                       {**self.meta, "inverse_of": self.meta.get("defense", "T")})

    def transpose(self) -> "TorchReparameterization":
        """T^T: each block A (x) I becomes A^T (x) I, i.e. the element A^T (groups commute)."""
        return TorchReparameterization([(s, s.transpose(e)) for s, e in reversed(self.items)],
                                       {**self.meta, "transpose_of": self.meta.get("defense", "T")})

    def apply_to_module(self, module: nn.Module) -> nn.Module:
        """A deep copy of ``module`` with parameters T theta (the input is not modified)."""
        new = copy.deepcopy(module)
        named = dict(new.named_parameters())
        missing = [n for n in self.param_names if n not in named]
        if missing:
            raise InvalidInputError(f"reparameterization acts on parameters absent from the model: {missing[:3]}")
        updated = self.apply({n: named[n] for n in self.param_names})
        with torch.no_grad():
            for n in self.param_names:
                named[n].copy_(updated[n])
        return new

    def kappa_A(self) -> float:
        """max over groups of kappa(A) (1 for the identity / an empty record)."""
        return max((s.kappa(e) for s, e in self.items), default=1.0)

    def singular_value_range(self, space: Iterable[str] | None = None) -> tuple[float, float]:
        """(sigma_min(T), sigma_max(T)) of T on the parameters ``space`` (default: those
        it touches; untouched names add the singular value 1). A parameter touched only
        by diagonal groups has T diagonal there (diagonal = T applied to ones); one touched
        by dense groups on disjoint slices of one axis contributes sigma(A) per "A" slot,
        1/sigma(A) per "A_invT" slot, and 1 where no slot reaches."""
        touched: dict[str, list[tuple[TorchSymmetry, torch.Tensor]]] = {}
        for s, e in self.items:
            for n in s.params:
                touched.setdefault(n, []).append((s, e))
        lo, hi = math.inf, 0.0
        for n, groups in touched.items():
            if all(e.ndim == 1 for _, e in groups):
                diag = torch.ones(_param_shape(n, groups), dtype=torch.float64)
                for s, e in groups:
                    diag = s.apply_param(n, diag, e)
                vals = diag.abs().flatten()
            else:
                vals = _dense_param_singular_values(n, groups)
            lo, hi = min(lo, float(vals.min())), max(hi, float(vals.max()))
        if space is not None and set(space) - set(touched) or not touched:
            lo, hi = min(lo, 1.0), max(hi, 1.0)
        return lo, hi

    def kappa_T(self, space: Iterable[str] | None = None) -> float:
        lo, hi = self.singular_value_range(space)
        return hi / lo

    def extra_parameters(self) -> int:
        """R1: sum over groups of recovery_extra_parameters(family, r)."""
        return sum(s.extra_parameters() for s, _ in self.items)

    def save(self, out_dir: str | Path, stem: str = "reparameterization") -> tuple[Path, Path]:
        """Write ``<stem>.json`` (symmetries, meta) and ``<stem>.safetensors`` (elements)."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {f"element.{i}": e.contiguous().cpu() for i, (_, e) in enumerate(self.items)}
        js = {"format": "convrate-reparameterization", "version": 1, "meta": self.meta,
              "symmetries": [s.to_json() for s, _ in self.items]}
        jp, tp = out / f"{stem}.json", out / f"{stem}.safetensors"
        save_file(tensors, str(tp), metadata={"format": "pt"})
        jp.write_text(json.dumps(js, indent=1, default=float) + "\n")
        return jp, tp

    @staticmethod
    def load(out_dir: str | Path, stem: str = "reparameterization") -> "TorchReparameterization":
        from convrate.models.io import _read_json, read_safetensors

        d = Path(out_dir)
        js = _read_json(d / f"{stem}.json")
        if js.get("format") != "convrate-reparameterization":
            raise InvalidInputError(f"{d / f'{stem}.json'}: not a convrate reparameterization record")
        tensors = read_safetensors(d / f"{stem}.safetensors")
        syms = [TorchSymmetry.from_json(s) for s in js["symmetries"]]
        if len(tensors) != len(syms):
            raise InvalidInputError(f"{d}: record lists {len(syms)} groups but holds {len(tensors)} elements")
        return TorchReparameterization([(s, tensors[f"element.{i}"]) for i, s in enumerate(syms)], js.get("meta", {}))


def _dense_param_singular_values(name: str, groups: Sequence[tuple[TorchSymmetry, torch.Tensor]]) -> torch.Tensor:
    """Singular values of T on one parameter touched by dense groups on disjoint slices of a
    common axis: sigma(A) per "A" slot, 1/sigma(A) per "A_invT" slot, 1 where untouched."""
    slots = [(sl, e) for s, e in groups for sl in s.slots if sl.param == name]
    axes = {sl.axis for sl, _ in slots}
    spans = sorted((sl.start, sl.stop) for sl, _ in slots)
    if len(axes) != 1 or any(b[0] < a[1] for a, b in zip(spans, spans[1:])):
        raise InvalidInputError(f"parameter {name} is touched by overlapping dense groups; sigma(T) not available")
    vals = []
    for sl, e in slots:
        sv = torch.linalg.svdvals(e) if e.ndim == 2 else e.abs()
        vals.append(sv if sl.op == "A" else 1.0 / sv)
    covered = sum(b - a for a, b in spans)
    if covered < _param_shape(name, groups)[axes.pop()]:
        vals.append(torch.ones(1, dtype=torch.float64))
    return torch.cat(vals)


def _param_shape(name: str, groups: Sequence[tuple[TorchSymmetry, torch.Tensor]]) -> tuple[int, ...]:
    for s, _ in groups:
        shapes = dict(s.shapes)
        if name in shapes:
            return shapes[name]
    raise InvalidInputError(f"the record does not know the shape of parameter {name!r}")


def record_shapes(sym: TorchSymmetry, named: Mapping[str, torch.Tensor]) -> TorchSymmetry:
    """``sym`` with the shapes of the parameters it touches recorded (needed for sigma(T))."""
    from dataclasses import replace

    return replace(sym, shapes=tuple((n, tuple(named[n].shape)) for n in sym.params))


def describe(syms: Sequence[TorchSymmetry]) -> list[str]:
    """One line per group: family, kind, name, width, parameters touched."""
    return [f"{s.family} {s.kind:<17} {s.name:<22} r={s.width:<4} params={', '.join(s.params)}" for s in syms]


def random_element(sym: TorchSymmetry, gen: torch.Generator, log_scale: float = 1.0) -> torch.Tensor:
    """A random element: S2 exp(log_scale * N(0,1)) per unit; S1 exp(log_scale * M) for M
    with N(0, 1/r) entries (invertible by construction, det = exp(tr))."""
    r = sym.width
    if sym.family == "S2":
        return torch.exp(log_scale * torch.randn(r, generator=gen, dtype=torch.float64))
    M = torch.randn(r, r, generator=gen, dtype=torch.float64) / math.sqrt(r)
    return torch.linalg.matrix_exp(log_scale * M)
