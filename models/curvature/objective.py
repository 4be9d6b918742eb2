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

Every quantity is a sum over examples divided by the global count C of loss terms
(``distributed``): the examples are sharded over the ranks of ``world`` and, within a rank,
cut into micro-batches of at most ``micro_batch`` examples; each piece contributes its *sum*
divided by C, and one all-reduce adds the ranks' contributions. World size 1 and one
micro-batch is the plain full-batch computation.

Products: H v by double backward (grad of <grad L, v>), by torch.func forward-over-reverse
(jvp of grad), or by central finite differences of gradients,

    H v ~ (grad L(theta + eps v) - grad L(theta - eps v)) / (2 eps),

whose error is eps^2/6 ||D^3(grad L)[v, v, v]|| (the fourth derivative of L; the second-order
terms cancel) plus the rounding of the two gradients, ~ 2 u ||grad L|| / eps: the route for
sharded parameters, where double backward is not available (``sharded``). G v = (1/C) sum_n
J_n^T (nabla^2 ell_n) J_n v is the Gauss-Newton product. Nothing is reported before
``require_deterministic`` has seen two identical products on one vector.
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
from convrate.models.curvature.distributed import World, chunks
from convrate.models.io import unwrap_output
from convrate.models.runtime import resolve_device

LOSSES = ("squared", "cross_entropy")
HVP_METHODS = ("reuse", "double_backward", "func")
#: "reuse": the gradient graph g(theta) = nabla L(theta) (create_graph) is built once per theta
#: and each H v is one more backward pass through it (amortized: one product costs less than a
#: fresh double backward; ``benchmarks/`` measures it), and likewise the Gauss-Newton
#: linearization for G v; "double_backward": a fresh graph per product (memory: one
#: micro-batch's graph at a time); "func": torch.func forward-over-reverse.
#: All three agree to round-off. ``FINITE_DIFFERENCE`` (not exact; see the module doc) is accepted too.
DEFAULT_HVP_METHOD = "reuse"
FINITE_DIFFERENCE = "finite_difference"


class NondeterministicLossError(InvalidInputError):
    """Two Hessian-vector products on the same vector differ: the loss is random."""


def _to(x: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)
    if isinstance(x, Mapping):
        return {k: _to(v, device, dtype) for k, v in x.items()}
    return x


def _rows(x: Any, idx: range) -> Any:
    if isinstance(x, torch.Tensor):
        return x[idx.start:idx.stop]
    if isinstance(x, Mapping):
        return {k: _rows(v, idx) for k, v in x.items()}
    return x


def _random_modules(module: nn.Module) -> list[str]:
    kinds = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.modules.batchnorm._BatchNorm)
    return [n or type(m).__name__ for n, m in module.named_modules() if isinstance(m, kinds) and m.training]


def loss_terms(loss: str, targets: torch.Tensor) -> int:
    """The number of loss terms in ``targets``: one per row, or one per predicted token of
    next-token ids (n, T) (entries ``tasks.IGNORE_INDEX`` excluded)."""
    from convrate.models.tasks import IGNORE_INDEX

    if loss == "cross_entropy" and targets.ndim == 2 and not targets.is_floating_point():
        return int((targets != IGNORE_INDEX).sum())
    return int(targets.shape[0])


def loss_targets(loss: str, y: torch.Tensor) -> torch.Tensor:
    """The targets the loss compares with the outputs: next-token ids (n, T) flattened to the
    predicted tokens (``tasks.token_targets``), anything else as it is."""
    if loss == "cross_entropy" and y.ndim == 2 and not y.is_floating_point():
        from convrate.models.tasks import token_targets

        return token_targets(y)
    return y


def loss_sum(loss: str, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sum of the loss terms of outputs ``z`` against targets ``y`` (not divided by a count)."""
    if loss == "squared":
        return 0.5 * ((z - y) ** 2).sum()
    return torch.nn.functional.cross_entropy(z, y, reduction="sum")


def _check_shapes(loss: str, z: torch.Tensor, y: torch.Tensor) -> None:
    if loss == "squared" and tuple(y.shape) != tuple(z.shape):
        raise InvalidInputError(f"squared loss: targets shape {list(y.shape)} != outputs {list(z.shape)}")
    if loss == "cross_entropy" and (z.ndim != 2 or y.shape != (z.shape[0],) or y.is_floating_point()):
        raise InvalidInputError("cross_entropy needs outputs (N, C) and integer targets (N,)")


class Objective:
    """L(theta) on fixed data; theta = the flat vector of ``params`` (default: all trainable
    parameters). The module is deep-copied to ``device`` / ``dtype`` and put in eval mode
    (``eval_mode=False`` keeps train mode, for which ``require_deterministic`` refuses
    stochastic layers). ``world``: the data-parallel world (default: one process); this
    rank keeps its shard of ``inputs`` / ``targets``. ``micro_batch``: at most this many
    examples per forward pass (bounds memory with the "double_backward" and "func" products;
    "reuse" keeps every micro-batch's graph). ``hvp_method``: the product used when a call
    names none."""

    def __init__(self, module: nn.Module, inputs: Any, targets: torch.Tensor, *, loss: str = "squared",
                 params: Sequence[str] | None = None, dtype: torch.dtype = torch.float64,
                 device: str | torch.device = "auto", eval_mode: bool = True, world: World | None = None,
                 micro_batch: int | None = None, hvp_method: str | None = None) -> None:
        if loss not in LOSSES:
            raise InvalidInputError(f"unknown loss {loss!r} (supported: {', '.join(LOSSES)})")
        method = hvp_method or DEFAULT_HVP_METHOD
        if method not in HVP_METHODS + (FINITE_DIFFERENCE,):
            raise InvalidInputError(f"unknown HVP method {method!r} (supported: {', '.join(HVP_METHODS)}, "
                                    f"{FINITE_DIFFERENCE})")
        self.hvp_method = method
        self.world = world if world is not None else World()
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
        if not isinstance(targets, torch.Tensor) or targets.ndim < 1:
            raise InvalidInputError("targets must be a tensor with one row per example")
        n_all = int(targets.shape[0])
        mine = self.world.shard(n_all)
        self.inputs = _to(_rows(inputs, mine), self.device, dtype)
        # next-token ids (n, T) of a causal-LM task (``tasks.NextTokenLM`` outputs one row per
        # predicted token) are kept per sequence, flattened per micro-batch (``loss_targets``)
        self.targets = _to(_rows(targets, mine), self.device, dtype)
        self.pieces = [range(c.start - mine.start, c.stop - mine.start) for c in chunks(mine, micro_batch)]
        self.micro_batch = micro_batch
        if self.pieces:
            with torch.no_grad():
                z = self._outputs(self.theta, self.pieces[0])
            _check_shapes(loss, z, self._piece_targets(self.pieces[0]))
        #: rows of the data (examples; sequences of a causal LM), sharded over the world
        self.n_rows = self.world.sum_int(len(mine))
        #: C, the loss terms L averages over (examples; predicted tokens of a causal LM)
        self.n_terms = self.world.sum_int(loss_terms(loss, self.targets) if len(mine) else 0)
        self.n_examples = self.n_terms
        if self.n_rows != n_all or self.n_terms < 1:
            raise InvalidInputError(f"the data have no loss terms (examples {n_all}, terms {self.n_terms})")
        self._checked = False
        self.matvecs = 0

    # ------------------------------------------------------------ functional core
    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = torch.split(theta, self.numels)
        return {n: p.view(s) for n, p, s in zip(self.names, parts, self.shapes)}

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([tensors[n].detach().to(self.device, self.dtype).reshape(-1) for n in self.names])

    def _outputs(self, theta: torch.Tensor, piece: range | None = None) -> torch.Tensor:
        state = {**self.fixed, **self.unflatten(theta)}
        x = self.inputs if piece is None else _rows(self.inputs, piece)
        # tie_weights: a parameter shared by two modules (a decoder's embedding and its tied lm_head)
        # appears once in named_parameters; the substituted tensor must reach both uses
        if isinstance(x, Mapping):
            out = torch.func.functional_call(self.module, state, (), x, strict=False, tie_weights=True)
        else:
            out = torch.func.functional_call(self.module, state, (x,), strict=False, tie_weights=True)
        return unwrap_output(out)

    def outputs(self, theta: torch.Tensor) -> torch.Tensor:
        """f(x; theta) for this rank's examples (N, ...)."""
        return self._outputs(theta)

    def piece_loss(self, theta: torch.Tensor, piece: range) -> torch.Tensor:
        """(sum of the loss terms of micro-batch ``piece``) / C, differentiable in theta."""
        z = self._outputs(theta, piece)
        return loss_sum(self.loss_name, z, self._piece_targets(piece)) / self.n_terms

    def _piece_targets(self, piece: range) -> torch.Tensor:
        """The targets of micro-batch ``piece``, next-token ids flattened to its predicted tokens."""
        return loss_targets(self.loss_name, _rows(self.targets, piece))

    def local_loss(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """This rank's share of L (differentiable): sum over its micro-batches of ``piece_loss``."""
        t = self.theta if theta is None else theta
        if not self.pieces:
            return (t * 0).sum()
        total = self.piece_loss(t, self.pieces[0])
        for piece in self.pieces[1:]:
            total = total + self.piece_loss(t, piece)
        return total

    def loss(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """L(theta); differentiable in one process, the all-reduced value (detached) in several."""
        local = self.local_loss(theta)
        return local if not self.world.distributed else self.world.sum(local.detach())

    def _local_gradient(self, theta: torch.Tensor) -> torch.Tensor:
        g = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        for piece in self.pieces:
            t = theta.detach().requires_grad_(True)
            (gp,) = torch.autograd.grad(self.piece_loss(t, piece), t)
            g += gp
        return g

    def gradient(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """nabla L(theta) (all-reduced)."""
        return self.world.sum(self._local_gradient(self.theta if theta is None else theta))

    def _vec(self, v: Any) -> torch.Tensor:
        v = torch.as_tensor(v)
        if v.shape != (self.n,):
            raise InvalidInputError(f"vector must have shape ({self.n},), got {list(v.shape)}")
        return v.to(self.device, self.dtype)

    def hvp(self, v: Any, theta: torch.Tensor | None = None, method: str | None = None) -> torch.Tensor:
        """H(theta) v (all-reduced over the world)."""
        method = method or self.hvp_method
        v = self._vec(v)
        t = (self.theta if theta is None else theta).detach()
        self.matvecs += 1
        out = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        if method == "reuse":
            for tc, g in self._gradient_graphs(t):
                (hv,) = torch.autograd.grad(g, tc, grad_outputs=v, retain_graph=True)
                out += hv
        elif method == "double_backward":
            for piece in self.pieces:
                tc = t.clone().requires_grad_(True)
                (g,) = torch.autograd.grad(self.piece_loss(tc, piece), tc, create_graph=True)
                (hv,) = torch.autograd.grad(g, tc, grad_outputs=v)
                out += hv
        elif method == "func":
            for piece in self.pieces:
                _, hv = torch.func.jvp(torch.func.grad(lambda x, p=piece: self.piece_loss(x, p)), (t,), (v,))
                out += hv
        elif method == FINITE_DIFFERENCE:
            eps = fd_step(t, v, self.dtype)
            out = (self._local_gradient(t + eps * v) - self._local_gradient(t - eps * v)) / (2 * eps)
        else:
            raise InvalidInputError(f"unknown HVP method {method!r} (supported: {', '.join(HVP_METHODS)}, "
                                    f"{FINITE_DIFFERENCE})")
        return self.world.sum(out.detach())

    def _cached_graphs(self, slot: str, theta: torch.Tensor,
                       build: Callable[[torch.Tensor, range], tuple]) -> list[tuple]:
        """``build(theta leaf, piece)`` per micro-batch, kept in ``slot`` for the last theta seen
        (compared by value, so a changed theta rebuilds them)."""
        cached = getattr(self, slot, None)
        if cached is None or cached[0].shape != theta.shape or not torch.equal(cached[0], theta):
            setattr(self, slot, None)  # free the old graphs before building new ones
            cached = (theta.clone(), [build(theta.clone().requires_grad_(True), piece) for piece in self.pieces])
            setattr(self, slot, cached)
        return cached[1]

    def _gradient_graphs(self, theta: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per micro-batch (theta as a leaf, its share of nabla L(theta) with its graph), cached
        for the last theta seen."""
        def build(t: torch.Tensor, piece: range) -> tuple[torch.Tensor, torch.Tensor]:
            (g,) = torch.autograd.grad(self.piece_loss(t, piece), t, create_graph=True)
            return t, g

        return self._cached_graphs("_graph", theta, build)

    def _linearization(self, t: torch.Tensor, piece: range) -> tuple[torch.Tensor, ...]:
        """(theta leaf t, outputs z with their graph, w, J^T w with its graph (linear in w),
        softmax(z) for cross-entropy else None) of one micro-batch: what G v needs at t."""
        z = self._outputs(t, piece)
        w = torch.zeros_like(z, requires_grad=True)
        (jtw,) = torch.autograd.grad(z, t, grad_outputs=w, create_graph=True)
        p = None if self.loss_name == "squared" else torch.softmax(z.detach(), dim=-1)
        return t, z, w, jtw, p

    def gnvp(self, v: Any, theta: torch.Tensor | None = None) -> torch.Tensor:
        """G v = (1/C) sum_n J_n^T (nabla^2 ell_n) J_n v: squared loss nabla^2 ell = I,
        cross-entropy nabla^2 ell = diag(p) - p p^T (p = softmax z_n; one row per predicted
        token for a causal LM). J v by the double-vjp trick (J^T w is linear in w;
        differentiate <J^T w, v> in w). With the "reuse" method the linearization (forward pass
        and J^T w graph) is built once per theta and each product is two backward passes
        through it (the same operations on the same saved tensors: the same result as building
        it afresh, which the other methods do to bound memory by one micro-batch)."""
        v = self._vec(v)
        t0 = (self.theta if theta is None else theta).detach()
        self.matvecs += 1
        keep = self.hvp_method == "reuse"
        pieces = self._cached_graphs("_gn_graph", t0, self._linearization) if keep else \
            (self._linearization(t0.clone().requires_grad_(True), piece) for piece in self.pieces)
        out = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        for t, z, w, jtw, p in pieces:
            (jv,) = torch.autograd.grad(jtw, w, grad_outputs=v, retain_graph=keep)
            u = jv if p is None else p * jv - p * (p * jv).sum(-1, keepdim=True)
            (gv,) = torch.autograd.grad(z, t, grad_outputs=u / self.n_terms, retain_graph=keep)
            out += gv
        return self.world.sum(out.detach())

    # ------------------------------------------------------------ safety
    def require_deterministic(self, seed: int = 12345) -> float:
        """Apply the HVP twice to one random unit vector; raise NondeterministicLossError when
        ||H v - H v|| > sqrt(eps) ||H v|| (round-off reorderings give O(m eps); dropout or
        batch-norm in train mode give O(1)). Returns the relative difference."""
        g = torch.Generator().manual_seed(seed)
        v = torch.randn(self.n, generator=g, dtype=torch.float64)
        v = (v / v.norm()).to(self.device, self.dtype)
        method = "double_backward" if self.hvp_method in HVP_METHODS else self.hvp_method
        h1, h2 = self.hvp(v, method=method), self.hvp(v, method=method)  # fresh graphs:
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


def fd_step(theta: torch.Tensor, v: torch.Tensor, dtype: torch.dtype) -> float:
    """eps of the central difference: u^(1/3) max(1, ||theta||) / ||v|| (u the unit roundoff),
    balancing the truncation eps^2 / 6 ||D^4 L|| against the rounding 2 u ||grad L|| / eps
    when the derivatives are of the order of the weights' scale."""
    u = torch.finfo(dtype).eps / 2
    nv = float(v.norm())
    if nv == 0:
        return 1.0
    return u ** (1 / 3) * max(1.0, float(theta.norm())) / nv


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
    if obj.world.distributed:
        raise InvalidInputError("the dense Hessian is computed in one process (world size 1)")
    return torch.func.hessian(obj.loss)(obj.theta.detach()).detach()
