"""Symmetries of torch models (THEORY.md S1, S2, S4-S7): the group action on named parameters, T as a record.

A ``TorchSymmetry`` is one group acting on slices of named parameters. Its elements have an
``element`` kind (``convrate.models.elements``: positive-diagonal, diagonal, gl, rope,
orthogonal, permutation; S1 groups default to gl, S2 to positive-diagonal). Every slice
("slot") is a block of r (or r * repeat) consecutive indices along one axis of one tensor, on
which an element A acts as

    op "A":      X_s -> A X_s        (rows of the producing map W_a, its bias b_a)
    op "A_invT": X_s -> A^-T X_s     (the compensating side, e.g. W_b A^-1 acts on the
                                      columns of W_b as A^-T on the moved axis)
    op "unit":   X_s unchanged by the linear map; the group preserves the function only where
                 X_s is all ones (its domain: the residual-stream rotation of S7 needs RMSNorm
                 weights 1). ``check_domain`` tests it; ``apply_to_module`` calls it, while
                 ``apply`` is the linear map T itself (applied to gradients, steps, ...)

with X_s the slice moved to the front and reshaped to (r, -1) (``repeat`` consecutive
indices per group coordinate: the channel -> feature expansion at a flatten, or a whole
attention head when heads are permuted). So T restricted to a slot is A (x) I or A^-T (x) I
up to a permutation. The architecture families that produce such groups live in
``convrate.models.families``.
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from convrate.errors import InvalidInputError
from convrate.models import elements

OPS = ("A", "A_invT", "unit")
#: dense singular values of T on one axis are computed up to this axis length
DENSE_AXIS_LIMIT = 4096


@dataclass(frozen=True)
class Slot:
    """``param``[start:stop] along ``axis`` (``repeat`` consecutive indices per group
    coordinate) is multiplied by A (op "A"), by A^-T (op "A_invT"), or must be all ones
    (op "unit", the domain of the group)."""

    param: str
    axis: int
    start: int
    stop: int
    op: str
    repeat: int = 1


@dataclass(frozen=True)
class TorchSymmetry:
    """One group acting on named parameter slices: ``family`` (THEORY.md: S1, S2, S4, S5, S6,
    S7, or P for permutations), ``kind`` (the structure, e.g. "attention-qk", "rope-qk"),
    ``width`` r, ``slots``; ``element`` the element kind ("" = the family's default);
    ``structure`` the rotary frequencies of a rope group (radians per position, one per pair)."""

    family: str
    kind: str
    name: str
    width: int
    slots: tuple[Slot, ...]
    layer: int | None = None
    head: int | None = None
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    element: str = ""
    structure: tuple[float, ...] = ()

    @property
    def element_kind(self) -> str:
        return self.element or elements.default_kind(self.family)

    @property
    def params(self) -> tuple[str, ...]:
        """The parameters the group changes (its "A" and "A_invT" slots)."""
        return tuple(dict.fromkeys(s.param for s in self.acting_slots))

    @property
    def domain_params(self) -> tuple[str, ...]:
        """The parameters its domain constrains ("unit" slots), which it does not change."""
        return tuple(dict.fromkeys(s.param for s in self.slots if s.op == "unit"))

    @property
    def acting_slots(self) -> tuple[Slot, ...]:
        """The slots an element changes (op "A" or "A_invT")."""
        return tuple(s for s in self.slots if s.op != "unit")

    def identity(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return elements.identity(self.element_kind, self.width).to(dtype)

    def validate(self, element: torch.Tensor) -> torch.Tensor:
        """Check that an element belongs to the group (``elements.validate``); float64."""
        return elements.validate(self.element_kind, self.width, element, self.name, self.structure)

    def inverse(self, element: torch.Tensor) -> torch.Tensor:
        return elements.inverse(self.element_kind, self.validate(element))

    def transpose(self, element: torch.Tensor) -> torch.Tensor:
        return elements.transpose(self.element_kind, self.validate(element))

    def singular_values(self, element: torch.Tensor) -> torch.Tensor:
        return elements.singular_values(self.element_kind, self.validate(element))

    def kappa(self, element: torch.Tensor) -> float:
        """kappa(A) = sigma_max(A) / sigma_min(A) (1 for orthogonal and permutation elements)."""
        return elements.kappa(self.element_kind, self.validate(element))

    def extra_parameters(self) -> int:
        """R1: numbers stored in the frozen A and A^-1 layers that undo this group: 2 r^2 for
        dense kinds (S1: ``theory.bounds.recovery_extra_parameters``), 2 r for diagonal ones
        and for a permutation (two index vectors)."""
        return 2 * elements.stored_numbers(self.element_kind, self.width)

    def apply(self, params: Mapping[str, torch.Tensor], element: torch.Tensor) -> dict[str, torch.Tensor]:
        """New tensors for the parameters this group changes (computed in float64, returned in
        each parameter's dtype); other names are not included ("unit" slots need not be given)."""
        e = self.validate(element)
        out: dict[str, torch.Tensor] = {}
        for s in self.acting_slots:
            if s.param not in params:
                raise InvalidInputError(f"{self.name}: parameter {s.param!r} missing")
            X = out.get(s.param, params[s.param])
            out[s.param] = _act(X, s, e, self.width, self.element_kind, self.name)
        return out

    def check_domain(self, params: Mapping[str, torch.Tensor]) -> None:
        """InvalidInputError unless every "unit" slot of ``params`` is 1 within UNIT_ALLOWANCE
        (a NaN or infinite entry is not)."""
        for s in self.slots:
            if s.op != "unit":
                continue
            V = params[s.param].detach().movedim(s.axis, 0)[s.start:s.stop].to(torch.float64)
            dev = float((V - 1).abs().max()) if V.numel() else 0.0
            if not dev <= UNIT_ALLOWANCE:  # NaN (a non-finite weight) is outside the domain too
                raise InvalidInputError(f"{self.name}: preserves the function only where {s.param} is all ones "
                                        f"(fold the RMSNorm weights first); max |{s.param} - 1| = {dev:.3e}")

    def apply_param(self, name: str, X: torch.Tensor, element: torch.Tensor) -> torch.Tensor:
        """The action on one parameter tensor (all of this group's slots on it)."""
        e = self.validate(element)
        for s in self.slots:
            if s.param == name:
                X = _act(X, s, e, self.width, self.element_kind, self.name)
        return X

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "slots": [asdict(s) for s in self.slots],
                "shapes": {n: list(sh) for n, sh in self.shapes}, "structure": list(self.structure)}

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "TorchSymmetry":
        return TorchSymmetry(d["family"], d["kind"], d["name"], int(d["width"]),
                             tuple(Slot(**s) for s in d["slots"]), d.get("layer"), d.get("head"),
                             tuple((n, tuple(sh)) for n, sh in d.get("shapes", {}).items()),
                             d.get("element", ""), tuple(float(w) for w in d.get("structure", ())))


#: |x - 1| allowed on a "unit" slot: a float64 fold gamma_i c_i (c_i = 1 / gamma_i, possibly
#: through a log / exp solve) is 1 within a few u_64; in a coarser dtype the folded weight
#: rounds to exactly 1, and every other value of that dtype is farther from 1 than this.
UNIT_ALLOWANCE = 16 * 2.0 ** -53


def _act(X: torch.Tensor, s: Slot, e: torch.Tensor, r: int, kind: str, name: str = "") -> torch.Tensor:
    """Apply A (op "A") or A^-T (op "A_invT") to the slot of X, in float64 ("unit": unchanged)."""
    if s.op not in OPS:
        raise InvalidInputError(f"{name}: unknown slot op {s.op!r}")
    if s.op == "unit":
        return X
    if X.movedim(s.axis, 0)[s.start:s.stop].shape[0] != r * s.repeat:
        raise InvalidInputError(f"slot {s.param}[{s.start}:{s.stop}] does not have {r} x {s.repeat} entries")
    dtype, dev = X.dtype, X.device
    Y = X.detach().to(torch.float64).clone()
    V = Y.movedim(s.axis, 0)
    blk = V[s.start:s.stop]
    M = elements.act(blk.reshape(r, -1), e.to(dev), kind, s.op)
    V[s.start:s.stop] = M.reshape(blk.shape)
    return Y.to(dtype)


# ---------------------------------------------------------------- the record T
@dataclass
class TorchReparameterization:
    """T = the composition of (symmetry, element) pairs, applied in list order (the first item
    acts first); ``meta`` says which defense made it. Groups on disjoint slices or on different
    axes of a tensor commute; a permutation followed by a scaling of the same units is the
    S2 element P D written as two items."""

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
        """T^T = T_1^T ... T_k^T: each item's element transposed, in reverse order."""
        return TorchReparameterization([(s, s.transpose(e)) for s, e in reversed(self.items)],
                                       {**self.meta, "transpose_of": self.meta.get("defense", "T")})

    def apply_to_module(self, module: nn.Module) -> nn.Module:
        """A deep copy of ``module`` with parameters T theta (the input is not modified); each
        group's domain is checked on the weights it receives (``check_domain``)."""
        new = copy.deepcopy(module)
        named = dict(new.named_parameters())
        needed = list(dict.fromkeys(self.param_names + [n for s, _ in self.items for n in s.domain_params]))
        missing = [n for n in needed if n not in named]
        if missing:
            raise InvalidInputError(f"reparameterization acts on parameters absent from the model: {missing[:3]}")
        updated: dict[str, torch.Tensor] = {n: named[n] for n in needed}
        for s, e in self.items:
            s.check_domain(updated)
            updated.update(s.apply(updated, e))
        with torch.no_grad():
            for n in self.param_names:
                named[n].copy_(updated[n])
        return new

    def kappa_A(self) -> float:
        """max over groups of kappa(A) (1 for the identity / an empty record)."""
        return max((s.kappa(e) for s, e in self.items), default=1.0)

    def kappa_A_by_kind(self) -> dict[str, float]:
        """Group kind -> max kappa(A) over the groups of that kind (first-seen order). kappa(T)
        can exceed every entry: groups acting on the rows and on the columns of one tensor
        multiply there (e.g. RMSNorm's c on the columns of q_proj, RoPE-QK's A on its rows)."""
        out: dict[str, float] = {}
        for s, e in self.items:
            out[s.kind] = max(out.get(s.kind, 1.0), s.kappa(e))
        return out

    def singular_value_range(self, space: Iterable[str] | None = None) -> tuple[float, float]:
        """(sigma_min(T), sigma_max(T)) of T on the parameters ``space`` (default: those it
        touches; untouched names add the singular value 1). On one tensor every slot acts along
        one axis, and actions along different axes commute, so T there is the Kronecker
        product of one operator per axis and its extreme singular values are the products of
        the axes' extremes. Per axis (``_axis_singular_values``): orthogonal and permutation
        factors at either end of the chain are dropped (sigma(Q X) = sigma(X Q) = sigma(X));
        a chain of monomial factors (diagonal, permutation) has sigma = |chain applied to
        ones|; factors on disjoint blocks contribute sigma(A) per "A" slot, 1/sigma(A) per
        "A_invT" slot and 1 where no slot reaches; anything else is formed densely."""
        touched: dict[str, list[tuple[TorchSymmetry, torch.Tensor, Slot]]] = {}
        for s, e in self.items:
            for sl in s.acting_slots:
                touched.setdefault(sl.param, []).append((s, e, sl))
        lo, hi = math.inf, 0.0
        for n, chain in touched.items():
            shape = _param_shape(n, [s for s, _, _ in chain])
            plo = phi = 1.0
            for axis in sorted({sl.axis for _, _, sl in chain}):
                vals = _axis_singular_values(n, shape[axis], [c for c in chain if c[2].axis == axis])
                plo, phi = plo * float(vals.min()), phi * float(vals.max())
            lo, hi = min(lo, plo), max(hi, phi)
        if space is not None and set(space) - set(touched) or not touched:
            lo, hi = min(lo, 1.0), max(hi, 1.0)
        return lo, hi

    def kappa_T(self, space: Iterable[str] | None = None) -> float:
        """sigma_max(T) / sigma_min(T); inf when sigma_min underflows to 0 (beyond float64)."""
        lo, hi = self.singular_value_range(space)
        return hi / lo if lo > 0 else math.inf

    def extra_parameters(self) -> int:
        """R1: sum over groups of their frozen-layer numbers (``TorchSymmetry.extra_parameters``)."""
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


def _axis_singular_values(name: str, size: int, chain: Sequence[tuple[TorchSymmetry, torch.Tensor, Slot]]
                          ) -> torch.Tensor:
    """Singular values of the operator a record applies along one axis of one tensor (the
    slots ``chain`` in record order); see ``TorchReparameterization.singular_value_range``."""
    chain = list(chain)
    norm_preserving = ("orthogonal", "permutation")
    while chain and chain[0][0].element_kind in norm_preserving:
        chain.pop(0)
    while chain and chain[-1][0].element_kind in norm_preserving:
        chain.pop()
    if not chain:
        return torch.ones(1, dtype=torch.float64)
    if all(elements.is_monomial(s.element_kind) for s, _, _ in chain):
        v = torch.ones(size, dtype=torch.float64)
        for s, e, sl in chain:
            v = _act(v, replace(sl, axis=0), e, s.width, s.element_kind, s.name)
        return v.abs()
    spans = sorted((sl.start, sl.stop) for _, _, sl in chain)
    if all(b[0] >= a[1] for a, b in zip(spans, spans[1:])):
        vals = []
        for s, e, sl in chain:
            sv = elements.singular_values(s.element_kind, e).repeat_interleave(sl.repeat)
            vals.append(sv if sl.op == "A" else 1.0 / sv)
        if sum(b - a for a, b in spans) < size:
            vals.append(torch.ones(1, dtype=torch.float64))
        return torch.cat(vals)
    if size > DENSE_AXIS_LIMIT:
        raise InvalidInputError(f"parameter {name}: overlapping groups on an axis of length {size} > "
                                f"{DENSE_AXIS_LIMIT}; sigma(T) not available")
    M = torch.eye(size, dtype=torch.float64)
    for s, e, sl in chain:
        M = _act(M, replace(sl, axis=0), e, s.width, s.element_kind, s.name)
    return torch.linalg.svdvals(M)


def _param_shape(name: str, groups: Sequence[TorchSymmetry]) -> tuple[int, ...]:
    for s in groups:
        shapes = dict(s.shapes)
        if name in shapes:
            return shapes[name]
    raise InvalidInputError(f"the record does not know the shape of parameter {name!r}")


def record_shapes(sym: TorchSymmetry, named: Mapping[str, torch.Tensor]) -> TorchSymmetry:
    """``sym`` with the shapes of the parameters it touches recorded (needed for sigma(T))."""
    names = dict.fromkeys(s.param for s in sym.slots)
    return replace(sym, shapes=tuple((n, tuple(named[n].shape)) for n in names))


def describe(syms: Sequence[TorchSymmetry]) -> list[str]:
    """One line per group: family, kind, element kind, name, width, parameters touched."""
    return [f"{s.family:<2} {s.kind:<17} {s.element_kind:<17} {s.name:<22} r={s.width:<4} "
            f"params={', '.join(s.params)}" for s in syms]


def random_element(sym: TorchSymmetry, gen: torch.Generator, log_scale: float = 1.0) -> torch.Tensor:
    """A random element of the group (``elements.random``): S2 exp(log_scale * N(0,1)) per
    unit; S1 exp(log_scale * M) for M with N(0, 1/r) entries (invertible, det = exp(tr));
    rope, orthogonal, permutation and signed diagonal elements likewise."""
    return elements.random(sym.element_kind, sym.width, gen, log_scale, sym.structure)
