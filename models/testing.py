"""Small deterministic models for property tests: random zoo MLP/CNN, a tiny BERT, tiny decoder LMs.

Everything is built from a seed in float64, so a Hypothesis example is reproducible and
cheap (milliseconds); the tiny BERT and decoders use transformers' own classes with eager
attention, so the symmetry discovery runs on the real attention module.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from convrate.models.io import LoadedModel, zoo_model
from convrate.models.runtime import single_thread  # noqa: F401  (re-exported for the tests)


def mlp_arch(widths: Sequence[int], activation: str = "relu") -> dict[str, Any]:
    """A zoo MLP arch with layer widths [n_in, h_1, ..., n_out]."""
    return {"kind": "mlp", "sizes": list(widths), "activation": activation, "dtype": "float64"}


def cnn_arch(channels: Sequence[int], side: int = 6, n_out: int = 3, pool: str = "maxpool2d") -> dict[str, Any]:
    """A zoo CNN on 1 x side x side: per channel count Conv(3, pad 1) -> ReLU -> pool(2) ...
    -> Flatten -> Linear(n_out); pools stop once the side would drop below 1."""
    layers: list[dict[str, Any]] = []
    s = side
    for c in channels:
        layers += [{"type": "conv2d", "out_channels": c, "kernel_size": 3, "padding": 1}, {"type": "relu"}]
        if s >= 2:
            layers.append({"type": pool, "kernel_size": 2})
            s //= 2
    layers += [{"type": "flatten"}, {"type": "linear", "out_features": n_out}]
    return {"kind": "cnn", "input_shape": [1, side, side], "layers": layers, "dtype": "float64"}


def random_zoo(arch: dict[str, Any], seed: int) -> LoadedModel:
    """torch's default initialisation under ``manual_seed(seed)``, biases redrawn N(0, 0.1)
    so that they are never all zero."""
    m = zoo_model(arch, seed=seed)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for n, p in m.module.named_parameters():
            if n.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return m


def tiny_bert(seed: int = 0, hidden: int = 4, heads: int = 2, layers: int = 1, vocab: int = 16,
              intermediate: int = 8, max_len: int = 8) -> LoadedModel:
    """A random ``BertModel`` (eager attention, float64, eval mode) as a LoadedModel."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=intermediate, max_position_embeddings=max_len,
                     attn_implementation="eager")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(cfg).double().eval()
    return LoadedModel(model, "bert", "hf", model.config.to_dict(), None, None, {"n_layers": layers})


def bert_inputs(model: LoadedModel, batch: int, seq: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, int(model.config["vocab_size"]), (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones(batch, seq, dtype=torch.long)}


DECODER_TYPES = ("llama", "qwen2", "mistral")


def tiny_decoder(model_type: str = "llama", seed: int = 0, *, hidden: int = 16, heads: int = 4, kv_heads: int = 2,
                 head_dim: int | None = None, layers: int = 1, vocab: int = 32, intermediate: int = 24,
                 max_len: int = 32, tie_embeddings: bool = False, attention_bias: bool = False,
                 rope_theta: float = 10000.0) -> LoadedModel:
    """A random Hugging Face decoder LM (``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` /
    ``MistralForCausalLM``; RoPE, GQA with ``kv_heads`` key/value heads, SwiGLU, RMSNorm) in
    float64, eager attention, eval mode, as a LoadedModel of kind ``model_type``, fmt "hf".
    ``attention_bias`` applies to Llama (q, k, v, o biases); Qwen2 always has q, k, v biases.
    RMSNorm weights are drawn around 1 (not all ones) so that the norm groups are exercised."""
    import transformers

    if model_type not in DECODER_TYPES:
        raise ValueError(f"model_type must be one of {DECODER_TYPES}, got {model_type!r}")
    Config = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
              "mistral": transformers.MistralConfig}[model_type]
    Model = {"llama": transformers.LlamaForCausalLM, "qwen2": transformers.Qwen2ForCausalLM,
             "mistral": transformers.MistralForCausalLM}[model_type]
    kw: dict[str, Any] = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                              num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                              max_position_embeddings=max_len, tie_word_embeddings=tie_embeddings,
                              rope_theta=rope_theta, attn_implementation="eager")
    if head_dim is not None:
        kw["head_dim"] = head_dim
    if model_type == "llama":
        kw["attention_bias"] = attention_bias
    cfg = Config(**kw)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Model(cfg).double().eval()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("norm.weight"):
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
                elif n.endswith("bias"):
                    p.copy_(0.1 * torch.randn_like(p))
    return LoadedModel(model, model_type, "hf", model.config.to_dict(), None, None, {"n_layers": layers})


def decoder_inputs(model: LoadedModel, batch: int, seq: int, seed: int) -> dict[str, torch.Tensor]:
    """Deterministic token ids (uniform over the vocabulary) and an all-ones attention mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, int(model.config["vocab_size"]), (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones(batch, seq, dtype=torch.long)}

