"""pytest plugin (entry point ``pytest11: convrate``): convrate's statements against your defense.

    import pytest

    @pytest.mark.convrate(defense="mypkg.defense:defend")
    def test_my_defense(convrate_battery):
        convrate_battery.check()

A test marked ``convrate`` that uses the ``convrate_battery`` fixture is parametrized over the
statements that apply (ids ``FPLR``, ``T-CLAIM``, ``T1``, ``T2``, ``W``, ``R1``, ``R2``; see
``convrate.byod.STATEMENTS``), so the report lists which statements the defense obeys.
``check()`` runs each as a Hypothesis property over drawn float64 instances (the active
Hypothesis profile decides examples, derandomization and database; convrate only turns the
deadline and the explain phase off and reports one bug per property) and on a violation fails with the statement,
the instance as shrunk by Hypothesis, the measured value and the bound. Bad input (a defense
that is not importable, raises, returns another architecture or NaN weights) fails with one
line. A statement that cannot run (no T claimed or inferred, optional module missing) is
skipped with its reason.

Marker keywords: ``defense`` ("module:callable", a callable or a convrate ``Defense``),
``statements`` (ids), ``models`` ("mlp", "attention", both, or a Hypothesis strategy of
models), ``max_examples``. ``check()`` takes the same keywords to override them.

This module is imported by every pytest session once convrate is installed: it imports only
``convrate.byod`` (no torch, no Hypothesis) until a test uses the fixture.
"""
from __future__ import annotations

import warnings
from typing import Any

import pytest

MARKER = "convrate"
_KEYS = ("defense", "statements", "models", "max_examples")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(defense, statements=None, models='mlp', max_examples=None): check convrate's statements "
        "against a defense with the convrate_battery fixture")


def _marker_kwargs(node: Any) -> dict[str, Any]:
    m = node.get_closest_marker(MARKER)
    if m is None:
        return {}
    kw = dict(m.kwargs)
    if m.args:
        kw.setdefault("defense", m.args[0])
    bad = sorted(set(kw) - set(_KEYS))
    if bad:
        raise pytest.UsageError(f"@pytest.mark.{MARKER}: unknown keyword(s) {', '.join(bad)} "
                                f"(supported: {', '.join(_KEYS)})")
    return kw


def _is_strategy(models: Any) -> bool:
    return models is not None and not isinstance(models, (str, list, tuple))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "convrate_battery" not in metafunc.fixturenames:
        return
    kw = _marker_kwargs(metafunc.definition)
    if not kw:
        return
    from convrate.byod import KINDS, select_statements
    from convrate.errors import ConvrateError

    models = kw.get("models")
    try:
        ids = select_statements(kw.get("statements"), KINDS if _is_strategy(models) else models)
    except ConvrateError:
        return  # the fixture reports the bad marker in one line
    metafunc.parametrize("convrate_battery", ids, indirect=True, ids=ids)


class StatementViolation(AssertionError):
    """A CheckResult that does not hold, with the instance it came from."""

    def __init__(self, result: Any, instance: Any) -> None:
        super().__init__(f"{result.statement} violated on {instance!r}")
        self.result, self.instance = result, instance


def violation_message(v: StatementViolation, defense: str) -> str:
    """The failure text: statement, shrunk instance, measured value, bound, precision."""
    from convrate.byod import STATEMENTS

    r = v.result
    text = STATEMENTS[r.statement].text if r.statement in STATEMENTS else ""
    return (f"convrate: statement {r.statement} violated by defense {defense}\n"
            f"  statement: {text}\n"
            f"  instance (shrunk by Hypothesis): {r.instance}\n"
            f"  measured {r.measured!r} {r.relation} bound {r.bound!r} fails "
            f"(err {r.err:.2e}, margin {r.margin:.3e}; {r.precision})\n"
            f"  detail: {r.detail}")


class Battery:
    """What the ``convrate_battery`` fixture gives a test: ``check()`` runs the statements."""

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.results: list[Any] = []
        self.skipped: dict[str, str] = {}

    def check(self, defense: Any = None, **overrides: Any) -> list[Any]:
        """Run the statements (marker keywords, overridden by ``defense`` / ``overrides``) as
        Hypothesis properties; return every CheckResult of the passing examples."""
        __tracebackhide__ = True
        from hypothesis.errors import FailedHealthCheck, Unsatisfiable

        from convrate.errors import ConvrateError

        bad = sorted(set(overrides) - set(_KEYS))
        if bad:
            raise TypeError(f"check() got unknown keyword(s) {', '.join(bad)}")
        cfg = {**self.config, **({"defense": defense} if defense is not None else {}), **overrides}
        if cfg.get("defense") is None:
            pytest.fail("convrate: no defense given (use @pytest.mark.convrate(defense='module:callable') "
                        "or convrate_battery.check(defense))", pytrace=False)
        from convrate.models.byod import defense_entries

        failure = None  # pytest.fail outside the except blocks: no chained traceback in the report
        try:
            entries, skipped, name = defense_entries(cfg["defense"], cfg.get("statements"), cfg.get("models"))
        except ConvrateError as e:
            entries, skipped, name, failure = [], {}, "", f"convrate: {e}"
        out: list[Any] = []
        for e in entries:
            try:
                out += _run_property(e, name, cfg.get("max_examples"))
            except StatementViolation as v:
                failure = violation_message(v, name)
            except ConvrateError as err:
                failure = f"convrate: {err}"
            except (Unsatisfiable, FailedHealthCheck):
                skipped[e.statements[0]] = f"{e.statements[0]} applied to none of the drawn instances"
            if failure:
                break
        if failure:
            pytest.fail(failure, pytrace=False)
        self.results, self.skipped = out, skipped
        why = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        if skipped and not out:
            pytest.skip(f"convrate: not run: {why}")
        if skipped:
            warnings.warn(pytest.PytestWarning(f"convrate: not run: {why}"), stacklevel=2)
        return out


def _run_property(e: Any, name: str, max_examples: int | None) -> list[Any]:
    """One battery entry as a Hypothesis property under the active profile (deadline off, one
    bug reported, no explain phase: each replay runs the defense); raises StatementViolation on
    the shrunk failing instance."""
    from hypothesis import HealthCheck, Phase, given, settings

    base = settings()
    kw: dict[str, Any] = {"deadline": None, "report_multiple_bugs": False,
                          "phases": [p for p in base.phases if p is not Phase.explain],
                          "suppress_health_check": [*base.suppress_health_check, HealthCheck.too_slow]}
    if max_examples is not None:
        kw["max_examples"] = int(max_examples)
    results: list[Any] = []

    @settings(base, **kw)
    @given(e.strategy)
    def prop(instance: Any) -> None:
        rs = e.check(instance)
        for r in rs:
            if not r.holds:
                raise StatementViolation(r, instance)
        results.extend(rs)

    # database entries per (defense, statement), not per this shared inner function (the
    # attribute Hypothesis reads for the key; ignored where unsupported)
    prop._hypothesis_internal_database_key = f"convrate-byod:{name}:{e.name}".encode()  # type: ignore[attr-defined]
    prop()
    return results


@pytest.fixture
def convrate_battery(request: pytest.FixtureRequest) -> Battery:
    """A ``Battery`` configured by the test's ``convrate`` marker (one statement per
    parametrized item)."""
    kw = _marker_kwargs(request.node)
    sid = getattr(request, "param", None)
    if sid is not None:
        kw["statements"] = [sid]
    return Battery(**kw)
