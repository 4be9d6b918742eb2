"""Measured checks of THEORY.md on real torch networks, as ``CheckResult``s via ``compare``.

* **T1** nabla L'(T theta) = T^-T nabla L(theta), **T2** H'(T theta) u = T^-T H(theta) T^-1 u:
  L' = L o T^-1, so differentiating L'(T theta) = L(theta) once / twice gives both; u is a
  random unit probe vector. Measured: the residual norm, compared with 0.
* **W** (squared loss, mu_ell = 1): lambda_max(H') >= lambda_max(E[h' h'^T]) (Cauchy
  interlacing on the last linear layer's block, which is E[h h^T] (x) I exactly for the
  squared loss at every theta) >= max_i D_i^2 E[h_i^2] (S2 defense D on the units feeding
  the last layer, h the undefended activations).

Tolerance argument (float64, unit roundoff u = 2^-53). A Hessian-vector product by
automatic differentiation is a forward pass, a backward pass and a forward-over-backward
pass; each stage computes inner products of length fan_in per layer and the loss sums over
all output entries. A first-order forward-error estimate of the standard kind
|fl(a^T b) - a^T b| <= gamma_m |a|^T |b| with gamma_m = m u / (1 - m u) gives for the whole
product ||fl(H v) - H v|| <~ gamma_m ||H|| ||v|| with

    m = 3 * (sum over layers of fan_in [+ LayerNorm width + 2 * sequence length]) + #outputs.

(This is an estimate, not a proof: ||H|| stands in for the norm of |H| and comes from 30
Lanczos steps.) The defended side is evaluated at fl(T theta) = T theta + delta, not at T theta;
``map_rounding`` bounds ||delta|| <~ gamma_(2w) sqrt(w) sigma_max(T) ||theta|| (w the group width),
which grows with kappa(T). It moves the gradient by <= ||H'|| ||delta|| <= ||H|| ||delta|| /
sigma_min(T)^2 (added to the T1 allowance) and H'u by ~ ||nabla^3 L'[., u]|| ||delta|| (T2; the
third-derivative factor is a central-difference estimate along random directions). For T2 both sides are products with operators of norm <= ||T^-1||^2 ||H||
(||H'|| <= ||T^-1||^2 ||H|| and ||T^-T H T^-1 u|| <= ||T^-1||^2 ||H|| ||u||), so the
allowance is err = 2 gamma_m ||T^-1||^2 ||H|| ||u||. For T1 the same with ||grad|| in place
of ||H|| ||u||. Every number here is computed on the instance, none is picked to pass.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from convrate.errors import InvalidInputError
from convrate.models.curvature import Objective, extreme_eigenvalues, lanczos
from convrate.models.defense import Identity, SpecDef
from convrate.models.io import LoadedModel
from convrate.models.symmetry import TorchReparameterization
from convrate.theory.bounds import lambda_max_lower_bound_hidden, lambda_max_lower_bound_relu
from convrate.theory.core import CheckResult, compare

U64 = 2.0 ** -53
PRECISION = "float64 autograd (first-order forward-error estimate gamma_m)"


def gamma(m: int, u: float = U64) -> float:
    """gamma_m = m u / (1 - m u)."""
    if m * u >= 1:
        raise InvalidInputError(f"reduction length {m} too long for unit roundoff {u}")
    return m * u / (1 - m * u)


def reduction_length(obj: Objective) -> int:
    """m of the module doc for an Objective: 3 * (sum fan_in + LayerNorm / RMSNorm widths + 2 * seq
    per attention block, + head_dim for a decoder's) + number of output entries the loss sums."""
    fan = 0
    seq = 0
    if isinstance(obj.inputs, dict) and "input_ids" in obj.inputs:
        seq = int(obj.inputs["input_ids"].shape[-1])
    for m in obj.module.modules():
        if isinstance(m, nn.Linear):
            fan += m.in_features
        elif isinstance(m, nn.Conv2d):
            fan += m.in_channels // m.groups * math.prod(m.kernel_size)
        elif isinstance(m, nn.LayerNorm):
            fan += math.prod(m.normalized_shape)
        elif hasattr(m, "num_attention_heads") and hasattr(m, "query"):
            fan += 2 * seq
        elif hasattr(m, "q_proj") and hasattr(m, "head_dim"):  # decoder attention: scores over d, sums over seq
            fan += 2 * seq + int(m.head_dim)
        elif hasattr(m, "variance_epsilon") and isinstance(getattr(m, "weight", None), torch.Tensor):  # RMSNorm
            fan += int(m.weight.numel())
    with torch.no_grad():
        n_out = int(obj.outputs(obj.theta).numel())
    return 3 * fan + n_out


def _module(model: Any) -> nn.Module:
    return getattr(model, "module", model)


def _default_params(model: Any, record: TorchReparameterization) -> list[str]:
    mod = _module(model)
    if isinstance(model, LoadedModel) and model.fmt == "hf":
        return record.param_names
    return [n for n, p in mod.named_parameters() if p.requires_grad]


def _unit(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, generator=g, dtype=torch.float64)
    return u / u.norm()


def _map(obj: Objective, record: TorchReparameterization, x: torch.Tensor) -> torch.Tensor:
    return obj.flatten(record.apply(obj.unflatten(x)))


def hessian_norm_estimate(obj: Objective, theta: torch.Tensor | None = None, steps: int = 30, seed: int = 1) -> float:
    """max |Ritz value| after ``steps`` Lanczos steps (an estimate of ||H||_2 from below that
    is accurate to a few digits when the extreme eigenvalues are separated)."""
    t = obj.theta if theta is None else theta
    vals, _, _ = lanczos(lambda v: obj.hvp(v, theta=t), obj.n, steps, seed=seed, dtype=obj.dtype, device=obj.device)
    return float(vals.abs().max())


def map_rounding(record: TorchReparameterization, names: Sequence[str], theta: torch.Tensor) -> float:
    """Bound on ||fl(T theta) - T theta|| in float64: each slot is A X_s (inner products of length
    w = group width), |fl(A X) - A X| <= gamma_w |A| |X| entrywise and || |A| ||_2 <= sqrt(w) ||A||_2;
    a parameter is touched by at most two groups (its "A" side and its "A_invT" side), so
    ||delta|| <= gamma_(2w) sqrt(w) sigma_max(T) ||theta|| with w the widest group."""
    w = max((s.width for s, _ in record.items), default=1)
    _, hi = record.singular_value_range(names)
    return gamma(2 * w) * math.sqrt(w) * hi * float(theta.norm())


def _third_derivative_effect(obj: Objective, theta: torch.Tensor, u: torch.Tensor, seed: int) -> float:
    """max over two random unit directions d of ||(H(theta + rho d) - H(theta - rho d)) u|| / (2 rho),
    rho = sqrt(u64) max(||theta||, 1) (the usual central-difference step): an estimate of
    ||nabla^3 L[d, u]||, the change of H u per unit move of theta."""
    rho = math.sqrt(U64) * max(float(theta.norm()), 1.0)
    best = 0.0
    for k in range(2):
        d = _unit(obj.n, seed + 101 + k).to(obj.device)
        diff = obj.hvp(u, theta=theta + rho * d) - obj.hvp(u, theta=theta - rho * d)
        best = max(best, float(diff.norm()) / (2 * rho))
    return best


def check_t1(model: Any, record: TorchReparameterization, inputs: Any, targets: torch.Tensor, *,
             loss: str = "squared", params: Sequence[str] | None = None, instance: str = "",
             device: str = "auto") -> CheckResult:
    """T1 on the real loss: ||grad L'(T theta) - T^-T grad L(theta)|| == 0 within
    err = 2 gamma_m ||T^-1|| max(||grad L||, ||T^-T grad L||) ... (module doc)."""
    names = list(params) if params is not None else _default_params(model, record)
    obj = Objective(_module(model), inputs, targets, loss=loss, params=names, device=device)
    theta_p = _map(obj, record, obj.theta)
    g = obj.gradient()
    g_p = obj.gradient(theta_p)
    ref = _map(obj, record.inverse().transpose(), g)
    res = float((g_p - ref).norm())
    lo, _ = record.singular_value_range(names)
    m = reduction_length(obj)
    # the gradient is taken at fl(T theta) = T theta + delta: grad L' moves by <= ||H'|| ||delta||,
    # ||H'|| <= ||H|| / sigma_min(T)^2 (T2)
    err = 2 * gamma(m) / lo * float(g.norm()) + hessian_norm_estimate(obj) / lo**2 * map_rounding(record, names, obj.theta)
    return compare("T1", instance or f"{type(_module(model)).__name__} n={obj.n} kappa(T)={record.kappa_T(names):.3g}",
                   res, "==", 0.0, precision=PRECISION, err=err,
                   detail=f"||grad'||={float(g_p.norm()):.3e} relative residual {res / max(float(ref.norm()), 1e-300):.2e} "
                          f"m={m}")


def check_t2(model: Any, record: TorchReparameterization, inputs: Any, targets: torch.Tensor, *,
             loss: str = "squared", params: Sequence[str] | None = None, seed: int = 0,
             instance: str = "", device: str = "auto") -> CheckResult:
    """T2 on the real loss at a random unit u: ||H'(T theta) u - T^-T H(theta) T^-1 u|| == 0
    within err = 2 gamma_m ||T^-1||^2 ||H|| ||u|| (module doc)."""
    names = list(params) if params is not None else _default_params(model, record)
    obj = Objective(_module(model), inputs, targets, loss=loss, params=names, device=device)
    obj.require_deterministic()
    theta_p = _map(obj, record, obj.theta)
    u = _unit(obj.n, seed).to(obj.device)
    inv = record.inverse()
    ref = _map(obj, inv.transpose(), obj.hvp(_map(obj, inv, u)))
    got = obj.hvp(u, theta=theta_p)
    res = float((got - ref).norm())
    lo, hi = record.singular_value_range(names)
    normH = hessian_norm_estimate(obj)
    m = reduction_length(obj)
    # H' u is taken at fl(T theta) = T theta + delta: it moves by ~ ||nabla^3 L'[., u]|| ||delta||
    # (estimated by central differences at theta')
    err = 2 * gamma(m) * normH / lo**2 + _third_derivative_effect(obj, theta_p, u, seed) * map_rounding(
        record, names, obj.theta)
    return compare("T2", instance or f"{type(_module(model)).__name__} n={obj.n} kappa(T)={hi / lo:.3g}",
                   res, "==", 0.0, precision=PRECISION, err=err,
                   detail=f"||H'u||={float(got.norm()):.3e} ||H||~{normH:.3e} relative residual "
                          f"{res / max(float(ref.norm()), 1e-300):.2e} residual/err={res / err:.2e} m={m}")


def _last_linear(net: nn.Module) -> int:
    if not isinstance(net, nn.Sequential) or not isinstance(net[-1], nn.Linear):
        raise InvalidInputError("check W needs a zoo nn.Sequential ending in a Linear layer")
    return len(net) - 1


def _features_before(net: nn.Sequential, b: int, X: torch.Tensor) -> torch.Tensor:
    h = X
    with torch.no_grad():
        for m in list(net)[:b]:
            h = m(h)
    return h


def _last_layer_scaling(record: TorchReparameterization, b: int, width: int) -> torch.Tensor:
    """D on the features entering layer b (ones where no S2 group compensates there)."""
    d = torch.ones(width, dtype=torch.float64)
    for s, e in record.items:
        for sl in s.slots:
            if sl.param == f"{b}.weight" and sl.op == "A_invT" and sl.axis == 1:
                if e.ndim != 1:
                    raise InvalidInputError(f"check W (S2) needs a diagonal element on {s.name}")
                d[sl.start:sl.stop] *= torch.repeat_interleave(e, sl.repeat)
    return d


def check_w(model: Any, record: TorchReparameterization, X: torch.Tensor, Y: torch.Tensor, *,
            method: str = "eigsh", instance: str = "", device: str = "auto") -> list[CheckResult]:
    """W on a zoo net ending in a Linear layer, squared loss (mu_ell = 1), defended by an S2
    record: the Ritz value theta <= lambda_max(H'(T theta)) against (a) lambda_max(E[h' h'^T])
    (interlacing) and (b) max_i D_i^2 E[h_i^2] (THEORY W, S2). err = the eigen-residual r
    + gamma_m theta (HVP round-off) + 2 gamma_N bound (second moments summed over N)."""
    net = _module(model)
    b = _last_linear(net)
    obj = Objective(net, X, Y, loss="squared", device=device)
    theta_p = _map(obj, record, obj.theta)
    defended = record.apply_to_module(obj.module)
    est = extreme_eigenvalues(_at(obj, theta_p), "LA", method=method)[0]
    Xd = obj.inputs
    h = _features_before(obj.module, b, Xd).reshape(Xd.shape[0], -1)
    hp = _features_before(defended, b, Xd).reshape(Xd.shape[0], -1)
    N = h.shape[0]
    S = hp.T @ hp / N
    lam_S = float(torch.linalg.eigvalsh(S)[-1])
    D = _last_layer_scaling(record, b, h.shape[1]).to(h.device)
    second = (h**2).mean(0)
    m = reduction_length(obj)
    tag = instance or f"{type(net).__name__} n={obj.n} kappa(T)={record.kappa_T():.3g}"
    e_meas = est.residual + gamma(m) * abs(est.value)
    out = []
    b1 = lambda_max_lower_bound_hidden(lam_S, 1)
    # eigvalsh of the r x r moment matrix: backward error ~ r u ||S|| (LAPACK), S from N-term sums
    err1 = e_meas + (gamma(N + m) + gamma(S.shape[0])) * float(b1)
    out.append(compare("W", f"{tag} bound lambda_max(E[h'h'^T])", est.value, ">=", b1, precision=PRECISION,
                       err=err1, detail=f"Ritz residual {est.residual:.1e}, {est.matvecs} products ({method})"))
    b2 = lambda_max_lower_bound_relu(D.tolist(), second.tolist(), 1)
    err2 = e_meas + 2 * gamma(N + m) * float(b2)
    out.append(compare("W", f"{tag} bound max_i D_i^2 E[h_i^2]", est.value, ">=", b2, precision=PRECISION,
                       err=err2, detail=f"max D = {float(D.max()):.4g}, Ritz residual {est.residual:.1e}"))
    return out


def _at(obj: Objective, theta: torch.Tensor) -> Objective:
    """The same objective evaluated at another theta (shares module and data)."""
    import copy

    new = copy.copy(obj)
    new.theta = theta.detach().clone()
    new._checked = False
    return new


def w_sweep(model: LoadedModel, X: torch.Tensor, Y: torch.Tensor, Ks: Sequence[float] = (1, 10, 100, 1000), *,
            profile: str = "geometric", method: str = "eigsh", device: str = "auto") -> list[CheckResult]:
    """check_w for SpecDef(K, profile) at each K (K = 1: the identity)."""
    out = []
    for K in Ks:
        d = Identity() if K == 1 else SpecDef(K, profile)
        rec = d.reparameterization(model)
        out += check_w(model, rec, X, Y, method=method, device=device,
                       instance=f"{model.kind} SpecDef K={K:g} ({profile})")
    return out


# ---------------------------------------------------------------- helpers for exact-size instances
def dense_reparameterization(obj: Objective, record: TorchReparameterization) -> torch.Tensor:
    """T as an (n, n) float64 matrix on ``obj``'s flat parameters: column j = T e_j
    (T is linear, so applying it to basis vectors is exact up to the rounding of A x)."""
    if obj.n > 4000:
        raise InvalidInputError(f"dense T of {obj.n} parameters refused (> 4000)")
    I = torch.eye(obj.n, dtype=torch.float64, device=obj.device)
    return torch.stack([_map(obj, record, I[j]) for j in range(obj.n)], dim=1)


def sequential_error_bound(net: nn.Sequential, x: torch.Tensor, extra_roundings: int = 0) -> torch.Tensor:
    """Rigorous elementwise bound on |fl(f(x)) - f(x)| for a float64 zoo net (no underflow).

    With M_0 = |x| and M_l the same network run on |W|, |b| with ReLU dropped (the
    magnitude network), every computed layer obeys |h^_l - h_l| <= c_l M_l with
    c_l = (1 + c_{l-1})(1 + gamma_k) - 1, k = fan_in + 1 (+ ``extra_roundings``, the
    rounding of the stored weights fl(T theta), each at most 2 products) for Linear/Conv,
    k^2 + 1 for AvgPool, 1 for LeakyReLU, 0 for ReLU/MaxPool/Flatten (exact), by
    |fl(W h + b) - (W h + b)| <= gamma_{n+1} (|W||h| + |b|) and induction. M is itself
    computed in float64, so the bound returned is c M^ / (1 - c)."""
    import torch.nn.functional as F

    M = x.detach().to(torch.float64).abs()
    c = 0.0
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                k = m.in_features + 1 + extra_roundings
                M = F.linear(M, m.weight.detach().double().abs(),
                             None if m.bias is None else m.bias.detach().double().abs())
            elif isinstance(m, nn.Conv2d):
                k = m.in_channels // m.groups * math.prod(m.kernel_size) + 1 + extra_roundings
                M = F.conv2d(M, m.weight.detach().double().abs(),
                             None if m.bias is None else m.bias.detach().double().abs(),
                             m.stride, m.padding, m.dilation, m.groups)
            elif isinstance(m, nn.AvgPool2d):
                ks = m.kernel_size if isinstance(m.kernel_size, int) else math.prod(m.kernel_size)
                k = (ks * ks if isinstance(m.kernel_size, int) else ks) + 1
                M = m(M)
            elif isinstance(m, nn.LeakyReLU):
                k = 1
            elif isinstance(m, (nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Identity)):
                k = 0
                M = m(M) if not isinstance(m, nn.ReLU) else M
            else:
                raise InvalidInputError(f"no error bound for layer {type(m).__name__}")
            c = (1 + c) * (1 + gamma(k)) - 1 if k else c
    if c >= 1:
        raise InvalidInputError("error bound exceeds 1: network too deep or wide for float64")
    return c * M / (1 - c)


# ---------------------------------------------------------------- measured numbers (python -m convrate.models.checks)
def measure(minilm_layers: int = 1, device: str = "cpu") -> dict[str, Any]:
    """The numbers behind the models' report: HVP timings on the digits MLP, W sweep
    (Lanczos lambda_max vs the bounds) at K in {1, 10, 100, 1000}, T1/T2 residuals on the
    digits MLP / CNN and on MiniLM's first ``minilm_layers`` layers (heads 0 and 5)."""
    from convrate.models import zoo
    from convrate.models.curvature import benchmark_hvp
    from convrate.models.families import discover_symmetries

    out: dict[str, Any] = {}
    mlp = zoo.digits_mlp()
    X, y, _, _ = zoo.digits_data()
    Y = torch.nn.functional.one_hot(y, 10).double()
    out["digits_mlp"] = {k: mlp.info.get(k) for k in ("train_accuracy", "test_accuracy")}
    for loss, tgt in (("squared", Y), ("cross_entropy", y)):
        out[f"hvp_seconds_{loss}"] = benchmark_hvp(Objective(mlp.module, X, tgt, loss=loss, device=device), repeats=20)
    out["W"] = [r.to_dict() for r in w_sweep(mlp, X, Y, (1, 10, 100, 1000), device=device)]
    out["T"] = []
    for K in (10, 1000):
        rec = SpecDef(K).reparameterization(mlp)
        for loss, tgt in (("squared", Y), ("cross_entropy", y)):
            for f in (check_t1, check_t2):
                out["T"].append(f(mlp, rec, X, tgt, loss=loss, device=device,
                                  instance=f"digits MLP SpecDef K={K} {loss}").to_dict())
    cnn = zoo.digits_cnn()
    Xi, yi, _, _ = zoo.digits_data(image=True)
    rec = SpecDef(100).reparameterization(cnn)
    out["T"].append(check_t2(cnn, rec, Xi, yi, loss="cross_entropy", device=device,
                             instance="digits CNN SpecDef K=100 cross_entropy").to_dict())
    m = zoo.minilm(n_layers=minilm_layers)
    rec = SpecDef(100).reparameterization(m, discover_symmetries(m, heads=[0, 5]))
    x = m.probe_inputs(2, seq_len=8)
    Yb = torch.randn(2, 8, 384, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for f in (check_t1, check_t2):
        out["T"].append(f(m, rec, x, Yb, device=device,
                          instance=f"MiniLM {minilm_layers} layer(s), heads 0,5 SpecDef K=100 squared").to_dict())
    return out


if __name__ == "__main__":  # pragma: no cover
    import json
    import sys

    json.dump(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 1), sys.stdout, indent=1, default=str)
