"""convrate.numerics: exact quadratic problems, optimizers, step counts, exact networks,
reparameterizations, recoveries, certified enclosures and floating-point precision limits.

Everything here is exact (python-flint ``fmpq``) or certified (arb balls, mpmath with a
residual-based enclosure); each check states its precision.
"""
from __future__ import annotations

from convrate.numerics.fp_precision import error_vs_K, function_error, largest_safe_K
from convrate.numerics.linalg import sym_eig
from convrate.numerics.nets import ChainNet, DeepLinear, TwoLayerLinear, TwoLayerReLU, certified_spectrum
from convrate.numerics.optimizers import (
    CG,
    GD,
    LM,
    Adagrad,
    Adam,
    CubicNewton,
    GDSchedule,
    HeavyBall,
    Nesterov,
    Newton,
    PreconditionedGD,
    RMSprop,
)
from convrate.numerics.quadratic import Quadratic
from convrate.numerics.recovery import canonicalize, r1_preconditioner, r1_reparameterize
from convrate.numerics.reparam import DiagonalScaling, Identity, Reparameterization, SpecDef, Symmetry
from convrate.numerics.steps import best_fixed_step, brute_force_steps, closed_form_loss, iterate, steps_to, trajectory

__all__ = [
    "Quadratic",
    "GD", "PreconditionedGD", "HeavyBall", "Nesterov", "GDSchedule", "CG", "Newton", "LM",
    "Adam", "RMSprop", "Adagrad", "CubicNewton",
    "steps_to", "best_fixed_step", "brute_force_steps", "iterate", "trajectory", "closed_form_loss",
    "ChainNet", "TwoLayerLinear", "TwoLayerReLU", "DeepLinear",
    "Symmetry", "Reparameterization", "SpecDef", "DiagonalScaling", "Identity",
    "r1_reparameterize", "r1_preconditioner", "canonicalize",
    "sym_eig", "certified_spectrum",
    "function_error", "error_vs_K", "largest_safe_K",
]
