"""toydefense: per-unit diagonal rescaling of a small ReLU MLP (a toy convergence-rate defense)."""
from toydefense.defense import defend, defend_weights, defend_without_T

__all__ = ["defend", "defend_weights", "defend_without_T"]
