"""Report profiles: what each section measures, at which size.

``QUICK`` fits in 10 minutes on a 2-core CPU (``convrate report --quick``); ``FULL`` is the
default profile, sized for the main command's budget of 20 minutes on 2 cores with two worker
processes (T1/T2 on all six MiniLM layers and their heads, the sweeps and recoveries on two
layers with the quick profile's text task, 48 paragraphs of 24 tokens; more strengths and
defenses on the MLP, larger budgets and finer learning-rate grids, the second-order attackers on
the MLP and the zoo Llama; see README "Report wall time" for the measurements); ``EXTENDED``
(``--profile extended``) is FULL with the complete sweeps that do not fit that budget: MiniLM's
text task at 64 paragraphs of 32 tokens, LoRA-SGD on the MLP, the CNN at K = 10 and 1000, the inserted
form at alpha = 100, 10^4 and on MiniLM, the second-order attackers at K = 10^4 and with the spike
profile on the MLP, on the CNN (nine attackers) and on MiniLM (Sophia, Muon; about 1-3 s per
MiniLM step), 3 sensitivity runs per count. Newton-CG and Gauss-Newton (k products per step) get
smaller step budgets; K-FAC and Shampoo are too dear on MiniLM (about 17 and 68 s per step
measured) and Gauss-Newton is for small models.
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
class InsertedProfile:
    """The inserted-form section (``sections_inserted``): alphas and optimizers of the digits MLP
    sweep (target and search of ``mlp``), alphas (none: no MiniLM sweep) and layer pattern on MiniLM
    (``minilm``'s target, search and optimizers), rank k, and the alpha grid of the precision figure
    (MiniLM truncated to ``minilm_sweep_layers``)."""

    k: int
    mlp_alphas: tuple[float, ...]
    mlp_optimizers: tuple[str, ...]
    minilm_alphas: tuple[float, ...]
    minilm_layers: str
    precision_alphas: tuple[float, ...]
    #: the zoo Llama's layers in the precision curve (None: not run)
    llm_layers: str | None = None
    #: MiniLM (``minilm_sweep_layers`` layers, ``minilm_layers``) in the precision curve
    minilm_precision: bool = True


@dataclass(frozen=True)
class LLMProfile:
    """The decoder-LLM sections (``sections_llm``) on the zoo Llama: the attack task (``lm-text``,
    ``sequences`` blocks of ``tokens`` tokens); its first-order sweep (SpecDef on every continuous
    group) and, when set, the second-order one (``so``); R1 / R2 for the sweep's
    ``recovery_optimizers``; float64 batches of ``law_sequences`` x ``law_tokens`` for T1/T2, the
    Hessian extremes (``spectra_steps`` Lanczos steps, ``spectra_probes`` Hutchinson probes) and
    statement O (``rotations`` Haar rotations, ``rotation_steps`` steps); the largest safe K per
    group kind and dtype is searched up to ``K_max``."""

    sequences: int
    tokens: int
    sweep: NetSweep
    recovery_optimizers: tuple[str, ...]
    law_sequences: int
    law_tokens: int
    spectra_steps: int
    spectra_probes: int
    rotations: int
    rotation_steps: int
    K_max: float = 1e12
    so: NetSweep | None = None


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
    #: SpecDef with an inserted layer (sections_inserted)
    inserted: InsertedProfile | None = None
    #: second-order and preconditioned attackers (section "slowdown-second-order"), per network; the
    #: same target as the network's first-order sweep (None: not run)
    mlp_so: NetSweep | None = None
    cnn_so: NetSweep | None = None
    minilm_so: NetSweep | None = None
    #: the decoder-LLM sections on the zoo Llama (None: not run)
    llm: LLMProfile | None = None


#: damping grid of Newton-CG, Gauss-Newton and K-FAC (their searched knob), one point per decade
_DAMPING = tuple(log_grid(1e-3, 10, 1))
_SO_ALL = ("lbfgs", "lbfgs-wolfe", "newton-cg", "gauss-newton", "kfac", "shampoo", "soap", "sophia", "muon")


def _so_search(budget: int, lr_grid: tuple[float, ...], damping: tuple[float, ...], refine: int,
               names: tuple[str, ...], hvp_budget: int | None = None) -> SearchProfile:
    """Damping grids for Newton-CG, Gauss-Newton, K-FAC; two initial steps for L-BFGS with line
    search; ``hvp_budget``: a smaller step budget for the methods that pay k products per step."""
    grids = tuple((o, damping) for o in ("newton-cg", "gauss-newton", "kfac") if o in names)
    grids += (("lbfgs-wolfe", (0.3, 1.0)),) if "lbfgs-wolfe" in names else ()
    budgets = tuple((o, hvp_budget) for o in ("newton-cg", "gauss-newton") if o in names and hvp_budget)
    return SearchProfile(budget, lr_grid, refine=refine, grids=grids, budgets=budgets)


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
    inserted=InsertedProfile(k=4, mlp_alphas=(10, 100, 1000), mlp_optimizers=("sgd", "adam"), minilm_alphas=(),
                             minilm_layers="*.attention.self.query,*.attention.self.value",
                             precision_alphas=tuple(10.0 ** e for e in range(0, 13, 2))),
    mlp_so=NetSweep((100,), ("lbfgs-wolfe", "newton-cg", "kfac", "shampoo", "sophia", "muon"), ("specdef",), 0.05,
                    _so_search(300, tuple(log_grid(1e-3, 1, 1)), (0.1, 1.0, 10.0), 0,
                               ("lbfgs-wolfe", "newton-cg", "kfac"), hvp_budget=150)),
    cnn_so=NetSweep((100,), ("lbfgs-wolfe", "kfac", "shampoo", "sophia", "muon"), ("specdef",), 0.3,
                    _so_search(200, tuple(log_grid(1e-3, 1, 1)), (0.1, 1.0, 10.0), 0, ("lbfgs-wolfe", "kfac"))),
    minilm_so=NetSweep((100,), ("sophia", "muon"), ("specdef",), 0.1, _so_search(60, (1e-3, 1e-2), (), 0, ())),
    llm=LLMProfile(sequences=32, tokens=32,
                   sweep=NetSweep((100,), ("sgd", "adam", "lora-adam"), ("specdef",), 3.0,
                                  SearchProfile(100, tuple(log_grid(1e-3, 1, 1)), refine=0)),
                   recovery_optimizers=("sgd", "adam"), law_sequences=4, law_tokens=16, spectra_steps=20,
                   spectra_probes=8, rotations=4, rotation_steps=6),
)

FULL = ReportProfile(
    name="full", battery="full", minilm_layers=6, minilm_heads=None, minilm_sweep_layers=2,
    text_per_class=12, text_tokens=24, W_Ks=(1, 10, 100, 1000),
    mlp=NetSweep((10, 100, 1000, 10000), ("sgd", "momentum", "adam"), ("specdef", "specdef:spike", "diagonal"), 0.02,
                 SearchProfile(3000, tuple(log_grid(1e-4, 10, 2)), refine=1)),
    cnn=NetSweep((100,), ("sgd", "adam"), ("specdef",), 0.2,
                 SearchProfile(1000, tuple(log_grid(1e-3, 1, 1)), refine=1)),
    minilm=NetSweep((100,), ("sgd", "adam"), ("specdef",), 0.1,
                    SearchProfile(60, tuple(log_grid(1e-4, 1, 1)), refine=0)),
    precision_Ks=tuple(10.0 ** (e / 2) for e in range(0, 33)),
    spectra_lanczos_steps=80, spectra_probes=32,
    inserted=InsertedProfile(k=4, mlp_alphas=(10, 1000), mlp_optimizers=("sgd", "momentum", "adam"),
                             minilm_alphas=(), minilm_layers="*.attention.self.query,*.attention.self.value",
                             precision_alphas=tuple(10.0 ** e for e in range(0, 17)), llm_layers="*.self_attn.v_proj"),
    mlp_so=NetSweep((100,), _SO_ALL, ("specdef", "diagonal"), 0.02,
                    _so_search(1000, tuple(log_grid(1e-3, 10, 1)), _DAMPING, 1, _SO_ALL, hvp_budget=300)),
    llm=LLMProfile(sequences=32, tokens=32,
                   sweep=NetSweep((10, 100, 1000), ("sgd", "momentum", "adam", "lora-adam"), ("specdef",), 3.0,
                                  SearchProfile(150, tuple(log_grid(1e-4, 1, 1)), refine=1)),
                   recovery_optimizers=("sgd", "momentum", "adam", "lora-adam"), law_sequences=8, law_tokens=16,
                   spectra_steps=40, spectra_probes=16, rotations=8, rotation_steps=8,
                   so=NetSweep((100,), ("lbfgs-wolfe", "soap", "sophia", "muon"), ("specdef",), 3.0,
                               _so_search(100, tuple(log_grid(1e-4, 1, 1)), (), 0, ("lbfgs-wolfe",)))),
)

#: the complete sweeps (``convrate report --profile extended``): FULL plus MiniLM's larger text task
#: (64 paragraphs of 32 tokens), LoRA-SGD and K = 10, 1000 on the CNN, the inserted form at
#: alpha = 100, 10000 and on MiniLM, the second-order attackers at K = 10^4 and the spike profile on
#: the MLP, on the CNN and on MiniLM; too large for the 20-minute budget of the main command on 2
#: cores (its size is documented in README)
EXTENDED = replace(
    FULL, name="extended", text_per_class=16, text_tokens=32,
    mlp=replace(FULL.mlp, optimizers=FULL.mlp.optimizers + ("lora-sgd",)),
    cnn=replace(FULL.cnn, Ks=(10, 100, 1000)),
    inserted=replace(FULL.inserted, mlp_alphas=(10, 100, 1000, 10000), minilm_alphas=(100, 1000)),
    mlp_so=NetSweep((100, 10000), _SO_ALL, ("specdef", "specdef:spike", "diagonal"), 0.02,
                    _so_search(1000, tuple(log_grid(1e-3, 10, 1)), _DAMPING, 1, _SO_ALL, hvp_budget=300)),
    cnn_so=NetSweep((100,), _SO_ALL, ("specdef",), 0.2,
                    _so_search(400, tuple(log_grid(1e-3, 1, 1)), _DAMPING, 0, _SO_ALL, hvp_budget=200)),
    minilm_so=NetSweep((100,), ("sophia", "muon"), ("specdef",), 0.1, _so_search(60, (1e-3, 1e-2), (), 0, ())),
)


#: perturbed starts per reported step count, per profile (``models.sensitivity``: each count of the
#: sweeps and recoveries carries the range over them and the unperturbed run, at its best learning
#: rate only; the cost is that many extra attacks per count)
STEP_SENSITIVITY_RUNS = {"quick": 2, "full": 2, "extended": 3}


def _with_sensitivity(p: ReportProfile, runs: int) -> ReportProfile:
    """Every NetSweep of ``p`` with ``search.sensitivity = runs``."""
    sweeps = {f.name: getattr(p, f.name) for f in fields(p) if isinstance(getattr(p, f.name), NetSweep)}
    return replace(p, **{k: replace(v, search=replace(v.search, sensitivity=runs)) for k, v in sweeps.items()})


QUICK = _with_sensitivity(QUICK, STEP_SENSITIVITY_RUNS["quick"])
FULL = _with_sensitivity(FULL, STEP_SENSITIVITY_RUNS["full"])
EXTENDED = _with_sensitivity(EXTENDED, STEP_SENSITIVITY_RUNS["extended"])
#: ``convrate report --profile NAME``
PROFILES = {"quick": QUICK, "full": FULL, "extended": EXTENDED}


def profile(quick: bool) -> ReportProfile:
    return QUICK if quick else FULL

#: a report small enough for a test (seconds): every section's code path, tiny budgets; used by
#: property_tests/test_report_parallel.py to check that a parallel build equals the serial one
TINY = ReportProfile(
    name="tiny", battery="quick", minilm_layers=1, minilm_heads=(0,), minilm_sweep_layers=1,
    text_per_class=4, text_tokens=8, W_Ks=(1, 10),
    mlp=NetSweep((10,), ("sgd", "adam"), ("specdef",), 10.0, SearchProfile(40, tuple(log_grid(1e-2, 1, 1)), refine=1)),
    cnn=NetSweep((10,), ("sgd",), ("specdef",), 15.0, SearchProfile(10, (0.1, 1.0), refine=0)),
    minilm=NetSweep((10,), ("sgd",), ("specdef",), 1.3, SearchProfile(3, (1e-2, 1e-1), refine=0)),
    precision_Ks=(1.0, 10.0), spectra_lanczos_steps=5, spectra_probes=2,
)
