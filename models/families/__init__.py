"""convrate.models.families: which tensors of each architecture form which symmetry groups.

One module per architecture family (``sequential``: zoo MLP/CNN relu chains; ``bert``:
BERT-family self-attention). ``discover_symmetries`` dispatches on the module. Families know
nothing of defenses, attacks or audits.
"""
from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from convrate.errors import InvalidInputError
from convrate.models.families import bert, sequential
from convrate.models.symmetry import TorchSymmetry


def discover_symmetries(model: Any, *, layers: Sequence[int] | None = None, heads: Sequence[int] | None = None,
                        kinds: Sequence[str] = ("relu-linear", "relu-conv", "relu-conv-linear",
                                                "attention-qk", "attention-vo"),
                        input_shape: Sequence[int] | None = None) -> list[TorchSymmetry]:
    """Every applicable group of a ``LoadedModel`` (or module): S2 groups of an
    ``nn.Sequential`` zoo net, S1 per-head QK and VO groups of BERT attention. ``layers`` /
    ``heads`` restrict attention groups (layer index = encoder layer; for S2 groups the
    index of the producing layer); ``kinds`` restricts the kinds. Raises InvalidInputError
    when the module has no known symmetry structure."""
    module = getattr(model, "module", model)
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    if isinstance(module, nn.Sequential):
        if shape is None:
            raise InvalidInputError("discovering S2 groups of an nn.Sequential needs its input_shape")
        syms = [s for s in sequential.sequential_symmetries(module, shape) if s.kind in kinds]
        if layers is not None:
            syms = [s for s in syms if s.layer in layers]
        return syms
    if bert.attention_modules(module):
        return bert.bert_symmetries(module, layers, heads, kinds)
    raise InvalidInputError(f"no symmetry discovery for {type(module).__name__} "
                            "(supported: zoo nn.Sequential MLP/CNN, BERT self-attention)")


__all__ = ["discover_symmetries", "bert", "sequential"]
