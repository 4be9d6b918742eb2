"""Errors raised on bad input. Each carries one clear line for the user."""
from __future__ import annotations


class ConvrateError(Exception):
    """Base class: a message fit to print on one line, and the CLI exit code."""

    exit_code = 2


class NotPositiveDefiniteError(ConvrateError, ValueError):
    """A matrix required to be symmetric positive definite is not."""


class NotSymmetricError(ConvrateError, ValueError):
    """A matrix required to be symmetric is not."""


class SingularReparameterizationError(ConvrateError, ValueError):
    """A reparameterization T (or a group element A) is not invertible."""


class ToleranceError(ConvrateError, ValueError):
    """A tolerance outside the open interval (0, 1), or otherwise impossible."""


class DivergenceError(ConvrateError, ArithmeticError):
    """An optimizer diverges on the given problem; names the offending eigenvalue."""

    def __init__(self, message: str, eigenvalue: object = None, factor: object = None) -> None:
        super().__init__(message)
        self.eigenvalue = eigenvalue
        self.factor = factor


class NoConvergenceError(ConvrateError, ArithmeticError):
    """An optimizer stalls: the target is never reached (e.g. a neutral component)."""


class PrecisionError(ConvrateError, ArithmeticError):
    """The working precision cannot decide a comparison, even after raising it."""


class InvalidInputError(ConvrateError, ValueError):
    """Malformed input: wrong shape, non-finite entries, unsupported option."""
