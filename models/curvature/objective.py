"""The objective L(theta) of a real network and its curvature products.

``Objective`` fixes a module, data and a loss and exposes L as a function of the flat
vector theta of selected parameters (row-major ``flatten`` of each tensor, in the order of
``names``):

    squared:        L(theta) = (1/N) sum_n 1/2 ||z_n - y_n||^2     (mu_ell = 1 in z)
    cross_entropy:  L(theta) = (1/N) sum_n -log softmax(z_n)[y_n]

with z_n = f(x_n; theta) the n-th output row (BERT: every token of sequence n), N the
number of examples. Next-token targets (n, T) of a causal-LM task (``tasks.NextTokenLM`` /
``tasks.token_targets``) are flattened to the N predicted tokens, so L is nats per token.
In float64 the module's Hugging Face decoders run without their float32 steps
(``families.decoder_float64``), so products are float64-accurate. Units: L in loss units, eigenvalues of H = nabla^2 L in loss units per
parameter unit squared.

Products: H v by double backward (grad of <grad L, v>) or by torch.func forward-over-reverse
(jvp of grad); G v = (1/N) sum_n J_n^T (nabla^2 ell_n) J_n v, the Gauss-Newton product.
Nothing is reported before ``require_deterministic`` has seen two identical products on one
vector.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Any, Callable, Mapping, Sequence

import torch
from threadpoolctl import threadpool_limits
from torch import nn

from convrate.errors import InvalidInputError
from convrate.models.io import unwrap_output
from convrate.models.runtime import resolve_device

LOSSES = ("squared", "cross_entropy")
HVP_METHODS = ("reuse", "double_backward", "func")
#: "reuse": the gradient graph g(theta) = nabla L(theta) (create_graph) is built once per theta
#: and each H v is one more backward pass through it (amortized: one product costs less than a
#: fresh double backward; ``benchmarks/`` measures it); "double_backward": a fresh gradient graph
#: per product; "func": torch.func forward-over-reverse. All three agree to round-off.
DEFAULT_HVP_METHOD = "reuse"


class NondeterministicLossError(InvalidInputError):
    """Two Hessian-vector products on the same vector differ: the loss is random."""


def _to(x: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)
    if isinstance(x, Mapping):
        return {k: _to(v, device, dtype) for k, v in x.items()}
    return x


def _random_modules(module: nn.Module) -> list[str]:
    kinds = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.modules.batchnorm._BatchNorm)
    return [n or type(m).__name__ for n, m in module.named_modules() if isinstance(m, kinds) and m.training]


class Objective:
    """L(theta) on fixed data; theta = the flat vector of ``params`` (default: all trainable
    parameters). The module is deep-copied to ``device`` / ``dtype`` and put in eval mode
    (``eval_mode=False`` keeps train mode, for which ``require_deterministic`` refuses
    stochastic layers)."""

    def __init__(self, module: nn.Module, inputs: Any, targets: torch.Tensor, *, loss: str = "squared",
                 params: Sequence[str] | None = None, dtype: torch.dtype = torch.float64,
                 device: str | torch.device = "auto", eval_mode: bool = True) -> None:
        if loss not in LOSSES:
            raise InvalidInputError(f"unknown loss {loss!r} (supported: {', '.join(LOSSES)})")
        self.device = resolve_device(device)
        self.dtype = dtype
        self.loss_name = loss
        self.module = copy.deepcopy(module).to(device=self.device, dtype=dtype)
        if dtype == torch.float64:  # Hugging Face decoders: no float32 RMSNorm / softmax inside
            from convrate.models.families.decoder_float64 import exact_float64

            exact_float64(self.module)
        self.module.train(not eval_mode)
        named = dict(self.module.named_parameters())
        self.names = list(params) if params is not None else [n for n, p in named.items() if p.requires_grad]
        bad = [n for n in self.names if n not in named]
        if bad or not self.names:
            raise InvalidInputError(f"unknown or empty parameter selection: {bad[:3] or self.names}")
        self.shapes = [tuple(named[n].shape) for n in self.names]
        self.numels = [math.prod(s) for s in self.shapes]
        self.n = sum(self.numels)
        self.theta = torch.cat([named[n].detach().reshape(-1) for n in self.names]).clone()
        self.fixed = {k: v.detach() for k, v in named.items() if k not in set(self.names)}
        self.fixed.update({k: v for k, v in self.module.named_buffers()})
        self.inputs = _to(inputs, self.device, dtype)
        if loss == "cross_entropy" and targets.ndim == 2 and not targets.is_floating_point():
            from convrate.models.tasks import token_targets

            targets = token_targets(targets)  # next-token ids (n, T) -> the (N,) predicted tokens
        self.targets = _to(targets, self.device, dtype)
        with torch.no_grad():
            z = self.outputs(self.theta)
        if loss == "squared" and tuple(self.targets.shape) != tuple(z.shape):
            raise InvalidInputError(f"squared loss: targets shape {list(self.targets.shape)} != outputs {list(z.shape)}")
        if loss == "cross_entropy" and (z.ndim != 2 or self.targets.shape != (z.shape[0],)
                                        or self.targets.is_floating_point()):
            raise InvalidInputError("cross_entropy needs outputs (N, C) and integer targets (N,)")
        self.n_examples = int(z.shape[0])
        self.n_terms = int(z.numel() // z.shape[-1])
        self._checked = False
        self.matvecs = 0

    # ------------------------------------------------------------ functional core
    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = torch.split(theta, self.numels)
        return {n: p.view(s) for n, p, s in zip(self.names, parts, self.shapes)}

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([tensors[n].detach().to(self.device, self.dtype).reshape(-1) for n in self.names])

    def outputs(self, theta: torch.Tensor) -> torch.Tensor:
        """f(x; theta) for all examples (N, ...)."""
        state = {**self.fixed, **self.unflatten(theta)}
        # tie_weights: a parameter shared by two modules (a decoder's embedding and its tied lm_head)
        # appears once in named_parameters; the substituted tensor must reach both uses
        if isinstance(self.inputs, Mapping):
            out = torch.func.functional_call(self.module, state, (), self.inputs, strict=False, tie_weights=True)
        else:
            out = torch.func.functional_call(self.module, state, (self.inputs,), strict=False, tie_weights=True)
        return unwrap_output(out)

    def loss_of_outputs(self, z: torch.Tensor) -> torch.Tensor:
        if self.loss_name == "squared":
            return 0.5 * ((z - self.targets) ** 2).sum() / z.shape[0]
        return torch.nn.functional.cross_entropy(z, self.targets)

    def loss(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        return self.loss_of_outputs(self.outputs(self.theta if theta is None else theta))

    def gradient(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        t = (self.theta if theta is None else theta).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(self.loss(t), t)
        return g.detach()

    def _vec(self, v: Any) -> torch.Tensor:
        v = torch.as_tensor(v)
        if v.shape != (self.n,):
            raise InvalidInputError(f"vector must have shape ({self.n},), got {list(v.shape)}")
        return v.to(self.device, self.dtype)

    def hvp(self, v: Any, theta: torch.Tensor | None = None, method: str | None = None) -> torch.Tensor:
        """H(theta) v."""
        method = method or DEFAULT_HVP_METHOD
        v = self._vec(v)
        t = (self.theta if theta is None else theta).detach()
        self.matvecs += 1
        if method == "reuse":
            t, g = self._gradient_graph(t)
            (hv,) = torch.autograd.grad(g, t, grad_outputs=v, retain_graph=True)
            return hv.detach()
        if method == "double_backward":
            t = t.requires_grad_(True)
            (g,) = torch.autograd.grad(self.loss(t), t, create_graph=True)
            (hv,) = torch.autograd.grad(g, t, grad_outputs=v)
            return hv.detach()
        if method == "func":
            _, hv = torch.func.jvp(torch.func.grad(self.loss), (t,), (v,))
            return hv.detach()
        raise InvalidInputError(f"unknown HVP method {method!r} (supported: {', '.join(HVP_METHODS)})")

    def _gradient_graph(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(theta as a leaf, nabla L(theta) with its graph), cached for the last theta seen
        (compared by value, so a changed theta rebuilds it)."""
        cached = getattr(self, "_graph", None)
        if cached is None or cached[0].shape != theta.shape or not torch.equal(cached[0].detach(), theta):
            t = theta.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(self.loss(t), t, create_graph=True)
            self._graph = cached = (t, g)
        return cached

    def gnvp(self, v: Any, theta: torch.Tensor | None = None) -> torch.Tensor:
        """G v = (1/N) sum_n J_n^T (nabla^2 ell_n) J_n v: squared loss nabla^2 ell = I,
        cross-entropy nabla^2 ell = diag(p) - p p^T (p = softmax z_n). J v by the
        double-vjp trick (J^T w is linear in w; differentiate <J^T w, v> in w)."""
        v = self._vec(v)
        t = (self.theta if theta is None else theta).detach().requires_grad_(True)
        self.matvecs += 1
        z = self.outputs(t)
        w = torch.zeros_like(z, requires_grad=True)
        (jtw,) = torch.autograd.grad(z, t, grad_outputs=w, create_graph=True)
        (jv,) = torch.autograd.grad(jtw, w, grad_outputs=v)
        if self.loss_name == "squared":
            u = jv / z.shape[0]
        else:
            p = torch.softmax(z.detach(), dim=-1)
            u = (p * jv - p * (p * jv).sum(-1, keepdim=True)) / z.shape[0]
        (out,) = torch.autograd.grad(z, t, grad_outputs=u)
        return out.detach()

    # ------------------------------------------------------------ safety
    def require_deterministic(self, seed: int = 12345) -> float:
        """Apply the HVP twice to one random unit vector; raise NondeterministicLossError when
        ||H v - H v|| > sqrt(eps) ||H v|| (round-off reorderings give O(m eps); dropout or
        batch-norm in train mode give O(1)). Returns the relative difference."""
        g = torch.Generator().manual_seed(seed)
        v = torch.randn(self.n, generator=g, dtype=torch.float64)
        v = (v / v.norm()).to(self.device, self.dtype)
        h1, h2 = self.hvp(v, method="double_backward"), self.hvp(v, method="double_backward")  # fresh graphs:
        # a cached graph would freeze one dropout mask and hide the randomness
        scale = float(h1.norm())
        rel = float((h1 - h2).norm()) / scale if scale > 0 else float((h1 - h2).norm())
        tol = math.sqrt(torch.finfo(self.dtype).eps)
        if not math.isfinite(rel) or rel > tol:
            random = _random_modules(self.module)
            hint = f" (stochastic modules in train mode: {', '.join(random[:3])}; use eval mode)" if random else ""
            raise NondeterministicLossError(
                f"loss is not deterministic: two Hessian-vector products on one vector differ by "
                f"{rel:.2e} relative (> {tol:.1e}){hint}; refusing to report eigenvalues")
        self._checked = True
        return rel

    def operator(self, kind: str = "hessian") -> Callable[[torch.Tensor], torch.Tensor]:
        if kind == "hessian":
            return self.hvp
        if kind == "gauss_newton":
            return self.gnvp
        raise InvalidInputError(f"unknown operator {kind!r} (hessian, gauss_newton)")


# ---------------------------------------------------------------- timing
def benchmark_hvp(obj: Objective, repeats: int = 5, seed: int = 0) -> dict[str, float]:
    """Seconds per H v for each method: the methods are interleaved (one call each per round,
    after one warm-up call) and the minimum over ``repeats`` rounds is reported (the least
    disturbed by other processes), plus the max relative difference between the results."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(obj.n, generator=g, dtype=torch.float64).to(obj.device, obj.dtype)
    times: dict[str, list[float]] = {m: [] for m in HVP_METHODS}
    res = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for m in HVP_METHODS:
            res[m] = obj.hvp(v, method=m)
        for _ in range(repeats):
            for m in HVP_METHODS:
                if obj.device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                obj.hvp(v, method=m)
                if obj.device.type == "cuda":
                    torch.cuda.synchronize()
                times[m].append(time.perf_counter() - t0)
    out = {m: float(min(ts)) for m, ts in times.items()}
    a = res[HVP_METHODS[0]]
    out["relative_difference"] = max(float((a - b).norm() / a.norm()) for b in res.values())
    return out


def dense_hessian(obj: Objective) -> torch.Tensor:
    """The full Hessian by torch.func.hessian (tiny models only), float64 (n, n)."""
    if obj.n > 4000:
        raise InvalidInputError(f"dense Hessian of {obj.n} parameters refused (> 4000)")
    return torch.func.hessian(obj.loss)(obj.theta.detach()).detach()
