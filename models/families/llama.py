"""Family: Llama-layout decoder LMs (Llama, Qwen2, Mistral; THEORY.md S4-S7 and permutations).

transformers' layout: ``model.embed_tokens``, per layer ``self_attn.{q,k,v,o}_proj``,
``mlp.{gate,up,down}_proj``, ``input_layernorm``, ``post_attention_layernorm``, the final
``model.norm`` and ``lm_head`` (absent from the parameters when tied to the embedding). Heads
have dimension d (``head_dim``, possibly set explicitly); with H query and K key/value heads,
KV group g serves query heads g G .. g G + G - 1 (G = H / K, ``repeat_kv``). Groups:

* S4 ``rope-qk`` (element ``rope``) per KV group: the query rows of each of the group's heads
  -> A q (and b_q), the key rows -> A^-T k (and b_k), one A shared by the G heads (the key is
  shared: every head needs M_h^T N = I, so M_h = N^-T). A commutes with RoPE's rotation
  (``convrate.models.rope``: a complex scalar r e^{i phi} per rotary pair with a distinct
  frequency, GL(m, C) on m coinciding pairs, GL on the unrotated pairs), so every score
  q_m^T R_{n-m} k_n is kept. The frequencies are read at run time from the model's rotary
  embedding as the forward uses them (``inv_freq`` cast to float32; rope scaling variants
  change ``inv_freq``; with dynamic variants the pairs coinciding in ``original_inv_freq``
  and ``inv_freq`` both).
* S5 ``gqa-vo`` (gl) per KV group: v rows (and b_v) -> B v; the o_proj columns of every query
  head of the group -> W_o B^-1 (each head's context is a convex combination of the shared
  values).
* S6 ``swiglu`` (diagonal, signs allowed) per layer: up rows (and bias) x D, down columns x
  D^-1, since down((silu(g) * (D u))) D^-1 = down(silu(g) * u). The gate rows admit no
  scaling: silu(a z) = b silu(z) for all z forces a = b = 1 (THEORY S6, ``derive_llm``).
* S7 ``rmsnorm`` (diagonal) per norm: gamma x c, the consuming columns / c
  (input_layernorm -> q, k, v; post_attention_layernorm -> gate, up; the final norm ->
  lm_head, only when lm_head is not tied to the embedding: a tied E is also the input, and
  scaling its columns changes the residual stream).
* S7 ``residual-rotation`` (orthogonal), only on a model whose RMSNorm weights are all 1 (the
  group's domain, "unit" slots; fold them with the ``rmsnorm`` elements c = 1 / gamma of
  ``fold_elements``): x -> Q x on the residual stream. Writers (embed_tokens columns,
  o_proj and down_proj rows and biases) -> Q W, readers (q, k, v, gate, up, lm_head
  columns) -> W Q^T = W Q^-1; RMSNorm(Q x) = Q RMSNorm(x) because ||Q x|| = ||x||. A tied
  lm_head is the embedding itself: E -> E Q^T serves both roles because Q^-T = Q for an
  orthogonal Q (a non-orthogonal map could not be tied).
* Permutations (family P, element ``permutation``, kappa = 1): ``mlp-permutation`` of the
  hidden units (gate, up rows and biases, down columns); ``head-permutation`` of the query
  heads within a KV group (q rows and bias, o columns, d rows per head); ``kv-permutation``
  of the KV groups with their query heads (k, v rows and biases, q rows, o columns).
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import torch
from torch import nn

from convrate.errors import InvalidInputError
from convrate.models.symmetry import UNIT_ALLOWANCE, Slot, TorchSymmetry, record_shapes

KINDS = ("rope-qk", "gqa-vo", "swiglu", "rmsnorm", "residual-rotation")
PERMUTATION_KINDS = ("mlp-permutation", "head-permutation", "kv-permutation")
_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")


def decoder_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(prefix, layer) of every Llama-layout decoder layer."""
    found = []
    for name, m in module.named_modules():
        attn, mlp = getattr(m, "self_attn", None), getattr(m, "mlp", None)
        if (attn is not None and mlp is not None
                and all(isinstance(getattr(attn, k, None), nn.Linear) for k in _ATTN)
                and all(isinstance(getattr(mlp, k, None), nn.Linear) for k in _MLP)
                and hasattr(m, "input_layernorm") and hasattr(m, "post_attention_layernorm")):
            found.append((name, m))
    return found


def is_decoder(module: nn.Module) -> bool:
    return bool(decoder_layers(module))


def rotary_frequencies(module: nn.Module) -> tuple[float, ...]:
    """The rotary angular frequencies (radians per position, one per pair j of the
    ``rotate_half`` layout) as the forward uses them: ``inv_freq`` cast to float32. A dynamic
    variant may change ``inv_freq`` with the sequence length; where ``original_inv_freq``
    differs from it, the two must split the pairs into the same commutant classes
    (InvalidInputError otherwise: no single group would be exact at every length)."""
    from convrate.models.rope import rope_classes

    emb = [m for _, m in module.named_modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor)]
    if not emb:
        raise InvalidInputError("decoder without a rotary embedding (no inv_freq buffer found)")
    if len(emb) > 1 and any(not torch.equal(e.inv_freq, emb[0].inv_freq) for e in emb[1:]):
        raise InvalidInputError("decoder with several different rotary embeddings: not supported")

    def as_used(t: torch.Tensor) -> tuple[float, ...]:
        return tuple(t.detach().to(torch.float32).to(torch.float64).cpu().tolist())

    cur = as_used(emb[0].inv_freq)
    orig = getattr(emb[0], "original_inv_freq", None)
    if isinstance(orig, torch.Tensor) and orig.shape == emb[0].inv_freq.shape:
        part = lambda f: sorted((c.kind, c.pairs) for c in rope_classes(f))  # noqa: E731
        if part(as_used(orig)) != part(cur):
            raise InvalidInputError("the rotary frequencies change at run time in a way that changes which pairs "
                                    "coincide: no RoPE-commuting group is exact at every sequence length")
    return cur


def _layer_index(prefix: str) -> int | None:
    m = re.search(r"layers\.(\d+)$", prefix)
    return int(m.group(1)) if m else None


def _geometry(layer: nn.Module) -> tuple[int, int, int]:
    """(d, H, K): head dimension, query heads, key/value heads."""
    attn = layer.self_attn
    d = int(getattr(attn, "head_dim", 0) or 0)
    if d <= 0 or attn.q_proj.out_features % d or attn.k_proj.out_features % d:
        raise InvalidInputError(f"decoder attention: head_dim {d} does not divide the q/k projections")
    H, K = attn.q_proj.out_features // d, attn.k_proj.out_features // d
    if H % K or attn.v_proj.out_features != K * d or attn.o_proj.in_features != H * d:
        raise InvalidInputError(f"decoder attention: {H} query heads, {K} key/value heads and the projections' "
                                "shapes are not a grouped-query layout")
    if d % 2:
        raise InvalidInputError(f"decoder attention: odd head_dim {d} has no rotary pairs")
    return d, H, K


def _linear_slots(prefix: str, lin: nn.Linear, axis: int, lo: int, hi: int, op: str, repeat: int = 1,
                  bias: bool = True) -> list[Slot]:
    """Slots on a Linear's weight (axis 0: rows, 1: columns) and, for rows, on its bias."""
    out = [Slot(f"{prefix}.weight", axis, lo, hi, op, repeat)]
    if bias and axis == 0 and lin.bias is not None:
        out.append(Slot(f"{prefix}.bias", 0, lo, hi, op, repeat))
    return out


def _norm_params(module: nn.Module) -> list[str]:
    """Names of every RMSNorm weight (per-layer norms and the final norm)."""
    named = dict(module.named_parameters())
    return [n for n in named if n.endswith("layernorm.weight") or re.search(r"(^|\.)norm\.weight$", n)]


def _lm_head(module: nn.Module) -> str | None:
    """``lm_head.weight`` when it is a parameter of its own (None when tied or absent)."""
    named = dict(module.named_parameters())
    return next((n for n in named if n.endswith("lm_head.weight")), None)


def is_folded(module: nn.Module) -> bool:
    """Every RMSNorm weight is 1 within ``symmetry.UNIT_ALLOWANCE``."""
    named = dict(module.named_parameters())
    return all(float((named[n].detach().double() - 1).abs().max()) <= UNIT_ALLOWANCE for n in _norm_params(module))


def decoder_symmetries(module: nn.Module, layers: Sequence[int] | None = None, heads: Sequence[int] | None = None,
                       kinds: Sequence[str] | None = None) -> list[TorchSymmetry]:
    """The groups of the module doc, in composition order (norm scalings, the residual rotation,
    permutations, then S4, S5, S6). ``kinds`` default: the continuous ones; ``layers`` restricts
    per-layer groups (the final norm and the residual rotation are kept); ``heads`` restricts
    S4/S5 to the KV groups listed. Kinds of other families are ignored."""
    kinds = KINDS if kinds is None else tuple(kinds)
    named = dict(module.named_parameters())
    lays = decoder_layers(module)
    freqs = rotary_frequencies(module)
    lm_head = _lm_head(module)
    by_stage: dict[str, list[TorchSymmetry]] = {k: [] for k in KINDS + PERMUTATION_KINDS}

    def add(kind: str, sym: TorchSymmetry) -> None:
        by_stage[kind].append(record_shapes(sym, named))

    for prefix, layer in lays:
        li = _layer_index(prefix)
        if layers is not None and li not in layers:
            continue
        d, H, K = _geometry(layer)
        if len(freqs) * 2 != d:
            raise InvalidInputError(f"rotary embedding has {len(freqs)} frequencies but head_dim is {d} "
                                    "(partial rotary without zero frequencies is not a Llama layout)")
        G = H // K
        a, m = f"{prefix}.self_attn", f"{prefix}.mlp"
        attn, mlp = layer.self_attn, layer.mlp
        tag = f"layer{li}"
        if "rmsnorm" in kinds:
            add("rmsnorm", TorchSymmetry("S7", "rmsnorm", f"{tag}.input_norm", attn.q_proj.in_features, tuple(
                [Slot(f"{prefix}.input_layernorm.weight", 0, 0, attn.q_proj.in_features, "A")]
                + [Slot(f"{a}.{p}.weight", 1, 0, attn.q_proj.in_features, "A_invT") for p in ("q_proj", "k_proj", "v_proj")]),
                li, element="diagonal"))
            add("rmsnorm", TorchSymmetry("S7", "rmsnorm", f"{tag}.post_attention_norm", mlp.up_proj.in_features, tuple(
                [Slot(f"{prefix}.post_attention_layernorm.weight", 0, 0, mlp.up_proj.in_features, "A")]
                + [Slot(f"{m}.{p}.weight", 1, 0, mlp.up_proj.in_features, "A_invT") for p in ("gate_proj", "up_proj")]),
                li, element="diagonal"))
        for g in range(K):
            if heads is not None and g not in heads:
                continue
            hs = range(g * G, (g + 1) * G)
            if "rope-qk" in kinds:
                slots = [sl for h in hs for sl in _linear_slots(f"{a}.q_proj", attn.q_proj, 0, h * d, (h + 1) * d, "A")]
                slots += _linear_slots(f"{a}.k_proj", attn.k_proj, 0, g * d, (g + 1) * d, "A_invT")
                add("rope-qk", TorchSymmetry("S4", "rope-qk", f"{tag}.kv{g}.qk", d, tuple(slots), li, g,
                                             element="rope", structure=freqs))
            if "gqa-vo" in kinds:
                slots = _linear_slots(f"{a}.v_proj", attn.v_proj, 0, g * d, (g + 1) * d, "A")
                slots += [Slot(f"{a}.o_proj.weight", 1, h * d, (h + 1) * d, "A_invT") for h in hs]
                add("gqa-vo", TorchSymmetry("S5", "gqa-vo", f"{tag}.kv{g}.vo", d, tuple(slots), li, g, element="gl"))
            if "head-permutation" in kinds and G > 1:
                slots = _linear_slots(f"{a}.q_proj", attn.q_proj, 0, g * G * d, (g + 1) * G * d, "A", d)
                slots.append(Slot(f"{a}.o_proj.weight", 1, g * G * d, (g + 1) * G * d, "A_invT", d))
                add("head-permutation", TorchSymmetry("P", "head-permutation", f"{tag}.kv{g}.heads", G, tuple(slots),
                                                      li, g, element="permutation"))
        if "kv-permutation" in kinds and K > 1:
            slots = _linear_slots(f"{a}.k_proj", attn.k_proj, 0, 0, K * d, "A", d)
            slots += _linear_slots(f"{a}.v_proj", attn.v_proj, 0, 0, K * d, "A", d)
            slots += _linear_slots(f"{a}.q_proj", attn.q_proj, 0, 0, H * d, "A", G * d)
            slots.append(Slot(f"{a}.o_proj.weight", 1, 0, H * d, "A_invT", G * d))
            add("kv-permutation", TorchSymmetry("P", "kv-permutation", f"{tag}.kv", K, tuple(slots), li,
                                                element="permutation"))
        n_mlp = mlp.up_proj.out_features
        if "swiglu" in kinds:
            slots = _linear_slots(f"{m}.up_proj", mlp.up_proj, 0, 0, n_mlp, "A")
            slots.append(Slot(f"{m}.down_proj.weight", 1, 0, n_mlp, "A_invT"))
            add("swiglu", TorchSymmetry("S6", "swiglu", f"{tag}.swiglu", n_mlp, tuple(slots), li, element="diagonal"))
        if "mlp-permutation" in kinds:
            slots = _linear_slots(f"{m}.gate_proj", mlp.gate_proj, 0, 0, n_mlp, "A")
            slots += _linear_slots(f"{m}.up_proj", mlp.up_proj, 0, 0, n_mlp, "A")
            slots.append(Slot(f"{m}.down_proj.weight", 1, 0, n_mlp, "A_invT"))
            add("mlp-permutation", TorchSymmetry("P", "mlp-permutation", f"{tag}.mlp-units", n_mlp, tuple(slots), li,
                                                 element="permutation"))
    hidden = named[next(n for n in named if n.endswith("embed_tokens.weight"))].shape[1]
    final_norm = next((n for n in _norm_params(module) if not n.endswith("layernorm.weight")), None)
    if "rmsnorm" in kinds and final_norm is not None and lm_head is not None:
        add("rmsnorm", TorchSymmetry("S7", "rmsnorm", "final_norm", hidden,
                                     (Slot(final_norm, 0, 0, hidden, "A"), Slot(lm_head, 1, 0, hidden, "A_invT")),
                                     element="diagonal"))
    if "residual-rotation" in kinds and is_folded(module):
        by_stage["residual-rotation"].append(residual_rotation(module))
    order = ("rmsnorm", "residual-rotation", "kv-permutation", "head-permutation", "mlp-permutation",
             "rope-qk", "gqa-vo", "swiglu")
    return [s for k in order for s in by_stage[k]]


def residual_rotation(module: nn.Module) -> TorchSymmetry:
    """The S7 orthogonal group on the residual stream (module doc); "unit" slots on every
    RMSNorm weight state its domain (built whether or not the module lies in it)."""
    named = dict(module.named_parameters())
    embed = next(n for n in named if n.endswith("embed_tokens.weight"))
    hidden = named[embed].shape[1]
    lm_head = _lm_head(module)
    slots = [Slot(embed, 1, 0, hidden, "A")]
    for prefix, layer in decoder_layers(module):
        a, m = f"{prefix}.self_attn", f"{prefix}.mlp"
        for p in ("q_proj", "k_proj", "v_proj"):
            slots.append(Slot(f"{a}.{p}.weight", 1, 0, hidden, "A_invT"))
        slots += _linear_slots(f"{a}.o_proj", layer.self_attn.o_proj, 0, 0, hidden, "A")
        for p in ("gate_proj", "up_proj"):
            slots.append(Slot(f"{m}.{p}.weight", 1, 0, hidden, "A_invT"))
        slots += _linear_slots(f"{m}.down_proj", layer.mlp.down_proj, 0, 0, hidden, "A")
    if lm_head is not None:
        slots.append(Slot(lm_head, 1, 0, hidden, "A_invT"))
    slots += [Slot(n, 0, 0, hidden, "unit") for n in _norm_params(module)]
    return record_shapes(TorchSymmetry("S7", "residual-rotation", "residual", hidden, tuple(slots),
                                       element="orthogonal"), named)


def fold_elements(module: nn.Module, symmetries: Sequence[TorchSymmetry]) -> list[tuple[TorchSymmetry, torch.Tensor]]:
    """The S7 ``rmsnorm`` elements c = 1 / gamma that fold every RMSNorm weight into its consumers
    (gamma -> 1, consumer columns x gamma), as (symmetry, element) pairs for a
    ``TorchReparameterization``. A zero or non-finite gamma_i cannot be folded (InvalidInputError). With a tied
    lm_head the final norm has no ``rmsnorm`` group, so a model whose final gamma is not 1
    cannot be folded completely (InvalidInputError)."""
    named = dict(module.named_parameters())
    out = []
    covered = set()
    for s in symmetries:
        if s.kind != "rmsnorm":
            continue
        gname = next(sl.param for sl in s.slots if sl.op == "A")
        g = named[gname].detach().to(torch.float64)
        if bool((g == 0).any()) or not bool(torch.isfinite(g).all()):
            raise InvalidInputError(f"{gname} has a zero or non-finite entry: RMSNorm cannot be folded")
        out.append((s, 1.0 / g))
        covered.add(gname)
    missing = [n for n in _norm_params(module) if n not in covered
               and not float((named[n].detach().double() - 1).abs().max()) <= UNIT_ALLOWANCE]  # NaN: missing
    if missing:
        raise InvalidInputError(f"cannot fold {missing[0]}: no rmsnorm group scales it (a tied lm_head shares the "
                                "embedding, whose columns are also the model's input)")
    return out
