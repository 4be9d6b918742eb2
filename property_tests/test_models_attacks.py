"""Attacks, LoRA and the harmful-task proxies (convrate.models.attacks / lora / tasks).

Properties on tiny torch models: the attack never modifies its input (nor the caller's RNG);
``steps_to`` agrees with the recorded trajectory; the learning-rate search returns the
fewest-step lr among those tried (re-run without pruning); plain GD on linear least squares
diverges exactly above the stability threshold 2 / lambda_max (lambda_max certified by
``numerics.linalg.sym_eig``) and its float64 trajectory follows a 40-digit reference
iteration; LoRA starts as exactly the base function with gradients only on the adapters;
tasks are deterministic and the text task comes from the installed standard library.
"""
from __future__ import annotations

import ast
import math
from fractions import Fraction
from pathlib import Path

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

from convrate.errors import ConvrateError, InvalidInputError
from convrate.models.attacks import OPTIMIZERS, Attack, lr_search, log_grid, slowdown
from convrate.models.attacks.lora import LoRALinear, lora_merge, lora_targets, lora_wrap
from convrate.models.tasks import (TEXT_GROUPS, TOPIC_CHAPTER, Task, digits_relabel_task, minilm_tokenizer,
                                   pydoc_topics_path, tensor_task, text_task)
from convrate.numerics.linalg import sym_eig

torch.set_num_threads(1)


# ---------------------------------------------------------------- tiny fixtures
def tiny_mlp(seed: int, widths: tuple[int, ...] = (4, 6, 3)) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        lin = nn.Linear(a, b).double()
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=g, dtype=torch.float64) / math.sqrt(a))
            lin.bias.copy_(0.1 * torch.randn(b, generator=g, dtype=torch.float64))
        layers.append(lin)
        if i < len(widths) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def tiny_task(seed: int, n: int = 24, d: int = 4, classes: int = 3, batch_size: int | None = None) -> Task:
    g = torch.Generator().manual_seed(1000 + seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    y[:classes] = torch.arange(classes)
    return tensor_task(X, y, X[: n // 2], y[: n // 2], loss="cross_entropy", batch_size=batch_size, seed=seed)


def snapshot(model: nn.Module) -> tuple[dict, dict, bool]:
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {k: p.requires_grad for k, p in model.named_parameters()}, model.training)


def same_snapshot(a: tuple[dict, dict, bool], b: tuple[dict, dict, bool]) -> bool:
    return (a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])
            and a[1] == b[1] and a[2] == b[2])


# ---------------------------------------------------------------- attack never mutates
@given(optimizer=st.sampled_from(OPTIMIZERS), seed=st.integers(0, 40),
       lr=st.sampled_from([1e-3, 0.1, 1.0]), batch=st.sampled_from([None, 7]))
def test_attack_never_mutates_input(optimizer: str, seed: int, lr: float, batch: int | None) -> None:
    model, task = tiny_mlp(seed), tiny_task(seed, batch_size=batch)
    before = snapshot(model)
    rng_before = torch.get_rng_state()
    traj = Attack(optimizer, lr, 3, seed=seed, device="cpu", eval_every=1).run(model, task)
    assert same_snapshot(before, snapshot(model)), f"{optimizer} modified the input model"
    assert torch.equal(rng_before, torch.get_rng_state()), "the attack changed the caller's RNG state"
    # the copy was really trained: the loss moved (SOAP's first step only sets up its eigenbases)
    assert traj.steps >= 1 and traj.losses[-1] != traj.losses[0]
    assert traj.losses[0] == task.evaluate(model), "losses[0] is not the input model's training loss"
    assert [t for t, _ in traj.eval_losses] == list(range(traj.steps + 1))


# ---------------------------------------------------------------- steps_to vs trajectory
@given(optimizer=st.sampled_from(OPTIMIZERS), seed=st.integers(0, 40), q=st.floats(0.0, 1.0),
       batch=st.sampled_from([None, 5]))
def test_steps_to_consistent_with_trajectory(optimizer: str, seed: int, q: float, batch: int | None) -> None:
    model, task = tiny_mlp(seed), tiny_task(seed, batch_size=batch)
    lr = 0.3 if optimizer.endswith("sgd") or optimizer == "momentum" else 0.05
    full = Attack(optimizer, lr, 12, seed=seed, device="cpu").run(model, task)
    assert full.steps == 12 and not full.diverged and full.stopped == "budget"
    lo, hi = min(full.losses), max(full.losses)
    for target in (lo + q * (hi - lo), lo - 1e-3, full.losses[-1], hi):
        brute = next((t for t, v in enumerate(full.losses) if v <= target), None)
        assert full.steps_to(target) == brute
        stopped = Attack(optimizer, lr, 12, target=target, seed=seed, device="cpu").run(model, task)
        assert stopped.steps_to() == brute
        # deterministic: the early-stopped run is a prefix of the full run, bit for bit
        assert stopped.losses == full.losses[: len(stopped.losses)]
        if brute is None:
            assert stopped.stopped == "budget" and stopped.steps == 12
        else:
            assert stopped.stopped == "target" and stopped.steps == brute


# ---------------------------------------------------------------- lr search
@given(optimizer=st.sampled_from(["sgd", "momentum", "adam", "lora-adam"]), seed=st.integers(0, 30),
       frac=st.sampled_from([0.3, 0.5, 0.7]))
def test_lr_search_returns_fewest_steps(optimizer: str, seed: int, frac: float) -> None:
    model, task = tiny_mlp(seed), tiny_task(seed)
    target, budget = frac * task.evaluate(model), 25
    grid = log_grid(1e-3, 10.0, per_decade=1)
    res = lr_search(model, task, optimizer, target, budget, grid=grid, refine=1, device="cpu", seed=seed)
    assert len(res.table) == len(grid) + 2
    reached = [tr.steps for tr in res.table if tr.steps is not None]
    if reached:
        assert res.best_steps == min(reached)
        assert any(tr.lr == res.best_lr and tr.steps == res.best_steps for tr in res.table)
    else:
        assert res.best_steps is None
    # pruning hid nothing: no lr tried beats the best when re-run with the full budget
    for tr in res.table:
        s = Attack(optimizer, tr.lr, budget, target, seed=seed, device="cpu").steps_to(model, task)
        assert tr.steps is None or s == tr.steps
        if res.best_steps is not None and s is not None:
            assert s >= res.best_steps, f"lr {tr.lr} reaches in {s} < best {res.best_steps}"
        if res.best_steps is None:
            assert s is None


def test_log_grid_two_points_per_decade() -> None:
    g = log_grid(1e-5, 10.0, 2)
    assert len(g) == 13 and math.isclose(g[0], 1e-5) and math.isclose(g[-1], 10.0)
    assert all(math.isclose(b / a, math.sqrt(10.0)) for a, b in zip(g, g[1:]))


# ---------------------------------------------------------------- divergence vs 2 / lambda_max
def _least_squares(seed: int, n: int, d: int, k: int):
    rng = np.random.default_rng(seed)
    X = rng.integers(-3, 4, size=(n, d))
    Y = rng.integers(-3, 4, size=(n, k))
    W0 = rng.integers(-2, 3, size=(k, d))
    return X, Y, W0


def _reference_losses(X, Y, W0, lr: float, horizon: int, stop_ratio: float | None):
    """GD W <- W - lr (W S - M) on L(W) = 1/(2N) sum_i ||W x_i - y_i||^2 in mpmath at 40
    digits, lr taken exactly as the float the attack uses; stops once L_t > stop_ratio L_0."""
    n = X.shape[0]
    with mpmath.workdps(40):
        Xm, Ym = mpmath.matrix(X.tolist()), mpmath.matrix(Y.tolist())
        S, M = Xm.T * Xm / n, Ym.T * Xm / n
        W = mpmath.matrix(W0.tolist())
        eta = mpmath.mpf(Fraction(lr).numerator) / Fraction(lr).denominator

        def loss(W):
            R = Xm * W.T - Ym
            return sum(R[i, j] ** 2 for i in range(R.rows) for j in range(R.cols)) / (2 * n)

        out = [loss(W)]
        for _ in range(horizon):
            W = W - eta * (W * S - M)
            out.append(loss(W))
            if stop_ratio is not None and out[-1] > stop_ratio * out[0]:
                break
        return out


@given(seed=st.integers(0, 10_000), n=st.integers(5, 9), d=st.integers(1, 3), k=st.integers(1, 2),
       above=st.sampled_from([Fraction(5, 4), Fraction(3, 2), Fraction(3)]),
       below=st.sampled_from([Fraction(1, 4), Fraction(1, 2), Fraction(9, 10)]))
def test_divergence_detected_exactly_above_gd_threshold(seed, n, d, k, above, below) -> None:
    X, Y, W0 = _least_squares(seed, n, d, k)
    S = [[Fraction(int(X[:, i] @ X[:, j]), n) for j in range(d)] for i in range(d)]
    with mpmath.workdps(40):
        eig = sym_eig(S, "X^T X / N")
        lo, hi = eig.interval(d - 1)  # certified enclosure of lambda_max(S) = lambda_max(Hessian)
        assume(eig.interval(0)[0] > 0)  # X has full column rank (S > 0)
        # the top eigen-direction must be active in e_0 = W0 - W*, else GD ignores it
        M = mpmath.matrix((Y.T @ X).tolist()) / n
        Wstar = M * mpmath.inverse(mpmath.matrix(S))
        v = eig.vectors[:, d - 1]
        assume(max(abs(((mpmath.matrix(W0.tolist()) - Wstar) * v)[j]) for j in range(k)) > mpmath.mpf("1e-6"))
        lam = eig.values[d - 1]
        lr_big = float(2 * mpmath.mpf(above.numerator) / above.denominator / lam)
        lr_small = float(2 * mpmath.mpf(below.numerator) / below.denominator / lam)
        # the premise, certified: lr_big > 2 / lambda_max > lr_small despite rounding
        assert mpmath.mpf(lr_big) > 2 / lo and mpmath.mpf(lr_small) < 2 / hi
    model = nn.Linear(d, k, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor(W0, dtype=torch.float64))
    task = tensor_task(torch.tensor(X, dtype=torch.float64), torch.tensor(Y, dtype=torch.float64), loss="squared")

    # above the threshold: the reference iteration exceeds 1e3 L_0 at step t*; the attack
    # detects divergence at that same step (t* +- 1 only if L_t* is within 1e-9 of the threshold)
    ref = _reference_losses(X, Y, W0, lr_big, 5000, stop_ratio=1e3)
    assert ref[-1] > 1e3 * ref[0], "exact GD above 2/lambda_max did not diverge within 5000 steps"
    t_star = len(ref) - 1
    traj = Attack("sgd", lr_big, t_star + 2, device="cpu").run(model, task)
    assert traj.diverged and traj.stopped == "diverged"
    near = any(abs(ref[t] / (1e3 * ref[0]) - 1) < 1e-9 for t in (t_star - 1, t_star))
    assert traj.steps == t_star or (near and abs(traj.steps - t_star) == 1)

    # below the threshold: no divergence, and the loss never increases (F1: each mode contracts)
    budget = 60
    traj = Attack("sgd", lr_small, budget, device="cpu").run(model, task)
    assert not traj.diverged and traj.steps == budget
    ref = _reference_losses(X, Y, W0, lr_small, budget, stop_ratio=None)
    # float64 vs 40 digits: each step rounds O((n + d) u) relative (u = 1.1e-16) and the
    # iteration is contractive, so the loss error stays below budget (n + d) u L_0 ~ 1e-13 L_0;
    # 1e-9 (1 + L_0) is a deliberate 1e4 margin over that estimate.
    tol = 1e-9 * (1 + float(ref[0]))
    for t in range(budget + 1):
        assert abs(traj.losses[t] - float(ref[t])) <= tol, (t, traj.losses[t], ref[t])
        if t:
            assert traj.losses[t] <= traj.losses[t - 1] + tol


# ---------------------------------------------------------------- LoRA
@given(seed=st.integers(0, 100), rank=st.integers(1, 4), widths=st.sampled_from([(5, 7, 3), (3, 4, 4, 2), (6, 2)]))
def test_lora_starts_at_base_function_and_trains_only_adapters(seed, rank, widths) -> None:
    model = tiny_mlp(seed, widths)
    before = snapshot(model)
    net, params = lora_wrap(model, rank, seed=seed)
    assert same_snapshot(before, snapshot(model)), "lora_wrap modified its input"
    lora = [m for m in net.modules() if isinstance(m, LoRALinear)]
    assert len(lora) == len(widths) - 1
    assert {id(p) for p in params} == {id(p) for m in lora for p in (m.lora_A, m.lora_B)}
    x = torch.randn(9, widths[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assert torch.equal(net(x), model(x)), "LoRA at start is not exactly the base function"
    net(x).pow(2).sum().backward()
    for name, p in net.named_parameters():
        if "lora_" in name:
            assert p.grad is not None
        else:
            assert p.grad is None, f"frozen parameter {name} received a gradient"
    # B = 0 at start, so dL/dA = s B^T (...) vanishes exactly while dL/dB does not
    assert all(torch.count_nonzero(m.lora_A.grad) == 0 for m in lora)
    assert any(torch.count_nonzero(m.lora_B.grad) > 0 for m in lora)
    # merge: W + s B A computes the adapted function (float64 rounding only)
    with torch.no_grad():
        for m in lora:
            m.lora_B.normal_(generator=torch.Generator().manual_seed(seed + 1))
    merged = lora_merge(net)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    with torch.no_grad():
        out, ref = merged(x), net(x)
    assert torch.allclose(out, ref, rtol=0, atol=1e-12 * (1 + float(ref.abs().max())))
    assert not torch.equal(ref, model(x))


def test_lora_target_patterns() -> None:
    model = nn.Sequential()
    model.add_module("query", nn.Linear(4, 4))
    model.add_module("act", nn.ReLU())
    model.add_module("value", nn.Linear(4, 4))
    model.add_module("out", nn.Linear(4, 2))
    assert lora_targets(model) == ["query", "value", "out"]
    assert lora_targets(model, "query|value") == ["query", "value"]
    net, params = lora_wrap(model, 2, ["^out$"], extra_trainable="^query")
    assert isinstance(net.out, LoRALinear) and isinstance(net.query, nn.Linear)
    names = {n for n, p in net.named_parameters() if p.requires_grad}
    assert names == {"out.lora_A", "out.lora_B", "query.weight", "query.bias"}
    with pytest.raises(InvalidInputError, match="no nn.Linear"):
        lora_wrap(model, 2, "nothing-matches")
    with pytest.raises(InvalidInputError, match="rank"):
        lora_wrap(model, 0)
    with pytest.raises(InvalidInputError, match="already carries LoRA"):
        lora_wrap(net, 2)


# ---------------------------------------------------------------- tasks
@given(seed=st.integers(0, 50))
def test_digits_task_deterministic_and_deranged(seed: int) -> None:
    a, b = digits_relabel_task(seed), digits_relabel_task(seed)
    for x, y in ((a.X_train, b.X_train), (a.y_train, b.y_train), (a.X_test, b.X_test), (a.y_test, b.y_test)):
        assert torch.equal(x, y)
    pi = a.meta["mapping"]
    assert sorted(pi) == list(range(10)) and all(pi[c] != c for c in range(10))
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    _, _, ytr, yte = train_test_split(d.data, d.target, test_size=0.2, random_state=0, stratify=d.target)
    assert a.y_train.tolist() == [pi[c] for c in ytr] and a.y_test.tolist() == [pi[c] for c in yte]
    assert a.n_train == 1437 and a.n_test == 360 and a.X_train.dtype == torch.float64
    std = a.X_train.std(0, unbiased=False)
    live = a.meta["std"] > 0
    assert torch.allclose(a.X_train.mean(0), torch.zeros(64, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(std[torch.tensor(live)], torch.ones(int(live.sum()), dtype=torch.float64), atol=1e-12)


def test_minibatch_schedule_deterministic_and_covers_each_epoch() -> None:
    t = tiny_task(3, n=23, batch_size=5)
    again = tiny_task(3, n=23, batch_size=5)
    per_epoch = math.ceil(23 / 5)
    for epoch in range(3):
        idx = [t.batch_indices(epoch * per_epoch + j) for j in range(per_epoch)]
        assert all(torch.equal(i, again.batch_indices(epoch * per_epoch + j)) for j, i in enumerate(idx))
        assert sorted(torch.cat(idx).tolist()) == list(range(23))
    assert tiny_task(3, n=23).batch_indices(0) is None


@pytest.fixture(scope="module")
def tokenizer():
    return minilm_tokenizer()


def test_text_task_from_installed_file_and_deterministic(tokenizer) -> None:
    task = text_task(tokenizer, seed=1, per_class=20, max_length=24)
    again = text_task(tokenizer, seed=1, per_class=20, max_length=24)
    other = text_task(tokenizer, seed=2, per_class=20, max_length=24)
    for k in task.X_train:
        assert torch.equal(task.X_train[k], again.X_train[k]) and torch.equal(task.X_test[k], again.X_test[k])
    assert torch.equal(task.y_train, again.y_train)
    assert task.texts_train != other.texts_train
    # the source is the standard library's pydoc_data/topics.py, read here independently
    src = Path(task.source)
    assert src.is_file() and src == pydoc_topics_path() and src.parent.name == "pydoc_data"
    tree = ast.parse(src.read_text(encoding="utf-8"))
    topics = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                  and any(getattr(t, "id", None) == "topics" for t in n.targets))
    group_of = {ch: i for i, (_, chs) in enumerate(TEXT_GROUPS) for ch in chs}
    for split in ("train", "test"):
        texts, raws = getattr(task, f"texts_{split}"), task.meta[f"raw_{split}"]
        tps, ys = task.meta[f"topics_{split}"], getattr(task, f"y_{split}")
        for text, raw, topic, y in zip(texts, raws, tps, ys.tolist(), strict=True):
            assert raw in topics[topic], f"paragraph not found in topic {topic!r} of {src}"
            assert text == " ".join(raw.split())
            assert y == group_of[TOPIC_CHAPTER[topic]]
    counts = torch.bincount(torch.cat([task.y_train, task.y_test]), minlength=len(TEXT_GROUPS))
    assert counts.tolist() == [20] * len(TEXT_GROUPS)
    assert len(set(task.texts_train) & set(task.texts_test)) == 0
    enc = tokenizer(list(task.texts_train[:3]), max_length=24, truncation=True, padding="max_length")
    assert task.X_train["input_ids"][:3].tolist() == enc["input_ids"]


def _tiny_bert():
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, attn_implementation="eager")
    torch.manual_seed(0)
    return BertModel(cfg).eval()


def test_encoder_attacks_on_text_task(tokenizer) -> None:
    task = text_task(tokenizer, seed=0, per_class=6, max_length=16, batch_size=8)
    model = task.head(_tiny_bert(), seed=0)
    # padding is invisible: replacing padded token ids leaves the logits unchanged
    enc = tokenizer(["A short sentence.", "Another, slightly longer sentence here."], max_length=16,
                    truncation=True, padding="max_length", return_tensors="pt")
    X = {k: enc[k] for k in task.X_test}
    pad = X["attention_mask"] == 0
    assert pad.any()
    with torch.no_grad():
        z = model(**X)
        X["input_ids"] = X["input_ids"].masked_fill(pad, 1997)
        assert torch.allclose(model(**X), z, rtol=0, atol=1e-6)
    before = snapshot(model)
    for opt, kw in (("adam", {}), ("lora-adam", {"lora_targets": "query|value", "lora_extra_trainable": "^head"})):
        traj = Attack(opt, 1e-2, 4, device="cpu", **kw).run(model, task)
        assert traj.steps == 4 and all(math.isfinite(v) for v in traj.losses)
        assert traj.losses[0] == pytest.approx(task.evaluate(model), rel=1e-6)
    assert same_snapshot(before, snapshot(model))


# ---------------------------------------------------------------- slowdown
def test_slowdown_identical_models_and_lower_bound() -> None:
    model, task = tiny_mlp(5), tiny_task(5)
    # a model whose logits are a trainable constant (output weight zero and frozen) cannot go
    # below the entropy H of the empirical label distribution (the minimum of the mean
    # cross-entropy over constant logits); a target below H is out of its reach.
    p = torch.bincount(task.y_train).double() / task.n_train
    H = float(-(p * p.log()).sum())
    target, budget = H - 0.05, 80
    opts = dict(grid=[0.3, 1.0, 3.0], refine=0, device="cpu")
    same = slowdown(model, model, task, "sgd", target, budget, **opts)
    assert same.undefended.best_steps is not None and same.ratio == 1 and not same.is_lower_bound
    constant = tiny_mlp(5)
    with torch.no_grad():
        constant[2].weight.zero_()
    for name, q in constant.named_parameters():
        q.requires_grad_(name == "2.bias")
    lb = slowdown(model, constant, task, "sgd", target, budget, **opts)
    assert lb.defended.best_steps is None and lb.is_lower_bound
    assert all(tr.final_loss >= H - 1e-12 for tr in lb.defended.table if not tr.diverged)
    assert lb.ratio == budget / lb.undefended.best_steps and lb.text.startswith(">= ")


# ---------------------------------------------------------------- bad input
def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


@pytest.mark.parametrize("kwargs, needle", [
    ({"optimizer": "bfgs", "lr": 0.1, "budget": 5}, "bfgs"),
    ({"optimizer": "sgd", "lr": 0.0, "budget": 5}, "0.0"),
    ({"optimizer": "sgd", "lr": -1e-3, "budget": 5}, "-0.001"),
    ({"optimizer": "adam", "lr": float("nan"), "budget": 5}, "nan"),
    ({"optimizer": "adam", "lr": float("inf"), "budget": 5}, "inf"),
    ({"optimizer": "sgd", "lr": 0.1, "budget": 0}, "budget"),
    ({"optimizer": "sgd", "lr": 0.1, "budget": -3}, "-3"),
    ({"optimizer": "sgd", "lr": 0.1, "budget": 2.5}, "2.5"),
    ({"optimizer": "sgd", "lr": 0.1, "budget": 5, "target": float("nan")}, "nan"),
    ({"optimizer": "lora-sgd", "lr": 0.1, "budget": 5, "lora_rank": 0}, "rank"),
    ({"optimizer": "sgd", "lr": 0.1, "budget": 5, "device": "tpu9"}, "tpu9"),
])
def test_bad_attack_arguments(kwargs, needle) -> None:
    with pytest.raises(ConvrateError) as exc:
        Attack(**kwargs).run(tiny_mlp(0), tiny_task(0))
    assert needle in _one_line(exc)


def test_bad_models_and_searches() -> None:
    model, task = tiny_mlp(0), tiny_task(0)
    with torch.no_grad():
        model[2].weight[1, 2] = float("nan")
    with pytest.raises(InvalidInputError) as exc:
        Attack("sgd", 0.1, 5).run(model, task)
    assert "2.weight" in _one_line(exc)
    with pytest.raises(InvalidInputError) as exc:
        lr_search(model, task, "sgd", 0.1, 5)
    assert "2.weight" in _one_line(exc)
    good = tiny_mlp(0)
    with pytest.raises(InvalidInputError) as exc:
        lr_search(good, task, "rmsprop", 0.1, 5)
    assert "rmsprop" in _one_line(exc)
    with pytest.raises(InvalidInputError) as exc:
        lr_search(good, task, "sgd", 0.1, 5, grid=[0.1, -2.0])
    assert "-2.0" in _one_line(exc)
    with pytest.raises(InvalidInputError) as exc:
        lr_search(good, task, "sgd", 0.1, 0)
    assert "budget" in _one_line(exc)
    frozen = tiny_mlp(0).requires_grad_(False)
    with pytest.raises(InvalidInputError) as exc:
        Attack("adam", 0.1, 5).run(frozen, task)
    assert "trainable" in _one_line(exc)
    with pytest.raises(InvalidInputError) as exc:
        tensor_task(torch.tensor([[1.0], [float("nan")]]), torch.tensor([0, 1]))
    assert "X_train" in _one_line(exc)
    with pytest.raises(InvalidInputError) as exc:
        digits_relabel_task(-1)
    assert "-1" in _one_line(exc)


def test_step_context_reuses_an_evaluation_only_at_the_same_step_and_parameters() -> None:
    """``record`` keeps the loss graph so the step's ``closure`` runs no second forward pass, and a
    repeated ``closure`` is neither recomputed nor counted -- only at the same step and at
    parameters equal entry by entry: a change of one entry, a new step, or a NaN recomputes."""
    from convrate.models.attacks.registry import StepContext
    from convrate.models.testing import mlp_arch, random_zoo

    net = random_zoo(mlp_arch([3, 4, 2]), 1).module
    g = torch.Generator().manual_seed(3)
    task = tensor_task(torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (8,), generator=g),
                       loss="cross_entropy")
    forwards = []
    net.register_forward_hook(lambda *_: forwards.append(1))
    params = list(net.parameters())
    ctx = StepContext(net, params, task)
    value = ctx.record()
    assert float(ctx.closure()) == value and float(ctx.closure()) == value
    assert (len(forwards), ctx.cost.gradients) == (1, 1)
    with torch.no_grad():
        params[-1][1] += 2.0 ** -40  # one entry moves by one unit in the last place or so
    ctx.closure()
    assert (len(forwards), ctx.cost.gradients) == (2, 2)
    ctx.set_step(1)
    ctx.closure()
    assert (len(forwards), ctx.cost.gradients) == (3, 3)
    with torch.no_grad():
        params[0][0, 0] = float("nan")
    ctx.record(), ctx.closure(), ctx.closure()
    assert (len(forwards), ctx.cost.gradients) == (6, 5)
