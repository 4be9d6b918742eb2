"""Check convrate's statements against a user-supplied defense (protocol: ``convrate.byod``).

One code path for the pytest plugin (``convrate.plugin``) and ``convrate check --defense``:
``defense_entries`` turns (defense, statements, model kinds) into battery ``Entry``s of
``convrate.numerics.battery`` -- a Hypothesis strategy of ``Instance``s
(``convrate.strategies.instances``) and a check that runs
the defense on the instance and returns ``CheckResult``s. The plugin runs each entry as a
Hypothesis property (shrinking on failure); the CLI collects with ``run_entry``.

Instances are float64 (rounding is then far below any function change a defense could make):
a reference model theta, attacker data (X, Y) for the squared loss
L(theta) = (1/N) sum_n 1/2 ||f(x_n; theta) - y_n||^2 (mu_ell = 1), and probe inputs.

Statements (ids of ``convrate.byod.STATEMENTS``), with f the reference, f' the defended model:

* **FPLR** measured = max_i |f'(x)_i - f(x)_i| / a_i over the probe outputs, <= 1, where a_i
  bounds the float64 rounding of the two forward passes. Zoo ``nn.Sequential`` nets:
  a = ``sequential_error_bound(f) + sequential_error_bound(f', WEIGHT_ROUNDINGS)`` (rigorous,
  given that every defended weight is the exact T theta entry rounded by at most
  ``WEIGHT_ROUNDINGS`` float64 operations, which covers every element of S2 applied as
  d_i w_ij / d_j). Other modules (attention): the first-order estimate
  a = gamma_m (2 + kappa(T)) max |f| with m = ``reduction_length`` (the rounding of T theta
  perturbs the output by ~ u kappa(T), THEORY PREC; an estimate, not a proof).
* **T-CLAIM** claimed T: measured = max over parameter tensors p of
  ||theta'_p - (T theta)_p||_F / ||(T theta)_p||_F divided by the allowance
  c_p = 2 sum over groups g acting on p of e_g (two float64 computations of T theta: the
  defense's and convrate's), e_g = gamma_k (S2, k = WEIGHT_ROUNDINGS elementwise roundings)
  or r 2^r kappa(A_g) gamma_(3r+k) (S1: A M with |fl(AM) - AM| <= gamma_r |A||M| gives
  ||.||_F <= gamma_r sqrt(r) kappa(A) ||AM||_F; the solve A^-T M by LU with partial pivoting
  has growth <= 2^(r-1) and forward error <~ kappa(A) gamma_3r; Higham ch. 3, 9), <= 1.
  Inferred T: the inference residual against its rtol = sqrt(u) (``models.fplr``).
* **T1**, **T2**: ``models.checks.check_t1`` / ``check_t2`` on the squared loss.
* **W**: ``models.checks.check_w`` (zoo nets ending in a Linear layer, S2 records).
* **R1**: (a) the frozen A, A^-1 buffers of ``recovery.r1_module`` number
  ``recovery_extra_parameters`` <= ``recovery_extra_parameters_bound`` (exact integers);
  (b) R1_STEPS steps of full-batch GD with step eta = 1/||H|| on the R1 module (started at
  the defended weights) and on the reference give the same losses: |L_R1(t) - L(t)| <= e_t
  with c = 2 max_p sum_g e_g (T-CLAIM's allowance), k = kappa(T) and the first-order
  propagation of the distance d_t between the two iterates (phi_0 = T^-1 fl(T theta): d_0 =
  2 k c ||theta||; each step adds the gradient's rounding through T^T and T^-T, 2 k gamma_m
  ||g_t||, the forward pass at fl(T phi), ||H|| k c ||theta_t||, and the update's 2 u
  ||theta_t||; GD multiplies it by at most 1 + eta ||H||),
      e_t = ||g_t|| d_t + ||H|| d_t^2 / 2 + ||g_t|| k c ||theta_t|| + 2 gamma_m (|L_t| + |L_R1(t)|)
  (||H|| from 30 Lanczos steps at theta_0, ||g_t||, ||theta_t|| along the reference run: an
  estimate, not a proof).
* **R2**: ``recovery.canonicalize`` of the defended and of the reference model give the same
  weights: max over tensors of the relative distance <= kappa(C') c_T (the rounding c_T of
  theta' = T theta, mapped by the defended model's canonicalizing C') + the rounding of applying
  C and C' + for S2 expm1(2 (e + e')), e = (last correction + gamma_3) / (1 - rho) the
  a-posteriori log-scale error of each balance, + for S1 (c_T + gamma) ||X|| ||Y|| / gap(X^T Y)
  (Wedin). An estimate; not run when the sweeps do not contract.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from hypothesis import reject
from hypothesis import strategies as st
from hypothesis.errors import FailedHealthCheck, Unsatisfiable
from torch import nn

from convrate.byod import (
    KINDS,
    STATEMENTS,
    DefenseOutputError,
    DefenseRaisedError,
    DefenseStatement,
    defense_input,
    describe_defense,
    load_defense,
    normalize_kinds,
    raise_site,
    select_statements,
    statement_available,
)
from convrate.errors import InvalidInputError
from convrate.models.checks import (
    check_t1,
    check_t2,
    check_w,
    gamma,
    hessian_norm_estimate,
    reduction_length,
    sequential_error_bound,
)
from convrate.models.curvature import Objective
from convrate.models.defense import Defense, DefenseResult
from convrate.models.io import LoadedModel, model_output
from convrate.models.symmetry import TorchReparameterization
from convrate.models.families import discover_symmetries
from convrate.numerics.battery import Entry, run_entry
from convrate.numerics.fp_precision import controlled_pair
from convrate.theory.core import CheckResult, compare

U64 = 2.0 ** -53
#: float64 roundings per defended weight assumed by FPLR and T-CLAIM (module doc)
WEIGHT_ROUNDINGS = 4
#: GD steps compared by R1
R1_STEPS = 4
EST = "float64 (first-order forward-error estimate gamma_m)"
RIG = "float64 (rigorous forward-error bound, sequential_error_bound)"


# ================================================================ instances
@dataclass(frozen=True, eq=False)
class Instance:
    """A float64 reference model, attacker data (X, Y) for the squared loss, probe inputs, and
    a one-line recipe (``label``, also the repr Hypothesis prints for a falsifying example)."""

    model: LoadedModel
    X: Any
    Y: torch.Tensor
    probes: Any
    label: str

    def __repr__(self) -> str:
        return self.label


def as_loaded(model: Any) -> LoadedModel:
    """A LoadedModel around ``model``: itself; an ``nn.Sequential`` whose first affine layer is
    a Linear (input shape = its in_features); a Hugging Face BERT-family module."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, nn.Sequential):
        first = next((m for m in model if isinstance(m, (nn.Linear, nn.Conv2d))), None)
        if not isinstance(first, nn.Linear):
            raise InvalidInputError("an nn.Sequential instance must start with a Linear layer "
                                    "(give a convrate LoadedModel with input_shape for other nets)")
        kind = "mlp" if all(isinstance(m, (nn.Linear, nn.ReLU, nn.LeakyReLU, nn.Identity)) for m in model) else "cnn"
        return LoadedModel(model, kind, "zoo", {"kind": kind}, None, (first.in_features,), {})
    cfg = getattr(model, "config", None)
    if isinstance(model, nn.Module) and getattr(cfg, "model_type", None) == "bert":
        return LoadedModel(model, "bert", "hf", cfg.to_dict(), None, None, {})
    raise InvalidInputError(f"cannot check a defense on a {type(model).__name__}: supported instances are "
                            "nn.Sequential MLPs, BERT-family modules and convrate LoadedModels")


def make_instance(model: Any, seed: int = 0, n: int = 12, label: str | None = None) -> Instance:
    """An Instance from a model (a float64 eval-mode copy unless it is one already; defenses
    get their own copy) with seeded N(0, 1) data: zoo nets X (n, *input_shape), Y like the
    outputs; BERT 2 sequences of 3 tokens and Y (2, 3, hidden)."""
    lm = as_loaded(model)
    mod = lm.module
    if mod.training or any(p.dtype != torch.float64 for p in mod.parameters()):
        mod = copy.deepcopy(mod).to(torch.float64).eval()
    lm = lm.with_module(mod)
    g = torch.Generator().manual_seed(seed + 1)
    if lm.fmt == "zoo":
        X = torch.randn((n, *lm.input_shape), generator=g, dtype=torch.float64)
        probes = lm.probe_inputs(8, seed=seed + 2, dtype=torch.float64)
    else:
        vocab = int(lm.config["vocab_size"])
        X = {"input_ids": torch.randint(1, vocab, (2, 3), generator=g),
             "attention_mask": torch.ones(2, 3, dtype=torch.long)}
        probes = lm.probe_inputs(2, seed=seed + 2, seq_len=4)
    with torch.no_grad():
        shape = model_output(mod, X).shape
    Y = torch.randn(shape, generator=g, dtype=torch.float64)
    return Instance(lm, X, Y, probes, label or lm.info.get("recipe") or f"{type(mod).__name__} data seed={seed}")


def _controlled(rows: int, cols: int, seed: int, sigma_max: float, kappa: float) -> torch.Tensor:
    """sigma_max U diag(sigma) V^T (rows x cols), sigma geometric from 1 to 1/kappa
    (``numerics.fp_precision.controlled_pair``)."""
    return torch.from_numpy(controlled_pair(seed, rows, cols, 1, 1, scale=sigma_max, cond=kappa)[0])


def controlled_mlp(widths: Sequence[int], seed: int, sigma_max: float = 1.0, kappa: float = 10.0) -> LoadedModel:
    """A float64 zoo ReLU MLP with layer widths [n_in, h_1, ..., n_out] whose every weight
    matrix has singular values geometric from sigma_max to sigma_max / kappa (random singular
    vectors), biases N(0, 0.1); ``info["recipe"]`` says how it was drawn."""
    from convrate.models.io import zoo_model
    from convrate.models.testing import mlp_arch

    g = torch.Generator().manual_seed(seed)
    state = {}
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        state[f"{2 * i}.weight"] = _controlled(b, a, seed * 131 + i, sigma_max, kappa)
        state[f"{2 * i}.bias"] = 0.1 * torch.randn(b, generator=g, dtype=torch.float64)
    m = zoo_model(mlp_arch(widths), state)
    m.info["recipe"] = f"mlp widths={list(widths)} sigma_max={sigma_max:.4g} kappa_w={kappa:.4g} seed={seed}"
    return m


def controlled_attention(seed: int, sigma_max: float = 1.0, kappa: float = 10.0, hidden: int = 4,
                         heads: int = 2) -> LoadedModel:
    """A one-layer random BERT (eager attention, float64) whose W_Q, W_K, W_V, W_O have
    singular values geometric from sigma_max to sigma_max / kappa."""
    from convrate.models.testing import tiny_bert

    m = tiny_bert(seed, hidden=hidden, heads=heads)
    att = m.module.encoder.layer[0].attention
    with torch.no_grad():
        for i, lin in enumerate((att.self.query, att.self.key, att.self.value, att.output.dense)):
            lin.weight.copy_(_controlled(*lin.weight.shape, seed * 131 + i, sigma_max, kappa))
    m.info["recipe"] = (f"attention hidden={hidden} heads={heads} sigma_max={sigma_max:.4g} "
                        f"kappa_w={kappa:.4g} seed={seed}")
    return m


def mlp_instance(widths: Sequence[int], seed: int, sigma_max: float = 1.0, kappa: float = 10.0) -> Instance:
    """``controlled_mlp`` with seeded data."""
    m = controlled_mlp(widths, seed, sigma_max, kappa)
    return make_instance(m, seed, label=m.info["recipe"])


def attention_instance(seed: int, sigma_max: float = 1.0, kappa: float = 10.0, hidden: int = 4,
                       heads: int = 2) -> Instance:
    """``controlled_attention`` with seeded data."""
    m = controlled_attention(seed, sigma_max, kappa, hidden, heads)
    return make_instance(m, seed, label=m.info["recipe"])


def first_instance(kind: str) -> Instance:
    """The instance checked before any property runs (bad input is reported on it first)."""
    return mlp_instance([3, 4, 2], 0) if kind == "mlp" else attention_instance(0)


# ================================================================ running a defense
@dataclass
class Defended:
    """A defense applied to an instance: the defended module, T (claimed, inferred or None),
    where T came from, and the inference result when T was inferred."""

    instance: Instance
    module: nn.Module
    record: TorchReparameterization | None
    source: str  # "claimed" | "inferred" | "none"
    name: str
    fit: Any = None  # the FPLRFit of the inference
    reason: str = ""  # why there is no T

    @property
    def label(self) -> str:
        return f"{self.instance.label}, T {self.source}"

    @property
    def loaded(self) -> LoadedModel:
        return self.instance.model.with_module(self.module)


def _finite(module: nn.Module, name: str) -> None:
    for n, p in module.named_parameters():
        bad = int((~torch.isfinite(p.detach())).sum()) if p.is_floating_point() else 0
        if bad:
            raise DefenseOutputError(f"defense {name} returned non-finite weights: {n!r} has {bad} NaN/Inf "
                                     f"entr{'y' if bad == 1 else 'ies'}")


def _from_weights(ref: nn.Module, weights: Mapping[str, Any], name: str) -> nn.Module:
    want = dict(ref.state_dict())
    missing, extra = sorted(set(want) - set(weights)), sorted(set(weights) - set(want))
    if missing or extra:
        what = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise DefenseOutputError(f"defense {name} returned a different architecture: weights dict {what}")
    for k, v in weights.items():
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != tuple(want[k].shape):
            got = list(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise DefenseOutputError(f"defense {name} returned a different architecture: {k!r} is {got}, "
                                     f"expected {list(want[k].shape)}")
    mod = copy.deepcopy(ref)
    with torch.no_grad():
        for k, p in mod.state_dict().items():
            p.copy_(weights[k])
    return mod


def _unpack(out: Any, ref: nn.Module, name: str) -> tuple[nn.Module, Any]:
    """(defended module, claimed T or None) from anything the protocol allows."""
    claimed = None
    if isinstance(out, tuple):
        if len(out) != 2:
            raise DefenseOutputError(f"defense {name} returned a tuple of {len(out)} items; expected "
                                     "(defended, T)")
        out, claimed = out
    if isinstance(out, DefenseResult):
        out, claimed = out.model, out.record if claimed is None else claimed
    if isinstance(out, LoadedModel):
        out = out.module
    if isinstance(out, Mapping):
        out = _from_weights(ref, out, name)
    if not isinstance(out, nn.Module):
        raise DefenseOutputError(f"defense {name} returned {type(out).__name__}; expected a torch module, a "
                                 "weights dict, or (one of those, T)")
    return out, claimed


def apply_defense(defense: Callable[..., Any], instance: Instance, name: str | None = None) -> Defended:
    """Run ``defense`` on a private copy of the instance's reference and validate what comes
    back: same architecture (``fplr.check_same_architecture``) and dtype, finite weights, T a
    ``TorchReparameterization`` acting on this architecture, else DefenseOutputError; an
    exception of the defense becomes DefenseRaisedError (with the raising file:line). Without a
    claimed T, T is inferred (``fplr.infer_reparameterization``)."""
    from convrate.models.fplr import check_same_architecture, infer_reparameterization

    name = name or describe_defense(defense)
    ref = instance.model.module
    arg: Any = copy.deepcopy(ref)
    if defense_input(defense) == "weights":
        arg = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    try:
        out = defense(arg)
    except Exception as e:  # the user's code: any exception is reported in one line
        raise DefenseRaisedError(f"defense {name} raised {type(e).__name__}: {' '.join(str(e).split())[:200]} "
                                 f"(at {raise_site(e)}) on {instance.label}") from None
    module, claimed = _unpack(out, ref, name)
    try:
        check_same_architecture(ref, module)
    except InvalidInputError as e:
        raise DefenseOutputError(f"defense {name} returned a different architecture: {e}") from None
    dtypes = {p.dtype for p in module.parameters()}
    if dtypes != {torch.float64}:
        raise DefenseOutputError(f"defense {name} changed the dtype of a float64 model to "
                                 f"{', '.join(sorted(str(d) for d in dtypes))}")
    _finite(module, name)
    module = module.train(ref.training)
    if claimed is not None:
        if not isinstance(claimed, TorchReparameterization):
            raise DefenseOutputError(f"defense {name} returned T as a {type(claimed).__name__}; expected a "
                                     "convrate.models.TorchReparameterization")
        try:
            claimed.apply(dict(ref.named_parameters()))
        except InvalidInputError as e:
            raise DefenseOutputError(f"defense {name} returned a T that does not act on this model: {e}") from None
        return Defended(instance, module, claimed, "claimed", name)
    try:
        fit = infer_reparameterization(instance.model, instance.model.with_module(module))
    except InvalidInputError as e:  # e.g. no supported symmetry group in this architecture
        return Defended(instance, module, None, "none", name, reason=f"T cannot be inferred: {e}")
    return Defended(instance, module, fit.record, "inferred" if fit.record is not None else "none", name, fit,
                    fit.reason)


def project_defense(defense: Defense) -> Callable[[nn.Module], DefenseResult]:
    """A convrate ``Defense`` (SpecDef, DiagonalScaling, Identity) as a protocol callable
    (module -> DefenseResult, which carries T); preservation is verified in float64."""

    def defend(model: nn.Module) -> DefenseResult:
        return defense.apply(as_loaded(model), dtypes=(torch.float64,))

    defend.__qualname__ = f"{type(defense).__name__}({', '.join(f'{k}={v}' for k, v in defense.describe().items() if k != 'defense')})"
    defend.__module__ = "convrate.models.defense"
    return defend


# ================================================================ statements
class NotApplicable(Exception):
    """A statement does not apply to this defended instance (the reason is the message)."""


CHECKS: dict[str, Callable[[Defended], list[CheckResult]]] = {}


def register_statement(statement: DefenseStatement, check: Callable[[Defended], list[CheckResult]]) -> None:
    """Add a statement checked against defenses (extends ``convrate.byod.STATEMENTS``)."""
    if statement.id in CHECKS:
        raise ValueError(f"defense statement {statement.id!r} registered twice")
    STATEMENTS.setdefault(statement.id, statement)
    CHECKS[statement.id] = check


def _implements(sid: str) -> Callable:
    def wrap(fn: Callable[[Defended], list[CheckResult]]) -> Callable[[Defended], list[CheckResult]]:
        register_statement(STATEMENTS[sid], fn)
        return fn

    return wrap


def _need_record(d: Defended) -> TorchReparameterization:
    if d.record is None:
        raise NotApplicable(f"the defense returned no T and none was inferred ({d.reason or 'no T'})")
    return d.record


def _zoo_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential)


@_implements("FPLR")
def check_fplr(d: Defended) -> list[CheckResult]:
    ref, x = d.instance.model.module, d.instance.probes
    with torch.no_grad():
        f, g = model_output(ref, x), model_output(d.module, x)
    dev = (g - f).abs()
    how, precision = "", RIG
    allow = None
    if _zoo_sequential(ref):
        try:
            allow = sequential_error_bound(ref, x) + sequential_error_bound(d.module, x, WEIGHT_ROUNDINGS)
            how = f"rigorous bound, <= {WEIGHT_ROUNDINGS} roundings per defended weight"
        except InvalidInputError:
            allow = None
    if allow is None:
        obj = Objective(ref, x, torch.zeros_like(f), device="cpu")
        kT = d.record.kappa_T() if d.record is not None else 1.0
        allow = torch.full_like(f, gamma(reduction_length(obj)) * (2 + kT) * float(f.abs().max()))
        how, precision = f"estimate gamma_m (2 + kappa(T)), kappa(T)={kT:.3g} ({d.source})", EST
    ratio = dev / allow.clamp_min(torch.finfo(torch.float64).tiny)
    i = int(ratio.argmax())
    # the ratio of two float64 numbers carries <= 2 roundings beyond the allowance itself
    return [compare("FPLR", d.label, float(ratio.flatten()[i]), "<=", 1.0, precision=precision, err=4 * U64,
                    detail=f"max |f' - f| = {float(dev.max()):.3e} (max |f| = {float(f.abs().max()):.3e}) vs "
                           f"rounding allowance {float(allow.flatten()[i]):.3e} at the worst output ({how}); "
                           "a defense that changes the function is outside the FPLR class")]


def _group_allowance(sym: Any, element: torch.Tensor) -> float:
    """e_g of the module doc: float64 rounding of one computation of T theta on a group."""
    r, k = sym.width, WEIGHT_ROUNDINGS
    if element.ndim == 1:
        return gamma(k)
    return r * 2.0**r * sym.kappa(element) * gamma(3 * r + k)


@_implements("T-CLAIM")
def check_t_claim(d: Defended) -> list[CheckResult]:
    from convrate.models.fplr import float64_parameters, parameter_distance

    if d.source != "claimed":
        if d.fit is None:
            raise NotApplicable(f"no T claimed and none inferred ({d.reason})")
        return [compare("T-CLAIM", d.label, d.fit.residual, "<=", d.fit.rtol, precision="float64 (inference rtol sqrt(u))",
                        detail=f"inferred T: {d.fit.reason or 'found'}; kappa(T) = {d.fit.kappa_T}")]
    rec = d.record
    ref = float64_parameters(d.instance.model.module)
    got = float64_parameters(d.module)
    mapped = rec.apply(ref)
    dist = parameter_distance(got, mapped)
    allow = {n: 0.0 for n in ref}
    for sym, e in rec.items:
        for n in sym.params:
            allow[n] += 2 * _group_allowance(sym, e)
    ratio = {n: dist[n] / allow[n] if allow[n] > 0 else (0.0 if dist[n] == 0 else math.inf) for n in dist}
    worst = max(ratio, key=lambda n: (ratio[n], dist[n]))
    return [compare("T-CLAIM", d.label, ratio[worst], "<=", 1.0, precision="float64 (forward-error estimate of T theta)",
                    err=4 * U64, detail=f"worst tensor {worst!r}: ||theta' - T theta|| / ||T theta|| = {dist[worst]:.3e} "
                                        f"vs allowance {allow[worst]:.3e} (kappa_A max {rec.kappa_A():.3g})")]


@_implements("T1")
def check_t1_defense(d: Defended) -> list[CheckResult]:
    rec = _need_record(d)
    i = d.instance
    return [check_t1(i.model, rec, i.X, i.Y, device="cpu", instance=d.label)]


@_implements("T2")
def check_t2_defense(d: Defended) -> list[CheckResult]:
    rec = _need_record(d)
    i = d.instance
    return [check_t2(i.model, rec, i.X, i.Y, device="cpu", instance=d.label)]


@_implements("W")
def check_w_defense(d: Defended) -> list[CheckResult]:
    rec = _need_record(d)
    i = d.instance
    net = i.model.module
    if not (_zoo_sequential(net) and isinstance(net[-1], nn.Linear)):
        raise NotApplicable("W applies to nn.Sequential nets ending in a Linear layer")
    if any(e.ndim != 1 for _, e in rec.items):
        raise NotApplicable("W (S2 form) needs a diagonal T")
    return check_w(i.model, rec, i.X, i.Y, device="cpu", instance=d.label)


def _record_allowance(rec: TorchReparameterization) -> float:
    """max over tensors of sum_g e_g: relative float64 rounding of one computation of T theta."""
    per: dict[str, float] = {}
    for sym, e in rec.items:
        for n in sym.params:
            per[n] = per.get(n, 0.0) + _group_allowance(sym, e)
    return max(per.values(), default=0.0)


def _gd_losses(obj: Objective, eta: float, steps: int) -> tuple[list[float], list[float], list[float]]:
    """(L_t, ||g_t||, ||theta_t||) for t = 0..steps of theta_(t+1) = theta_t - eta g_t."""
    th = obj.theta.clone()
    L, G, N = [], [], []
    for t in range(steps + 1):
        L.append(float(obj.loss(th).detach()))
        N.append(float(th.norm()))
        g = obj.gradient(th)
        G.append(float(g.norm()))
        th = th - eta * g
    return L, G, N


@_implements("R1")
def check_r1(d: Defended) -> list[CheckResult]:
    from convrate.models.recovery import r1_extra_parameters, r1_module

    rec = _need_record(d)
    i = d.instance
    cost = r1_extra_parameters(rec)
    out = [compare("R1", f"{d.label}: extra parameters", cost["extra_parameters"], "<=", cost["bound"],
                   precision="exact integers", detail=f"{cost['groups']} group(s) acting on "
                                                      f"{cost['pair_parameters']} parameters")]
    obj = Objective(i.model.module, i.X, i.Y, device="cpu")
    normH = hessian_norm_estimate(obj)
    eta = 1.0 / normH
    L, G, N = _gd_losses(obj, eta, R1_STEPS)
    L1, _, _ = _gd_losses(Objective(r1_module(d.module, rec), i.X, i.Y, device="cpu"), eta, R1_STEPS)
    kT, c, gm = rec.kappa_T(), 2 * _record_allowance(rec), gamma(reduction_length(obj))
    delta, worst, at = 2 * kT * c * N[0], -1.0, 0
    for t in range(R1_STEPS + 1):
        e = G[t] * delta + 0.5 * normH * delta**2 + G[t] * kT * c * N[t] + 2 * gm * (abs(L[t]) + abs(L1[t]))
        ratio = abs(L1[t] - L[t]) / max(e, torch.finfo(torch.float64).tiny)
        if ratio > worst:
            worst, at, allow = ratio, t, e
        delta = (1 + eta * normH) * delta + eta * (2 * kT * gm * G[t] + normH * kT * c * N[t]) + 2 * U64 * N[t]
    out.append(compare("R1", f"{d.label}: {R1_STEPS} GD steps, eta = 1/||H||", worst, "<=", 1.0, precision=EST,
                       err=4 * U64, detail=f"worst step t={at}: |L_R1 - L| = {abs(L1[at] - L[at]):.3e} vs "
                                           f"allowance {allow:.3e} (L_t = {L[at]:.6g}, kappa(T) = {kT:.3g})"))
    return out


def _s1_gap_term(model: LoadedModel, syms: Sequence[Any], c: float) -> float:
    """sum over S1 groups of (c + gamma_(3r+p)) ||X|| ||Y|| / gap(M), M = X^T Y: the Wedin bound
    on the rotation of the canonical factors (infinite when sigma(M) has a repeated value)."""
    from convrate.models.recovery import factor_block

    named = dict(model.module.named_parameters())
    total = 0.0
    for s in syms:
        if s.family != "S1":
            continue
        X, Y = factor_block(s, named, "A"), factor_block(s, named, "A_invT")
        sv = torch.linalg.svdvals(X.T @ Y)[: s.width]
        gap = float(torch.cat([sv[:-1] - sv[1:], sv[-1:]]).min())
        scale = float(torch.linalg.matrix_norm(X, 2) * torch.linalg.matrix_norm(Y, 2))
        total += math.inf if gap <= 0 else (c + gamma(3 * s.width + X.shape[1])) * scale / gap
    return total


def _s2_log_error(meta: Mapping[str, Any]) -> float:
    """A-posteriori error of the S2 balance in log-scale: (last correction + gamma_3) / (1 - rho),
    rho the observed contraction of the sweeps (geometric tail; ``recovery`` module doc)."""
    rho = float(meta.get("contraction", 0.0))
    if not 0 <= rho < 1:
        raise NotApplicable(f"the balance sweeps do not contract (rho = {rho:.3g}): no error estimate")
    return (float(meta.get("final_correction", 0.0)) + gamma(3)) / (1 - rho)


@_implements("R2")
def check_r2(d: Defended) -> list[CheckResult]:
    from convrate.models.fplr import float64_parameters, parameter_distance
    from convrate.models.recovery import canonicalize

    i = d.instance
    syms = discover_symmetries(i.model)
    try:
        canon, C = canonicalize(i.model, syms)
    except InvalidInputError as e:  # the reference itself has no canonical point
        raise NotApplicable(f"the reference has no canonical point ({e})") from None
    canon_d, Cd = canonicalize(d.loaded, syms)
    dist = parameter_distance(float64_parameters(canon_d.module), float64_parameters(canon.module))
    worst = max(dist, key=dist.get)
    c_T = 2 * _record_allowance(d.record) if d.record is not None else 2 * gamma(WEIGHT_ROUNDINGS)
    s2 = any(s.family == "S2" for s in syms)
    s2_term = math.expm1(2 * (_s2_log_error(C.meta) + _s2_log_error(Cd.meta))) if s2 else 0.0
    allow = (Cd.kappa_T() * c_T + _record_allowance(C) + _record_allowance(Cd)
             + _s1_gap_term(i.model, syms, c_T) + s2_term)
    ratio = dist[worst] / allow if allow > 0 else (0.0 if dist[worst] == 0 else math.inf)
    return [compare("R2", d.label, ratio, "<=", 1.0, precision=EST, err=4 * U64,
                    detail=f"canonical weights differ most in {worst!r}: relative {dist[worst]:.3e} vs allowance "
                           f"{allow:.3e} (kappa(C') = {Cd.kappa_T():.3g}, S2 balance term {s2_term:.2e})")]


# ================================================================ entries shared by the plugin and the CLI
def not_run_reason(sid: str, pre: Defended | None, kinds: Sequence[str]) -> str | None:
    """Why statement ``sid`` is not run for this defense (None: it is run). ``pre`` is the
    defense applied to ``first_instance`` (None for user-supplied model strategies)."""
    reason = statement_available(sid)
    if reason is None and sid not in CHECKS:
        reason = f"{sid} has no check registered in convrate.models.byod"
    st_ = STATEMENTS[sid]
    if reason is None and not set(st_.kinds) & set(kinds):
        reason = f"{sid} applies to {', '.join(st_.kinds)} models only"
    if reason is None and pre is not None and st_.needs_T and pre.record is None and (sid != "T-CLAIM" or pre.fit is None):
        reason = f"the defense returned no T and none was inferred on {pre.instance.label} ({pre.reason or 'no T'})"
    return reason


def check_statement(defense: Callable[..., Any], name: str, sid: str, instance: Instance) -> list[CheckResult]:
    """Apply the defense to ``instance`` and check statement ``sid`` (Hypothesis ``reject`` when
    it does not apply to this instance)."""
    d = apply_defense(defense, instance, name)
    try:
        return CHECKS[sid](d)
    except NotApplicable:
        reject()
        raise  # pragma: no cover - reject() raises


def defense_entries(defense: Any, statements: Iterable[str] | None = None, models: Any = None
                    ) -> tuple[list[Entry], dict[str, str], str]:
    """(entries to run, {statement: reason it is not run}, defense name). ``models``: model
    kinds (default "mlp") or a user strategy of models. With the built-in kinds, bad input
    (an unimportable defense, one that raises, returns another architecture or NaN weights)
    raises a DefenseError here, on ``first_instance``, before any property runs."""
    from convrate.strategies import instances

    fn = load_defense(defense)
    name = describe_defense(defense)
    user_models = isinstance(models, st.SearchStrategy)
    kinds = KINDS if user_models else normalize_kinds(models)
    ids = select_statements(statements, kinds)
    pre = None if user_models else apply_defense(fn, first_instance(kinds[0]), name)
    entries, skipped = [], {}
    for sid in ids:
        reason = not_run_reason(sid, pre, kinds)
        if reason:
            skipped[sid] = reason
            continue
        draw = models if user_models else tuple(k for k in kinds if k in STATEMENTS[sid].kinds)
        entries.append(Entry(f"defense:{sid}", (sid,), instances(draw),
                             lambda inst, sid=sid: check_statement(fn, name, sid, inst)))
    return entries, skipped, name


def run_defense_entry(e: Entry, max_examples: int, seed: int = 0) -> tuple[list[CheckResult], str | None]:
    """``run_entry`` for a defense entry: (results, None), or ([], reason) when the statement
    applied to none of the drawn instances."""
    try:
        return run_entry(e, max_examples, seed), None
    except (Unsatisfiable, FailedHealthCheck):
        return [], f"{e.statements[0]} applied to none of the drawn instances"


__all__ = [
    "Instance", "as_loaded", "make_instance", "controlled_mlp", "controlled_attention", "mlp_instance", "attention_instance",
    "first_instance", "Defended", "apply_defense", "project_defense", "NotApplicable", "CHECKS",
    "register_statement", "check_fplr", "check_t_claim", "check_t1_defense", "check_t2_defense", "check_w_defense",
    "check_r1", "check_r2", "not_run_reason", "check_statement", "defense_entries",
    "run_defense_entry",
    "WEIGHT_ROUNDINGS",
]
