"""Float64 all the way through a Hugging Face decoder (llama, qwen2, mistral).

transformers computes two steps of these models in float32 whatever the weights' dtype:

    RMSNorm      y = gamma * (x / sqrt(mean(x^2) + eps))   with x cast to float32 first
    attention    softmax(q k^T / sqrt(d) + mask)           with ``dtype=torch.float32``

so a float64 model is only float32-accurate there (relative error ~ u_32 = 6e-8 in the
outputs; Hessian-vector products by different AD paths then differ by ~1e-8 relative, where
float64 round-off would give ~1e-14). ``exact_float64(module)`` makes every RMSNorm and every
eager attention of the decoders inside ``module`` compute in the input's dtype when that is
float64, and leaves every other dtype on transformers' own path (bit-identical). The rotary
cos/sin stay as transformers computes them (float32 constants of the positions: a fixed part
of the function, the same for every parameter vector, and still exact 2x2 rotation blocks in
the rotate_half layout). In place; returns the module.
"""
from __future__ import annotations

import copy
import types
from typing import Any

import torch
from torch import nn

#: the attention implementation registered with transformers for float64 softmax
ATTENTION_NAME = "convrate_eager_float64"


def _rmsnorm_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    if hidden_states.dtype != torch.float64:
        return type(self).forward(self, hidden_states)
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def _attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' eager attention with the softmax in float64 for float64 queries."""
    from transformers.models.llama.modeling_llama import eager_attention_forward, repeat_kv

    if query.dtype != torch.float64:
        return eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    k = repeat_kv(key, module.num_key_value_groups)
    v = repeat_kv(value, module.num_key_value_groups)
    w = torch.matmul(query, k.transpose(2, 3)) * scaling
    if attention_mask is not None:
        w = w + attention_mask
    w = nn.functional.softmax(w, dim=-1)
    w = nn.functional.dropout(w, p=dropout, training=module.training)
    return torch.matmul(w, v).transpose(1, 2).contiguous(), w


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, _attention)


#: the classes patched (their float32 islands are exactly the two of the module doc)
RMSNORMS = ("LlamaRMSNorm", "Qwen2RMSNorm", "MistralRMSNorm")
ATTENTIONS = ("LlamaAttention", "Qwen2Attention", "MistralAttention")


def exact_float64(module: nn.Module) -> nn.Module:
    """See the module doc. The attention modules get a private copy of the config naming
    ``ATTENTION_NAME`` (the model's own config, which builds the eager additive mask, is
    untouched)."""
    for m in module.modules():
        name = type(m).__name__
        if name in RMSNORMS:
            m.forward = types.MethodType(_rmsnorm_forward, m)
        cfg = getattr(m, "config", None)
        if name in ATTENTIONS and getattr(cfg, "_attn_implementation", None) in ("eager", ATTENTION_NAME):
            _register()
            private = copy.copy(cfg)
            private._attn_implementation = ATTENTION_NAME
            m.config = private
    return module


__all__ = ["exact_float64", "ATTENTION_NAME", "RMSNORMS", "ATTENTIONS"]
