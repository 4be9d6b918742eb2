"""The shared vocabulary of a check: a statement of THEORY.md and the result of checking it.

A check = (statement, instance) -> measured value, bound, holds, margin, precision.
The same ``CheckResult`` comes out of an exact instance (``convrate.numerics``) and of a
real network (``convrate.models``); only the source of the spectra differs.
"""
from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any, Callable

import mpmath


class Status(str, enum.Enum):
    """How a statement stands after ``convrate derive``."""

    PROVED = "proved"  # a sympy derivation proves it (identity or closed form)
    CHECKED_ONLY = "checked-only"  # no symbolic proof here; checked exactly on instances
    CORRECTED = "corrected"  # false as THEORY.md states it (counterexample recorded); the corrected statement is proved
    FALSE = "false"  # false, with a counterexample, and no proved correction


@dataclass(frozen=True)
class Statement:
    """One statement of THEORY.md: its id, its text, what it assumes, and how it is proved.

    ``derive`` returns a ``Derivation`` (sympy) and is run by ``convrate derive``.
    ``bound`` names the plain function of ``convrate.theory.bounds`` both sides call.
    ``corrected`` holds the corrected statement when the original is false.
    """

    id: str
    title: str
    text: str
    assumptions: tuple[str, ...]
    derive: Callable[[], "Derivation"] | None = None
    bound: str | None = None
    corrected: str | None = None


@dataclass
class Derivation:
    """Outcome of a symbolic derivation.

    status: proved / checked-only / false. ``steps`` are human-readable lines (the
    identities sympy verified, closed forms obtained); ``counterexample`` is filled
    when status is FALSE.
    """

    status: Status
    steps: list[str] = field(default_factory=list)
    closed_forms: dict[str, str] = field(default_factory=dict)
    counterexample: str | None = None


Relation = str  # "<=", ">=", "=="

Number = int | float | Fraction | mpmath.mpf


def _as_mpf(x: Number) -> mpmath.mpf:
    if isinstance(x, Fraction):
        return mpmath.mpf(x.numerator) / x.denominator
    return mpmath.mpf(x)


@dataclass(frozen=True)
class CheckResult:
    """measured <relation> bound, decided with a stated precision.

    ``err`` is a rigorous upper bound on |computed - true| of (measured - bound), coming
    from the precision used (0 for exact rational or integer arithmetic). The verdict
    ``holds`` is ``measured - bound <= err`` for "<=" (mirrored for ">="), and
    ``|measured - bound| <= err`` for "==". ``margin`` is the relative slack
    (bound - measured) / max(|bound|, |measured|, err, 1e-300) for "<=", its mirror for ">=",
    and for "==" minus the residual |measured - bound| / max(|bound|, err, 1e-300): 0 means
    exactly equal. The allowance in the scale makes a check decided at round-off level (both
    sides within err of 0) read as slack ~0, and gives margin >= -1 whenever the check holds.
    """

    statement: str
    instance: str
    measured: float
    bound: float
    relation: Relation
    holds: bool
    margin: float
    precision: str
    err: float = 0.0
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(
    statement: str,
    instance: str,
    measured: Number,
    relation: Relation,
    bound: Number,
    *,
    precision: str,
    err: Number = 0,
    detail: str = "",
) -> CheckResult:
    """Decide ``measured <relation> bound`` with a rigorous error allowance ``err``.

    ``err`` must bound the rounding error of (measured - bound) for the precision named in
    ``precision``; exact arithmetic passes 0. A false statement whose violation exceeds
    ``err`` is always reported as a violation.
    """
    if relation not in ("<=", ">=", "=="):
        raise ValueError(f"unknown relation {relation!r}")
    m, b, e = _as_mpf(measured), _as_mpf(bound), abs(_as_mpf(err))
    scale = max(abs(m), abs(b), e, mpmath.mpf("1e-300"))
    if relation == "<=":
        holds = m - b <= e
        margin = (b - m) / scale
    elif relation == ">=":
        holds = b - m <= e
        margin = (m - b) / scale
    else:
        holds = abs(m - b) <= e
        margin = -abs(m - b) / max(abs(b), e, mpmath.mpf("1e-300"))
    return CheckResult(
        statement=statement,
        instance=instance,
        measured=float(m),
        bound=float(b),
        relation=relation,
        holds=bool(holds),
        margin=float(margin),
        precision=precision,
        err=float(e),
        detail=detail,
    )
