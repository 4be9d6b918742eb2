"""convrate.theory: the statements of THEORY.md, their sympy derivations, and their bounds.

Imports no torch. ``REGISTRY`` maps statement ids to ``Statement`` (``convrate.theory.statements``,
loaded on first access because it imports sympy); ``bounds`` holds the plain bound functions that
``convrate.numerics`` and ``convrate.models`` call; ``derive_runner.run_all`` runs every derivation.
"""
from __future__ import annotations

from typing import Any

from convrate.theory import bounds
from convrate.theory.core import CheckResult, Derivation, Statement, Status, compare

__all__ = ["bounds", "CheckResult", "Derivation", "Statement", "Status", "compare", "REGISTRY", "FORMULAS"]


def __getattr__(name: str) -> Any:
    if name in ("REGISTRY", "FORMULAS"):
        from convrate.theory import statements

        return getattr(statements, name)
    raise AttributeError(f"module 'convrate.theory' has no attribute {name!r}")
