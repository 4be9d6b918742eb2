"""Checkpoint I/O: one ``load_model`` for the project's zoo format and for BERT-family
Hugging Face directories, and ``save_model`` that writes only into its output directory.

Formats
-------
* zoo: a directory with ``model.safetensors`` + ``arch.json``. ``arch.json`` is
  ``{"format": "convrate-zoo", "kind": "mlp"|"cnn", "input_shape": [...], "layers": [...],
  "dtype": "float64"}`` with layers ``{"type": "linear", "out_features": m}``,
  ``{"type": "conv2d", "out_channels": c, "kernel_size": k, "padding": p, "stride": s}``,
  ``{"type": "relu"}``, ``{"type": "leaky_relu", "negative_slope": a}``,
  ``{"type": "maxpool2d"|"avgpool2d", "kernel_size": k}``, ``{"type": "flatten"}``; an MLP may
  instead say ``{"kind": "mlp", "sizes": [64, 32, 10], "activation": "relu"}``. The module is
  an ``nn.Sequential`` in that order, so tensor names are ``"<index>.weight"`` etc.
* hf: ``config.json`` (``model_type`` "bert") + ``model.safetensors``, loaded with
  ``transformers.AutoModel.from_pretrained(path, attn_implementation="eager")`` offline (the
  SDPA kernel has no double backward on CPU).
* hf decoders: ``config.json`` (``model_type`` llama, qwen2, mistral) + ``model.safetensors``
  or a sharded ``model.safetensors.index.json``, read and written by
  ``families.llama_load`` (released dtype kept, same layout on saving).

Every malformed input raises ``InvalidInputError`` with one line naming the file and value.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from convrate.errors import InvalidInputError

WEIGHTS = "model.safetensors"
ARCH = "arch.json"
HF_CONFIG = "config.json"
ZOO_FORMAT = "convrate-zoo"
SUPPORTED_HF_TYPES = ("bert", "llama", "qwen2", "mistral")
DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
          "bfloat16": torch.bfloat16}
#: small files of an HF directory copied next to a saved checkpoint (tokenizer, pooling)
_HF_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
                  "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
                  "1_Pooling/config.json")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


def dtype_name(dtype: torch.dtype) -> str:
    for k, v in DTYPES.items():
        if v == dtype:
            return k
    raise InvalidInputError(f"unsupported dtype {dtype}")


# ---------------------------------------------------------------- the loaded model
@dataclass
class LoadedModel:
    """A torch module plus what is needed to run, describe and save it.

    ``kind`` is "mlp", "cnn" or "bert"; ``fmt`` "zoo" or "hf"; ``config`` the parsed
    ``arch.json`` (zoo) or ``config.json`` (hf); ``source`` the directory it was read from
    (``None`` when built in memory); ``input_shape`` the per-example input shape of a zoo
    model; ``info`` free-form provenance (training accuracy, truncation)."""

    module: nn.Module
    kind: str
    fmt: str
    config: dict[str, Any]
    source: Path | None = None
    input_shape: tuple[int, ...] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    def with_module(self, module: nn.Module, **info: Any) -> "LoadedModel":
        """The same description around another module (e.g. the defended one); not from disk."""
        return replace(self, module=module, source=None, info={**self.info, **info})

    def probe_inputs(self, n: int = 8, seed: int = 0, seq_len: int = 16,
                     dtype: torch.dtype | None = None) -> Any:
        """Deterministic probe inputs: N(0, 1) tensors of shape (n, *input_shape) for zoo
        models; for BERT a dict of ``input_ids`` (uniform over the vocabulary minus the
        first 1000 special/rare ids when it is large enough) and an all-ones
        ``attention_mask`` of shape (n, seq_len), seq_len capped at the model's
        max_position_embeddings."""
        g = torch.Generator().manual_seed(seed)
        if self.fmt == "zoo":
            assert self.input_shape is not None
            return torch.randn((n, *self.input_shape), generator=g, dtype=torch.float64).to(
                dtype or self.dtype)
        vocab = int(self.config["vocab_size"])
        seq_len = min(seq_len, int(self.config.get("max_position_embeddings", seq_len)))
        lo = 1000 if vocab > 2000 else 1
        ids = torch.randint(lo, vocab, (n, seq_len), generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones(n, seq_len, dtype=torch.long)}

    def output(self, inputs: Any, module: nn.Module | None = None) -> torch.Tensor:
        """Forward pass returning one tensor (BERT: ``last_hidden_state``)."""
        return model_output(self.module if module is None else module, inputs)


def model_output(module: nn.Module, inputs: Any) -> torch.Tensor:
    """Call ``module`` on a tensor or a dict of keyword inputs; unwrap HF outputs to the
    ``last_hidden_state`` tensor."""
    return unwrap_output(module(**inputs) if isinstance(inputs, Mapping) else module(inputs))


def unwrap_output(out: Any) -> torch.Tensor:
    """The tensor of a module's output (HF outputs: ``logits`` of a causal LM, else
    ``last_hidden_state``)."""
    if isinstance(out, torch.Tensor):
        return out
    if getattr(out, "logits", None) is not None:
        return out.logits
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    if isinstance(out, (tuple, list)):
        return out[0]
    raise InvalidInputError(f"cannot take a tensor output from {type(out).__name__}")


# ---------------------------------------------------------------- safetensors
def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read every tensor; InvalidInputError if missing, truncated or not parseable, or if any
    floating tensor holds NaN/Inf."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise InvalidInputError(f"missing weights file {path}")
    if path.stat().st_size < 8:
        raise InvalidInputError(f"{path}: truncated safetensors file ({path.stat().st_size} bytes)")
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises SafetensorError / OSError / ValueError
        raise InvalidInputError(f"{path}: not a valid safetensors file ({_one_line(e)})") from None
    for name, t in tensors.items():
        if t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise InvalidInputError(f"{path}: tensor {name!r} has {bad} non-finite (NaN/Inf) entries")
    return tensors


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InvalidInputError(f"missing file {path}")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"{path}: not valid JSON ({_one_line(e)})") from None
    if not isinstance(obj, dict):
        raise InvalidInputError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


# ---------------------------------------------------------------- zoo architectures
def _int(spec: Mapping[str, Any], key: str, where: str, default: int | None = None, minimum: int = 1) -> int:
    v = spec.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise InvalidInputError(f"{where}: {key} must be an integer >= {minimum}, got {v!r}")
    return v


def normalize_arch(arch: Mapping[str, Any], where: str = ARCH) -> dict[str, Any]:
    """Validate an arch description and expand the compact MLP form into ``layers``."""
    arch = dict(arch)
    kind = arch.get("kind")
    if kind not in ("mlp", "cnn"):
        raise InvalidInputError(f"{where}: unsupported architecture kind {kind!r} (supported: mlp, cnn)")
    if "sizes" in arch and "layers" not in arch:
        sizes = arch["sizes"]
        act = arch.get("activation", "relu")
        if act not in ("relu", "leaky_relu"):
            raise InvalidInputError(f"{where}: unsupported activation {act!r} (supported: relu, leaky_relu)")
        if not isinstance(sizes, list) or len(sizes) < 2:
            raise InvalidInputError(f"{where}: sizes must list at least 2 layer widths, got {sizes!r}")
        layers: list[dict[str, Any]] = []
        for i, m in enumerate(sizes[1:]):
            if i:
                layers.append({"type": act})
            layers.append({"type": "linear", "out_features": m})
        arch = {**arch, "input_shape": [sizes[0]], "layers": layers}
        arch.pop("sizes")
        arch.pop("activation", None)
    shape = arch.get("input_shape")
    if not isinstance(shape, list) or not shape or not all(isinstance(s, int) and s > 0 for s in shape):
        raise InvalidInputError(f"{where}: input_shape must be a list of positive integers, got {shape!r}")
    if not isinstance(arch.get("layers"), list) or not arch["layers"]:
        raise InvalidInputError(f"{where}: layers must be a non-empty list")
    dt = arch.get("dtype", "float32")
    if dt not in DTYPES:
        raise InvalidInputError(f"{where}: unsupported dtype {dt!r} (supported: {', '.join(DTYPES)})")
    arch["dtype"] = dt
    arch.setdefault("format", ZOO_FORMAT)
    build_zoo_module(arch, where, device="meta")  # validates every layer and the shape flow
    from convrate.models.inserted_io import validate_zoo_inserted  # inserted compensation layers

    validate_zoo_inserted(arch, where)
    return arch


def build_zoo_module(arch: Mapping[str, Any], where: str = ARCH, device: str | torch.device = "cpu") -> nn.Sequential:
    """Build the ``nn.Sequential`` an arch describes (weights uninitialised on "meta")."""
    shape = tuple(arch["input_shape"])
    dtype = DTYPES[arch.get("dtype", "float32")]
    mods: list[nn.Module] = []
    for i, spec in enumerate(arch["layers"]):
        w = f"{where}: layer {i}"
        if not isinstance(spec, Mapping):
            raise InvalidInputError(f"{w}: expected an object, got {spec!r}")
        t = spec.get("type")
        if t == "linear":
            if len(shape) != 1:
                raise InvalidInputError(f"{w}: linear needs a flat input, got shape {list(shape)} (add flatten)")
            m = _int(spec, "out_features", w)
            mods.append(nn.Linear(shape[0], m, bias=bool(spec.get("bias", True)), device=device, dtype=dtype))
            shape = (m,)
        elif t == "conv2d":
            if len(shape) != 3:
                raise InvalidInputError(f"{w}: conv2d needs a (C, H, W) input, got shape {list(shape)}")
            c = _int(spec, "out_channels", w)
            k = _int(spec, "kernel_size", w)
            p = _int(spec, "padding", w, 0, minimum=0)
            s = _int(spec, "stride", w, 1)
            h, wd = (shape[1] + 2 * p - k) // s + 1, (shape[2] + 2 * p - k) // s + 1
            if h < 1 or wd < 1:
                raise InvalidInputError(f"{w}: conv2d kernel {k} does not fit input {list(shape)}")
            mods.append(nn.Conv2d(shape[0], c, k, stride=s, padding=p, bias=bool(spec.get("bias", True)),
                                  device=device, dtype=dtype))
            shape = (c, h, wd)
        elif t in ("maxpool2d", "avgpool2d"):
            if len(shape) != 3:
                raise InvalidInputError(f"{w}: {t} needs a (C, H, W) input, got shape {list(shape)}")
            k = _int(spec, "kernel_size", w)
            if shape[1] < k or shape[2] < k:
                raise InvalidInputError(f"{w}: {t} kernel {k} does not fit input {list(shape)}")
            mods.append(nn.MaxPool2d(k) if t == "maxpool2d" else nn.AvgPool2d(k))
            shape = (shape[0], shape[1] // k, shape[2] // k)
        elif t == "flatten":
            mods.append(nn.Flatten())
            shape = (math.prod(shape),)
        elif t == "relu":
            mods.append(nn.ReLU())
        elif t == "leaky_relu":
            a = spec.get("negative_slope", 0.01)
            if not isinstance(a, (int, float)) or not math.isfinite(a) or a < 0:
                raise InvalidInputError(f"{w}: negative_slope must be a finite number >= 0, got {a!r}")
            mods.append(nn.LeakyReLU(float(a)))
        else:
            raise InvalidInputError(
                f"{w}: unsupported layer type {t!r} (supported: linear, conv2d, relu, leaky_relu, "
                "maxpool2d, avgpool2d, flatten)")
    return nn.Sequential(*mods)


def zoo_output_shape(arch: Mapping[str, Any]) -> tuple[int, ...]:
    net = build_zoo_module(arch, device="meta")
    with torch.no_grad():
        out = net(torch.empty((1, *arch["input_shape"]), device="meta", dtype=DTYPES[arch["dtype"]]))
    return tuple(out.shape[1:])


def zoo_model(arch: Mapping[str, Any], state: Mapping[str, torch.Tensor] | None = None,
              seed: int | None = None, source: Path | None = None, info: dict | None = None) -> LoadedModel:
    """A zoo model from an arch description and either a state dict or a seed (torch's
    default initialisation under ``torch.manual_seed(seed)``)."""
    arch = normalize_arch(arch)
    if state is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0 if seed is None else seed)
            net = build_zoo_module(arch)
    else:
        net = build_zoo_module(arch, device="meta")
        _check_state(net.state_dict(), state, source / WEIGHTS if source else Path(WEIGHTS))
        net.load_state_dict({k: v.to(DTYPES[arch["dtype"]]) for k, v in state.items()}, assign=True)
    net.eval()
    return LoadedModel(net, arch["kind"], "zoo", arch, source, tuple(arch["input_shape"]), dict(info or {}))


def _check_state(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], where: Path) -> None:
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing:
        raise InvalidInputError(f"{where}: missing tensor(s) {', '.join(missing[:5])} required by the architecture")
    if extra:
        raise InvalidInputError(f"{where}: unexpected tensor(s) {', '.join(extra[:5])} not in the architecture")
    for k, e in expected.items():
        if tuple(got[k].shape) != tuple(e.shape):
            raise InvalidInputError(
                f"{where}: tensor {k!r} has shape {list(got[k].shape)}, architecture expects {list(e.shape)}")
        if not got[k].is_floating_point():
            raise InvalidInputError(f"{where}: tensor {k!r} has non-floating dtype {got[k].dtype}")


# ---------------------------------------------------------------- Hugging Face BERT
def _hf_quiet():
    from transformers.utils import logging as hf_logging

    class _Quiet:
        def __enter__(self):
            self.bar = hf_logging.is_progress_bar_enabled()
            self.level = hf_logging.get_verbosity()
            hf_logging.disable_progress_bar()
            hf_logging.set_verbosity_error()

        def __exit__(self, *exc):
            if self.bar:
                hf_logging.enable_progress_bar()
            hf_logging.set_verbosity(self.level)

    return _Quiet()


def _load_hf(path: Path, n_layers: int | None) -> LoadedModel:
    config = _read_json(path / HF_CONFIG)
    mt = config.get("model_type")
    if mt not in SUPPORTED_HF_TYPES:
        raise InvalidInputError(
            f"{path / HF_CONFIG}: unsupported architecture model_type {mt!r} (supported: {', '.join(SUPPORTED_HF_TYPES)})")
    if mt != "bert":
        from convrate.models.families.llama_load import load_decoder

        return load_decoder(path, config, n_layers)
    total = config.get("num_hidden_layers")
    if not isinstance(total, int) or total < 1:
        raise InvalidInputError(f"{path / HF_CONFIG}: num_hidden_layers must be a positive integer, got {total!r}")
    if n_layers is not None:
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not 1 <= n_layers <= total:
            raise InvalidInputError(f"n_layers must be an integer in [1, {total}], got {n_layers!r}")
    tensors = read_safetensors(path / WEIGHTS)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
    except ImportError:  # pragma: no cover - optional dependency
        raise InvalidInputError("loading a Hugging Face model needs the optional dependency transformers") from None
    overrides: dict[str, Any] = {"attn_implementation": "eager"}
    if n_layers is not None:
        overrides["num_hidden_layers"] = n_layers
    with _hf_quiet():
        try:
            cfg = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True, **overrides)
        except Exception as e:
            raise InvalidInputError(f"{path / HF_CONFIG}: not a usable configuration ({_one_line(e)})") from None
        with torch.device("meta"):
            skeleton = transformers.AutoModel.from_config(cfg, attn_implementation="eager")
        expected = skeleton.state_dict()
        prefix = f"{mt}."
        got = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in tensors.items()}
        for k, e in expected.items():
            if k not in got:
                if k.endswith("position_ids") or k.endswith("token_type_ids"):
                    continue  # buffers rebuilt from the config
                raise InvalidInputError(f"{path / WEIGHTS}: missing tensor {k!r} required by {path / HF_CONFIG}")
            if tuple(got[k].shape) != tuple(e.shape):
                raise InvalidInputError(
                    f"{path / WEIGHTS}: tensor {k!r} has shape {list(got[k].shape)}, {HF_CONFIG} implies {list(e.shape)}")
        del tensors, got
        try:
            model, info = transformers.AutoModel.from_pretrained(
                str(path), local_files_only=True, output_loading_info=True, **overrides)
        except Exception as e:
            raise InvalidInputError(f"{path}: transformers could not load the model ({_one_line(e)})") from None
    if info.get("missing_keys") or info.get("mismatched_keys"):
        raise InvalidInputError(f"{path}: transformers left tensors uninitialised: "
                                f"{sorted(info.get('missing_keys') or info.get('mismatched_keys'))[:5]}")
    if model.config._attn_implementation != "eager":
        raise InvalidInputError(f"{path}: could not select the eager attention implementation")
    model.eval()
    extra = {"n_layers": n_layers or total, "n_layers_total": total}
    cfgd = model.config.to_dict()
    return LoadedModel(model, mt, "hf", cfgd, path, None, extra)


# ---------------------------------------------------------------- public API
def load_model(path: str | os.PathLike, *, n_layers: int | None = None) -> LoadedModel:
    """Load a zoo directory (``arch.json`` + ``model.safetensors``), a BERT-family Hugging
    Face directory (``config.json`` + ``model.safetensors``) or a Llama / Qwen2 / Mistral
    decoder directory (single-file or sharded); ``n_layers`` keeps only the first k
    encoder / decoder layers. Raises InvalidInputError (one line) on a
    missing/truncated/unparseable file, NaN/Inf weights, shapes that do not match the
    architecture, or an unsupported architecture."""
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"model path {p} does not exist")
    if not p.is_dir():
        raise InvalidInputError(f"model path {p} is not a directory (expected {ARCH} or {HF_CONFIG} + {WEIGHTS})")
    if (p / ARCH).exists():
        if n_layers is not None:
            raise InvalidInputError(f"n_layers applies to BERT models only, not to the zoo model at {p}")
        arch = normalize_arch(_read_json(p / ARCH), str(p / ARCH))
        state = read_safetensors(p / WEIGHTS)
        return zoo_model(arch, state, source=p)
    if (p / HF_CONFIG).exists():
        from convrate.models.inserted_io import INSERTED_JSON, attach_hf_inserted  # grown releases

        model = _load_hf(p, n_layers)
        return attach_hf_inserted(model, p) if (p / INSERTED_JSON).exists() else model
    raise InvalidInputError(f"{p}: neither {ARCH} (zoo format) nor {HF_CONFIG} (Hugging Face format) found")


def save_model(model: LoadedModel, out_dir: str | os.PathLike, *, overwrite: bool = False,
               max_shard_bytes: int | None = None) -> Path:
    """Write ``model`` into ``out_dir`` (created if needed) in its own format: zoo ->
    ``arch.json`` + ``model.safetensors``; hf -> ``config.json`` + ``model.safetensors``
    (+ the tokenizer files of the source directory); decoders in the source's layout and
    dtype (``max_shard_bytes``: sharded, see ``llama_load.save_decoder``). Refuses the
    directory the model was read from, and an ``out_dir`` already holding a checkpoint
    unless ``overwrite``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    if model.source is not None and out.resolve() == Path(model.source).resolve():
        raise InvalidInputError(f"refusing to overwrite the input directory {out}; choose another --out")
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"output path {out} exists and is not a directory")
    for existing in (WEIGHTS, "model.safetensors.index.json"):
        if (out / existing).exists() and not overwrite:
            raise InvalidInputError(f"{out / existing} already exists; pass overwrite=True to replace it")
    out.mkdir(parents=True, exist_ok=True)
    if max_shard_bytes is not None and not (model.fmt == "hf" and model.kind != "bert"):
        raise InvalidInputError("max_shard_bytes applies to decoder LMs (llama, qwen2, mistral) only")
    if model.fmt == "hf" and model.kind != "bert":
        from convrate.models.families.llama_load import save_decoder

        return save_decoder(model, out, max_shard_bytes=max_shard_bytes)
    if model.fmt == "zoo":
        arch = {**model.config, "dtype": dtype_name(model.dtype)}
        state = {k: v.detach().contiguous().cpu() for k, v in model.module.state_dict().items()}
        save_file(state, str(out / WEIGHTS), metadata={"format": "pt"})
        (out / ARCH).write_text(json.dumps(arch, indent=2) + "\n")
    else:
        with _hf_quiet():
            model.module.save_pretrained(str(out), safe_serialization=True)
        from convrate.models.inserted_io import write_hf_inserted  # grown releases: convrate_inserted.json

        write_hf_inserted(model, out)
        if model.source is not None:
            for rel in _HF_SIDE_FILES:
                src = Path(model.source) / rel
                if src.is_file():
                    (out / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, out / rel)
    return out
