"""SpecDef with an inserted compensation layer (THEORY.md section 6 "I"): the paper's construction.

For a chosen linear layer y = W x + b with W = U Sigma V^T (m x n), rank k and factor alpha > 0,
d = (alpha x k, 1 x rest) (``theory.bounds_inserted``):

* side "output" (default): the release holds W' = A W, b' = A b with A = U diag(d) U^T, followed
  by the new bias-free layer C = A^-1 = U diag(1/d) U^T (m x m): y = C (W' x + b') = W x + b;
* side "input": W' = W B, b' = b with B = V diag(d) V^T, preceded by C = B^-1 (n x n):
  y = W' (C x) + b = W x + b.

W' has the top-k singular values of W multiplied by alpha and the same singular vectors on both
sides, so the two placements release the same W'; they differ in C's width (m vs n), in the
preconditioner an attacker with C frozen sees (C C^T (x) I, left, vs I (x) C^T C, right:
statement I) and in the precision amplification (``bounds_inserted``). The bias stays with W'
so that, with C frozen, (W', b') = T (W, b) is an FPLR of the original layer (T = A (x) I on W,
A on b) and every statement of THEORY.md sections 1-4 applies with kappa(T) = kappa(C).

Layers: every ``nn.Linear`` (``layers=None``), those whose module path matches a glob pattern
(``fnmatch``; several patterns separated by commas), or the ``top`` N by sigma_1(W) -- the largest
top singular value first (ties: module order). Why sigma_1: W' has sigma_max = alpha sigma_1, and
the curvature the next layer's block must respect grows like sigma_max(W')^2 (statement W).
Linear layers whose weight is shared with another parameter (tied embeddings) are never chosen.

The construction runs in float64 on a float64 copy and the release is cast to the model's dtype.
Function preservation is measured per dtype as for the absorbed defense (``defense``: max relative
output deviation on probe inputs against the float64 original, tolerance ``PRESERVATION_TOLERANCE``
or twice the undefended model's own deviation); an alpha failing in the release dtype is refused
with the largest safe alpha found by bisection in log alpha.

Module forms of a grown layer: the zoo ``nn.Sequential`` holds Linear(W') and Linear(C) as two
adjacent entries (``arch.json`` marks C, see ``inserted_io``); any other module gets an
``InsertedLinear`` in place of the ``nn.Linear``, whose state-dict names are the Hugging Face
convention of README (``<layer>.weight``, ``<layer>.bias``, ``<layer>.convrate_inserted.weight``).
"""
from __future__ import annotations

import copy
import fnmatch
import math
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from convrate.errors import InvalidInputError, PrecisionError
from convrate.models.defense import (PRESERVATION_DTYPES, PRESERVATION_TOLERANCE, Preservation, _cast_inputs,
                                     _reference, _rel_dev)
from convrate.models.io import LoadedModel, dtype_name, model_output
from convrate.theory import bounds_inserted as bi

INSERTED_ATTR = "convrate_inserted"


class InsertedLinear(nn.Module):
    """A linear layer W' (``weight``, ``bias``) with an inserted layer C (``convrate_inserted``, an
    ``nn.Linear``): side "output" y = C (W' x + b'), side "input" y = W' (C x) + b'. Not an
    ``nn.Linear`` subclass on purpose: code that recognizes plain Linear layers (symmetry groups,
    LoRA targets) must not mistake the chain for one map."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, side: str = "output",
                 inserted_bias: bool = False, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.side = int(in_features), int(out_features), bi.check_side(side)
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features, **kw))
        self.bias = nn.Parameter(torch.empty(self.out_features, **kw)) if bias else None
        s = self.out_features if side == "output" else self.in_features
        setattr(self, INSERTED_ATTR, nn.Linear(s, s, bias=inserted_bias, **kw))

    @classmethod
    def from_factors(cls, Wp: torch.Tensor, bp: torch.Tensor | None, C: torch.Tensor, cb: torch.Tensor | None,
                     side: str, dtype: torch.dtype | None = None) -> "InsertedLinear":
        dt = dtype or Wp.dtype
        m = cls(Wp.shape[1], Wp.shape[0], bp is not None, side, cb is not None, device=Wp.device, dtype=dt)
        with torch.no_grad():
            m.weight.copy_(Wp)
            if bp is not None:
                m.bias.copy_(bp)
            m.inserted.weight.copy_(C)
            if cb is not None:
                m.inserted.bias.copy_(cb)
        return m

    @property
    def inserted(self) -> nn.Linear:
        return getattr(self, INSERTED_ATTR)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.side == "output":
            return self.inserted(F.linear(x, self.weight, self.bias))
        return F.linear(self.inserted(x), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, side={self.side}"


# ---------------------------------------------------------------- layer choice
def _tied_weights(module: nn.Module) -> set[int]:
    """ids of parameters that appear under more than one name (tied weights)."""
    seen: dict[int, int] = {}
    for _, p in module.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {k for k, v in seen.items() if v > 1}


def linear_layers(module: nn.Module) -> list[str]:
    """Module paths of the plain ``nn.Linear`` layers that may be defended (not tied, not inside
    an ``InsertedLinear``)."""
    tied = _tied_weights(module)
    inside = {f"{n}.{INSERTED_ATTR}" for n, m in module.named_modules() if isinstance(m, InsertedLinear)}
    return [n for n, m in module.named_modules()
            if isinstance(m, nn.Linear) and n not in inside and id(m.weight) not in tied]


def select_layers(module: nn.Module, layers: str | None = None, top: int | None = None) -> list[str]:
    """The layers to defend (module doc): all, a glob pattern list, or the top N by sigma_1."""
    if layers is not None and top is not None:
        raise InvalidInputError("give either a layer pattern or --top N, not both")
    names = linear_layers(module)
    if not names:
        raise InvalidInputError("the model has no nn.Linear layer that can be defended")
    if layers is not None:
        pats = [p.strip() for p in str(layers).split(",") if p.strip()]
        if not pats:
            raise InvalidInputError(f"empty layer pattern {layers!r}")
        chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in pats)]
        if not chosen:
            raise InvalidInputError(f"layer pattern {layers!r} matches no linear layer (e.g. {', '.join(names[:4])})")
        return chosen
    if top is not None:
        if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= len(names):
            raise InvalidInputError(f"--top must be an integer in [1, {len(names)}], got {top!r}")
        mods = dict(module.named_modules())
        s1 = {n: float(torch.linalg.matrix_norm(mods[n].weight.detach().to(torch.float64), ord=2)) for n in names}
        order = sorted(range(len(names)), key=lambda i: (-s1[names[i]], i))
        return [names[i] for i in sorted(order[:top])]
    return names


# ---------------------------------------------------------------- construction
@dataclass
class LayerPlan:
    """One chosen layer in float64: W (m x n), b, and the full SVD factors U (m x m), S, V (n x n)."""

    name: str
    W: torch.Tensor
    b: torch.Tensor | None
    U: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.W.shape)  # type: ignore[return-value]

    def factors(self, k: int, alpha: float, side: str) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(W', b', C) in float64 (module doc)."""
        m, n = self.shape
        bi.check_rank(k, m, n)
        s = bi.side_width(side, m, n)
        d = torch.tensor([float(x) for x in bi.deformation(k, float(alpha), s)], dtype=torch.float64)
        Q = self.U if side == "output" else self.V
        M, Minv = Q @ torch.diag(d) @ Q.T, Q @ torch.diag(1 / d) @ Q.T
        if side == "output":
            return M @ self.W, (M @ self.b if self.b is not None else None), Minv
        return self.W @ M, self.b, Minv


def plan_layers(module: nn.Module, names: Sequence[str]) -> list[LayerPlan]:
    mods = dict(module.named_modules())
    out = []
    for n in names:
        lin = mods[n]
        W = lin.weight.detach().to(torch.float64).cpu()
        if not bool(torch.isfinite(W).all()) or (lin.bias is not None and not bool(torch.isfinite(lin.bias).all())):
            raise InvalidInputError(f"layer {n!r} has non-finite (NaN/Inf) weights")
        U, S, Vh = torch.linalg.svd(W, full_matrices=True)
        b = lin.bias.detach().to(torch.float64).cpu() if lin.bias is not None else None
        out.append(LayerPlan(n, W, b, U, S, Vh.T))
    return out


@dataclass
class InsertedLayer:
    """What was inserted at one layer: its name, shape (m, n), side, k, alpha, sigma_1, kappa(C),
    the precision amplification rho = ||C||_2 ||W'||_2 / ||W||_2 and the parameters added."""

    name: str
    shape: tuple[int, int]
    side: str
    k: int
    alpha: float
    sigma_1: float
    kappa_C: float
    amplification: float
    inserted_parameters: int

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "shape": list(self.shape)}


def _set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def grow(model: LoadedModel, plans: Sequence[LayerPlan], k: int, alpha: float, side: str,
         dtype: torch.dtype | None = None) -> tuple[LoadedModel, list[InsertedLayer]]:
    """The grown model (a new module, ``model`` untouched) in ``dtype`` (default the model's) and
    what was inserted. Zoo ``nn.Sequential``: C becomes its own entry next to W' (arch marked);
    any other module: ``InsertedLinear`` in place of the Linear."""
    from convrate.models.inserted_io import zoo_grown_arch

    dt = dtype or model.dtype
    facts = {p.name: p.factors(k, alpha, side) for p in plans}
    info = []
    for p in plans:
        Wp, _, C = facts[p.name]
        sv = torch.linalg.svdvals(C)
        wp2 = float(torch.linalg.matrix_norm(Wp, ord=2))
        info.append(InsertedLayer(p.name, p.shape, side, k, float(alpha), float(p.S[0]), float(sv[0] / sv[-1]),
                                  float(sv[0]) * wp2 / float(p.S[0]) if float(p.S[0]) > 0 else math.inf,
                                  C.numel()))
    if model.fmt == "zoo" and isinstance(model.module, nn.Sequential):
        mods: list[nn.Module] = []
        for i, m in enumerate(model.module):
            if str(i) not in facts:
                mods.append(copy.deepcopy(m).to(dt))
                continue
            Wp, bp, C = facts[str(i)]
            main = nn.Linear(Wp.shape[1], Wp.shape[0], bias=bp is not None, dtype=dt)
            comp = nn.Linear(C.shape[0], C.shape[0], bias=False, dtype=dt)
            with torch.no_grad():
                main.weight.copy_(Wp)
                if bp is not None:
                    main.bias.copy_(bp)
                comp.weight.copy_(C)
            mods += [main, comp] if side == "output" else [comp, main]
        grown = nn.Sequential(*mods).eval()
        arch = zoo_grown_arch(model.config, {int(n): i for n, i in zip(facts, info)}, dtype_name(dt))
        return replace(model, module=grown, config=arch, source=None,
                       info={**model.info, "inserted": [i.to_json() for i in info]}), info
    grown = copy.deepcopy(model.module).to(dt)
    for n, (Wp, bp, C) in facts.items():
        _set_module(grown, n, InsertedLinear.from_factors(Wp, bp, C, None, side, dt))
    grown.eval()
    return replace(model, module=grown, source=None, info={**model.info, "inserted": [i.to_json() for i in info]}), info


# ---------------------------------------------------------------- preservation
def preservation(module: nn.Module, original: nn.Module, probes: Any, ref64: torch.Tensor, dtype: torch.dtype,
                 tol: dict[torch.dtype, float]) -> Preservation:
    """``defense.Preservation`` of ``module`` (any form) cast to ``dtype`` against ref64 (the
    original in float64); baseline: ``original`` cast to ``dtype``."""
    x = _cast_inputs(probes, dtype)
    with torch.no_grad():
        m = copy.deepcopy(module).to(dtype)
        finite = all(bool(torch.isfinite(p).all()) for p in m.parameters())
        dev = _rel_dev(model_output(m, x), ref64) if finite else math.inf
        base = _rel_dev(model_output(copy.deepcopy(original).to(dtype), x), ref64)
    return Preservation(dtype_name(dtype), dev, base, max(tol[dtype], 2 * base if math.isfinite(base) else 0.0))


@dataclass
class InsertedResult:
    """The grown release, what was inserted, preservation per dtype and the release dtype."""

    model: LoadedModel
    layers: list[InsertedLayer]
    preservation: dict[str, Preservation]
    release_dtype: str
    describe: dict[str, Any] = field(default_factory=dict)

    @property
    def inserted_parameters(self) -> int:
        return sum(i.inserted_parameters for i in self.layers)

    def save(self, out_dir: Any) -> Any:
        """Write the release (``io.save_model``: zoo arch.json with the inserted entries, or the HF
        directory with ``convrate_inserted.json``)."""
        from convrate.models.io import save_model

        return save_model(self.model, out_dir)


class InsertedSpecDef:
    """SpecDef in the inserted form: rank k, factor alpha, side, and the layer choice (module doc)."""

    name = "specdef-inserted"

    def __init__(self, k: int, alpha: float, *, layers: str | None = None, top: int | None = None,
                 side: str = "output") -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}")
        self.k, self.alpha = k, float(bi.check_alpha(alpha))
        self.layers, self.top, self.side = layers, top, bi.check_side(side)

    def describe(self) -> dict[str, Any]:
        return {"defense": self.name, "k": self.k, "alpha": self.alpha, "side": self.side, "layers": self.layers,
                "top": self.top}

    def plan(self, model: LoadedModel) -> list[LayerPlan]:
        """The chosen layers in float64 (checks k against each)."""
        from convrate.models.chains import find_chains

        if find_chains(model):
            raise InvalidInputError("the model already has inserted layers; merge them first")
        plans = plan_layers(model.module, select_layers(model.module, self.layers, self.top))
        for p in plans:
            m, n = p.shape
            if self.k > min(m, n):
                raise InvalidInputError(f"k = {self.k} is out of range for layer {p.name!r} of shape {m}x{n} "
                                        f"(at most {min(m, n)})")
        return plans

    def apply(self, model: LoadedModel, *, probes: Any = None, dtypes: Sequence[torch.dtype] = PRESERVATION_DTYPES,
              tolerance: dict[torch.dtype, float] | None = None, check: bool = True) -> InsertedResult:
        """Grow ``model`` (untouched) and measure preservation per dtype; with ``check`` refuse an
        alpha failing in the release dtype (PrecisionError naming the largest safe alpha)."""
        plans = self.plan(model)
        tol = {**PRESERVATION_TOLERANCE, **(tolerance or {})}
        probes = model.probe_inputs() if probes is None else probes
        ref64 = _reference(model, probes)
        grown64, _ = grow(model, plans, self.k, self.alpha, self.side, torch.float64)
        release = model.dtype
        report = {dtype_name(d): preservation(grown64.module, model.module, probes, ref64, d, tol)
                  for d in dict.fromkeys([*dtypes, release])}
        rel = report[dtype_name(release)]
        if check and not rel.ok:
            safe = largest_safe_alpha(model, plans, self.k, self.side, release, self.alpha, probes, ref64, tol)
            why = "overflow / non-finite output" if not math.isfinite(rel.deviation) else \
                f"deviation {rel.deviation:.2e} > tolerance {rel.tolerance:.2e}"
            raise PrecisionError(f"inserted SpecDef alpha={self.alpha:g} breaks function preservation in "
                                 f"{dtype_name(release)} ({why}); largest safe alpha for {dtype_name(release)} is "
                                 f"about {safe:.4g}")
        grown, info = grow(model, plans, self.k, self.alpha, self.side)
        grown = replace(grown, info={**grown.info, "defense": self.describe()})
        return InsertedResult(grown, info, report, dtype_name(release), self.describe())


def largest_safe_alpha(model: LoadedModel, plans: Sequence[LayerPlan], k: int, side: str, dtype: torch.dtype,
                       alpha_max: float, probes: Any = None, ref64: torch.Tensor | None = None,
                       tol: dict[torch.dtype, float] | None = None, ratio: float = 1.05) -> float:
    """Largest alpha in [1, alpha_max] (to a factor ``ratio``, bisection in log alpha) whose grown
    model keeps function preservation in ``dtype``; 1.0 when none above 1 passes (assumes the
    deviation grows with alpha, as rho = alpha predicts for k < s)."""
    tol = {**PRESERVATION_TOLERANCE, **(tol or {})}
    probes = model.probe_inputs() if probes is None else probes
    ref64 = _reference(model, probes) if ref64 is None else ref64

    def ok(a: float) -> bool:
        g, _ = grow(model, plans, k, a, side, torch.float64)
        return preservation(g.module, model.module, probes, ref64, dtype, tol).ok

    lo, hi = 1.0, max(float(alpha_max), 1.0)
    if ok(hi):
        return hi
    for _ in range(80):
        if hi / lo <= ratio:
            break
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


__all__ = ["INSERTED_ATTR", "InsertedLayer", "InsertedLinear", "InsertedResult", "InsertedSpecDef", "LayerPlan",
           "grow", "largest_safe_alpha", "linear_layers", "plan_layers", "preservation", "select_layers"]
