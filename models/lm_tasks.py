"""Causal-LM fine-tuning tasks: next-token prediction, deterministic, nothing downloaded.

Both tasks are ``Task(causal_lm=True)``: inputs ``input_ids`` (n, L) with an all-ones
``attention_mask`` (fixed-length blocks: no padding), targets ``next_token_targets`` (n, L-1);
the model runs under ``NextTokenLM`` and the loss is the mean next-token cross-entropy in
nats per predicted token.

- ``lm_text_task(tokenizer)`` (``lm-text``): the prose paragraphs of the *data model* chapter
  of the Python documentation, as shipped in the standard library's ``pydoc_data/topics.py``
  (paragraph filter as in ``tasks.text_corpus``; Python 3.11: 309 paragraphs, ~18.6k words),
  tokenized with the model's own tokenizer without special tokens, joined by its EOS token
  (when it has one), cut into consecutive blocks of ``seq_len`` tokens; ``n_train`` + ``n_test``
  distinct blocks are drawn with ``numpy.random.default_rng(seed)``. The zoo Llama is
  pretrained on the *other* chapters (``lm_paragraphs("pretrain")``; no paragraph shared), so
  this is text it has never seen, though of the same kind (its loss there starts near its
  held-out pretraining loss); the task with a new mapping to learn is ``lm-tokens``.
- ``lm_tokens_task(vocab_size)`` (``lm-tokens``, for a directory without tokenizer files): a
  seeded first-order Markov source on m = min(64, V) active token ids. Each active token a has
  a designated successor pi(a) (pi a derangement of the active set: the "new mapping" an
  attacker teaches); the next token is pi(a) with probability p (default 0.9), else uniform
  over the m active tokens. Its entropy rate, the Bayes-optimal loss per predicted token, is

      H = -q ln q - (m - 1) r ln r,      q = p + (1 - p)/m,  r = (1 - p)/m      (nats)

  (``markov_entropy_rate``; 0.73 nats for m = 64, p = 0.9), against ln V for a uniform guess.
"""
from __future__ import annotations

import math
import re
from typing import Any, Sequence

import numpy as np
import torch

from convrate.errors import InvalidInputError
from convrate.models.tasks import (TOPIC_CHAPTER, Task, _is_prose, _read_topics, derangement, next_token_targets,
                                   pydoc_topics_path)

#: the chapter whose paragraphs form the ``lm-text`` task (the rest pretrains the zoo Llama)
ATTACK_CHAPTER = "reference/datamodel"
LM_TASKS = ("lm-text", "lm-tokens")
MARKOV_ACTIVE = 64


def lm_paragraphs(part: str = "attack", min_words: int = 12) -> list[str]:
    """Whitespace-normalized prose paragraphs of the pydoc topics, deduplicated, in a fixed
    order (topics sorted, then position): ``part`` "attack" = topics of ``ATTACK_CHAPTER``,
    "pretrain" = every other topic, less the paragraphs that also occur in the attack part
    (the topics repeat some text), so the two parts are disjoint."""
    if part not in ("attack", "pretrain"):
        raise InvalidInputError(f"part must be 'attack' or 'pretrain', got {part!r}")
    topics = _read_topics(str(pydoc_topics_path()))
    parts: dict[bool, dict[str, None]] = {True: {}, False: {}}
    for topic in sorted(topics):
        for raw in re.split(r"\n[ \t]*\n", topics[topic]):
            if _is_prose(raw, min_words):
                parts[TOPIC_CHAPTER.get(topic) == ATTACK_CHAPTER].setdefault(" ".join(raw.split()), None)
    if part == "attack":
        return list(parts[True])
    return [p for p in parts[False] if p not in parts[True]]


def _check_sizes(seq_len: Any, n_train: Any, n_test: Any) -> None:
    for what, v, lo in (("seq_len", seq_len, 2), ("n_train", n_train, 1), ("n_test", n_test, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise InvalidInputError(f"{what} must be an integer >= {lo}, got {v!r}")


def _blocks_task(name: str, description: str, blocks: torch.Tensor, n_train: int, n_test: int, seed: int,
                 vocab: int, source: str, meta: dict[str, Any], batch_size: int | None) -> Task:
    def split(ids: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        mask = torch.ones_like(ids)
        return {"input_ids": ids, "attention_mask": mask}, next_token_targets(ids, mask)

    Xtr, ytr = split(blocks[:n_train])
    Xte, yte = split(blocks[n_train:n_train + n_test]) if n_test else (None, None)
    return Task(name=name, description=description, X_train=Xtr, y_train=ytr, X_test=Xte, y_test=yte,
                loss="cross_entropy", n_outputs=vocab, batch_size=batch_size, seed=seed, source=source,
                meta=meta, causal_lm=True)


def token_stream(tokenizer: Any, paragraphs: Sequence[str]) -> list[int]:
    """The paragraphs tokenized without special tokens, joined by the EOS id when there is one."""
    eos = getattr(tokenizer, "eos_token_id", None)
    ids: list[int] = []
    for p in paragraphs:
        ids += list(tokenizer(p, add_special_tokens=False, verbose=False)["input_ids"])
        if eos is not None:
            ids.append(int(eos))
    return ids


def lm_text_task(tokenizer: Any, *, seq_len: int = 32, n_train: int = 64, n_test: int = 16, seed: int = 0,
                 batch_size: int | None = None) -> Task:
    """Next-token prediction on the data-model paragraphs of the Python docs (module doc)."""
    _check_sizes(seq_len, n_train, n_test)
    stream = token_stream(tokenizer, lm_paragraphs("attack"))
    n_blocks = len(stream) // seq_len
    if n_train + n_test > n_blocks:
        raise InvalidInputError(f"the text has {n_blocks} blocks of {seq_len} tokens; asked for "
                                f"{n_train} + {n_test}")
    rng = np.random.default_rng(seed)
    pick = rng.permutation(n_blocks)[:n_train + n_test]
    all_blocks = torch.tensor(stream[:n_blocks * seq_len], dtype=torch.long).reshape(n_blocks, seq_len)
    vocab = len(tokenizer)
    return _blocks_task(
        f"lm-text(seed={seed})",
        (f"next-token prediction on the '{ATTACK_CHAPTER}' prose of the standard library's pydoc_data/topics.py "
         f"({len(stream)} tokens, {n_blocks} blocks of {seq_len}); {n_train} train / {n_test} test blocks; "
         "nothing downloaded"),
        all_blocks[torch.as_tensor(pick)], n_train, n_test, seed, vocab, str(pydoc_topics_path()),
        {"tokens": len(stream), "blocks": n_blocks, "block_index": [int(i) for i in pick]}, batch_size)


def markov_entropy_rate(m: int, p: float) -> float:
    """H = -q ln q - (m-1) r ln r (nats), q = p + (1-p)/m, r = (1-p)/m (module doc)."""
    r = (1.0 - p) / m
    q = p + r
    return -q * math.log(q) - ((m - 1) * r * math.log(r) if r > 0 else 0.0)


def markov_source(vocab_size: int, seed: int, active: int = MARKOV_ACTIVE) -> tuple[list[int], dict[int, int]]:
    """(active token ids, successor map pi) of the ``lm-tokens`` source: ``active`` distinct ids
    drawn from range(vocab_size) and a derangement of them, both from ``default_rng(seed)``."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise InvalidInputError(f"vocab_size must be an integer >= 2, got {vocab_size!r}")
    m = min(active, vocab_size)
    rng = np.random.default_rng(seed)
    ids = sorted(int(i) for i in rng.choice(vocab_size, size=m, replace=False))
    perm = derangement(m, int(rng.integers(2**31)))
    return ids, {ids[i]: ids[perm[i]] for i in range(m)}


def lm_tokens_task(vocab_size: int, *, seq_len: int = 32, n_train: int = 64, n_test: int = 16, seed: int = 0,
                   p_follow: float = 0.9, batch_size: int | None = None) -> Task:
    """Next-token prediction on the seeded Markov source of the module doc."""
    _check_sizes(seq_len, n_train, n_test)
    if not 0 < p_follow < 1:
        raise InvalidInputError(f"p_follow must lie in (0, 1), got {p_follow!r}")
    ids, succ = markov_source(vocab_size, seed)
    m = len(ids)
    rng = np.random.default_rng([seed, 1])
    n = n_train + n_test
    seqs = np.empty((n, seq_len), dtype=np.int64)
    seqs[:, 0] = rng.choice(ids, size=n)
    follow = rng.random((n, seq_len)) < p_follow
    jump = rng.choice(ids, size=(n, seq_len))
    for t in range(1, seq_len):
        nxt = np.array([succ[int(a)] for a in seqs[:, t - 1]])
        seqs[:, t] = np.where(follow[:, t], nxt, jump[:, t])
    h = markov_entropy_rate(m, p_follow)
    return _blocks_task(
        f"lm-tokens(seed={seed})",
        (f"next-token prediction on a seeded Markov source over {m} of {vocab_size} token ids: the designated "
         f"successor with probability {p_follow}, else uniform; entropy rate {h:.4f} nats; "
         f"{n_train} train / {n_test} test sequences of {seq_len}"),
        torch.from_numpy(seqs), n_train, n_test, seed, vocab_size, "numpy.random.default_rng",
        {"active_ids": ids, "successor": succ, "p_follow": p_follow, "entropy_rate": h}, batch_size)


__all__ = ["ATTACK_CHAPTER", "LM_TASKS", "lm_paragraphs", "token_stream", "lm_text_task", "lm_tokens_task",
           "markov_source", "markov_entropy_rate"]
