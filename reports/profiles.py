"""Report profiles: what each section measures, at which size.

``QUICK`` fits in 10 minutes on a 2-core CPU (``convrate report --quick``: 460 s measured);
``FULL`` is the default profile (T1/T2 on all six MiniLM layers and their heads, the sweeps and
recoveries on two layers; more strengths, optimizers and defenses, larger budgets and finer
learning-rate grids; 2907 and 3050 s measured on 2 cores, two thirds of it the slowdown sweeps).
Targets are losses of the attacker's task (cross-entropy, nats per example); the digits task
starts near 18 nats (the released model is confident in the original labels), the text task
near ln 4 = 1.39 (a fresh 4-way head).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from convrate.models.attacks import log_grid
from convrate.models.experiments import SearchProfile


@dataclass(frozen=True)
class NetSweep:
    """A slowdown sweep on one network (defenses named as in ``experiments.sweep_defense``)."""

    Ks: tuple[float, ...]
    optimizers: tuple[str, ...]
    defenses: tuple[str, ...]
    target: float
    search: SearchProfile


@dataclass(frozen=True)
class ReportProfile:
    name: str
    #: examples per battery entry of the exact checks (numerics.battery.PROFILES key)
    battery: str
    #: MiniLM encoder layers kept for the laws (T1/T2, W) and the precision limit, and the heads
    #: checked for T1/T2 (None: all); layers kept for the slowdown sweeps and recoveries
    minilm_layers: int
    minilm_heads: tuple[int, ...] | None
    minilm_sweep_layers: int
    #: text task size for MiniLM attacks: paragraphs per class, tokens
    text_per_class: int
    text_tokens: int
    W_Ks: tuple[float, ...]
    mlp: NetSweep
    cnn: NetSweep
    minilm: NetSweep
    #: K grid of the precision figure (decades)
    precision_Ks: tuple[float, ...]
    #: MiniLM spectra: Lanczos products and Hutchinson probes per state
    spectra_lanczos_steps: int
    spectra_probes: int


QUICK = ReportProfile(
    name="quick", battery="quick", minilm_layers=1, minilm_heads=(0, 5), minilm_sweep_layers=1,
    text_per_class=12, text_tokens=24, W_Ks=(1, 10, 100, 1000),
    mlp=NetSweep((10, 100, 1000), ("sgd", "momentum", "adam"), ("specdef", "diagonal"), 0.05,
                 SearchProfile(1500, tuple(log_grid(1e-3, 10, 1)), refine=1)),
    cnn=NetSweep((100,), ("sgd", "adam"), ("specdef",), 0.3,
                 SearchProfile(400, tuple(log_grid(1e-3, 1, 1)), refine=0)),
    minilm=NetSweep((100,), ("sgd", "adam"), ("specdef",), 0.1,
                    SearchProfile(60, tuple(log_grid(1e-4, 1, 1)), refine=0)),
    precision_Ks=tuple(10.0 ** e for e in range(0, 13)),
    spectra_lanczos_steps=30, spectra_probes=12,
)

FULL = ReportProfile(
    name="full", battery="full", minilm_layers=6, minilm_heads=None, minilm_sweep_layers=2,
    text_per_class=16, text_tokens=32, W_Ks=(1, 10, 100, 1000),
    mlp=NetSweep((10, 100, 1000, 10000), ("sgd", "momentum", "adam", "lora-sgd"),
                 ("specdef", "specdef:spike", "diagonal"), 0.02,
                 SearchProfile(3000, tuple(log_grid(1e-4, 10, 2)), refine=1)),
    cnn=NetSweep((10, 100, 1000), ("sgd", "adam"), ("specdef",), 0.2,
                 SearchProfile(1000, tuple(log_grid(1e-3, 1, 1)), refine=1)),
    minilm=NetSweep((100,), ("sgd", "adam"), ("specdef",), 0.1,
                    SearchProfile(60, tuple(log_grid(1e-4, 1, 1)), refine=0)),
    precision_Ks=tuple(10.0 ** (e / 2) for e in range(0, 33)),
    spectra_lanczos_steps=80, spectra_probes=32,
)


#: perturbed starts per reported step count, per profile (``models.sensitivity``: each count of the
#: sweeps and recoveries carries the range over them and the unperturbed run, at its best learning
#: rate only; the cost is that many extra attacks per count)
STEP_SENSITIVITY_RUNS = {"quick": 2, "full": 3}


def _with_sensitivity(p: ReportProfile, runs: int) -> ReportProfile:
    """Every NetSweep of ``p`` with ``search.sensitivity = runs``."""
    sweeps = {f.name: getattr(p, f.name) for f in fields(p) if isinstance(getattr(p, f.name), NetSweep)}
    return replace(p, **{k: replace(v, search=replace(v.search, sensitivity=runs)) for k, v in sweeps.items()})


QUICK = _with_sensitivity(QUICK, STEP_SENSITIVITY_RUNS["quick"])
FULL = _with_sensitivity(FULL, STEP_SENSITIVITY_RUNS["full"])


def profile(quick: bool) -> ReportProfile:
    return QUICK if quick else FULL
