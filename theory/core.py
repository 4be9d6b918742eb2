"""The shared vocabulary of a check: a statement of THEORY.md and the result of checking it.

A check = (statement, instance) -> measured value, bound, holds, margin, precision.
The same ``CheckResult`` comes out of an exact instance (``convrate.numerics``) and of a
real network (``convrate.models``); only the source of the spectra differs.

What a derivation proved
------------------------
``Status`` is the verdict on THEORY.md's wording (proved / corrected / checked-only / false);
``Scope`` says how far the proof goes. Every step of a ``Derivation`` carries a tag
(``derive_transforms.Proof`` writes them):

* ``[sympy:general]`` -- an identity sympy verified in every dimension: matrix expressions of
  symbolic size (``sympy.MatrixSymbol`` of shape (n, n), (r, n_in), ...; matrix calculus with
  ``sympy.diff`` on them), or a scalar identity that *is* the general case (a coordinatewise
  or per-unit law, a relation between spectral quantities, a symbolic exponent r);
  ``Proof.equal(..., scope="general")``;
* ``[sympy]`` -- an identity verified on a fixed-size fully symbolic instance (e.g. 2 x 2),
  load-bearing: the proof needs it in every dimension and takes the instance as evidence;
* ``[sympy:example]`` -- an instance checked for illustration, a counterexample, or the
  agreement of a ``bounds`` function with the closed form: not part of the proof;
* ``[argument]`` -- a written step (induction, an inequality chain, an assembly of the checked
  identities); ``[cited]`` -- a classical theorem used as is; ``[mpmath]`` -- a numeric
  evaluation (illustration / counterexample).

``Derivation.scope`` follows from the tags: ``GENERAL`` when every load-bearing step is
``[sympy:general]``; ``GENERAL_ARGUED`` when, besides, some steps are argued or cited (listed in
``Derivation.argued``); ``INSTANCES_ARGUED`` when a load-bearing identity was verified only on
instances (its extension to every dimension is then itself an argued step). ``label(status,
scope)`` is the text ``convrate derive`` and the report show, e.g. "proved (general)",
"proved (general) + argued", "proved (instances) + argued", "corrected (instances) + argued".
A new statement gets this for free: tag its steps through ``Proof``.
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


class Scope(str, enum.Enum):
    """How far a derivation's proof goes (module doc: step tags)."""

    GENERAL = "general"  # every load-bearing step is a sympy identity in every dimension
    GENERAL_ARGUED = "general + argued"  # identities in every dimension, plus argued / cited steps
    INSTANCES_ARGUED = "instances + argued"  # some identity verified on fixed-size instances only
    NONE = "none"  # nothing proved (checked-only, false)


#: step tags (module doc); a failed or unreduced sympy step starts with "[sympy] FAILED" / "[sympy] NOT "
TAG_GENERAL, TAG_INSTANCE, TAG_EXAMPLE = "[sympy:general]", "[sympy]", "[sympy:example]"
TAG_ARGUMENT, TAG_CITED, TAG_NUMERIC = "[argument]", "[cited]", "[mpmath]"
#: the argued step added when a load-bearing identity was verified on instances only
INSTANCE_GAP = ("[argument] the identities tagged [sympy] were verified on fixed-size symbolic instances; that "
                "they hold in every dimension is argued, not verified")


def _tagged(step: str, tag: str) -> bool:
    return step.startswith(tag + " ") and not step.startswith(("[sympy] FAILED", "[sympy] NOT "))


def scope_of(steps: list[str]) -> tuple["Scope", list[str]]:
    """(scope, argued steps) of a list of tagged steps (module doc)."""
    load = [s for s in steps if _tagged(s, TAG_GENERAL) or _tagged(s, TAG_INSTANCE)]
    if not load:
        return Scope.NONE, []
    argued = [s for s in steps if s.startswith((TAG_ARGUMENT, TAG_CITED))]
    if any(_tagged(s, TAG_INSTANCE) for s in load):
        return Scope.INSTANCES_ARGUED, argued + [INSTANCE_GAP]
    return (Scope.GENERAL_ARGUED if argued else Scope.GENERAL), argued


def label(status: "Status", scope: "Scope") -> str:
    """The status as shown: "proved (general)", "proved (instances) + argued", ..."""
    if status not in (Status.PROVED, Status.CORRECTED) or scope is Scope.NONE:
        return status.value
    words = {Scope.GENERAL: "(general)", Scope.GENERAL_ARGUED: "(general) + argued",
             Scope.INSTANCES_ARGUED: "(instances) + argued"}
    return f"{status.value} {words[scope]}"


@dataclass
class Derivation:
    """Outcome of a symbolic derivation.

    status: proved / corrected / checked-only / false. ``steps`` are human-readable lines,
    each starting with its tag (module doc): the identities sympy verified, closed forms
    obtained, argued and cited steps; ``counterexample`` is filled when status is FALSE or
    CORRECTED. ``scope`` and ``argued`` follow from the tags.
    """

    status: Status
    steps: list[str] = field(default_factory=list)
    closed_forms: dict[str, str] = field(default_factory=dict)
    counterexample: str | None = None

    @property
    def scope(self) -> Scope:
        return scope_of(self.steps)[0]

    @property
    def argued(self) -> list[str]:
        """The steps that are prose or citations (and the instance gap, if any)."""
        return scope_of(self.steps)[1]


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
