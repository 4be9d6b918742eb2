"""convrate.models.attacks: fine-tuning attacks, learning-rate search, LoRA.

Rooms: ``attack`` (an optimizer run with steps-to-target and cost accounting), ``registry`` (the
optimizer registry, step context, cost counts), the attacker families ``first_order``,
``second_order`` (L-BFGS, Newton-CG), ``gauss_newton`` (Gauss-Newton, K-FAC), ``preconditioned``
(Shampoo, SOAP, Sophia, Muon), ``search`` (learning-rate / damping search and slowdown ratios),
``lora`` (low-rank adapters). Attacks know nothing of defenses.
"""
from __future__ import annotations

from convrate.models.attacks.attack import OPTIMIZERS, Attack, AttackRun, Progress, Trajectory, make_attack, require_finite_parameters
from convrate.models.attacks.registry import REGISTRY, Cost, OptimizerSpec, get_spec
from convrate.models.attacks.search import LRSearchResult, LRTrial, Slowdown, log_grid, lr_search, slowdown
from convrate.models.runtime import deterministic, resolve_device

__all__ = ["OPTIMIZERS", "REGISTRY", "OptimizerSpec", "Cost", "get_spec", "make_attack", "Attack", "AttackRun", "Trajectory", "Progress", "LRTrial", "LRSearchResult", "Slowdown", "lr_search",
           "log_grid", "slowdown", "resolve_device", "require_finite_parameters", "deterministic"]
