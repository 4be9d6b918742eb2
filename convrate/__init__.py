"""convrate: derive, check exactly and audit convergence-rate control defenses.

Subpackages: ``convrate.theory`` (statements, sympy derivations, bound functions),
``convrate.numerics`` (exact quadratic problems, optimizers, step counts, exact nets,
reparameterizations, recoveries, certified enclosures), ``convrate.models`` (torch
networks), ``convrate.reports``. Names are re-exported lazily so that importing
``convrate`` stays cheap and ``convrate.theory`` never imports torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "theory": "convrate.theory",
    "numerics": "convrate.numerics",
    "models": "convrate.models",
    "reports": "convrate.reports",
    "errors": "convrate.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(_LAZY[name])
    numerics = importlib.import_module("convrate.numerics")
    if name in getattr(numerics, "__all__", ()):
        return getattr(numerics, name)
    raise AttributeError(f"module 'convrate' has no attribute {name!r}")
