"""Decoder LM directories (llama, qwen2, mistral): bit-exact round trips and every malformed input.

Round trips: tiny random decoders (``tiny_decoder``: GQA, tied / untied, attention bias,
explicit head_dim) in float64 / float32 / bfloat16 / float16, saved single-file or sharded,
load back with every tensor ``torch.equal`` to the original, the same dtype and layout, and
logits equal bit for bit (same weights, same ops, one thread). Bad input: one line, exit 2 at
the CLI, the input directory byte-identical afterwards.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from convrate.cli import app
from convrate.errors import InvalidInputError
from convrate.models.families.llama_load import DECODER_TYPES, INDEX
from convrate.models.io import load_model, save_model
from convrate.models.testing import decoder_inputs, tiny_decoder

DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def _tree(path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _cast_parameters(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Parameters to ``dtype``, buffers kept: transformers keeps the rotary ``inv_freq`` in
    float32 whatever the weights' dtype (``module.to(bfloat16)`` would round it)."""
    for p in module.parameters():
        p.data = p.data.to(dtype)


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)



@given(model_type=st.sampled_from(DECODER_TYPES), tie=st.booleans(), bias=st.booleans(),
       head_dim=st.sampled_from([None, 8]), dtype=st.sampled_from(DTYPES), shard_bytes=st.sampled_from([None, 700]),
       layers=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_decoder_roundtrip_bit_exact(tmp_path_factory, model_type, tie, bias, head_dim, dtype, shard_bytes, layers,
                                     seed):
    m = tiny_decoder(model_type, seed, layers=layers, tie_embeddings=tie, attention_bias=bias, head_dim=head_dim)
    _cast_parameters(m.module, dtype)
    src = save_model(m, tmp_path_factory.mktemp("src"), max_shard_bytes=shard_bytes)
    files = sorted(p.name for p in src.iterdir())
    assert (INDEX in files) == (shard_bytes is not None) and ("model.safetensors" in files) == (shard_bytes is None)
    before = _tree(src)
    back = load_model(src)
    assert back.kind == model_type and back.fmt == "hf" and back.dtype == dtype
    assert back.info["release_dtype"] == str(dtype).removeprefix("torch.")
    assert _same_state(m.module, back.module)
    cfg = back.module.config
    assert cfg.tie_word_embeddings == tie and cfg._attn_implementation == "eager"
    assert (back.module.lm_head.weight is back.module.model.embed_tokens.weight) == tie
    assert (getattr(cfg, "head_dim", None) or 16 // 4) == (head_dim or 16 // 4)
    assert (back.module.model.layers[0].self_attn.q_proj.bias is not None) == (model_type == "qwen2" or
                                                                              (model_type == "llama" and bias))
    x = decoder_inputs(m, 2, 6, seed)
    with torch.no_grad():
        assert torch.equal(m.output(x), back.output(x))
    # saving the loaded model keeps the layout (the same shard map) and every tensor
    again = save_model(back, tmp_path_factory.mktemp("again"))
    assert sorted(p.name for p in again.iterdir()) == files
    if shard_bytes is not None:
        assert json.loads((again / INDEX).read_text())["weight_map"] == json.loads((src / INDEX).read_text())["weight_map"]
    assert _same_state(m.module, load_model(again).module)
    assert _tree(src) == before, "loading or saving touched the input directory"
    with pytest.raises(InvalidInputError, match="input directory"):
        save_model(back, src, overwrite=True)


def test_transformers_loads_saved_directory_unchanged(tmp_path):
    """What we write is a plain Hugging Face directory: AutoModelForCausalLM with defaults."""
    from transformers import AutoModelForCausalLM

    m = tiny_decoder("qwen2", 5, tie_embeddings=True, layers=2)
    _cast_parameters(m.module, torch.bfloat16)
    d = save_model(m, tmp_path / "q", max_shard_bytes=2000)
    hf = AutoModelForCausalLM.from_pretrained(str(d))
    assert hf.dtype == torch.bfloat16 and _same_state(m.module, hf)


def test_truncated_layers(tmp_path):
    m = tiny_decoder("llama", 1, layers=2)
    d = save_model(m, tmp_path / "l2")
    one = load_model(d, n_layers=1)
    assert one.info["n_layers"] == 1 and one.info["n_layers_total"] == 2 and len(one.module.model.layers) == 1
    ref = m.module.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in one.module.state_dict().items())
    with pytest.raises(InvalidInputError, match=r"n_layers must be an integer in \[1, 2\]"):
        load_model(d, n_layers=3)


# ---------------------------------------------------------------- malformed directories
def _edit_json(path, **changes) -> None:
    obj = json.loads(path.read_text())
    obj.update(changes)
    path.write_text(json.dumps(obj))


def _first_shard(d):
    return sorted(d.glob("model-*-of-*.safetensors"))[0]


def _poison(file, value) -> None:
    state = load_file(str(file))
    name = next(k for k in sorted(state) if state[k].is_floating_point())
    state[name] = state[name].clone()
    state[name].view(-1)[0] = value
    save_file(state, str(file), metadata={"format": "pt"})


def _drop_tensor(file, name) -> None:
    state = load_file(str(file))
    del state[name]
    save_file(state, str(file), metadata={"format": "pt"})


def _add_tensor(file, name) -> None:
    state = load_file(str(file))
    state[name] = torch.zeros(3)
    save_file(state, str(file), metadata={"format": "pt"})


def _truncate(file) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


CASES = {
    "unsupported model_type": (False, lambda d: _edit_json(d / "config.json", model_type="gpt2"),
                               "unsupported architecture model_type 'gpt2'"),
    "missing shard": (True, lambda d: _first_shard(d).unlink(), "missing shard"),
    "index names absent tensor": (True, lambda d: _edit_json(d / INDEX, weight_map={
        **json.loads((d / INDEX).read_text())["weight_map"], "model.layers.0.mlp.extra.weight": _first_shard(d).name}),
        "absent from their shards"),
    "shard holds unlisted tensor": (True, lambda d: _add_tensor(_first_shard(d), "model.extra"), "does not list"),
    "index not JSON": (True, lambda d: (d / INDEX).write_text("{not json"), "not valid JSON"),
    "index without weight_map": (True, lambda d: (d / INDEX).write_text('{"metadata": {}}'), "weight_map"),
    "shape vs config (intermediate)": (False, lambda d: _edit_json(d / "config.json", intermediate_size=20),
                                       "config.json implies [20, 16]"),
    "shape vs config (kv heads)": (True, lambda d: _edit_json(d / "config.json", num_key_value_heads=1),
                                   "config.json implies [4, 16]"),
    "shape vs config (head_dim)": (False, lambda d: _edit_json(d / "config.json", head_dim=8), "config.json implies"),
    "NaN weight": (False, lambda d: _poison(d / "model.safetensors", math.nan), "non-finite"),
    "Inf weight in a shard": (True, lambda d: _poison(_first_shard(d), math.inf), "non-finite"),
    "truncated file": (False, lambda d: _truncate(d / "model.safetensors"), "not a valid safetensors file"),
    "truncated shard": (True, lambda d: _truncate(_first_shard(d)), "not a valid safetensors file"),
    "garbage file": (False, lambda d: (d / "model.safetensors").write_bytes(b"\x10" + b"x" * 40),
                     "not a valid safetensors file"),
    "tiny file": (False, lambda d: (d / "model.safetensors").write_bytes(b"abc"), "truncated safetensors"),
    "missing tensor": (False, lambda d: _drop_tensor(d / "model.safetensors", "model.norm.weight"),
                       "missing tensor 'model.norm.weight'"),
    "unexpected tensor": (False, lambda d: _add_tensor(d / "model.safetensors", "model.layers.0.extra"),
                          "unexpected tensor"),
    "no weights": (False, lambda d: (d / "model.safetensors").unlink(), "missing weights"),
    "config not JSON": (False, lambda d: (d / "config.json").write_text("{"), "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_directory_refused(tmp_path, case):
    sharded, corrupt, match = CASES[case]
    m = tiny_decoder("llama", 2, layers=2, head_dim=4 if "head_dim" in case else None)
    d = save_model(m, tmp_path / "bad", max_shard_bytes=1500 if sharded else None)
    corrupt(d)
    before = _tree(tmp_path)
    with pytest.raises(InvalidInputError) as err:
        load_model(d)
    msg = str(err.value)
    assert "\n" not in msg and match in msg, msg
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("case", ["missing shard", "shape vs config (intermediate)", "NaN weight",
                                  "unsupported model_type", "truncated shard"])
def test_cli_refuses_malformed_directory(tmp_path, case):
    sharded, corrupt, match = CASES[case]
    d = save_model(tiny_decoder("mistral", 3, layers=2), tmp_path / "bad", max_shard_bytes=1500 if sharded else None)
    corrupt(d)
    before = _tree(tmp_path)
    r = CliRunner().invoke(app, ["attack", str(d), "--optimizer", "adam", "--lr", "0.01", "--budget", "2"])
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], r.stderr
    assert _tree(tmp_path) == before, "something was written"


@pytest.mark.parametrize("shard_bytes", [None, 800])
def test_grown_decoder_release_round_trip(tmp_path, shard_bytes):
    """A decoder grown by inserted compensation layers saves its convrate_inserted.json next to
    the weights (single-file or sharded) and loads back with the layers grown, same logits."""
    from convrate.models.inserted import InsertedLinear, InsertedSpecDef
    from convrate.models.inserted_io import INSERTED_JSON

    m = tiny_decoder("qwen2", 0, tie_embeddings=True)
    grown = InsertedSpecDef(2, 100.0, layers="*.q_proj,*.down_proj", side="output").apply(m).model
    d = save_model(grown, tmp_path / "g", max_shard_bytes=shard_bytes)
    assert (d / INSERTED_JSON).is_file()
    back = load_model(d)
    assert isinstance(back.module.get_submodule("model.layers.0.self_attn.q_proj"), InsertedLinear)
    x = decoder_inputs(m, 2, 5, 1)
    with torch.no_grad():
        assert torch.equal(back.output(x), grown.output(x))
