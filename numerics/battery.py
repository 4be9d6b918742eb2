"""The exact check battery: one registry of (statement, strategy, check) entries.

Each entry pairs a Hypothesis strategy that draws an exact instance with a function that
checks every applicable statement on it and returns ``CheckResult``s. The same entries
drive the property tests (``property_tests/test_battery.py``, one Hypothesis property per
entry) and ``convrate check`` (``run_battery``, derandomized, outside pytest), so the two
can never disagree about what is checked.
"""
from __future__ import annotations

import importlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from hypothesis import Phase, given, settings
from hypothesis.strategies import SearchStrategy

from convrate.theory.core import CheckResult

#: modules whose import registers entries (kept in dependency order)
ENTRY_MODULES = (
    "convrate.numerics.checks_quadratic",
    "convrate.numerics.checks_nets",
    "convrate.numerics.checks_precision",
    "convrate.numerics.checks_inserted",
    "convrate.numerics.checks_second_order",
    "convrate.numerics.checks_llm",
    "convrate.numerics.checks_tight",
)

#: examples per entry for ``convrate check`` profiles
PROFILES = {"quick": 6, "full": 40}


@dataclass(frozen=True)
class Entry:
    """One property: statements it checks, how instances are drawn, how they are checked."""

    name: str
    statements: tuple[str, ...]
    strategy: SearchStrategy
    check: Callable[[Any], list[CheckResult]]
    cost: int = 1  # relative cost of one example; run_battery divides examples by it


BATTERY: dict[str, Entry] = {}


def entry(name: str, statements: Iterable[str], strategy: SearchStrategy, cost: int = 1) -> Callable:
    """Decorator registering ``check(instance) -> list[CheckResult]`` under ``name``."""

    def wrap(check: Callable[[Any], list[CheckResult]]) -> Callable[[Any], list[CheckResult]]:
        if name in BATTERY:
            raise ValueError(f"battery entry {name!r} registered twice")
        BATTERY[name] = Entry(name, tuple(statements), strategy, check, cost)
        return check

    return wrap


def load_entries() -> dict[str, Entry]:
    """Import every module that registers entries and return the registry."""
    for mod in ENTRY_MODULES:
        importlib.import_module(mod)
    return BATTERY


def run_entry(e: Entry, max_examples: int, seed: int = 0) -> list[CheckResult]:
    """Run one entry on ``max_examples`` derandomized instances, collecting every result.

    Violations are collected, not raised, so the battery reports all of them.
    """
    results: list[CheckResult] = []

    @settings(
        max_examples=max(1, max_examples),
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
    )
    @given(e.strategy)
    def _run(instance: Any) -> None:
        results.extend(e.check(instance))

    _run._hypothesis_internal_use_seed = seed  # type: ignore[attr-defined]
    _run()
    return results


def run_battery(profile: str = "quick", seed: int = 0, only: Iterable[str] | None = None,
                progress: Callable[[str], None] | None = None) -> list[CheckResult]:
    """Run every registered entry (or those checking a statement in ``only``)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    wanted = set(only) if only else None
    out: list[CheckResult] = []
    for e in load_entries().values():
        if wanted is not None and not wanted.intersection(e.statements):
            continue
        out.extend(run_entry(e, PROFILES[profile] // e.cost or 1, seed))
        if progress is not None:
            progress(e.name)
    return out


def summarize(results: Iterable[CheckResult]) -> list[dict[str, Any]]:
    """Aggregate CheckResults per statement: instances, holds, worst margin, precisions."""
    by: dict[str, list] = defaultdict(list)
    for r in results:
        by[r.statement].append(r)
    rows = []
    for sid in sorted(by):
        rs = by[sid]
        worst = min(rs, key=lambda r: r.margin)
        rows.append({
            "id": sid,
            "instances": len(rs),
            "holds": all(r.holds for r in rs),
            "worst_margin": worst.margin,
            "worst_instance": worst.instance,
            "precision": sorted({r.precision for r in rs}),
            "violations": [r.to_dict() for r in rs if not r.holds],
        })
    return rows
