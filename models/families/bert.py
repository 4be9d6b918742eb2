"""Family: BERT-style encoders (THEORY.md S1 in self-attention).

* S1 ``attention-qk`` per head: W_Q -> A W_Q, b_Q -> A b_Q, W_K -> A^-T W_K, b_K -> A^-T b_K.
  Queries become A q and keys A^-T k, so every score (A q)^T (A^-T k) = q^T k is unchanged,
  biases included.
* S1 ``attention-vo`` per head: W_V -> A W_V, b_V -> A b_V, W_O[:, head] -> W_O[:, head] A^-1.
  The head's context sum_j p_ij (W_V x_j + b_V) is linear in the value vectors
  (sum_j p_ij = 1), so W_O context is unchanged.
* P ``attention-head-permutation`` per layer (not discovered by default): the heads permuted
  together with their query, key, value rows (and biases) and output columns (d per head).
"""
from __future__ import annotations

import re
from typing import Sequence

from torch import nn

from convrate.models.symmetry import Slot, TorchSymmetry, record_shapes

KINDS = ("attention-qk", "attention-vo")
PERMUTATION_KINDS = ("attention-head-permutation",)


def attention_modules(module: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """(prefix, self-attention, its output projection) for every BERT-style attention block."""
    found = []
    for name, m in module.named_modules():
        sa = getattr(m, "self", None)
        outp = getattr(getattr(m, "output", None), "dense", None)
        if (sa is not None and isinstance(outp, nn.Linear)
                and all(isinstance(getattr(sa, k, None), nn.Linear) for k in ("query", "key", "value"))
                and hasattr(sa, "num_attention_heads") and hasattr(sa, "attention_head_size")):
            found.append((name, sa, outp))
    return found


def bert_symmetries(module: nn.Module, layers: Sequence[int] | None, heads: Sequence[int] | None,
                     kinds: Sequence[str]) -> list[TorchSymmetry]:
    named = dict(module.named_parameters())
    out: list[TorchSymmetry] = []
    for prefix, sa, outp in attention_modules(module):
        m = re.search(r"layer\.(\d+)\.", prefix + ".")
        li = int(m.group(1)) if m else None
        if layers is not None and li not in layers:
            continue
        nh, d = int(sa.num_attention_heads), int(sa.attention_head_size)
        p = f"{prefix}.self" if prefix else "self"
        o = f"{prefix}.output.dense" if prefix else "output.dense"
        if "attention-head-permutation" in kinds and nh > 1:
            slots = []
            for part in ("query", "key", "value"):
                slots.append(Slot(f"{p}.{part}.weight", 0, 0, nh * d, "A", d))
                if getattr(sa, part).bias is not None:
                    slots.append(Slot(f"{p}.{part}.bias", 0, 0, nh * d, "A", d))
            slots.append(Slot(f"{o}.weight", 1, 0, nh * d, "A_invT", d))
            tag = f"layer{li}" if li is not None else prefix
            out.append(record_shapes(TorchSymmetry("P", "attention-head-permutation", f"{tag}.heads", nh,
                                                   tuple(slots), li, element="permutation"), named))
        for h in range(nh):
            if heads is not None and h not in heads:
                continue
            lo, hi = h * d, (h + 1) * d
            tag = f"layer{li}.head{h}" if li is not None else f"{prefix}.head{h}"
            if "attention-qk" in kinds:
                slots = [Slot(f"{p}.query.weight", 0, lo, hi, "A"), Slot(f"{p}.key.weight", 0, lo, hi, "A_invT")]
                if sa.query.bias is not None:
                    slots.append(Slot(f"{p}.query.bias", 0, lo, hi, "A"))
                if sa.key.bias is not None:
                    slots.append(Slot(f"{p}.key.bias", 0, lo, hi, "A_invT"))
                out.append(record_shapes(TorchSymmetry("S1", "attention-qk", f"{tag}.qk", d, tuple(slots), li, h), named))
            if "attention-vo" in kinds:
                slots = [Slot(f"{p}.value.weight", 0, lo, hi, "A"), Slot(f"{o}.weight", 1, lo, hi, "A_invT")]
                if sa.value.bias is not None:
                    slots.append(Slot(f"{p}.value.bias", 0, lo, hi, "A"))
                out.append(record_shapes(TorchSymmetry("S1", "attention-vo", f"{tag}.vo", d, tuple(slots), li, h), named))
    return out
