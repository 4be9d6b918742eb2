"""convrate.theory: the statements of THEORY.md, their sympy derivations, and their bounds.

Imports no torch. ``REGISTRY`` maps statement ids to ``Statement``; ``bounds`` holds the
plain bound functions that ``convrate.numerics`` and ``convrate.models`` call.
"""
from __future__ import annotations

from convrate.theory import bounds
from convrate.theory.core import CheckResult, Derivation, Statement, Status, compare

__all__ = ["bounds", "CheckResult", "Derivation", "Statement", "Status", "compare"]
