"""The losses every curvature benchmark runs on: one module, one batch, one loss each.

Each ``Instance`` is an ``nn.Module`` with ``module(x) -> outputs`` for a single tensor ``x``
(the calling convention PyHessian needs), float64, in eval mode, with the parameters that are
not fine-tuned frozen (``requires_grad=False``), so that convrate's ``Objective`` (whose
default selection is the trainable parameters) and PyHessian (which takes every parameter
with ``requires_grad``) differentiate the same loss in the same parameters.

- ``digits-mlp``: the zoo's digits MLP 64-32-10 (ReLU, trained on the digits), at its
  released weights, on the attacker's objective: cross-entropy of the digits-relabel task
  (labels through a seeded derangement), full training batch (1437 examples, pixels / 16,
  the scaling the zoo model was trained with). All 2410 parameters.
- ``minilm-L{k}``: all-MiniLM-L6-v2 truncated to its first k encoder layers (eager attention),
  mean-pooled, with the text task's seeded linear head (4 classes), cross-entropy on the
  first ``batch`` training paragraphs (32 tokens). Embeddings (and BERT's pooler, which the
  mean-pooled head does not use) frozen; every encoder-layer and head parameter is
  differentiated.
- ``close-gap``: a linear least-squares probe z = X w (no bias) with the loss
  L(w) = 1/(2N) ||X w - y||^2, whose Hessian X^T X / N = V diag(s) V^T is built with a chosen
  spectrum s: s_1 = scale, s_2 = ratio * scale, the rest log-uniform in
  [scale / 1000, ratio^2 * scale], V a seeded random orthogonal matrix. Its eigenvalues are
  known in closed form (to float64 rounding): the instance on which the top two are close.
Units: loss dimensionless; Hessian eigenvalues in loss units per parameter unit squared.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from convrate.models.curvature import Objective

from bench_common import BenchmarkError


@dataclass
class Instance:
    """A module, one batch (x, y), the loss name for ``Objective`` and the same loss as a torch
    criterion for PyHessian; ``spectrum`` holds the known eigenvalues (ascending) when the
    Hessian is built with them."""

    name: str
    description: str
    module: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    loss: str
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    spectrum: list[float] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def objective(self) -> Objective:
        return Objective(self.module, self.x, self.y, loss=self.loss, dtype=torch.float64, device="cpu")

    def fresh_module(self) -> nn.Module:
        """A deep copy (PyHessian accumulates gradients into the module it is given)."""
        m = copy.deepcopy(self.module)
        for p in m.parameters():
            p.grad = None
        return m.eval()

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad)


class _HalfSquared(nn.Module):
    """L = 1/(2N) sum_n ||z_n - y_n||^2, the ``squared`` loss of ``Objective``."""

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((z - y) ** 2).sum() / z.shape[0]


class PackedEncoder(nn.Module):
    """``model(x)`` for an ``EncoderClassifier``: x = stack(input_ids, attention_mask,
    token_type_ids) of shape (N, 3, L)."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(input_ids=x[:, 0], attention_mask=x[:, 1], token_type_ids=x[:, 2])


def digits_mlp(seed: int = 0) -> Instance:
    from convrate.models import zoo
    from convrate.models.tasks import digits_relabel_task

    model = zoo.digits_mlp()
    task = digits_relabel_task(seed, standardize=False)
    module = copy.deepcopy(model.module).double().eval()
    return Instance("digits-mlp", "digits MLP 64-32-10, relabel cross-entropy, full batch 1437, all parameters",
                    module, task.X_train, task.y_train, "cross_entropy", nn.CrossEntropyLoss(),
                    info={"examples": task.n_train, "task": task.name})


def minilm(n_layers: int = 1, batch: int = 32, seed: int = 0) -> Instance:
    from convrate.models import zoo
    from convrate.models.tasks import minilm_tokenizer, text_task

    if not 1 <= n_layers <= 6:
        raise BenchmarkError(f"MiniLM has 6 layers, asked for {n_layers}")
    encoder = zoo.minilm(n_layers=n_layers).module
    task = text_task(minilm_tokenizer(), seed=seed)
    if not 1 <= batch <= task.n_train:
        raise BenchmarkError(f"batch must be in [1, {task.n_train}], got {batch}")
    module = PackedEncoder(task.head(encoder, seed=seed)).double().eval()
    for name, p in module.named_parameters():
        p.requires_grad_("embeddings" not in name and ".pooler." not in name)  # the pooler is unused
    X = task.X_train
    x = torch.stack([X["input_ids"][:batch], X["attention_mask"][:batch],
                     X.get("token_type_ids", torch.zeros_like(X["input_ids"]))[:batch]], dim=1)
    return Instance(f"minilm-L{n_layers}",
                    f"all-MiniLM-L6-v2, first {n_layers} layer(s), eager attention, text-task head, "
                    f"cross-entropy, batch {batch} x {x.shape[-1]} tokens, embeddings frozen",
                    module, x, task.y_train[:batch], "cross_entropy", nn.CrossEntropyLoss(),
                    info={"examples": batch, "tokens": int(x.shape[-1]), "layers": n_layers, "task": task.name})


def close_gap(d: int = 200, ratio: float = 0.99, scale: float = 10.0, seed: int = 0) -> Instance:
    if d < 3 or not 0 < ratio < 1 or scale <= 0:
        raise BenchmarkError(f"close-gap needs d >= 3, 0 < ratio < 1, scale > 0 (got {d}, {ratio}, {scale})")
    rng = np.random.default_rng(seed)
    n = 2 * d
    rest = scale * np.exp(rng.uniform(np.log(1e-3), np.log(ratio**2), d - 2))
    s = np.concatenate([[scale, ratio * scale], rest])
    V, _ = np.linalg.qr(rng.standard_normal((d, d)))
    P, _ = np.linalg.qr(rng.standard_normal((n, d)))
    X = np.sqrt(n) * (P * np.sqrt(s)) @ V.T  # X^T X / n = V diag(s) V^T
    y = rng.standard_normal((n, 1))
    module = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(rng.standard_normal((1, d))))
    return Instance("close-gap", f"least squares, d = {d}, Hessian spectrum built with lambda_2/lambda_1 = {ratio}",
                    module.eval(), torch.from_numpy(X), torch.from_numpy(y), "squared", _HalfSquared(),
                    spectrum=sorted(float(v) for v in s), info={"examples": n, "ratio": ratio, "scale": scale})


BUILDERS: dict[str, Callable[..., Instance]] = {"digits-mlp": digits_mlp, "close-gap": close_gap}


def build(name: str, seed: int = 0, batch: int = 32) -> Instance:
    """``digits-mlp``, ``close-gap`` or ``minilm-L<k>``."""
    if name.startswith("minilm-L") and name[8:].isdigit():
        return minilm(int(name[8:]), batch=batch, seed=seed)
    if name not in BUILDERS:
        raise BenchmarkError(f"unknown instance {name!r} (digits-mlp, close-gap, minilm-L1..minilm-L6)")
    return BUILDERS[name](seed=seed)
