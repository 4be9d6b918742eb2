"""Statement O measured on a decoder: Adam (and GD) under a random rotation of the residual stream.

The decoder is folded (its RMSNorm weights moved into their consumers, ``llama.fold_elements``:
the function is unchanged), then released as theta' = T theta with T the S7 residual rotation
by a Haar-random Q (T is orthogonal on the parameter vector: it rotates hidden-dimension
vectors). The loss is next-token cross-entropy on fixed token ids (``tasks.NextTokenLM``,
parameters named ``encoder.<name>``), evaluated in float64 throughout (the Objective lifts the
decoder's float32 RMSNorm and softmax, ``families.decoder_float64``). Per rotation:

The rotation preserves the function only on its domain, RMSNorm weights equal to 1: moving a
weight gamma away from 1 no longer commutes with Q. So T is an FPLR of the parameters *other
than* the RMSNorm weights (T1, T2 and statement O hold there), and by default those weights are
frozen (``train_norms=False``). With ``train_norms=True`` the attacker trains them too and the
rotated loss is a different function off the domain: T1 fails on the gamma coordinates and GD
is no longer invariant (``gd_max_relative_difference`` then measures by how much).

* **first Adam step** (torch.optim.Adam, betas (b1, b2), eps): from theta' it is
  -lr f(g'), f(x)_i = x_i / (|x_i| + eps) (bias-corrected first moments equal the gradient at
  step 1), with g' = grad L'(theta') = T g (T1, T^-T = T). ``first_step_excess`` is
  max_i (|measured_i + lr f(g')_i| - allowance_i), allowance_i = 16 u lr + 2 u |theta'_1,i|
  (Adam's own float64 roundings of m, v, sqrt, the bias corrections and the division, relative
  to |f| <= 1, and the rounding of theta'_0 + step, which the measured step theta'_1 - theta'_0
  inherits): <= 0 when the formula holds. Mapped back, the step differs from the undefended
  one by lr (f(g) - T^T f(T g)) (``mapped_difference`` measured from the two runs,
  ``predicted_difference`` from the formula: their norms);
* **first-order decrease ratio** rho = ||g'||_1 / ||g||_1 (the eps -> 0 first step decreases L'
  by lr ||T g||_1 to first order, L by lr ||g||_1): O bounds it by [||g||_2 / ||g||_1,
  sqrt(n) ||g||_2 / ||g||_1] (``bounds_llm``); ``haar_mean`` is its expectation over Q:
  (h c_h sum_w ||w||_2 + ||g_rest||_1) / ||g||_1 with w the hidden-dimension vectors of the
  gradient that T rotates (c_h = ``bounds_llm.haar_l1_mean(h) / h``) and g_rest its other entries;
* **trajectories**: ``steps`` steps of Adam and of GD from theta and from theta'; the losses
  L(theta_t) and L'(theta'_t). GD commutes with T (O): the curves agree to float64 round-off,
  ``gd_allowance``: the defended run's gradient differs from T g_t by at most e = 2 gamma_m
  ||g_t|| (+ ||H|| times the rounding of fl(T theta), ``checks.map_rounding``; the T1 error of
  ``checks.check_t1``), so the mapped-back iterates drift by ||delta_t|| <= sum_s (1 + eta
  ||H||)^(t-s) eta e, and |L'_t - L_t| <= ||g|| ||delta_t|| + ||H|| ||delta_t||^2 / 2 + 2 gamma_m
  |L_t| (||H|| a Lanczos estimate, ``checks.hessian_norm_estimate``; a first-order estimate).
  Adam's curves differ.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

from convrate.errors import InvalidInputError
from convrate.models import elements
from convrate.models.checks import gamma, hessian_norm_estimate, map_rounding, reduction_length
from convrate.models.curvature import Objective
from convrate.models.families import discover_symmetries, llama
from convrate.models.io import LoadedModel
from convrate.models.runtime import single_thread
from convrate.models.symmetry import TorchReparameterization, TorchSymmetry
from convrate.models.tasks import NextTokenLM, next_token_targets
from convrate.theory import bounds_llm

U64 = 2.0 ** -53


def next_token_objective(module: nn.Module, inputs: Mapping[str, torch.Tensor], device: str = "cpu",
                         params: list[str] | None = None) -> Objective:
    """Next-token cross-entropy of a causal LM (wrapped in ``tasks.NextTokenLM``, so its
    parameters are ``encoder.<name>``) on fixed token ids, float64, as a function of ``params``
    (default: every trainable parameter)."""
    return Objective(NextTokenLM(module), dict(inputs),
                     next_token_targets(inputs["input_ids"], inputs.get("attention_mask")), loss="cross_entropy",
                     params=params, device=device)


def folded(model: LoadedModel) -> tuple[nn.Module, TorchReparameterization]:
    """(the decoder with every RMSNorm weight folded into its consumers, the fold as a record)."""
    syms = discover_symmetries(model)
    fold = TorchReparameterization(llama.fold_elements(model.module, syms), {"defense": "fold"})
    return fold.apply_to_module(model.module), fold


def haar_mean_ratio(sym: TorchSymmetry, grads: Mapping[str, torch.Tensor]) -> float:
    """E_Q ||T g||_1 / ||g||_1 for T the residual rotation by a Haar Q (module doc)."""
    h = sym.width
    c_h = float(bounds_llm.haar_l1_mean(h)) / h
    rotated = 0.0
    seen = set()
    for s in sym.acting_slots:
        V = grads[s.param].detach().to(torch.float64).movedim(s.axis, 0)
        rotated += float(V.reshape(h, -1).norm(dim=0).sum())
        seen.add(s.param)
    rest = sum(float(g.abs().sum()) for n, g in grads.items() if n not in seen)
    total = sum(float(g.abs().sum()) for g in grads.values())
    return (h * c_h * rotated + rest) / total


def _run(obj: Objective, theta: torch.Tensor, opt: str, lr: float, steps: int, betas: tuple[float, float],
         eps: float) -> tuple[list[float], list[torch.Tensor]]:
    """Losses and iterates of ``steps`` full-batch steps of Adam or GD on the flat theta."""
    th = theta.detach().clone().requires_grad_(True)
    o = torch.optim.Adam([th], lr=lr, betas=betas, eps=eps) if opt == "adam" else torch.optim.SGD([th], lr=lr)
    losses, iterates = [], [th.detach().clone()]
    for _ in range(steps):
        o.zero_grad()
        loss = obj.loss(th)
        loss.backward()
        losses.append(float(loss.detach()))
        o.step()
        iterates.append(th.detach().clone())
    with torch.no_grad():
        losses.append(float(obj.loss(th)))
    return losses, iterates


def adam_under_rotation(model: LoadedModel, inputs: Mapping[str, torch.Tensor], *, rotations: int = 4,
                        steps: int = 6, adam_lr: float = 1e-2, gd_lr: float = 1e-1,
                        betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, seed: int = 0,
                        train_norms: bool = False) -> dict[str, Any]:
    """Measure statement O on a decoder (module doc): per Haar-random residual rotation, the first
    Adam step against its closed form, the first-order decrease ratio against its bounds and
    its Haar mean, and Adam / GD loss curves with and without the rotation."""
    if not isinstance(model, LoadedModel) or not llama.is_decoder(model.module):
        raise InvalidInputError("adam_under_rotation needs a Llama-layout decoder LoadedModel")
    if rotations < 1 or steps < 1:
        raise InvalidInputError("rotations and steps must be >= 1")
    module, _ = folded(model)
    rot = llama.residual_rotation(NextTokenLM(module))  # the names the objective sees
    gen = torch.Generator().manual_seed(seed)
    norms = {sl.param for sl in rot.slots if sl.op == "unit"}
    params = [n for n, p in NextTokenLM(module).named_parameters() if p.requires_grad and (train_norms or n not in norms)]
    with single_thread():
        obj = next_token_objective(module, inputs, params=params)
        theta = obj.theta
        g = obj.gradient(theta)
        n = g.numel()
        lo, hi = bounds_llm.adam_first_step_decrease_ratio_bounds(g.tolist())
        haar = haar_mean_ratio(rot, obj.unflatten(g))
        adam_ref, adam_iters = _run(obj, theta, "adam", adam_lr, steps, betas, eps)
        gd_ref, gd_iters = _run(obj, theta, "gd", gd_lr, steps, betas, eps)
        normH = hessian_norm_estimate(obj)
        m = reduction_length(obj)
        gmax = max(float(obj.gradient(t).norm()) for t in gd_iters)
        drift, gd_allowance = 0.0, []
        e_step = 2 * gamma(m) * gmax + normH * map_rounding(
            TorchReparameterization([(rot, torch.eye(rot.width, dtype=torch.float64))]), obj.names, theta)
        for t, loss in enumerate(gd_ref):
            gd_allowance.append(gmax * drift + normH * drift**2 / 2 + 2 * gamma(m) * abs(loss))
            drift = (1 + gd_lr * normH) * drift + gd_lr * e_step
        f = lambda x: x / (x.abs() + eps)  # noqa: E731 - Adam's first step direction
        per = []
        for _ in range(rotations):
            Q = elements.random("orthogonal", rot.width, gen)
            record = TorchReparameterization([(rot, Q)], {"defense": "residual-rotation"})
            theta_p = obj.flatten(record.apply(obj.unflatten(theta)))
            g_p = obj.gradient(theta_p)
            Tg = obj.flatten(record.apply(obj.unflatten(g)))
            adam_p, adam_p_iters = _run(obj, theta_p, "adam", adam_lr, steps, betas, eps)
            gd_p, _ = _run(obj, theta_p, "gd", gd_lr, steps, betas, eps)
            step_p = adam_p_iters[1] - adam_p_iters[0]
            back = obj.flatten(record.transpose().apply(obj.unflatten(step_p)))
            per.append({
                "ratio": float(g_p.abs().sum() / g.abs().sum()),
                "ratio_from_T1": float(Tg.abs().sum() / g.abs().sum()),
                "t1_residual": float((g_p - Tg).norm() / g.norm()),
                "first_step_excess": float(((step_p + adam_lr * f(g_p)).abs()
                                            - (16 * U64 * adam_lr + 2 * U64 * adam_p_iters[1].abs())).max()),
                "mapped_difference": float((back - (adam_iters[1] - adam_iters[0])).norm()),
                "predicted_difference": float((adam_lr * (f(g) - obj.flatten(
                    record.transpose().apply(obj.unflatten(f(Tg)))))).norm()),
                "adam_losses": adam_p, "gd_losses": gd_p,
                "adam_final_ratio": adam_p[-1] / adam_ref[-1],
                "gd_max_relative_difference": max(abs(a - b) / abs(b) for a, b in zip(gd_p, gd_ref)),
                "gd_excess": max(abs(a - b) - al for a, b, al in zip(gd_p, gd_ref, gd_allowance)),
            })
    ratios = [p["ratio"] for p in per]
    return {"n_parameters": n, "train_norms": train_norms, "hidden": rot.width, "rotations": rotations, "steps": steps, "adam_lr": adam_lr,
            "gd_lr": gd_lr, "eps": eps, "betas": list(betas), "initial_loss": adam_ref[0],
            "ratio_bounds": [float(lo), float(hi)], "haar_mean_ratio": haar,
            "mean_ratio": sum(ratios) / len(ratios),
            "ratio_std": math.sqrt(sum((r - sum(ratios) / len(ratios)) ** 2 for r in ratios) / max(len(ratios) - 1, 1)),
            "adam_reference_losses": adam_ref, "gd_reference_losses": gd_ref, "gd_allowance": gd_allowance,
            "hessian_norm": normH, "per_rotation": per}


__all__ = ["adam_under_rotation", "folded", "haar_mean_ratio", "next_token_objective"]
