"""Causal-LM tasks, the next-token objective and attacks (incl. peft LoRA) on tiny decoders.

The Markov task is checked against its stated entropy rate (the per-token loss of the
Bayes-optimal predictor is i.i.d. given the source, so its mean lies within 5 standard errors
of H); the next-token wrapper against a per-sequence loop; the curvature objective's products
against a dense float64 Hessian (relative 1e-11: O(n u) rounding for n < 10^3 terms, once transformers'
float32 RMSNorm / softmax are lifted to float64, ``families.decoder_float64``); the
attacks against their own definitions (monotone progress, determinism, input untouched,
exactly the base function at step 0 under LoRA).
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.nn import functional as F

from convrate.errors import InvalidInputError
from convrate.models.attacks import Attack, lr_search
from convrate.models.attacks.peft_lora import DECODER_PROJECTIONS, lora_parameters, peft_wrap, uses_peft
from convrate.models.curvature import Objective, dense_hessian, lanczos
from convrate.models.families.decoder_float64 import exact_float64
from convrate.models.lm_tasks import lm_paragraphs, lm_text_task, lm_tokens_task, markov_entropy_rate, markov_source
from convrate.models.tasks import (IGNORE_INDEX, NextTokenLM, next_token_targets, task_for, task_name_for,
                                   token_targets)
from convrate.models.testing import decoder_inputs, mlp_arch, random_zoo, tiny_bert, tiny_decoder


class MarkovOracle(torch.nn.Module):
    """logits[b, t] = ln P(next | input_ids[b, t]) of the lm-tokens source."""

    def __init__(self, vocab: int, ids: list[int], succ: dict[int, int], p: float) -> None:
        super().__init__()
        m = len(ids)
        table = torch.full((vocab, vocab), -1e30, dtype=torch.float64)
        for a in ids:
            table[a, ids] = math.log((1 - p) / m)
            table[a, succ[a]] = math.log(p + (1 - p) / m)
        self.register_buffer("table", table)

    def forward(self, input_ids, attention_mask=None):
        return self.table[input_ids]


@given(vocab=st.integers(2, 300), seed=st.integers(0, 2**16), p=st.floats(0.5, 0.95))
def test_markov_task_has_its_entropy_rate(vocab, seed, p):
    task = lm_tokens_task(vocab, seq_len=24, n_train=48, n_test=4, seed=seed, p_follow=p)
    ids, succ = markov_source(vocab, seed)
    m = len(ids)
    assert m == min(64, vocab) and sorted(succ) == ids and all(succ[a] != a for a in ids) if m > 1 else True
    X, y = task.X_train["input_ids"], task.y_train
    assert torch.equal(y, X[:, 1:]) and set(X.unique().tolist()) <= set(ids)
    h = markov_entropy_rate(m, p)
    q, r = p + (1 - p) / m, (1 - p) / m
    var = q * math.log(q) ** 2 + (m - 1) * r * math.log(r) ** 2 - h ** 2
    n = y.numel()
    oracle = task.evaluate(NextTokenLM(MarkovOracle(vocab, ids, succ, p)))
    assert abs(oracle - h) <= 5 * math.sqrt(max(var, 0.0) / n) + 1e-12, (oracle, h)
    uniform = task.evaluate(NextTokenLM(MarkovOracle(vocab, list(range(vocab)), {a: a for a in range(vocab)}, 1e-300)))
    assert abs(uniform - math.log(vocab)) <= 1e-12 * math.log(vocab) + 1e-15
    again = lm_tokens_task(vocab, seq_len=24, n_train=48, n_test=4, seed=seed, p_follow=p)
    assert torch.equal(again.X_train["input_ids"], X)


def _word_tokenizer(vocab: int = 64):
    from convrate.models.zoo import _hf_tokenizer, word_tokenizer

    return _hf_tokenizer(word_tokenizer(lm_paragraphs("pretrain"), vocab), 64)


def test_lm_text_task_blocks_are_the_token_stream():
    from convrate.models.lm_tasks import token_stream

    tok = _word_tokenizer()
    task = lm_text_task(tok, seq_len=16, n_train=10, n_test=3, seed=4)
    stream = token_stream(tok, lm_paragraphs("attack"))
    blocks = task.X_train["input_ids"].tolist() + task.X_test["input_ids"].tolist()
    index = task.meta["block_index"]
    assert len(set(index)) == 13 and task.causal_lm and task.n_outputs == len(tok)
    assert all(b == stream[i * 16:(i + 1) * 16] for b, i in zip(blocks, index))
    assert stream.count(tok.eos_token_id) == len(lm_paragraphs("attack"))
    assert not set(lm_paragraphs("attack")) & set(lm_paragraphs("pretrain"))
    assert torch.equal(lm_text_task(tok, seq_len=16, n_train=10, n_test=3, seed=4).X_train["input_ids"],
                       task.X_train["input_ids"])
    with pytest.raises(InvalidInputError, match="blocks of 16 tokens"):
        lm_text_task(tok, seq_len=16, n_train=10**6)


def test_next_token_wrapper_masks_padding():
    """Rows of NextTokenLM = positions with a next token (both attended); its cross-entropy
    = the mean over those positions computed sequence by sequence."""
    m = tiny_decoder("llama", 0)
    ids = decoder_inputs(m, 3, 7, 1)["input_ids"]
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    net = NextTokenLM(m.module)
    with torch.no_grad():
        z = net(ids, mask)
        y = token_targets(next_token_targets(ids, mask))
        assert z.shape == (6 + 3 + 1, 32) and y.tolist() == ids[0, 1:].tolist() + ids[1, 1:4].tolist() + [ids[2, 1]]
        per_seq = []
        for b in range(3):
            k = int(mask[b].sum())
            logits = m.module(input_ids=ids[b:b + 1, :k]).logits[0, :-1]
            per_seq.append(F.cross_entropy(logits, ids[b, 1:k], reduction="sum"))
        want = sum(per_seq) / 10
        got = F.cross_entropy(z, y)
        assert abs(float(got - want)) <= 1e-12 * float(want)
    assert next_token_targets(ids, mask)[1, 3:].eq(IGNORE_INDEX).all()


def test_objective_on_causal_lm_matches_dense_hessian():
    m = tiny_decoder("qwen2", 2, hidden=8, heads=2, kv_heads=1, intermediate=8, vocab=16)
    task = task_for(m, "auto", 0, max_length=6, sequences=4)
    assert task.name.startswith("lm-tokens")
    net = task.head(m.module)
    names = ["encoder.model.layers.0.self_attn.k_proj.weight", "encoder.model.layers.0.self_attn.k_proj.bias",
             "encoder.model.layers.0.mlp.up_proj.weight", "encoder.lm_head.weight"]
    obj = Objective(net, task.X_train, task.y_train, loss="cross_entropy", params=names)
    assert obj.n_examples == 4 * 5
    # the objective runs float64 throughout; transformers' own path rounds RMSNorm and the
    # softmax to float32 (relative error a few u_32 = 6e-8 per step, a handful of steps)
    exact = exact_float64(copy.deepcopy(net))
    assert abs(float(obj.loss()) - task.evaluate(exact)) <= 1e-13 * task.evaluate(exact)
    assert abs(float(obj.loss()) - task.evaluate(net)) <= 1e-6 * task.evaluate(net)
    obj.require_deterministic()
    H = dense_hessian(obj)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(obj.n, generator=g, dtype=torch.float64)
        want = H @ v
        for method in ("reuse", "double_backward", "func"):
            assert float((obj.hvp(v, method=method) - want).norm()) <= 1e-11 * float(want.norm())
    vals, _, _ = lanczos(obj.hvp, obj.n, obj.n, seed=0, dtype=obj.dtype, device=obj.device)
    ev = torch.linalg.eigvalsh(H)
    assert abs(float(vals[-1] - ev[-1])) <= 1e-8 * float(ev.abs().max())
    assert abs(float(vals[0] - ev[0])) <= 1e-8 * float(ev.abs().max())


def test_task_choice_for_decoders(tmp_path):
    from convrate.models.io import load_model, save_model
    from convrate.models.zoo import save_tokenizer, word_tokenizer

    m = tiny_decoder("mistral", 1, vocab=64)
    assert task_name_for(m) == "lm-tokens"
    d = save_model(m, tmp_path / "m")
    save_tokenizer(word_tokenizer(lm_paragraphs("pretrain"), 64), d, 32)
    loaded = load_model(d)
    assert loaded.info["tokenizer"] and task_name_for(loaded) == "lm-text"
    assert task_for(loaded, "auto", 0, sequences=8).name.startswith("lm-text")
    for bad in ("text", "digits-relabel"):
        with pytest.raises(InvalidInputError):
            task_name_for(loaded, bad)
    with pytest.raises(InvalidInputError, match="needs a decoder"):
        task_name_for(tiny_bert(), "lm-tokens")
    with pytest.raises(InvalidInputError, match="no tokenizer files"):
        task_for(m, "lm-text")


# ---------------------------------------------------------------- attacks
@pytest.fixture(scope="module")
def lm_case():
    m = tiny_decoder("llama", 3, hidden=16, vocab=32, attention_bias=True)
    task = task_for(m, "lm-tokens", 0, max_length=8, sequences=8)
    return m, task, task.head(m.module)


@pytest.mark.parametrize("optimizer,lr", [("sgd", 1.0), ("momentum", 0.3), ("adam", 1e-2), ("adamw", 1e-2),
                                          ("lora-sgd", 2.0), ("lora-adam", 1e-2)])
def test_every_optimizer_trains_a_causal_lm(lm_case, optimizer, lr):
    m, task, net = lm_case
    before = copy.deepcopy(net.state_dict())
    a = Attack(optimizer, lr, 12, None, seed=1)
    t1, t2 = a.run(net, task), a.run(net, task)
    assert t1.losses == t2.losses, "not deterministic"
    assert not t1.diverged and t1.final_loss < t1.initial_loss
    assert t1.initial_loss == task.evaluate(net)  # LoRA starts at exactly the base function (B = 0)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items()), "the attacked model changed"
    if optimizer.startswith("lora"):
        rank = a.lora_rank
        h, kv, inter = 16, 2 * 4, 24
        per_layer = rank * ((h + h) + 2 * (h + kv) + (h + h) + 2 * (h + inter) + (inter + h))
        assert t1.trainable_parameters == per_layer


def test_peft_lora_targets_and_fallback(lm_case):
    from peft.tuners.lora import LoraLayer

    from convrate.models.attacks.lora import LoRALinear

    _, _, net = lm_case
    wrapped, params = peft_wrap(net, 2, seed=0)
    lora_layers = [n for n, mod in wrapped.named_modules() if isinstance(mod, LoraLayer)]
    assert sorted({n.rsplit(".", 1)[-1] for n in lora_layers}) == sorted(DECODER_PROJECTIONS)
    assert sum(p.numel() for p in params) == lora_parameters(wrapped)
    assert all(".lora_" in n for n, p in wrapped.named_parameters() if p.requires_grad)
    # the adapters depend on the seed only, not on the caller's RNG state (which is left alone)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    again, _ = peft_wrap(net, 2, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)
    other, _ = peft_wrap(net, 2, seed=1)
    adapters = [n for n, _ in wrapped.named_parameters() if ".lora_A." in n]
    sw, sa, so = (dict(x.named_parameters()) for x in (wrapped, again, other))
    assert all(torch.equal(sw[n], sa[n]) for n in adapters) and not all(torch.equal(sw[n], so[n]) for n in adapters)
    only_q, _ = peft_wrap(net, 2, r"q_proj$")
    assert [n.rsplit(".", 1)[-1] for n, mod in only_q.named_modules() if isinstance(mod, LoraLayer)] == ["q_proj"]
    with pytest.raises(InvalidInputError, match="matches the LoRA targets"):
        peft_wrap(net, 2, r"nothing-like-this")
    # BERT under a classification head: peft on the encoder projections, the head trainable
    from convrate.models.tasks import EncoderClassifier

    bert = EncoderClassifier(tiny_bert().module, 3)
    wb, _ = peft_wrap(bert, 2, extra_trainable="^head")
    names = [n for n, mod in wb.named_modules() if isinstance(mod, LoraLayer)]
    assert names and not any("pooler" in n for n in names)
    assert {n for n, p in wb.named_parameters() if p.requires_grad and ".lora_" not in n} == {"head.weight", "head.bias"}
    # zoo nets keep the in-project LoRA
    zoo = random_zoo(mlp_arch([4, 3, 2]), 0).module
    assert uses_peft(net) and not uses_peft(bert) and not uses_peft(zoo)
    from convrate.models.attacks.attack import Attack as A

    mod, _ = A("lora-sgd", 0.1, 1)._prepare(zoo, torch.device("cpu"))
    assert any(isinstance(x, LoRALinear) for x in mod.modules())


def test_lr_search_on_causal_lm(lm_case):
    _, task, net = lm_case
    target = 0.8 * task.evaluate(net)
    res = lr_search(net, task, "adam", target, 15, grid=[1e-3, 1e-2, 1e-1], refine=1, seed=0)
    reached = [t for t in res.table if t.steps is not None]
    assert res.reached and res.best_steps == min(t.steps for t in reached)
    check = Attack("adam", res.best_lr, 15, target, seed=0).run(net, task)
    assert check.steps_to(target) == res.best_steps


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_exact_float64_leaves_other_dtypes_alone(dtype):
    m = tiny_decoder("mistral", 4, layers=2)
    for p in m.module.parameters():
        p.data = p.data.to(dtype)
    x = decoder_inputs(m, 2, 5, 0)
    with torch.no_grad():
        assert torch.equal(m.output(x), exact_float64(copy.deepcopy(m.module))(**x).logits)


def test_peft_and_in_project_lora_take_the_same_steps(lm_case):
    """On the same targets, peft's LoRA and the in-project LoRA start at the same adapters and
    compute the same function, so SGD on either gives the same losses (to float64 rounding of
    the same operations: relative 1e-12)."""
    from convrate.models.attacks.lora import lora_wrap

    _, task, net = lm_case
    targets = r"(q|k|v|o|gate|up|down)_proj$"
    runs = []
    for wrap in (peft_wrap, lora_wrap):
        mod, params = wrap(net, 3, targets, seed=7)
        opt = torch.optim.SGD(params, lr=1.0)
        losses = []
        for _ in range(4):
            opt.zero_grad()
            loss = task.loss_fn(task.forward(mod, task.X_train), task.y_train)
            losses.append(float(loss))
            loss.backward()
            opt.step()
        runs.append(losses)
    assert runs[0][-1] < runs[0][0]
    assert all(abs(a - b) <= 1e-12 * abs(b) for a, b in zip(*runs)), runs
