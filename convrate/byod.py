"""Bring your own defense: the public protocol of a user-supplied defense (imports no torch).

A *defense* is any callable

    defend(model) -> defended                 or    defend(model) -> (defended, T)

where ``model`` is the reference network (a ``torch.nn.Module``; or its weights dict
``{name: tensor}`` when the callable is marked with ``@takes_weights``) and ``defended`` is
the released network of the same architecture (a module, a weights dict, a convrate
``LoadedModel``, or a convrate ``DefenseResult`` which carries T itself). ``T`` is the
function-preserving linear reparameterization used (THEORY.md section 0: theta' = T theta),
as a ``convrate.models.TorchReparameterization``. When T is not returned, convrate infers it
from the reference and defended weights within the supported symmetry groups
(``convrate.models.fplr.infer_reparameterization``: S2 positive diagonal scalings of ReLU
units, S1 GL(r) per attention head; unit permutations are not searched), accepting it when
max over tensors ||T theta - theta'|| / ||theta'|| <= sqrt(u). When no such T exists, T-CLAIM
fails (with the inference's residual) and the statements that need T are not run.

``convrate.models.byod`` checks the statements of ``STATEMENTS`` against a defense; the
pytest plugin (``convrate.plugin``) and ``convrate check --defense`` share that code path.
This module is what the plugin imports at collection time, so it must stay torch-free.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Union, runtime_checkable

from convrate.errors import InvalidInputError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from convrate.models.symmetry import TorchReparameterization

    Weights = Mapping[str, "torch.Tensor"]
    DefenseReturn = Union["nn.Module", Weights, tuple[Union["nn.Module", Weights], "TorchReparameterization | None"]]


@runtime_checkable
class DefenseCallable(Protocol):
    """``defend(model) -> defended | (defended, T)`` (module doc). The argument is the
    reference ``nn.Module`` (a private copy: mutating it is harmless), or its weights dict
    when the callable carries ``convrate_input = "weights"`` (see ``takes_weights``)."""

    def __call__(self, model: nn.Module | Weights) -> DefenseReturn: ...


#: what a defense is handed: the module itself, or its weights dict
INPUTS = ("module", "weights")


def takes_weights(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a defense as taking (and returning) a weights dict ``{name: tensor}``."""
    fn.convrate_input = "weights"  # type: ignore[attr-defined]
    return fn


def defense_input(fn: Any) -> str:
    """"module" or "weights": what ``fn`` is handed (its ``convrate_input`` attribute)."""
    kind = getattr(fn, "convrate_input", "module")
    if kind not in INPUTS:
        raise DefenseSpecError(f"defense {describe_defense(fn)}: convrate_input must be one of "
                               f"{', '.join(INPUTS)}, got {kind!r}")
    return kind


# ---------------------------------------------------------------- errors (one clear line each)
class DefenseError(InvalidInputError):
    """A user-supplied defense could not be checked (its message names the defense)."""


class DefenseSpecError(DefenseError):
    """``module:callable`` is malformed, not importable, or not callable."""


class DefenseRaisedError(DefenseError):
    """The defense raised an exception on an instance."""


class DefenseOutputError(DefenseError):
    """The defense returned something other than the same architecture with finite weights,
    or a claimed T that is not a reparameterization of that architecture."""


class StatementUnavailableError(DefenseError):
    """A requested statement is unknown, or cannot be checked in this installation."""


# ---------------------------------------------------------------- statements checked on a defense
@dataclass(frozen=True)
class DefenseStatement:
    """A statement checked against a user defense: id, one line, model kinds it applies to,
    whether it needs T (claimed or inferred), and the module implementing it when that is
    optional (``None``: always available)."""

    id: str
    text: str
    kinds: tuple[str, ...] = ("mlp", "attention")
    needs_T: bool = True
    requires: str | None = None


#: model kinds the built-in instance strategies draw (``convrate.strategies.instances``)
KINDS = ("mlp", "attention")

STATEMENTS: dict[str, DefenseStatement] = {s.id: s for s in (
    DefenseStatement("FPLR", "f(x; theta') = f(x; theta) on probe inputs within float64 rounding "
                     "(a defense that changes the function is outside the FPLR class)", needs_T=False),
    DefenseStatement("T-CLAIM", "theta' = T theta for the claimed (or inferred) T, within the rounding "
                     "of computing T theta"),
    DefenseStatement("T1", "grad L'(T theta) = T^-T grad L(theta) on the real (squared) loss"),
    DefenseStatement("T2", "H'(T theta) = T^-T H(theta) T^-1 on the real (squared) loss (random probe)"),
    DefenseStatement("W", "lambda_max(H') >= lambda_max(E[h'h'^T]) >= max_i D_i^2 E[h_i^2] "
                     "(last linear layer, squared loss)", kinds=("mlp",)),
    DefenseStatement("R1", "recovery with knowledge of T restores the undefended trajectory",
                     requires="convrate.models.recovery"),
    DefenseStatement("R2", "canonicalization maps the defended and the undefended model to the same point",
                     needs_T=False, requires="convrate.models.recovery"),
)}


def statement_available(sid: str) -> str | None:
    """None when statement ``sid`` can be checked here, else the reason it cannot. Looks for
    the implementing module's file without importing it (no torch at collection time)."""
    st = STATEMENTS[sid]
    if st.requires is None:
        return None
    parent, _, leaf = st.requires.rpartition(".")
    try:
        spec = importlib.util.find_spec(parent)
    except ImportError:  # pragma: no cover - broken installation
        spec = None
    dirs = list(spec.submodule_search_locations or []) if spec is not None else []
    if any(os.path.exists(os.path.join(d, leaf + ".py")) or os.path.isdir(os.path.join(d, leaf)) for d in dirs):
        return None
    return f"{sid} needs {st.requires}, which this convrate installation does not have"


def select_statements(statements: Any = None, kinds: Any = None) -> list[str]:
    """The statement ids to check: ``statements`` (validated) or every statement applying to
    one of ``kinds`` (default ``("mlp",)``), in registry order."""
    ks = normalize_kinds(kinds)
    if statements is None:
        return [s.id for s in STATEMENTS.values() if set(s.kinds) & set(ks)]
    if isinstance(statements, str):
        statements = [statements]
    out = []
    for sid in statements:
        if sid not in STATEMENTS:
            raise StatementUnavailableError(f"unknown statement {sid!r} for a defense "
                                            f"(supported: {', '.join(STATEMENTS)})")
        out.append(sid)
    return list(dict.fromkeys(out))


def normalize_kinds(kinds: Any) -> tuple[str, ...]:
    """A tuple of model kinds from None (``("mlp",)``), a name, a comma list or a sequence."""
    if kinds is None:
        return ("mlp",)
    if isinstance(kinds, str):
        kinds = [k.strip() for k in kinds.split(",") if k.strip()]
    ks = tuple(kinds)
    bad = [k for k in ks if k not in KINDS]
    if bad or not ks:
        raise InvalidInputError(f"unknown model kind(s) {bad or ks!r} (supported: {', '.join(KINDS)})")
    return ks


# ---------------------------------------------------------------- loading "module:callable"
def describe_defense(defense: Any) -> str:
    """A short name for messages: the spec string, ``module:qualname``, or the repr."""
    if isinstance(defense, str):
        return defense
    mod, name = getattr(defense, "__module__", None), getattr(defense, "__qualname__", None)
    if mod and name:
        return f"{mod}:{name}"
    return repr(defense)[:80]


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


def raise_site(e: BaseException) -> str:
    """``file:line`` of the innermost frame of ``e``'s traceback (where the defense failed)."""
    tb = traceback.extract_tb(e.__traceback__)
    return f"{tb[-1].filename}:{tb[-1].lineno}" if tb else "?"


def load_defense(spec: Any) -> Callable[..., Any]:
    """Resolve ``"package.module:attribute"`` (dots allowed in the attribute) to a callable;
    a callable is returned as is. The current directory is importable (as for ``python -m``).
    A convrate ``Defense`` object is wrapped so that it satisfies the protocol."""
    if not isinstance(spec, str):
        return _as_callable(spec, describe_defense(spec))
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise DefenseSpecError(f"defense {spec!r} must have the form package.module:callable")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(mod_name)
    except Exception as e:  # ImportError, or any error the module raises on import
        raise DefenseSpecError(f"cannot import defense module {mod_name!r} for {spec!r}: "
                               f"{type(e).__name__}: {_one_line(e)}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise DefenseSpecError(f"defense {spec!r}: module {mod_name!r} has no attribute {attr!r}") from None
    return _as_callable(obj, spec)


def _as_callable(obj: Any, name: str) -> Callable[..., Any]:
    if any(c.__module__ == "convrate.models.defense" and c.__name__ == "Defense" for c in type(obj).__mro__):
        from convrate.models.byod import project_defense

        return project_defense(obj)
    if not callable(obj):
        raise DefenseSpecError(f"defense {name!r} is a {type(obj).__name__}, not a callable")
    defense_input(obj)
    return obj


__all__ = [
    "DefenseCallable", "INPUTS", "takes_weights", "defense_input",
    "DefenseError", "DefenseSpecError", "DefenseRaisedError", "DefenseOutputError", "StatementUnavailableError",
    "DefenseStatement", "STATEMENTS", "KINDS", "statement_available", "select_statements", "normalize_kinds",
    "describe_defense", "raise_site", "load_defense",
]
