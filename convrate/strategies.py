"""Public Hypothesis strategies of convrate; they compose with your own strategies.

Every argument may be a plain value or a strategy. Exact instances (``numerics``):

* ``quadratics(n, kappa)`` -- q(e) = 1/2 e^T H e with rational spectrum lambda_min = 1,
  lambda_max = kappa, interior eigenvalues log-uniform (the battery's builders), optionally
  rotated to a dense H by exact rational Householder reflections;
* ``quadratic_reparameterizations(n, kappa)`` -- rational T with kappa(T) = kappa exactly
  (Q1 diag(d) Q2) or diag(d) U (U unit upper triangular);
* ``net_cases``, ``spec_cases`` -- the battery's exact 2-layer / deep linear / ReLU networks
  (re-exported from ``numerics.checks_nets``).

Torch instances (``models``; float64, torch imported on first draw):

* ``mlps(widths, sigma_max, kappa)`` -- zoo ReLU MLPs whose every weight matrix has singular
  values geometric from sigma_max to sigma_max / kappa;
* ``attention_blocks(sigma_max, kappa)`` -- one-layer BERT blocks with the same control on
  W_Q, W_K, W_V, W_O;
* ``instances(models)`` -- a model plus attacker data and probe inputs (what the defense
  battery draws);
* ``reparameterizations(model, kappa, family)`` -- T on the model's symmetry groups with
  kappa(A) = kappa for every group of width >= 2 (S2: a permuted geometric profile; S1:
  U diag(s) V^T with random orthogonal U, V);
* ``attacks(optimizers, lr, budget)`` -- ``models.attacks.Attack`` configurations.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from convrate.numerics.checks_nets import NetCase, SpecCase, net_cases, spec_cases

SEEDS = st.integers(0, 2**20)


def _st(x: Any) -> SearchStrategy:
    return x if isinstance(x, SearchStrategy) else st.just(x)


def log_uniform(lo: float, hi: float) -> SearchStrategy[float]:
    """10^a with a uniform in [log10 lo, log10 hi] (shrinks towards lo)."""
    import math

    return st.floats(math.log10(lo), math.log10(hi)).map(lambda a: float(10.0**a))


# ---------------------------------------------------------------- exact quadratics
def _quadratic(seed: int, n: int, kappa: Any, rotate: bool) -> Any:
    from convrate.numerics.checks_quadratic import _coeffs, _rotated, _spectrum
    from convrate.numerics.quadratic import Quadratic

    rng = np.random.default_rng(seed)
    lam, c = _spectrum(rng, n, kappa), _coeffs(rng, n)
    return _rotated(rng, lam, c) if rotate else Quadratic.from_spectrum(lam, c)


def quadratics(n: Any = st.integers(2, 6), kappa: Any = st.integers(2, 10**4), rotate: Any = st.booleans(),
               seeds: SearchStrategy[int] = SEEDS) -> SearchStrategy:
    """Exact ``Quadratic``s with spectrum [1, ..., kappa] (integer or Fraction kappa >= 2)."""
    return st.builds(_quadratic, seeds, _st(n), _st(kappa), _st(rotate))


def _reparam(seed: int, n: int, kappa: Any, kind: int) -> Any:
    from convrate.numerics.checks_quadratic import _reparam as build

    return build(np.random.default_rng(seed), n, kappa, kind)[0]


def quadratic_reparameterizations(n: Any = st.integers(2, 6), kappa: Any = st.integers(2, 10**3),
                                  kind: Any = st.integers(0, 1), seeds: SearchStrategy[int] = SEEDS) -> SearchStrategy:
    """Rational T (flint ``fmpq_mat``, n x n): kind 0 Q1 diag(d) Q2 with kappa(T) = kappa
    exactly, kind 1 diag(d) P U (d with d_max / d_min = kappa)."""
    return st.builds(_reparam, seeds, _st(n), _st(kappa), _st(kind))


# ---------------------------------------------------------------- torch models
def _mlp(widths: Sequence[int], seed: int, sigma_max: float, kappa: float) -> Any:
    from convrate.models.byod import controlled_mlp

    return controlled_mlp(widths, seed, sigma_max, kappa)


def mlps(widths: Any = st.lists(st.integers(1, 5), min_size=3, max_size=4), sigma_max: Any = st.floats(0.5, 2.0),
         kappa: Any = log_uniform(1.0, 100.0), seeds: SearchStrategy[int] = SEEDS) -> SearchStrategy:
    """``LoadedModel`` ReLU MLPs [n_in, h_1, ..., n_out] with controlled weight spectra."""
    return st.builds(_mlp, _st(widths), seeds, _st(sigma_max), _st(kappa))


def _attention(seed: int, sigma_max: float, kappa: float, hidden: int, heads: int) -> Any:
    from convrate.models.byod import controlled_attention

    return controlled_attention(seed, sigma_max, kappa, hidden, heads)


def attention_blocks(sigma_max: Any = st.floats(0.5, 2.0), kappa: Any = log_uniform(1.0, 100.0),
                     hidden: Any = 4, heads: Any = 2, seeds: SearchStrategy[int] = SEEDS) -> SearchStrategy:
    """``LoadedModel`` one-layer BERT blocks (hidden divisible by heads) with controlled spectra."""
    return st.builds(_attention, seeds, _st(sigma_max), _st(kappa), _st(hidden), _st(heads))


def _instance(model_seed: tuple[Any, int]) -> Any:
    from convrate.models.byod import Instance, make_instance

    model, seed = model_seed
    return model if isinstance(model, Instance) else make_instance(model, seed)


def instances(models: Any = None) -> SearchStrategy:
    """``models.byod.Instance``s: a model of kinds "mlp" / "attention" (default "mlp"; from
    ``mlps()`` / ``attention_blocks()``) or drawn from a strategy of models (nn.Sequential MLP,
    BERT module, LoadedModel, Instance), with seeded attacker data and probe inputs."""
    from convrate.byod import normalize_kinds

    if isinstance(models, SearchStrategy):
        source = models
    else:
        source = st.one_of([mlps() if k == "mlp" else attention_blocks() for k in normalize_kinds(models)])
    return st.tuples(source, SEEDS).map(_instance)


def _element(sym: Any, kappa: float, seed: int) -> Any:
    import math

    import torch

    from convrate.models import elements
    from convrate.models.defense import profile_values
    from convrate.numerics.fp_precision import controlled_pair

    r, kind = sym.width, sym.element_kind
    g = torch.Generator().manual_seed(seed)
    if r == 1 and kind not in ("diagonal",):
        return sym.identity()
    if kind in elements.VECTOR_KINDS:
        d = profile_values(kappa, r, "geometric")[torch.randperm(r, generator=g)] if r > 1 else sym.identity()
        if kind == "diagonal":  # any nonzero diagonal (SwiGLU's D, S7's c): random signs too
            d = d * torch.where(torch.rand(r, generator=g) < 0.5, -1.0, 1.0).to(d.dtype)
        return d
    if kind == "gl":
        A = controlled_pair(seed, r, r, 1, 1, scale=kappa**0.5, cond=kappa)[0]  # sigma from sqrt(K) to 1/sqrt(K)
        return torch.from_numpy(A)
    # rope (per-pair scaled rotations, kappa(A) ~ kappa), orthogonal and permutation (kappa 1)
    return elements.random(kind, r, g, math.log(kappa) / 2, sym.structure)


def general_record(model: Any, kappa: float, seed: int, family: str | None = None) -> Any:
    """A ``TorchReparameterization`` of ``model`` by *general* group elements, by element kind
    (``models.elements``): GL (S1, S5) A = U diag(s) V^T with independent random orthogonal U, V
    (neither symmetric nor diagonal, so A^-1 and A^-T differ; s geometric from sqrt(kappa) to
    1/sqrt(kappa), kappa(A) = kappa), positive diagonals (S2) and nonzero diagonals (S6, S7:
    random signs) permuted geometric with kappa(A) = kappa, RoPE commutants (S4) random scaled
    rotations with log-scale ln(kappa)/2, orthogonal and permutation groups a random member.
    Defenses such as SpecDef use symmetric A = U diag(s) U^T only; statements that hold for every
    element (T1, T2, R1, R2, FPLR inference) must be tested on these."""
    from convrate.models.symmetry import TorchReparameterization
    from convrate.models.families import discover_symmetries

    syms = [s for s in discover_symmetries(model) if family is None or s.family == family]
    return TorchReparameterization([(s, _element(s, kappa, seed * 1009 + i)) for i, s in enumerate(syms)],
                                   {"defense": "strategies.general_record", "kappa_A": kappa})


def _record(model: Any, kappa: float, family: str | None, seed: int) -> Any:
    return general_record(model, kappa, seed, family)


def reparameterizations(model: Any, kappa: Any = log_uniform(1.0, 1e3), family: str | None = None,
                        seeds: SearchStrategy[int] = SEEDS) -> SearchStrategy:
    """``TorchReparameterization``s of ``model`` (a LoadedModel) on its groups of ``family``
    ("S1", "S2" or None for all) with kappa(A) = kappa on every group of width >= 2."""
    return st.builds(_record, st.just(model), _st(kappa), st.just(family), seeds)


def _attack(optimizer: str, lr: float, budget: int, seed: int) -> Any:
    from convrate.models.attacks import Attack

    return Attack(optimizer, lr, budget, seed=seed, device="cpu")


def attacks(optimizers: Sequence[str] = ("sgd", "momentum", "adam", "adamw"), lr: Any = log_uniform(1e-4, 1e-1),
            budget: Any = st.integers(1, 50), seeds: SearchStrategy[int] = SEEDS) -> SearchStrategy:
    """``Attack`` configurations (optimizer, learning rate, step budget, seed; CPU)."""
    return st.builds(_attack, st.sampled_from(tuple(optimizers)), _st(lr), _st(budget), seeds)


__all__ = [
    "SEEDS", "log_uniform", "quadratics", "quadratic_reparameterizations", "net_cases", "spec_cases",
    "NetCase", "SpecCase", "mlps", "attention_blocks", "instances", "reparameterizations", "attacks",
    "general_record",
]
