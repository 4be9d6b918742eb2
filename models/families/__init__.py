"""convrate.models.families: which tensors of each architecture form which symmetry groups.

One module per architecture family (``sequential``: zoo MLP/CNN relu chains; ``bert``:
BERT-family self-attention; ``llama``: Llama/Qwen2/Mistral decoders). ``discover_symmetries``
dispatches on the module. Families know nothing of defenses, attacks or audits.

Every family also has permutation groups (family P, element ``permutation``, kappa = 1):
units of a ReLU layer, heads of an attention layer, MLP units, heads within a KV group and KV
groups of a decoder. They are not discovered by default (``PERMUTATION_KINDS``): a
permutation changes no optimizer's speed (every optimizer here is equivariant under
coordinate permutations), but an audit must see through them.
"""
from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from convrate.errors import InvalidInputError
from convrate.models.families import bert, llama, sequential
from convrate.models.symmetry import TorchSymmetry

PERMUTATION_KINDS = sequential.PERMUTATION_KINDS + bert.PERMUTATION_KINDS + llama.PERMUTATION_KINDS


def discover_symmetries(model: Any, *, layers: Sequence[int] | None = None, heads: Sequence[int] | None = None,
                        kinds: Sequence[str] | None = None, input_shape: Sequence[int] | None = None,
                        permutations: bool = False) -> list[TorchSymmetry]:
    """Every applicable group of a ``LoadedModel`` (or module): S2 groups of an
    ``nn.Sequential`` zoo net, S1 per-head QK and VO groups of BERT attention, S4-S7 groups of
    a Llama-layout decoder. ``layers`` / ``heads`` restrict attention groups (layer index =
    encoder/decoder layer, heads = KV groups for a decoder; for S2 groups the index of the
    producing layer); ``kinds`` restricts the kinds (default: each family's continuous
    groups, and its permutation groups too with ``permutations``). Groups come in composition
    order: permutations before the continuous groups acting on the same units. Raises
    InvalidInputError when the module has no known symmetry structure."""
    module = getattr(model, "module", model)
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    if isinstance(module, nn.Sequential):
        if shape is None:
            raise InvalidInputError("discovering S2 groups of an nn.Sequential needs its input_shape")
        wanted = _kinds(sequential, kinds, permutations)
        syms = [s for s in sequential.sequential_symmetries(module, shape) if s.kind in wanted]
        if layers is not None:
            syms = [s for s in syms if s.layer in layers]
        return syms
    if llama.is_decoder(module):
        return llama.decoder_symmetries(module, layers, heads, _kinds(llama, kinds, permutations))
    if bert.attention_modules(module):
        return bert.bert_symmetries(module, layers, heads, _kinds(bert, kinds, permutations))
    raise InvalidInputError(f"no symmetry discovery for {type(module).__name__} "
                            "(supported: zoo nn.Sequential MLP/CNN, BERT self-attention, Llama-layout decoders)")


def _kinds(family: Any, kinds: Sequence[str] | None, permutations: bool) -> tuple[str, ...]:
    base = family.KINDS if kinds is None else tuple(kinds)
    return base + (family.PERMUTATION_KINDS if permutations else ())


__all__ = ["PERMUTATION_KINDS", "discover_symmetries", "bert", "llama", "sequential"]
