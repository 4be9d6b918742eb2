"""Release formats for grown models (inserted compensation layers), read and written by ``io``.

Zoo format (``arch.json``): the inserted layer C is a ``linear`` entry of its own, adjacent to the
layer it compensates with no activation between, square, marked by an ``"inserted"`` object:

    {"type": "linear", "out_features": 32},                                   # W' (bias b' = C^-1 b)
    {"type": "linear", "out_features": 32, "bias": false,
     "inserted": {"side": "output", "alpha": 1000.0, "k": 4}}                 # C, after W'

(side "input": the marked entry comes first, of width in_features, and W' keeps b). ``alpha`` and
``k`` are informative (positive numbers when present). A convrate that does not know the marker
still loads the file: it is a valid zoo MLP with two adjacent linear layers.

Hugging Face directories: the model's own ``config.json`` and ``model.safetensors`` (or shards),
where for every grown layer ``<name>`` (its module path, e.g.
``encoder.layer.0.attention.self.query``) ``<name>.weight`` / ``<name>.bias`` hold W' / b' and
``<name>.convrate_inserted.weight`` holds C (optionally ``<name>.convrate_inserted.bias``), plus
``convrate_inserted.json``:

    {"format": "convrate-inserted", "version": 1,
     "layers": [{"name": "<name>", "side": "output" | "input",
                 "weight": "<name>.convrate_inserted.weight", "bias": null,
                 "alpha": 1000.0, "k": 4}]}

("weight" defaults to ``<name>.convrate_inserted.weight``; "bias" to none; alpha, k optional).
transformers loads W' and b' into the layer as usual and ignores the extra tensors; convrate then
puts C in (``attach_hf_inserted``). A layer named in the JSON that the loaded model lacks (a
truncated load keeps only the first layers) is skipped. Every malformed input raises
``InvalidInputError`` with one line.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from convrate.errors import InvalidInputError
from convrate.models.inserted import INSERTED_ATTR, InsertedLinear
from convrate.theory.bounds_inserted import SIDES

INSERTED_JSON = "convrate_inserted.json"
FORMAT = "convrate-inserted"
SHARD_INDEX = "model.safetensors.index.json"


# ---------------------------------------------------------------- zoo
def zoo_grown_arch(arch: Mapping[str, Any], inserted: Mapping[int, Any], dtype: str) -> dict[str, Any]:
    """The arch of the grown zoo model: after (output side) or before (input side) every layer
    index in ``inserted`` (value: an ``inserted.InsertedLayer``) a marked bias-free square entry."""
    layers = []
    for i, spec in enumerate(arch["layers"]):
        if i not in inserted:
            layers.append(dict(spec))
            continue
        info = inserted[i]
        m, n = info.shape
        mark = {"type": "linear", "out_features": m if info.side == "output" else n, "bias": False,
                "inserted": {"side": info.side, "alpha": info.alpha, "k": info.k}}
        layers += [dict(spec), mark] if info.side == "output" else [mark, dict(spec)]
    return {**arch, "layers": layers, "dtype": dtype}


def validate_zoo_inserted(arch: Mapping[str, Any], where: str) -> None:
    """Every marked entry is a square linear layer next to another linear layer on its side."""
    from convrate.models.io import build_zoo_module

    layers = arch["layers"]
    marks = [i for i, s in enumerate(layers) if isinstance(s, Mapping) and s.get("inserted") is not None]
    if not marks:
        return
    mods = list(build_zoo_module(arch, where, device="meta"))
    for i in marks:
        w = f"{where}: layer {i}"
        mark = layers[i]["inserted"]
        if layers[i].get("type") != "linear" or not isinstance(mark, Mapping):
            raise InvalidInputError(f"{w}: an inserted layer must be a linear entry with an \"inserted\" object")
        side = mark.get("side")
        if side not in SIDES:
            raise InvalidInputError(f"{w}: inserted side must be one of {', '.join(SIDES)}, got {side!r}")
        for key in ("alpha", "k"):
            v = mark.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                                  or v <= 0):
                raise InvalidInputError(f"{w}: inserted {key} must be a positive number, got {v!r}")
        lin = mods[i]
        if lin.in_features != lin.out_features:
            raise InvalidInputError(f"{w}: an inserted layer must be square, got {lin.out_features}x{lin.in_features}")
        j = i - 1 if side == "output" else i + 1
        if not 0 <= j < len(mods) or type(mods[j]) is not nn.Linear or j in marks:
            raise InvalidInputError(f"{w}: an inserted layer on the {side} side must "
                                    f"{'follow' if side == 'output' else 'precede'} the linear layer it compensates "
                                    "(no activation between)")


# ---------------------------------------------------------------- Hugging Face
def hf_inserted_layers(module: nn.Module) -> list[tuple[str, InsertedLinear]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, InsertedLinear)]


def write_hf_inserted(model: Any, out: Path) -> Path | None:
    """Write ``convrate_inserted.json`` next to a saved grown HF model (None when nothing is inserted).
    The tensors themselves are in the model's state dict under the convention's names."""
    grown = hf_inserted_layers(model.module)
    if not grown:
        return None
    meta = {i["name"]: i for i in model.info.get("inserted", []) if isinstance(i, Mapping) and "name" in i}
    layers = []
    for name, m in grown:
        entry: dict[str, Any] = {"name": name, "side": m.side, "weight": f"{name}.{INSERTED_ATTR}.weight",
                                 "bias": f"{name}.{INSERTED_ATTR}.bias" if m.inserted.bias is not None else None}
        src = {**getattr(m, "meta", {}), **meta.get(name, {})}
        entry.update({k: src[k] for k in ("alpha", "k") if k in src})
        layers.append(entry)
    path = Path(out) / INSERTED_JSON
    path.write_text(json.dumps({"format": FORMAT, "version": 1, "layers": layers}, indent=1) + "\n")
    return path


def _tensor(path: Path, key: str) -> torch.Tensor:
    """One tensor of a (possibly sharded) safetensors checkpoint; finite."""
    from safetensors import safe_open

    index = path / SHARD_INDEX
    if index.is_file():
        from convrate.models.io import _read_json

        wm = _read_json(index).get("weight_map", {})
        if key not in wm:
            raise InvalidInputError(f"{index}: no tensor {key!r} named by {path / INSERTED_JSON}")
        file = path / wm[key]
    else:
        file = path / "model.safetensors"
    try:
        with safe_open(str(file), framework="pt") as f:
            if key not in f.keys():
                raise InvalidInputError(f"{file}: missing tensor {key!r} named by {path / INSERTED_JSON}")
            t = f.get_tensor(key)
    except InvalidInputError:
        raise
    except Exception as e:  # safetensors raises SafetensorError / OSError
        raise InvalidInputError(f"{file}: cannot read tensor {key!r} ({' '.join(str(e).split())[:200]})") from None
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise InvalidInputError(f"{file}: tensor {key!r} has non-finite (NaN/Inf) entries")
    return t


def _resolve(module: nn.Module, name: str) -> str | None:
    """The module path of ``name`` in the loaded module (exact, or without / with the model's
    base prefix, e.g. "bert."); None if absent."""
    mods = dict(module.named_modules())
    if name in mods:
        return name
    prefix = getattr(module, "base_model_prefix", "")
    if prefix and name.startswith(prefix + ".") and name[len(prefix) + 1:] in mods:
        return name[len(prefix) + 1:]
    if prefix and f"{prefix}.{name}" in mods:
        return f"{prefix}.{name}"
    return None


def attach_hf_inserted(model: Any, path: Path) -> Any:
    """The loaded HF model with every layer of ``convrate_inserted.json`` grown (module doc)."""
    from convrate.models.inserted import _set_module
    from convrate.models.io import _read_json

    where = path / INSERTED_JSON
    js = _read_json(where)
    if js.get("format") != FORMAT:
        raise InvalidInputError(f"{where}: not a convrate-inserted description (format {js.get('format')!r})")
    layers = js.get("layers")
    if not isinstance(layers, list) or not layers:
        raise InvalidInputError(f"{where}: layers must be a non-empty list")
    info = []
    for i, spec in enumerate(layers):
        w = f"{where}: layer {i}"
        if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
            raise InvalidInputError(f"{w}: expected an object with a \"name\"")
        side = spec.get("side")
        if side not in SIDES:
            raise InvalidInputError(f"{w}: side must be one of {', '.join(SIDES)}, got {side!r}")
        name = _resolve(model.module, spec["name"])
        if name is None:
            continue
        base = model.module.get_submodule(name)
        if type(base) is not nn.Linear:
            raise InvalidInputError(f"{w}: {spec['name']!r} is not a linear layer of the model")
        C = _tensor(path, spec.get("weight") or f"{spec['name']}.{INSERTED_ATTR}.weight")
        s = base.out_features if side == "output" else base.in_features
        if tuple(C.shape) != (s, s):
            raise InvalidInputError(f"{w}: the inserted weight has shape {list(C.shape)}, the {side} side of "
                                    f"{spec['name']!r} needs [{s}, {s}]")
        cb = _tensor(path, spec["bias"]) if spec.get("bias") else None
        if cb is not None and tuple(cb.shape) != (s,):
            raise InvalidInputError(f"{w}: the inserted bias has shape {list(cb.shape)}, expected [{s}]")
        grown = InsertedLinear(base.in_features, base.out_features, base.bias is not None, side, cb is not None,
                               device=base.weight.device, dtype=base.weight.dtype)
        grown.weight, grown.bias = base.weight, base.bias
        with torch.no_grad():
            grown.inserted.weight.copy_(C.to(base.weight.dtype))
            if cb is not None:
                grown.inserted.bias.copy_(cb.to(base.weight.dtype))
        grown.meta = {k: spec[k] for k in ("alpha", "k") if k in spec}
        _set_module(model.module, name, grown)
        info.append({"name": name, "side": side, **grown.meta})
    model.info["inserted"] = info
    return model


__all__ = ["FORMAT", "INSERTED_JSON", "attach_hf_inserted", "hf_inserted_layers", "validate_zoo_inserted",
           "write_hf_inserted", "zoo_grown_arch"]
