"""convrate.models.attacks: fine-tuning attacks, learning-rate search, LoRA.

Rooms: ``attack`` (an optimizer run with steps-to-target accounting), ``search`` (learning-rate
search and slowdown ratios), ``lora`` (low-rank adapters). Attacks know nothing of defenses.
"""
from __future__ import annotations

from convrate.models.attacks.attack import OPTIMIZERS, Attack, Progress, Trajectory, require_finite_parameters
from convrate.models.attacks.search import LRSearchResult, LRTrial, Slowdown, log_grid, lr_search, slowdown
from convrate.models.runtime import deterministic, resolve_device

__all__ = ["OPTIMIZERS", "Attack", "Trajectory", "Progress", "LRTrial", "LRSearchResult", "Slowdown", "lr_search",
           "log_grid", "slowdown", "resolve_device", "require_finite_parameters", "deterministic"]
