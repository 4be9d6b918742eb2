"""Defenses: produce a function-preserving reparameterization T of a model and release T theta.

* ``SpecDef(K, profile)`` (THEORY.md "SpecDef"): dense (gl) groups (attention heads, S1 and
  S5) get A = U diag(s) U^T with U the left singular vectors of the head's W_Q (QK group) or
  W_V (VO group) slice, s_1 on the top singular direction; diagonal groups (S2 ReLU units, S6
  SwiGLU units, S7 RMSNorm coordinates) get D = diag(s) with s_1 on the unit of largest
  incoming norm ||(W_a[i], b_a[i])||; RoPE groups (S4) get a real scale s_j per rotary pair
  (A = s_j I on the pair: RoPE's commutant contains no other diagonal), s_1 on the pair of
  largest query-row norm. Orthogonal (S7 residual rotation) and permutation groups have
  kappa = 1 whatever the element: they get the identity.
  Profiles from ``theory.bounds``: "geometric" s_i = K^(1/2 - (i-1)/(r-1)) and "spike"
  s_1 = K^((r-1)/r), s_i = K^(-1/r); both have kappa = K and det = 1.
* ``DiagonalScaling(K, seed)``: the geometric profile on the coordinate axes in a seeded
  random order (A diagonal for dense groups too; per rotary pair for RoPE groups), blind to
  the weights.
* ``Identity()``: T = I, the undefended baseline (K = 1).

After building T the defense measures function preservation on probe inputs for each dtype
(fp64, fp32, bf16, fp16): with f_ref the undefended model evaluated in float64,

    deviation(dtype) = max |f(x; (T theta)_dtype) - f_ref(x)| / max |f_ref(x)|,
    baseline(dtype)  = max |f(x; theta_dtype) - f_ref(x)| / max |f_ref(x)|,

((T theta) computed in float64, then rounded to dtype) and accepts when
deviation <= max(PRESERVATION_TOLERANCE[dtype], 2 baseline(dtype)) and everything is
finite. A strength failing this in the release dtype (the model's own) is refused with a
PrecisionError naming the largest safe K found by bisection in log K.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from convrate.errors import InvalidInputError, PrecisionError
from convrate.models.elements import VECTOR_KINDS
from convrate.models.io import LoadedModel, dtype_name, model_output, save_model
from convrate.models.symmetry import TorchReparameterization, TorchSymmetry
from convrate.models.families import discover_symmetries
from convrate.theory.bounds import specdef_geometric_profile, specdef_spike_profile

PRESERVATION_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
#: stated tolerance on the max relative output deviation, per dtype (or twice the
#: undefended model's own deviation in that dtype, whichever is larger)
PRESERVATION_TOLERANCE = {torch.float64: 1e-8, torch.float32: 1e-3, torch.bfloat16: 5e-2, torch.float16: 1e-2}
PROFILES = ("geometric", "spike")


def check_strength(K: Any) -> float:
    """K must be a finite real number > 1."""
    try:
        k = float(K)
    except (TypeError, ValueError):
        raise InvalidInputError(f"strength K must be a finite number > 1, got {K!r}") from None
    if not math.isfinite(k) or k <= 1:
        raise InvalidInputError(f"strength K must be a finite number > 1, got {K!r}")
    return k


def profile_values(K: float, r: int, profile: str) -> torch.Tensor:
    """s_1 >= ... >= s_r from ``theory.bounds`` (kappa = K, prod = 1), as float64."""
    if profile == "geometric":
        s = specdef_geometric_profile(K, r)
    elif profile == "spike":
        s = specdef_spike_profile(K, r)
    else:
        raise InvalidInputError(f"unknown SpecDef profile {profile!r} (supported: {', '.join(PROFILES)})")
    return torch.tensor([float(x) for x in s], dtype=torch.float64)


def _producer_block(sym: TorchSymmetry, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """The (r, -1) block of W_a (and b_a for S2): the group's "A" slots on axis 0."""
    blocks = []
    for s in sym.slots:
        if s.op == "A" and s.axis == 0:
            X = params[s.param].detach().to(torch.float64)
            blocks.append(X[s.start:s.stop].reshape(sym.width, -1))
            if sym.element_kind not in VECTOR_KINDS:
                break  # U from W_a alone (THEORY: left singular vectors of W_a)
    return torch.cat(blocks, dim=1)


@dataclass
class Preservation:
    """Function preservation in one dtype (see module doc)."""

    dtype: str
    deviation: float
    baseline: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return math.isfinite(self.deviation) and self.deviation <= self.tolerance


@dataclass
class DefenseResult:
    """The defended model (a new module), the secret record T, and preservation per dtype."""

    model: LoadedModel
    record: TorchReparameterization
    preservation: dict[str, Preservation]
    release_dtype: str

    def save(self, out_dir: str | Path, record_dir: str | Path | None = None) -> tuple[Path, Path]:
        """Write the defended checkpoint to ``out_dir`` and the record (R1) to ``record_dir``
        (default ``out_dir``/../<name>-reparameterization, never inside the release)."""
        out = save_model(self.model, out_dir)
        rd = Path(record_dir) if record_dir is not None else out.parent / f"{out.name}-reparameterization"
        if rd.resolve() == out.resolve():
            raise InvalidInputError("the secret reparameterization record must not be written into the release directory")
        self.record.save(rd)
        return out, rd


class Defense:
    """Base: ``elements`` gives one group element per symmetry; ``apply`` builds T, the
    defended model and the preservation report."""

    name = "defense"
    K = 1.0

    def element(self, sym: TorchSymmetry, params: dict[str, torch.Tensor], index: int) -> torch.Tensor:
        raise NotImplementedError

    def with_strength(self, K: float) -> "Defense":
        new = copy.copy(self)
        new.K = check_strength(K)
        return new

    def describe(self) -> dict[str, Any]:
        return {"defense": self.name, "K": self.K}

    def reparameterization(self, model: LoadedModel, symmetries: Sequence[TorchSymmetry] | None = None
                           ) -> TorchReparameterization:
        syms = list(symmetries) if symmetries is not None else discover_symmetries(model)
        params = dict(model.module.named_parameters())
        items = [(s, self.element(s, params, i)) for i, s in enumerate(syms)]
        return TorchReparameterization(items, self.describe())

    def apply(self, model: LoadedModel, *, symmetries: Sequence[TorchSymmetry] | None = None,
              probes: Any = None, dtypes: Sequence[torch.dtype] = PRESERVATION_DTYPES,
              tolerance: dict[torch.dtype, float] | None = None, check: bool = True) -> DefenseResult:
        """Defend ``model`` (untouched) and verify function preservation; with ``check``
        refuse a strength that fails in the release dtype (PrecisionError naming the
        largest safe K)."""
        syms = list(symmetries) if symmetries is not None else discover_symmetries(model)
        release = model.dtype
        tol = {**PRESERVATION_TOLERANCE, **(tolerance or {})}
        probes = model.probe_inputs() if probes is None else probes
        ref64 = _reference(model, probes)
        record = self.reparameterization(model, syms)
        report = {dtype_name(d): _preservation(model, record, probes, ref64, d, tol) for d in
                  dict.fromkeys([*dtypes, release])}
        rel = report[dtype_name(release)]
        if check and not rel.ok:
            safe = self.largest_safe_strength(model, syms, probes, ref64, release, tol)
            why = "overflow / non-finite output" if not math.isfinite(rel.deviation) else \
                f"deviation {rel.deviation:.2e} > tolerance {rel.tolerance:.2e}"
            raise PrecisionError(
                f"{self.name} strength K={self.K:g} breaks function preservation in {dtype_name(release)} "
                f"({why}); largest safe K for {dtype_name(release)} is about {safe:.4g}")
        defended = record.apply_to_module(model.module)
        out = model.with_module(defended, defense=self.describe())
        return DefenseResult(out, record, report, dtype_name(release))

    def largest_safe_strength(self, model: LoadedModel, syms: Sequence[TorchSymmetry], probes: Any,
                              ref64: torch.Tensor, dtype: torch.dtype, tol: dict[torch.dtype, float],
                              ratio: float = 1.01) -> float:
        """Largest K (to a factor ``ratio``) with preservation ok in ``dtype``, by bisection in
        log K on [1, self.K] (assumes the deviation grows with K, as u kappa(A) predicts)."""
        lo, hi = 1.0, self.K
        for _ in range(60):
            if hi / lo <= ratio:
                break
            mid = math.sqrt(lo * hi)
            if mid <= 1.0:
                break
            rec = self.with_strength(mid).reparameterization(model, syms)
            if _preservation(model, rec, probes, ref64, dtype, tol).ok:
                lo = mid
            else:
                hi = mid
        return lo


def largest_safe_strengths(defense: "Defense", model: LoadedModel, K_max: float = 1e12,
                           dtypes: Sequence[torch.dtype] = PRESERVATION_DTYPES, probes: Any = None,
                           tolerance: dict[torch.dtype, float] | None = None) -> dict[str, dict[str, Any]]:
    """Per dtype: the largest K in [1, K_max] (to 1 %, bisection in log K) at which
    ``defense`` keeps function preservation (module doc), with the deviation at K_max.
    K = 1 means no strength above 1 passes. Probes default to ``model.probe_inputs()``."""
    syms = discover_symmetries(model)
    probes = model.probe_inputs() if probes is None else probes
    ref64 = _reference(model, probes)
    tol = {**PRESERVATION_TOLERANCE, **(tolerance or {})}
    top = defense.with_strength(K_max)
    rec = top.reparameterization(model, syms)
    out = {}
    for d in dtypes:
        at_max = _preservation(model, rec, probes, ref64, d, tol)
        K = K_max if at_max.ok else top.largest_safe_strength(model, syms, probes, ref64, d, tol)
        out[dtype_name(d)] = {"safe_K": K, "tolerance": at_max.tolerance, "deviation_at_K_max": at_max.deviation,
                              "passes_at_K_max": at_max.ok}
    return out


def _reference(model: LoadedModel, probes: Any) -> torch.Tensor:
    m64 = copy.deepcopy(model.module).to(torch.float64)
    with torch.no_grad():
        return model_output(m64, _cast_inputs(probes, torch.float64)).detach()


def _cast_inputs(probes: Any, dtype: torch.dtype) -> Any:
    if isinstance(probes, torch.Tensor):
        return probes.to(dtype) if probes.is_floating_point() else probes
    return probes


def _rel_dev(out: torch.Tensor, ref: torch.Tensor) -> float:
    o = out.detach().to(torch.float64)
    if not bool(torch.isfinite(o).all()):
        return math.inf
    return float((o - ref).abs().max() / ref.abs().max().clamp_min(torch.finfo(torch.float64).tiny))


def _preservation(model: LoadedModel, record: TorchReparameterization, probes: Any, ref64: torch.Tensor,
                  dtype: torch.dtype, tol: dict[torch.dtype, float]) -> Preservation:
    x = _cast_inputs(probes, dtype)
    base_mod = copy.deepcopy(model.module).to(torch.float64)
    defended64 = record.apply_to_module(base_mod)
    with torch.no_grad():
        finite = all(bool(torch.isfinite(p.to(dtype)).all()) for p in defended64.parameters())
        dev = _rel_dev(model_output(defended64.to(dtype), x), ref64) if finite else math.inf
        base = _rel_dev(model_output(base_mod.to(dtype), x), ref64)
    return Preservation(dtype_name(dtype), dev, base, max(tol[dtype], 2 * base if math.isfinite(base) else 0.0))


def _assign(s: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The profile s_1 >= s_2 >= ... placed on the coordinates by decreasing ``weight``."""
    order = torch.argsort(weight, descending=True, stable=True)
    d = torch.empty_like(s)
    d[order] = s
    return d


def _per_pair(s: torch.Tensor) -> torch.Tensor:
    """The RoPE-commuting diag(s, s): scale s_j on both coordinates (j, j + p) of rotary pair j."""
    return torch.diag(torch.cat([s, s]))


class SpecDef(Defense):
    """SpecDef(K, profile): spectral reparameterization with kappa(A) = K per group."""

    name = "specdef"

    def __init__(self, K: Any, profile: str = "geometric") -> None:
        self.K = check_strength(K)
        if profile not in PROFILES:
            raise InvalidInputError(f"unknown SpecDef profile {profile!r} (supported: {', '.join(PROFILES)})")
        self.profile = profile

    def describe(self) -> dict[str, Any]:
        return {"defense": self.name, "K": self.K, "profile": self.profile}

    def element(self, sym: TorchSymmetry, params: dict[str, torch.Tensor], index: int) -> torch.Tensor:
        kind = sym.element_kind
        if kind in ("orthogonal", "permutation"):
            return sym.identity()
        W = _producer_block(sym, params)
        if kind == "rope":
            p = sym.width // 2
            return _per_pair(_assign(profile_values(self.K, p, self.profile), W[:p].pow(2).sum(1) + W[p:].pow(2).sum(1)))
        s = profile_values(self.K, sym.width, self.profile)
        if kind in VECTOR_KINDS:
            return _assign(s, W.norm(dim=1))
        U, _, _ = torch.linalg.svd(W, full_matrices=True)
        A = U @ torch.diag(s) @ U.T
        return 0.5 * (A + A.T)


class DiagonalScaling(Defense):
    """DiagonalScaling(K, seed): geometric profile on the coordinate axes, seeded random order."""

    name = "diagonal"

    def __init__(self, K: Any, seed: int = 0) -> None:
        self.K = check_strength(K)
        self.seed = int(seed)

    def describe(self) -> dict[str, Any]:
        return {"defense": self.name, "K": self.K, "seed": self.seed}

    def element(self, sym: TorchSymmetry, params: dict[str, torch.Tensor], index: int) -> torch.Tensor:
        kind = sym.element_kind
        if kind in ("orthogonal", "permutation"):
            return sym.identity()
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        r = sym.width // 2 if kind == "rope" else sym.width
        s = profile_values(self.K, r, "geometric")[torch.randperm(r, generator=g)]
        if kind == "rope":
            return _per_pair(s)
        return s if kind in VECTOR_KINDS else torch.diag(s)


class Identity(Defense):
    """T = I (K = 1): the undefended baseline."""

    name = "identity"

    def __init__(self) -> None:
        self.K = 1.0

    def with_strength(self, K: float) -> "Defense":
        raise InvalidInputError("the identity defense has no strength")

    def element(self, sym: TorchSymmetry, params: dict[str, torch.Tensor], index: int) -> torch.Tensor:
        return sym.identity()


def defense_by_name(name: str, K: Any = None, **kw: Any) -> Defense:
    """"specdef" | "diagonal" | "identity" -> a Defense."""
    if name == "specdef":
        return SpecDef(K, **kw)
    if name == "diagonal":
        return DiagonalScaling(K, **kw)
    if name == "identity":
        return Identity()
    raise InvalidInputError(f"unknown defense {name!r} (supported: specdef, diagonal, identity)")
