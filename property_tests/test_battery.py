"""One Hypothesis property per battery entry: every CheckResult on every drawn instance holds.

The checks compare a computed quantity with a bound from ``convrate.theory.bounds`` at a
stated precision (see each entry's ``precision`` field); nothing is compared with a number
from an earlier run.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings

from convrate.numerics.battery import load_entries

ENTRIES = load_entries()


def _message(r) -> str:
    return (f"{r.statement} violated on {r.instance}: measured {r.measured!r} {r.relation} "
            f"bound {r.bound!r} fails (margin {r.margin:.3e}, err {r.err:.1e}, {r.precision}) {r.detail}")


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_entry(name: str) -> None:
    e = ENTRIES[name]
    n = max(2, settings().max_examples // e.cost)

    @settings(max_examples=n)
    @given(e.strategy)
    def prop(instance) -> None:
        results = e.check(instance)
        assert results, f"entry {name} produced no check on {instance!r}"
        for r in results:
            assert r.statement in e.statements, f"{name} returned undeclared statement {r.statement}"
            assert r.holds, _message(r)

    prop()
