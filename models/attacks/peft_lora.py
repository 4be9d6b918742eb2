"""LoRA on Hugging Face decoder LMs through ``peft``, the library attackers use.

Every Hugging Face ``PreTrainedModel`` inside the attacked module (a decoder under
``tasks.NextTokenLM``, or such a model itself) is replaced by
``peft.get_peft_model(model, LoraConfig(...))``: each targeted ``nn.Linear`` computes
y = W x + b + s B A x with B = 0 and s = alpha / r, so the wrapped model starts at exactly the
base function; only A and B (and parameters matching ``extra_trainable``) train. A (r x in) is
drawn as the in-project LoRA draws it (``lora.lora_a_init``: U(-1/sqrt in, 1/sqrt in), the
distribution of peft's default Kaiming-uniform(a = sqrt 5), from a float64 generator seeded
with ``seed``, in module order), so peft and the in-project LoRA on the same targets start at
the same adapters and compute the same function step by step.

Default targets: the attention and MLP projections -- ``q_proj k_proj v_proj o_proj
gate_proj up_proj down_proj`` of Llama / Qwen2 / Mistral; ``query key value`` and the
``dense`` layers of the encoder blocks of BERT (not the pooler, which the task heads do not
read). ``targets`` (regular expressions, ``re.search`` on the module names of the whole
attacked module, as for the in-project LoRA) overrides them.

Under a defense the adapters train next to the released weights theta' = T theta, exactly as
the in-project LoRA's do (same adapters, same function); the sweeps set it against the same
local-quadratic reference as plain SGD, kappa(T)^2 (``experiments.REFERENCE_EXPONENT``; a
reference, not a theorem of THEORY.md).

The in-project ``lora.LoRALinear`` stays where peft cannot serve: the zoo ``nn.Sequential``
nets (no Hugging Face model), R1 modules (``recovery.R1Module`` evaluates the architecture at
theta' = T phi by parameter name and reads each adapted layer's effective weight W + s B A,
which peft's layers do not expose), and BERT encoders (the report's LoRA runs and their R1
replays, which must start from the same adapters).
"""
from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import torch
from torch import nn

from convrate.errors import InvalidInputError
from convrate.models.attacks.lora import Targets, _matches, _patterns, lora_a_init

#: default LoRA targets (last component of the module name) per Hugging Face family
DECODER_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ENCODER_PROJECTIONS = ("query", "key", "value", "dense")


def hf_models(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of the outermost ``transformers.PreTrainedModel`` submodules (name ""
    when ``model`` is one); empty without transformers."""
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - optional dependency
        return []
    found: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if isinstance(m, PreTrainedModel) and not any(p == "" or name.startswith(p + ".") for p, _ in found):
            found.append((name, m))
    return found


def _default_target(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    if last in DECODER_PROJECTIONS:
        return True
    return last in ENCODER_PROJECTIONS and "pooler" not in name.split(".")


def peft_wrap(model: nn.Module, rank: int, targets: Targets = None, *, alpha: float | None = None, seed: int = 0,
              extra_trainable: Targets = None) -> tuple[nn.Module, list[nn.Parameter]]:
    """(copy of ``model`` with peft LoRA of rank ``rank`` on its Hugging Face models, its
    trainable parameters); the input is not modified. A is drawn by ``lora_a_init`` from a
    generator seeded with ``seed`` (module doc); the caller's RNG state is untouched."""
    from peft import LoraConfig, get_peft_model

    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise InvalidInputError(f"LoRA rank must be a positive integer, got {rank!r}")
    if alpha is not None and not (math.isfinite(alpha) and alpha > 0):
        raise InvalidInputError(f"LoRA alpha must be positive and finite, got {alpha!r}")
    pats = _patterns(targets, "LoRA target")
    net = copy.deepcopy(model)
    hf = hf_models(net)
    if not hf:
        raise InvalidInputError("peft LoRA needs a Hugging Face model inside the attacked module")
    for p in net.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))  # peft's own draws, overwritten below
        for prefix, sub in hf:
            names = [n for n, m in sub.named_modules() if isinstance(m, nn.Linear) and n
                     and (_default_target(n) if pats is None else _matches(f"{prefix}.{n}" if prefix else n, pats))]
            if not names:
                raise InvalidInputError(f"no nn.Linear layer of {type(sub).__name__} matches the LoRA targets "
                                        f"{targets!r}")
            cfg = LoraConfig(r=rank, lora_alpha=float(alpha if alpha is not None else rank), lora_dropout=0.0,
                             bias="none", target_modules=names)  # full names: exact matches
            with warnings.catch_warnings():  # peft calls transformers APIs deprecated in v5
                warnings.simplefilter("ignore", FutureWarning)
                wrapped = get_peft_model(sub, cfg)
            with torch.no_grad():
                for n in names:
                    a_lin = wrapped.base_model.model.get_submodule(n).lora_A["default"]
                    a_lin.weight.copy_(lora_a_init(rank, a_lin.in_features, g))
            if prefix:
                parent, _, child = prefix.rpartition(".")
                setattr(net.get_submodule(parent) if parent else net, child, wrapped)
            else:
                net = wrapped
    extra = _patterns(extra_trainable, "extra_trainable")
    if extra is not None:
        for n, p in net.named_parameters():
            if _matches(n, extra):
                p.requires_grad_(True)
    return net, [p for p in net.parameters() if p.requires_grad]


def lora_parameters(model: nn.Module) -> int:
    """Number of peft adapter parameters (``lora_A`` / ``lora_B`` weights) in ``model``."""
    return sum(p.numel() for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n)


def uses_peft(model: Any) -> bool:
    """Whether ``Attack`` puts LoRA on ``model`` through peft: it holds a Hugging Face decoder
    (llama, qwen2, mistral) and no R1 module (one with ``defended_parameters``)."""
    from convrate.models.families.llama_load import DECODER_TYPES

    if not isinstance(model, nn.Module) or any(hasattr(m, "defended_parameters") for m in model.modules()):
        return False
    return any(getattr(getattr(m, "config", None), "model_type", None) in DECODER_TYPES for _, m in hf_models(model))


__all__ = ["DECODER_PROJECTIONS", "ENCODER_PROJECTIONS", "hf_models", "peft_wrap", "lora_parameters", "uses_peft"]
