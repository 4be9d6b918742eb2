"""Family: Hugging Face decoder LMs (``model_type`` llama, qwen2, mistral) -- reading and writing.

One code path for the three families: they share the tensor layout
``model.embed_tokens``, per layer ``self_attn.{q,k,v,o}_proj`` (Qwen2: q/k/v biases; Llama:
optional ``attention_bias``), ``mlp.{gate,up,down}_proj``, ``input_layernorm``,
``post_attention_layernorm``, then ``model.norm`` and ``lm_head`` (absent from the files when
``tie_word_embeddings``: the head *is* the embedding table). Every shape follows from
config.json: hidden d, heads h, KV heads g, ``head_dim`` (default d / h), intermediate m,
vocabulary V -- q_proj (h·head_dim, d), k/v_proj (g·head_dim, d), o_proj (d, h·head_dim),
gate/up (m, d), down (d, m), embed/lm_head (V, d).

Layouts: one ``model.safetensors``, or ``model.safetensors.index.json`` (``weight_map``:
tensor name -> shard file) plus the shards it names. The released dtype (bf16 / fp16 / fp32 /
fp64) is kept: nothing is cast on loading (where the files mix dtypes, the narrowest type that
holds all of them exactly: float32, or float64 if any tensor is float64). The model is
``AutoModelForCausalLM`` with eager attention (the SDPA kernel has no double backward on CPU),
in eval mode; its output is the logits (batch, sequence, V).

Before transformers sees the directory every file is checked, tensor by tensor (streaming, so
memory stays at one tensor): a missing file or shard, a truncated or unparseable file, an
index naming tensors its shard lacks (or a shard holding tensors the index does not name),
a tensor missing or unexpected for the config, a shape disagreeing with the config, NaN/Inf
entries -- each raises ``InvalidInputError`` with one line. Saving writes the same layout
(the source's shard map when it was sharded) in the model's dtype, atomically per file, and
never into the directory the model was read from.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from convrate.errors import InvalidInputError
from convrate.models.io import _one_line, _read_json

DECODER_TYPES = ("llama", "qwen2", "mistral")
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
CONFIG = "config.json"
#: files of a release copied next to a saved checkpoint when present (tokenizer, generation)
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
              "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "generation_config.json")
#: a tokenizer is present when one of these is (tokenizer.json: fast; vocab.json + merges: BPE;
#: tokenizer.model: sentencepiece)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model")


# ---------------------------------------------------------------- layout
def weight_layout(path: Path) -> dict[str, str] | None:
    """None for a single ``model.safetensors``; else the index's ``weight_map`` (tensor ->
    shard file name), validated: a JSON object whose shards are plain file names that exist."""
    if (path / WEIGHTS).is_file():
        return None
    index = path / INDEX
    if not index.is_file():
        raise InvalidInputError(f"{path}: missing weights: neither {WEIGHTS} nor {INDEX}")
    wm = _read_json(index).get("weight_map")
    if not isinstance(wm, dict) or not wm or not all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
        raise InvalidInputError(f"{index}: expected a non-empty 'weight_map' object of tensor name -> shard file")
    for shard in sorted(set(wm.values())):
        if Path(shard).name != shard or shard in ("", ".", ".."):
            raise InvalidInputError(f"{index}: shard {shard!r} is not a plain file name in the directory")
        if not (path / shard).is_file():
            raise InvalidInputError(f"{index}: missing shard {shard} (named for "
                                    f"{sum(v == shard for v in wm.values())} tensors)")
    return dict(wm)


def _shard_tensors(file: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of one safetensors file, read one tensor at a time."""
    from safetensors import safe_open

    if file.stat().st_size < 8:
        raise InvalidInputError(f"{file}: truncated safetensors file ({file.stat().st_size} bytes)")
    try:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
    except InvalidInputError:
        raise
    except Exception as e:  # SafetensorError (header, incomplete file), OSError
        raise InvalidInputError(f"{file}: not a valid safetensors file ({_one_line(e)})") from None


def scan_weights(path: Path, layout: dict[str, str] | None) -> dict[str, tuple[tuple[int, ...], torch.dtype, str]]:
    """name -> (shape, dtype, file) for every stored tensor, after checking every tensor is
    finite and every shard holds exactly the tensors the index assigns to it."""
    files = [WEIGHTS] if layout is None else sorted(set(layout.values()))
    found: dict[str, tuple[tuple[int, ...], torch.dtype, str]] = {}
    for fname in files:
        for name, t in _shard_tensors(path / fname):
            if name in found:
                raise InvalidInputError(f"{path / fname}: tensor {name!r} is stored twice (also in {found[name][2]})")
            if layout is not None and layout.get(name) != fname:
                raise InvalidInputError(f"{path / fname}: holds tensor {name!r}, which {INDEX} "
                                        + (f"assigns to {layout[name]}" if name in layout else "does not list"))
            if t.is_floating_point():
                bad = int((~torch.isfinite(t)).sum())
                if bad:
                    raise InvalidInputError(f"{path / fname}: tensor {name!r} has {bad} non-finite (NaN/Inf) entries")
            found[name] = (tuple(t.shape), t.dtype, fname)
    if layout is not None:
        absent = sorted(set(layout) - set(found))
        if absent:
            raise InvalidInputError(f"{path / INDEX}: names {len(absent)} tensor(s) absent from their shards, "
                                    f"e.g. {absent[0]!r} in {layout[absent[0]]}")
    return found


def release_dtype(stored: Mapping[str, tuple[tuple[int, ...], torch.dtype, str]]) -> torch.dtype:
    """The dtype of the floating tensors; when they differ, the narrowest that holds every one
    exactly (float32, or float64 if any is float64)."""
    kinds = {dt for _, dt, _ in stored.values() if dt.is_floating_point}
    if not kinds:
        raise InvalidInputError("the checkpoint holds no floating-point tensors")
    if len(kinds) == 1:
        return kinds.pop()
    return torch.float64 if torch.float64 in kinds else torch.float32


# ---------------------------------------------------------------- load
def _config(path: Path, n_layers: int | None) -> Any:
    import transformers

    overrides: dict[str, Any] = {"attn_implementation": "eager"}
    if n_layers is not None:
        overrides["num_hidden_layers"] = n_layers
    try:
        return transformers.AutoConfig.from_pretrained(str(path), local_files_only=True, **overrides)
    except Exception as e:
        raise InvalidInputError(f"{path / CONFIG}: not a usable configuration ({_one_line(e)})") from None


def _expected(cfg: Any) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """(name -> shape of every tensor the config implies, names that may be absent: the tied head)."""
    import transformers

    with torch.device("meta"):
        skeleton = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    shapes = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    optional = set((getattr(skeleton, "_tied_weights_keys", None) or {})) if cfg.tie_word_embeddings else set()
    return shapes, optional


def load_decoder(path: Path, config: Mapping[str, Any], n_layers: int | None = None) -> Any:
    """A ``LoadedModel`` (kind = model_type, fmt "hf") of a llama / qwen2 / mistral directory;
    ``n_layers`` keeps the first k decoder layers. See the module doc for what is checked."""
    from convrate.models.io import LoadedModel, _hf_quiet

    mt = config.get("model_type")
    total = config.get("num_hidden_layers")
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise InvalidInputError(f"{path / CONFIG}: num_hidden_layers must be a positive integer, got {total!r}")
    if n_layers is not None and (isinstance(n_layers, bool) or not isinstance(n_layers, int)
                                 or not 1 <= n_layers <= total):
        raise InvalidInputError(f"n_layers must be an integer in [1, {total}], got {n_layers!r}")
    layout = weight_layout(path)
    stored = scan_weights(path, layout)
    dtype = release_dtype(stored)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    with _hf_quiet():
        cfg = _config(path, n_layers)
        shapes, optional = _expected(cfg)
        where = path / (WEIGHTS if layout is None else INDEX)
        for name, shape in shapes.items():
            if name not in stored:
                if name in optional:
                    continue
                raise InvalidInputError(f"{where}: missing tensor {name!r} required by {path / CONFIG}")
            if stored[name][0] != shape:
                raise InvalidInputError(f"{path / stored[name][2]}: tensor {name!r} has shape {list(stored[name][0])}, "
                                        f"{CONFIG} implies {list(shape)}")
        kept = n_layers or total
        dropped = {n for n in stored if n_layers is not None and (_layer_of(n) or -1) >= kept}  # truncated layers
        extra = sorted(n for n in stored if n not in shapes and n not in dropped and n not in _inserted_tensors(path))
        if extra:
            raise InvalidInputError(f"{where}: unexpected tensor(s) {', '.join(extra[:3])} not implied by {path / CONFIG}")
        try:
            model, info = transformers.AutoModelForCausalLM.from_pretrained(
                str(path), local_files_only=True, output_loading_info=True, dtype=dtype, config=cfg)
        except Exception as e:
            raise InvalidInputError(f"{path}: transformers could not load the model ({_one_line(e)})") from None
    left = sorted(set(info.get("missing_keys") or ()) | set(info.get("mismatched_keys") or ()))
    if left:
        raise InvalidInputError(f"{path}: transformers left tensors uninitialised: {left[:3]}")
    if model.config._attn_implementation != "eager":
        raise InvalidInputError(f"{path}: could not select the eager attention implementation")
    model.eval()
    meta = {"n_layers": kept, "n_layers_total": total, "release_dtype": str(dtype).removeprefix("torch."),
            "weight_map": layout, "tied_embeddings": bool(cfg.tie_word_embeddings),
            "tokenizer": has_tokenizer(path)}
    return LoadedModel(model, mt, "hf", model.config.to_dict(), path, None, meta)


def _inserted_tensors(path: Path) -> set[str]:
    """Tensors of inserted compensation layers that ``convrate_inserted.json`` describes (a
    grown release; ``inserted_io`` attaches them after loading)."""
    from convrate.models.inserted_io import INSERTED_JSON

    if not (path / INSERTED_JSON).is_file():
        return set()
    layers = _read_json(path / INSERTED_JSON).get("layers")
    return {v for spec in (layers if isinstance(layers, list) else []) if isinstance(spec, dict)
            for v in (spec.get("weight"), spec.get("bias")) if isinstance(v, str)}


def _layer_of(name: str) -> int | None:
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "model" and parts[1] == "layers" and parts[2].isdigit():
        return int(parts[2])
    return None


def has_tokenizer(path: Path | None) -> bool:
    """Whether a directory holds tokenizer files (``TOKENIZER_FILES``)."""
    return path is not None and any((Path(path) / f).is_file() for f in TOKENIZER_FILES)


# ---------------------------------------------------------------- save
def _state_to_save(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without tied duplicates (a tensor sharing storage with an earlier one,
    i.e. the tied ``lm_head.weight``), contiguous, on the CPU."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, t in module.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().contiguous().cpu()
    return out


def _write_file(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def shard_map(state: Mapping[str, torch.Tensor], max_shard_bytes: int) -> dict[str, str]:
    """Greedy split in state order: a new shard starts when the next tensor would push the
    current one past ``max_shard_bytes`` (a tensor larger than that gets a shard of its own).
    File names ``model-0000k-of-0000n.safetensors``."""
    groups: list[list[str]] = [[]]
    size = 0
    for name, t in state.items():
        b = t.numel() * t.element_size()
        if groups[-1] and size + b > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += b
    n = len(groups)
    return {name: f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i, g in enumerate(groups) for name in g}


def save_decoder(model: Any, out: Path, *, max_shard_bytes: int | None = None) -> Path:
    """Write ``model`` (a decoder ``LoadedModel``) into ``out``: config.json (dtype = the
    weights'), the weights in the source's layout (its shard map when it was sharded and names
    the same tensors; ``max_shard_bytes`` forces a greedy sharding), and the side files of the
    source directory (tokenizer, generation config), and ``convrate_inserted.json`` for a release
    grown by inserted compensation layers."""
    from safetensors.torch import save_file

    state = _state_to_save(model.module)
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    dtype = dtypes.pop() if len(dtypes) == 1 else model.dtype
    layout = model.info.get("weight_map")
    if max_shard_bytes is not None:
        if isinstance(max_shard_bytes, bool) or not isinstance(max_shard_bytes, int) or max_shard_bytes < 1:
            raise InvalidInputError(f"max_shard_bytes must be a positive integer, got {max_shard_bytes!r}")
        layout = shard_map(state, max_shard_bytes)
    elif layout is not None and not set(state) <= set(layout):
        layout = None  # the module no longer matches the source's map: one file
    cfg = model.module.config.to_dict()
    cfg["dtype"] = str(dtype).removeprefix("torch.")
    cfg.pop("torch_dtype", None)
    cfg.pop("_attn_implementation_autoset", None)
    _write_file(out / CONFIG, lambda p: p.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n"))
    for stale in [out / WEIGHTS, out / INDEX, *out.glob("model-*-of-*.safetensors")]:
        if stale.is_file():
            stale.unlink()
    if layout is None:
        _write_file(out / WEIGHTS, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    else:
        used = {k: v for k, v in layout.items() if k in state}
        for shard in sorted(set(used.values())):
            part = {k: state[k] for k in state if used[k] == shard}
            _write_file(out / shard, lambda p, part=part: save_file(part, str(p), metadata={"format": "pt"}))
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(used.items()))}
        _write_file(out / INDEX, lambda p: p.write_text(json.dumps(index, indent=2) + "\n"))
    from convrate.models.inserted_io import write_hf_inserted  # grown releases: convrate_inserted.json

    write_hf_inserted(model, out)
    if model.source is not None:
        for rel in SIDE_FILES:
            src = Path(model.source) / rel
            if src.is_file():
                _write_file(out / rel, lambda p, src=src: shutil.copyfile(src, p))
    return out


__all__ = ["DECODER_TYPES", "SIDE_FILES", "TOKENIZER_FILES", "load_decoder", "save_decoder", "weight_layout",
           "scan_weights", "release_dtype", "shard_map", "has_tokenizer"]
