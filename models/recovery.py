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
once in float64); nothing grows with the number of steps except through the loss landscape
and the optimizer's own conditioning: an eigenbasis of nearly degenerate statistics (SOAP's
first steps) or a damped solve on a diverging run (Gauss-Newton) amplifies that round-off
as it would any perturbation of the undefended run (a random 4-5-3 MLP at SpecDef K = 100,
SOAP at lr 0.01: the R1 loss 7e-6 relative from the undefended one at step 3; weights
perturbed by 1e-15 relative alone give 1e-6 there).

**R2** (canonicalization, no knowledge of T) lives in ``convrate.models.canonical`` and is
re-exported here.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from typing import Any

import torch
from torch import nn

from convrate.errors import InvalidInputError
from convrate.models.canonical import (R2_MAX_SWEEPS, R2_TOL, canonical_agreement, canonicalize,
                                       distance_to_canonical, factor_block, orbit_norm_sq, require_finite,
                                       s1_factor_allowance, s2_log_error)
from convrate.models.symmetry import Slot, TorchReparameterization, TorchSymmetry
from convrate.theory.bounds import recovery_extra_parameters_bound


def _module(model: Any) -> nn.Module:
    m = getattr(model, "module", model)
    if not isinstance(m, nn.Module):
        raise InvalidInputError(f"expected a torch module or LoadedModel, got {type(model).__name__}")
    return m


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


def _meta_skeleton(module: nn.Module) -> nn.Module:
    """A copy of ``module`` on the meta device with its tied parameters still tied (``.to()``
    unties them when it changes the device: each module gets its own converted parameter), so
    that ``functional_call(..., tie_weights=True)`` feeds a tied lm_head the embedding."""
    skeleton = copy.deepcopy(module).to("meta")
    first: dict[int, str] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) not in first:
            first[id(p)] = name
            continue
        path, _, attr = name.rpartition(".")
        setattr(skeleton.get_submodule(path) if path else skeleton, attr, skeleton.get_parameter(first[id(p)]))
    return skeleton


class R1Module(nn.Module):
    """theta' = T phi: trainable phi (``self.phi``, the architecture holding T^-1 theta'),
    forward = the defended architecture evaluated at T phi. Buffers ``A_i``, ``A_inv_i``
    (float64; a permutation as two int64 index vectors) are the frozen group elements;
    ``extra_parameters`` counts them."""

    def __init__(self, defended: nn.Module, record: TorchReparameterization) -> None:
        super().__init__()
        _check_record(defended, record)
        require_finite(dict(defended.named_parameters()), "the defended model")
        self.phi = record.inverse().apply_to_module(defended)  # phi_0 = T^-1 theta'_0 (float64, cast);
        # deepcopy keeps each parameter's requires_grad: phi trains what the defended model trains
        self._skeleton = [_meta_skeleton(defended)]  # not a submodule: LoRA and .to() skip it
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
        self._phi_forward = False  # see through_phi
        self.record_meta = dict(record.meta)
        self.config = getattr(defended, "config", None)  # encoders: EncoderClassifier reads config

    def unregistered_modules(self) -> list[nn.Module]:
        """The skeleton the forward runs (not a submodule; ``decoder_float64.exact_float64``
        reaches it through this)."""
        return list(self._skeleton)

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
        if self._phi_forward:
            return self.phi(*args, **kwargs)
        state = {**self.defended_parameters(), **dict(self.phi.named_buffers())}
        # tie_weights: a tied lm_head takes the substituted embedding (named once in phi)
        return torch.func.functional_call(self._skeleton[0], state, args, kwargs, strict=False, tie_weights=True)


@contextmanager
def through_phi(net: nn.Module) -> Iterator[None]:
    """Within the block every R1Module in ``net`` evaluates f(x; phi) with phi's own layers
    instead of f(x; T phi): the same function (T is a symmetry of the architecture), so the
    same loss and, in exact arithmetic, the same gradient in phi. For optimizers that read the
    activations of the trained layers (K-FAC's factors: those layers are phi's, which the
    forward at T phi does not run)."""
    mods = [m for m in net.modules() if isinstance(m, R1Module)]
    for m in mods:
        m._phi_forward = True
    try:
        yield
    finally:
        for m in mods:
            m._phi_forward = False


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


__all__ = ["R1Module", "r1_module", "through_phi", "r1_extra_parameters", "canonicalize", "distance_to_canonical",
           "orbit_norm_sq", "factor_block", "s2_log_error", "s1_factor_allowance", "canonical_agreement",
           "R2_TOL", "R2_MAX_SWEEPS"]
