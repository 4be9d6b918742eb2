"""Recoveries of an attacker on torch models (THEORY.md section 4, corrected statements R1, R2).

**R1** (the attacker knows T). Train phi with theta' = T phi: ``r1_module`` returns a module
whose trainable parameters are phi, initialised to phi_0 = T^-1 theta'_0 (the undefended
weights, up to round-off), and whose forward evaluates the defended architecture at T phi
(``torch.func.functional_call``), with every group element A and its inverse A^-1 held as
frozen float64 buffers -- the inserted frozen layers of R1. By T1,

    grad_phi L'(T phi) = T^T grad L'(T phi) = T^T T^-T grad L(phi) = grad L(phi),

so every optimizer (SGD, heavy ball, Adam, AdamW, any lr or schedule) and LoRA on the Linear
layers of phi (adapters on phi: W_phi + s B A, then T) replays the undefended run: the
defense's slowdown is exactly 1 (the equivalent preconditioner is P' = T T^T). The extra
stored numbers are the buffers, 2 r^2 per S1 group and 2 r per S2 group
(``theory.bounds.recovery_extra_parameters``), at most 2 (r / min(n_in, n_out)) times the
parameters of the pair (``theory.bounds.recovery_extra_parameters_bound``).
In floating point with unit roundoff u the R1 run differs from the undefended one by
round-off only: phi_0 = T^-1 (T theta_0) and T phi carry relative errors ~ r u kappa(A) per
group, and the recovered gradient T^T (T^-T g) ~ u kappa(A) ||g|| (T^T and T^-T each applied
once in float64); nothing grows with the number of steps except through the loss landscape.

**R2** (no knowledge of T). Replace theta by the minimizer of sum ||W||_F^2 over its orbit
(corrected R2: it exists and is unique when no group is degenerate):

* S2 (positive diagonal D on the units of a ReLU layer): per unit i, with in_i = (W_a[i], b_a[i])
  (all "A" slots) and out_i = W_b[:, i] (all "A_invT" slots),
  c_i = (||out_i|| / ||in_i||)^(1/2), i.e. c_i^2 = ||out_i|| / ||(in_i, b_i)||; this is the
  exact minimization over that layer's scales, and sweeps over the layers are block coordinate
  descent on sum ||W||^2, convex in the log-scales. **Stopping rule**: after a sweep in which
  every unit's correction satisfies |log c_i| <= ``tol`` (default 1e-12, about 10^4 float64
  round-offs of a norm ratio); ``max_sweeps`` (default 2000) without that raises PrecisionError.
  ``record.meta`` keeps the last correction and the contraction rho = (last / previous sweep's
  largest correction); for a linearly convergent sweep the log-scales are then within about
  last / (1 - rho) of the minimizer (a-posteriori geometric-tail estimate).
* S1 (GL(r) per attention head): with X = [W_a | b_a] (the "A" slots, r x p, e.g.
  [W_Q | b_Q]) and Y the "A_invT" slots (r x q, transformed as A^-T Y: [W_K | b_K], or
  W_O[:, head]^T), the orbit invariant is the product M = X^T Y (QK: [W_Q|b_Q]^T [W_K|b_K];
  VO: (W_O[:, head] [W_V | b_V])^T). With M = U Sigma V^T (sigma_1 >= ... >= sigma_r) the
  canonical factors are X_c = Sigma^(1/2) U^T, Y_c = Sigma^(1/2) V^T (balanced:
  X_c X_c^T = Y_c Y_c^T = Sigma, orbit minimum 2 ||M||_*), with the sign of each pair (u_k, v_k)
  fixed so that the entry of largest magnitude of u_k is positive. This fixes the orthogonal
  freedom Q of the balanced point, so the canonical weights are the same for every defense
  strength K (to round-off) and every optimizer, Adam included, becomes K-independent, not only
  GD. Computed in r dimensions: X = U_x S_x V_x^T, Y = U_y S_y V_y^T, S_x U_x^T U_y S_y = P S R^T,
  U = V_x P, and C = S^(1/2) P^T S_x^-1 U_x^T (so C X = X_c, C^-T Y = Y_c). One pass is exact
  (the discovered S1 groups act on disjoint slices). A repeated singular value leaves a rotation
  inside its eigenspace free (GD-invariant; the weights are then not unique).

Degenerate groups (no minimizer, corrected R2) get a documented representative that is still a
function of the orbit, and are listed in ``record.meta["degenerate"]``:
* S2 unit with out_i = 0: c_i = 1 / ||in_i|| (the in side gets norm 1); with in_i = 0:
  c_i = ||out_i|| (the out side gets norm 1); both zero: c_i = 1 (the orbit is a point).
* S1 group with numerical rank k = rank(M) < r (singular values <= max(p, q) u ||X||_2 ||Y||_2,
  u the model dtype's unit roundoff, the rule of numpy.linalg.matrix_rank for the stored
  factors): the r - k degenerate directions get sigma := 1 (unit-norm rows of X_c spanning the
  part of rowspace(X) orthogonal to U); they are fixed only up to an orthogonal map of those
  directions (GD-invariant, not Adam-invariant). If X itself has rank < r the roles of X and Y
  are exchanged; if both do, InvalidInputError.
"""
from __future__ import annotations

import copy
import math
from fractions import Fraction
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from convrate.errors import InvalidInputError, PrecisionError
from convrate.models.checks import gamma
from convrate.models.io import LoadedModel
from convrate.models.symmetry import Slot, TorchReparameterization, TorchSymmetry
from convrate.models.families import discover_symmetries
from convrate.theory.bounds import recovery_extra_parameters_bound

R2_TOL = 1e-12
R2_MAX_SWEEPS = 2000


def _module(model: Any) -> nn.Module:
    m = getattr(model, "module", model)
    if not isinstance(m, nn.Module):
        raise InvalidInputError(f"expected a torch module or LoadedModel, got {type(model).__name__}")
    return m


def _require_finite(named: Mapping[str, torch.Tensor], what: str) -> None:
    for n, t in named.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise InvalidInputError(f"{what} has non-finite entries in {n!r}")


def _check_record(module: nn.Module, record: TorchReparameterization) -> None:
    if not isinstance(record, TorchReparameterization):
        raise InvalidInputError(f"expected a TorchReparameterization record, got {type(record).__name__}")
    named = dict(module.named_parameters())
    for sym, _ in record.items:
        for n, shape in sym.shapes:
            if n not in named:
                raise InvalidInputError(f"the record's group {sym.name} acts on {n!r}, absent from the model")
            if tuple(named[n].shape) != tuple(shape):
                raise InvalidInputError(f"the record's group {sym.name} expects {n!r} of shape {list(shape)}, "
                                        f"the model has {list(named[n].shape)}")


# ================================================================ R1
def _act_differentiable(X: torch.Tensor, slot: Slot, M: torch.Tensor, r: int) -> torch.Tensor:
    """The slot of X multiplied by M (r x r), scaled by M (length r, floating) or permuted by M
    (length r, integer: row i of the result is row M[i]), in float64 and cast back to X's
    dtype, through differentiable ops (``symmetry._act`` detaches)."""
    V = X.movedim(slot.axis, 0)
    blk = V[slot.start:slot.stop]
    flat = blk.reshape(r, -1).to(torch.float64)
    if not M.is_floating_point():
        new = flat[M]
    else:
        new = flat * M[:, None] if M.ndim == 1 else M @ flat
    V = torch.cat([V[:slot.start], new.reshape(blk.shape).to(X.dtype), V[slot.stop:]], dim=0)
    return V.movedim(0, slot.axis)


class R1Module(nn.Module):
    """theta' = T phi: trainable phi (``self.phi``, the architecture holding T^-1 theta'),
    forward = the defended architecture evaluated at T phi. Buffers ``A_i``, ``A_inv_i``
    (float64; a permutation as two int64 index vectors) are the frozen group elements;
    ``extra_parameters`` counts them."""

    def __init__(self, defended: nn.Module, record: TorchReparameterization) -> None:
        super().__init__()
        _check_record(defended, record)
        _require_finite(dict(defended.named_parameters()), "the defended model")
        self.phi = record.inverse().apply_to_module(defended)  # phi_0 = T^-1 theta'_0 (float64, cast);
        # deepcopy keeps each parameter's requires_grad: phi trains what the defended model trains
        self._skeleton = [copy.deepcopy(defended).to("meta")]  # not a submodule: LoRA and .to() skip it
        dev = next(defended.parameters()).device
        self._groups: list[tuple[TorchSymmetry, str, str]] = []
        for i, (sym, e) in enumerate(record.items):
            A, Ainv = e.to(dev, torch.float64).clone(), sym.inverse(e).to(dev, torch.float64)
            if sym.element_kind == "permutation":  # (P X)[i] = X[argmax P[i]]; P^-T = P
                A, Ainv = A.argmax(dim=1), Ainv.argmax(dim=1)
            self.register_buffer(f"A_{i}", A)
            self.register_buffer(f"A_inv_{i}", Ainv)
            self._groups.append((sym, f"A_{i}", f"A_inv_{i}"))
        self._names = [n for n, _ in defended.named_parameters()]
        self.record_meta = dict(record.meta)
        self.config = getattr(defended, "config", None)  # encoders: EncoderClassifier reads config

    @property
    def extra_parameters(self) -> int:
        """Numbers stored in the frozen A, A^-1 buffers (= record.extra_parameters())."""
        return sum(getattr(self, a).numel() + getattr(self, b).numel() for _, a, b in self._groups)

    def phi_parameters(self) -> dict[str, torch.Tensor]:
        """phi by the defended model's parameter names; a LoRA-wrapped Linear of phi gives its
        effective weight W + s B A."""
        out = {}
        for n in self._names:
            path, _, attr = n.rpartition(".")
            out[n] = getattr(self.phi.get_submodule(path) if path else self.phi, attr)
        return out

    def defended_parameters(self) -> dict[str, torch.Tensor]:
        """theta' = T phi (differentiable in phi)."""
        th = self.phi_parameters()
        for sym, a, b in self._groups:
            A, Ainv = getattr(self, a), getattr(self, b)
            AinvT = A if sym.element_kind in ("orthogonal", "permutation") else Ainv if Ainv.ndim == 1 else Ainv.T
            for s in sym.acting_slots:
                th[s.param] = _act_differentiable(th[s.param], s, A if s.op == "A" else AinvT, sym.width)
        return th

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        state = {**self.defended_parameters(), **dict(self.phi.named_buffers())}
        return torch.func.functional_call(self._skeleton[0], state, args, kwargs, strict=False, tie_weights=False)


def r1_module(defended: Any, record: TorchReparameterization) -> R1Module:
    """R1: a module computing f(x; T phi) with trainable phi = T^-1 theta' and frozen A, A^-1
    buffers (the input is not modified). Works with ``Attack.run`` for every optimizer,
    LoRA included (adapters on phi's Linear layers)."""
    return R1Module(_module(defended), record)


def _group_pair_dims(sym: TorchSymmetry) -> tuple[int, int, int]:
    """(n_in, n_out, bias entries) of the pair a group acts on: entries per group coordinate on
    the "A" side without its bias column, on the "A_invT" side (with its bias, e.g. b_K), and
    the number of "A"-side bias entries. A group whose "A" side is only a vector (the RMSNorm
    weight gamma of S7, a diagonal map) counts it as the input column: n_in = 1, no bias."""
    shapes = dict(sym.shapes)
    a = b = bias = 0
    for s in sym.acting_slots:
        if s.param not in shapes:
            raise InvalidInputError(f"group {sym.name} does not record the shape of {s.param!r}")
        shape = shapes[s.param]
        per = (s.stop - s.start) * math.prod(shape) // shape[s.axis] // sym.width
        if s.op == "A_invT":
            b += per
        elif len(shape) == 1:
            bias += s.stop - s.start
        else:
            a += per
    if a == 0 and bias:
        a, bias = bias // sym.width, 0
    return a, b, bias


def r1_extra_parameters(record: TorchReparameterization) -> dict[str, Any]:
    """R1 cost: ``extra_parameters`` = sum_groups of ``TorchSymmetry.extra_parameters`` (S1, S2:
    recovery_extra_parameters(family, r)), its
    ``bound`` = sum_groups recovery_extra_parameters_bound(r, n_in, n_out) (for a group without
    an "A"-side bias the bound still counts a bias column, so it is then looser), and
    ``pair_parameters`` = the parameters r (n_in + n_out) + biases the groups act on."""
    extra, bound, pair = 0, Fraction(0), 0
    for sym, _ in record.items:
        n_in, n_out, bias = _group_pair_dims(sym)
        extra += sym.extra_parameters()
        bound += recovery_extra_parameters_bound(sym.width, n_in, n_out)
        pair += sym.width * (n_in + n_out) + bias
    return {"extra_parameters": extra, "bound": bound, "within_bound": extra <= bound,
            "pair_parameters": pair, "groups": len(record.items)}


# ================================================================ R2
def factor_block(sym: TorchSymmetry, params: Mapping[str, torch.Tensor], op: str) -> torch.Tensor:
    """The group's factor as an (r, -1) float64 block: all slots with ``op`` side by side
    ("A": X = [W_a | b_a], "A_invT": Y, the side transformed by A^-T)."""
    blocks = [params[s.param].detach().to(torch.float64).movedim(s.axis, 0)[s.start:s.stop].reshape(sym.width, -1)
              for s in sym.slots if s.op == op]
    if not blocks:
        raise InvalidInputError(f"group {sym.name} has no {op!r} slot")
    return torch.cat(blocks, dim=1)


def _s2_scales(sym: TorchSymmetry, params: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """Per-unit balance c_i = (||out_i|| / ||in_i||)^(1/2) (degenerate units: module doc)."""
    n_in = factor_block(sym, params, "A").norm(dim=1)
    n_out = factor_block(sym, params, "A_invT").norm(dim=1)
    c = torch.ones_like(n_in)
    ok = (n_in > 0) & (n_out > 0)
    c[ok] = (n_out[ok] / n_in[ok]).sqrt()
    dead_out = (n_in > 0) & (n_out == 0)
    dead_in = (n_in == 0) & (n_out > 0)
    c[dead_out] = 1.0 / n_in[dead_out]
    c[dead_in] = n_out[dead_in]
    degenerate = torch.nonzero(~ok).flatten().tolist()
    return c, degenerate


def _s1_balance(X: torch.Tensor, Y: torch.Tensor, u: float) -> tuple[torch.Tensor, int]:
    """C with C X = Sigma'^(1/2) U^T (module doc) and the numerical rank k of M = X^T Y."""
    r = X.shape[0]
    Ux, Sx, Vxt = torch.linalg.svd(X, full_matrices=False)
    Uy, Sy, _ = torch.linalg.svd(Y, full_matrices=False)
    core = Sx[:, None] * (Ux.T @ Uy) * Sy[None, :]
    P, S, _ = torch.linalg.svd(core)
    Ucols = Vxt.T @ P  # left singular vectors of M (p x r)
    idx = Ucols.abs().argmax(dim=0)
    sign = torch.sign(Ucols[idx, torch.arange(r)])
    sign[sign == 0] = 1.0
    P = P * sign[None, :]
    thr = max(X.shape[1], Y.shape[1]) * u * float(Sx[0]) * float(Sy[0])
    k = int((S > thr).sum())
    s = torch.where(S > thr, S, torch.ones_like(S))
    C = s.sqrt()[:, None] * (P.T / Sx[None, :]) @ Ux.T
    return C, k


def _full_rank(M: torch.Tensor, u: float) -> bool:
    s = torch.linalg.svdvals(M)
    return bool(s[-1] > max(M.shape) * u * s[0])


def _s1_element(sym: TorchSymmetry, params: Mapping[str, torch.Tensor], u: float) -> tuple[torch.Tensor, int]:
    X, Y = factor_block(sym, params, "A"), factor_block(sym, params, "A_invT")
    if _full_rank(X, u):
        return _s1_balance(X, Y, u)
    if _full_rank(Y, u):  # exchange roles: C_y acts on Y, so C = C_y^-T acts on X
        Cy, k = _s1_balance(Y, X, u)
        return torch.linalg.inv(Cy).T, k
    raise InvalidInputError(f"R2: group {sym.name} has both factors of rank < r = {sym.width} "
                            "(a head with rank-deficient query/value and key/output slices); no representative is defined")


def _slot_spans(sym: TorchSymmetry) -> list[tuple[str, int, int, int]]:
    return [(s.param, s.axis, s.start, s.stop) for s in sym.slots]


def _check_disjoint_s1(syms: Sequence[TorchSymmetry]) -> None:
    """S1 groups are balanced in one pass: none may share a parameter slice with another group."""
    for i, a in enumerate(syms):
        if a.family != "S1":
            continue
        for j, b in enumerate(syms):
            if i == j:
                continue
            for pa, xa, sa, ea in _slot_spans(a):
                for pb, xb, sb, eb in _slot_spans(b):
                    if pa == pb and (xa != xb or (sa < eb and sb < ea)):
                        raise InvalidInputError(f"R2: S1 group {a.name} overlaps group {b.name} on {pa!r}; "
                                                "canonicalization supports S1 groups on disjoint slices only")


def _unit_roundoff(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps) / 2


def canonicalize(model: LoadedModel, symmetries: Sequence[TorchSymmetry] | None = None, *,
                 tol: float = R2_TOL, max_sweeps: int = R2_MAX_SWEEPS) -> tuple[LoadedModel, TorchReparameterization]:
    """R2: (the canonical representative of the weights' orbit, the element C mapping the input
    to it). Computed in float64, applied once to the input's weights (cast to their dtype); the
    input model is not modified. ``record.meta``: sweeps, largest final correction, degenerate
    groups. See the module doc for the math, the stopping rule and degenerate groups."""
    if not isinstance(model, LoadedModel):
        raise InvalidInputError(f"canonicalize expects a LoadedModel, got {type(model).__name__}")
    if not (math.isfinite(tol) and tol > 0):
        raise InvalidInputError(f"tol must be positive and finite, got {tol!r}")
    if isinstance(max_sweeps, bool) or not isinstance(max_sweeps, int) or max_sweeps < 1:
        raise InvalidInputError(f"max_sweeps must be a positive integer, got {max_sweeps!r}")
    syms = list(symmetries) if symmetries is not None else discover_symmetries(model)
    if not syms:
        raise InvalidInputError("R2: the model has no symmetry group to canonicalize")
    named = dict(model.module.named_parameters())
    _require_finite(named, "the model")
    _check_disjoint_s1(syms)
    u = _unit_roundoff(model.dtype)
    names = list(dict.fromkeys(n for s in syms for n in s.params))
    missing = [n for n in names if n not in named]
    if missing:
        raise InvalidInputError(f"R2: the groups act on parameters absent from the model: {missing[:3]}")
    work = {n: named[n].detach().to(torch.float64).clone() for n in names}
    elements: dict[int, torch.Tensor] = {}
    degenerate: list[dict[str, Any]] = []
    for i, s in enumerate(syms):
        if s.family == "S1":
            C, k = _s1_element(s, work, u)
            work.update(s.apply(work, C))
            elements[i] = C
            if k < s.width:
                degenerate.append({"group": s.name, "rank": k, "width": s.width,
                                   "representative": "degenerate directions get sigma := 1 (unique up to O(r - k))"})
    s2 = [i for i, s in enumerate(syms) if s.family == "S2"]
    sweeps, worst, previous = 0, 0.0, math.inf
    dead: dict[str, list[int]] = {}
    for i in s2:
        elements[i] = torch.ones(syms[i].width, dtype=torch.float64)
    while s2:
        sweeps += 1
        previous, worst = worst, 0.0
        for i in s2:
            c, bad = _s2_scales(syms[i], work)
            work.update(syms[i].apply(work, c))
            elements[i] = elements[i] * c
            worst = max(worst, float(c.log().abs().max()))
            if bad:
                dead[syms[i].name] = bad
        if worst <= tol:
            break
        if sweeps >= max_sweeps:
            raise PrecisionError(f"R2: per-unit balancing did not converge in {max_sweeps} sweeps "
                                 f"(largest correction |log c| = {worst:.3e} > tol {tol:.1e})")
    for name, units in dead.items():
        degenerate.append({"group": name, "units": units,
                           "representative": "a unit with a zero side gets norm 1 on its other side"})
    rho = worst / previous if sweeps >= 2 and previous > 0 else 0.0
    record = TorchReparameterization([(s, elements[i]) for i, s in enumerate(syms)],
                                     {"recovery": "R2", "sweeps": sweeps, "final_correction": worst,
                                      "contraction": rho, "tol": tol, "degenerate": degenerate})
    canonical = record.apply_to_module(model.module)
    return model.with_module(canonical, recovery="R2"), record


def orbit_norm_sq(module: nn.Module, symmetries: Sequence[TorchSymmetry]) -> float:
    """sum ||W||_F^2 over the parameters the groups touch (float64)."""
    named = dict(module.named_parameters())
    names = dict.fromkeys(n for s in symmetries for n in s.params)
    return float(sum(named[n].detach().to(torch.float64).pow(2).sum() for n in names))


def distance_to_canonical(model: LoadedModel, symmetries: Sequence[TorchSymmetry] | None = None) -> dict[str, Any]:
    """How far the weights are from their balanced point: ``norm_ratio`` =
    sum ||W||^2 / sum ||W_canonical||^2 over the touched parameters (>= 1 up to round-off: the
    canonical point minimizes it over the orbit), ``kappa_C`` = max over groups kappa(C),
    ``kappa_T_C`` = kappa of C as a map on the parameters, degenerate groups, sweeps."""
    syms = list(symmetries) if symmetries is not None else discover_symmetries(model)
    canon, rec = canonicalize(model, syms)
    a, b = orbit_norm_sq(model.module, syms), orbit_norm_sq(canon.module, syms)
    return {"groups": len(syms), "norm_sq": a, "canonical_norm_sq": b, "norm_ratio": a / b if b > 0 else math.inf,
            "kappa_C": rec.kappa_A(), "kappa_T_C": rec.kappa_T(), "degenerate": rec.meta["degenerate"],
            "sweeps": rec.meta["sweeps"]}


# ---------------------------------------------------------------- agreement of canonical points
def s2_log_error(meta: Mapping[str, Any]) -> float:
    """A-posteriori error of the S2 log-scales of one canonicalization (its ``record.meta``):
    (last correction + gamma_3) / (1 - rho), the geometric tail of sweeps contracting by rho,
    plus the shift of the fixed point by the input's own rounding gamma_3."""
    rho = meta["contraction"]
    if not 0 <= rho < 1:
        raise PrecisionError(f"R2: the balance sweeps do not contract (rho = {rho})")
    return (meta["final_correction"] + gamma(3)) / (1 - rho)


def s1_factor_allowance(sym: TorchSymmetry, reference: Mapping[str, torch.Tensor],
                        versions: Sequence[Mapping[str, torch.Tensor]]) -> float:
    """Relative Frobenius allowance for the canonical factors of one S1 group computed from each
    of ``versions`` (the stored weights canonicalized), first-order (Wedin): with
    eps = gamma_m ||X'||_2 ||Y'||_2 the rounding of M = X'^T Y' (m = 2 (r + p + q)), row k of
    Sigma^1/2 U^T moves by <= sqrt(sigma_k) eps / gap_k + eps / (2 sqrt(sigma_k)), gap_k the
    distance of sigma_k to the rest of the spectrum of M (0 included); summed over the versions.
    An estimate, not a proof."""
    X, Y = factor_block(sym, reference, "A"), factor_block(sym, reference, "A_invT")
    r = sym.width
    sig = torch.linalg.svdvals(X.T @ Y)
    s, rest = sig[:r], torch.cat([sig, torch.zeros(1, dtype=sig.dtype)])
    gaps = torch.stack([torch.cat([rest[:k], rest[k + 1:]]).sub(s[k]).abs().min() for k in range(r)])
    total = 0.0
    for v in versions:
        Xv, Yv = factor_block(sym, v, "A"), factor_block(sym, v, "A_invT")
        eps = gamma(2 * (r + Xv.shape[1] + Yv.shape[1])) * float(torch.linalg.matrix_norm(Xv, 2)
                                                                   * torch.linalg.matrix_norm(Yv, 2))
        dk = s.sqrt() * eps / gaps + eps / (2 * s.sqrt())
        total += float(dk.norm() / s.sum().sqrt())
    return total


def _max_relative(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max_i |x_i - ref_i| / |ref_i| (inf where ref_i = 0 but x_i differs)."""
    d = (x - ref).abs()
    zero = ref == 0
    if bool((d[zero] > 0).any()):
        return math.inf
    return float((d[~zero] / ref[~zero].abs()).max()) if bool((~zero).any()) else 0.0


def canonical_agreement(symmetries: Sequence[TorchSymmetry], a: nn.Module, b: nn.Module,
                        meta_a: Mapping[str, Any], meta_b: Mapping[str, Any],
                        reference: Mapping[str, torch.Tensor],
                        versions: Sequence[Mapping[str, torch.Tensor]]) -> list[dict[str, Any]]:
    """Two canonicalizations ``a``, ``b`` of one orbit (R2: the same point), group by group:
    ``measured`` = S2: max entrywise relative difference of the group's parameters; S1: max over
    the two factors of ||X_a - X_b||_F / ||X_b||_F; ``allowance`` = S2: 2 gamma_6 +
    expm1(2 (e_a + e_b)) with e = ``s2_log_error``; S1: ``s1_factor_allowance`` of the
    ``versions`` (the stored weights each canonical point was computed from)."""
    pa = {n: t.detach().to(torch.float64) for n, t in a.named_parameters()}
    pb = {n: t.detach().to(torch.float64) for n, t in b.named_parameters()}
    out = []
    s2_tol = 2 * gamma(6) + math.expm1(2 * (s2_log_error(meta_a) + s2_log_error(meta_b))) \
        if any(s.family == "S2" for s in symmetries) else 0.0
    for sym in symmetries:
        if sym.family == "S2":
            rel = max(_max_relative(pa[n], pb[n]) for n in sym.params)
            out.append({"group": sym.name, "family": "S2", "measured": rel, "allowance": s2_tol})
        else:
            rel = max(float((factor_block(sym, pa, op) - factor_block(sym, pb, op)).norm()
                            / factor_block(sym, pb, op).norm()) for op in ("A", "A_invT"))
            out.append({"group": sym.name, "family": "S1", "measured": rel,
                        "allowance": s1_factor_allowance(sym, reference, versions)})
    return out


__all__ = ["R1Module", "r1_module", "r1_extra_parameters", "canonicalize", "distance_to_canonical",
           "orbit_norm_sq", "factor_block", "s2_log_error", "s1_factor_allowance", "canonical_agreement",
           "R2_TOL", "R2_MAX_SWEEPS"]
