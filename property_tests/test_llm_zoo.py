"""The zoo Llama (``llama-tiny``) and ``convrate attack`` on decoders, end to end.

``llama_tiny()`` trains once per machine (about 15 s of CPU; cached under the convrate cache
like the digits nets, so later runs load it in well under a second) -- the session fixture
shares it between tests and xdist workers (the cache entry is written under a lock). Small
configurations check determinism and the cache in a private cache directory.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest
import torch
from typer.testing import CliRunner

from convrate.cli import app
from convrate.models import zoo
from convrate.models.io import load_model, save_model
from convrate.models.lm_tasks import lm_paragraphs, token_stream
from convrate.models.tasks import NextTokenLM
from convrate.models.testing import tiny_decoder

#: "clearly below": the held-out loss must beat the unigram entropy by at least half a nat per token
MARGIN_NATS = 0.5


@pytest.fixture(scope="session")
def llama():
    return zoo.llama_tiny()


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_zoo_llama_is_a_plain_hugging_face_directory(llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    d = llama.source
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "info.json"} <= {
        p.name for p in d.iterdir()}
    hf = AutoModelForCausalLM.from_pretrained(str(d))  # defaults: no project code involved
    assert isinstance(hf, LlamaForCausalLM) and hf.dtype == torch.float32 and _same_state(hf, llama.module)
    c = hf.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads) == (2, 64, 4, 2)
    assert c.hidden_act == "silu" and c.rope_parameters["rope_type"] == "default" and not c.tie_word_embeddings
    tok = AutoTokenizer.from_pretrained(str(d))
    assert len(tok) == c.vocab_size and tok.eos_token_id == c.eos_token_id
    assert llama.kind == "llama" and llama.module.config._attn_implementation == "eager"


def test_zoo_llama_beats_the_unigram_entropy(llama):
    """Held-out next-token loss of the cached model (recomputed here, from disk, with the saved
    tokenizer) against the entropy of the held-out tokens' own unigram distribution."""
    from transformers import AutoTokenizer

    cfg = zoo.LlamaTrainConfig()
    _, stream, _, val = zoo.pretrain_data(cfg)
    saved = token_stream(AutoTokenizer.from_pretrained(str(llama.source)), lm_paragraphs("pretrain"))
    assert saved == stream.tolist(), "the saved tokenizer does not reproduce the training tokens"
    with torch.no_grad():
        loss = float(torch.nn.functional.cross_entropy(NextTokenLM(llama.module)(val), val[:, 1:].reshape(-1)))
    f = torch.bincount(val[:, 1:].reshape(-1)).double()
    f = f[f > 0] / f.sum()
    unigram = float(-(f * f.log()).sum())
    assert loss <= unigram - MARGIN_NATS, (loss, unigram)
    assert math.isclose(loss, llama.info["val_loss"], rel_tol=1e-6)
    assert llama.info["train_config"] == asdict(zoo.LlamaTrainConfig())


SMALL = dict(vocab_size=64, hidden=16, heads=4, kv_heads=2, intermediate=24, seq_len=16, batch=4, steps=3, warmup=1)


def test_llama_training_is_deterministic_and_cached(tmp_path, monkeypatch):
    calls = []
    real = zoo.train_llama

    def counting(cfg):
        calls.append(cfg)
        return real(cfg)

    monkeypatch.setattr(zoo, "train_llama", counting)
    cfg = zoo.LlamaTrainConfig(**SMALL)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a"))
    first = zoo.llama_tiny(cfg)
    again = zoo.llama_tiny(cfg)
    assert len(calls) == 1 and again.source == first.source and _same_state(first.module, again.module)
    entries = sorted(p.name for p in (tmp_path / "a" / "convrate" / "zoo").iterdir() if not p.name.endswith(".lock"))
    assert entries == [first.source.name], "a temporary directory was left behind"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    other = zoo.llama_tiny(cfg)
    assert len(calls) == 2 and _same_state(first.module, other.module), "training is not deterministic"
    (other.source / "model.safetensors").write_bytes(b"corrupt")
    rebuilt = zoo.llama_tiny(cfg)
    assert len(calls) == 3 and _same_state(first.module, rebuilt.module)


# ---------------------------------------------------------------- convrate attack on decoders
runner = CliRunner()


def _attack(*args):
    r = runner.invoke(app, ["attack", *map(str, args), "--json"])
    assert r.exit_code == 0, (r.stdout, r.stderr)
    return json.loads(r.stdout)


def test_cli_attack_zoo_llama_with_peft_lora(llama):
    res = _attack("llama-tiny", "--optimizer", "lora-adam", "--lr", 0.01, "--budget", 3)
    assert res["task"].startswith("lm-text") and res["final_loss"] < res["initial_loss"]
    h, kv, inter, rank = 64, 2 * 16, 176, 4
    per_layer = rank * ((h + h) + 2 * (h + kv) + (h + h) + 2 * (h + inter) + (inter + h))
    assert res["trainable_parameters"] == 2 * per_layer
    full = _attack("llama-tiny", "--optimizer", "adamw", "--lr", 0.003, "--budget", 2, "--task", "lm-tokens",
                   "--layers", 1)
    assert full["task"].startswith("lm-tokens")
    assert full["trainable_parameters"] == sum(p.numel() for p in load_model(llama.source, n_layers=1).module.parameters())


def test_cli_attack_decoder_directory_lr_sweep(tmp_path):
    d = save_model(tiny_decoder("qwen2", 0, tie_embeddings=True), tmp_path / "q")
    res = _attack(d, "--optimizer", "sgd", "--lr-sweep", "--budget", 4, "--target", 3.4)
    assert res["task"].startswith("lm-tokens") and res["lr_sweep"] and res["lr_table"]
    reached = [row["steps"] for row in res["lr_table"] if row["steps"] is not None]
    assert res["reached"] and res["steps"] == min(reached)
    r = runner.invoke(app, ["attack", str(d), "--task", "text", "--lr", "0.1"])
    assert r.exit_code == 2 and "needs a BERT-family encoder" in r.stderr
