"""Bring your own defense: the pytest plugin and ``convrate check --defense`` from the outside.

Each test writes a user's project (a defense module and its tests) into a temporary
directory and runs pytest on it with ``pytester`` (in process; the plugin comes from the
``pytest11`` entry point, as for a user). A correct per-unit rescaling defense and the
project's own SpecDef (positive controls) pass every statement; a defense that changes the
function fails FPLR (and T-CLAIM, R1, R2, which compare weights or trajectories), one whose
claimed T is wrong fails T-CLAIM; bad input fails with one line naming the defense, without
a traceback. Every verdict here comes from the statements' own bounds (``models.byod``); the
tests only check which statements fail and what the message says.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

import pytest
from typer.testing import CliRunner

import convrate.strategies  # noqa: F401  (imported before pytester snapshots sys.modules)
from convrate.cli import app, console

pytest_plugins = ["pytester"]



#: a user's defense: rescale the units of every hidden ReLU layer by d (kappa(D) = 100),
#: relu(d z) = d relu(z), so W_a -> diag(d) W_a, b_a -> d b_a, W_b -> W_b diag(d)^-1; and
#: deliberately broken variants of it
USER_DEFENSE = '''
import copy
import torch
from torch import nn
from convrate.byod import takes_weights
from convrate.models import TorchReparameterization, discover_symmetries


def _rescale(model, seed=0, K=100.0):
    out = copy.deepcopy(model)
    lin = [m for m in out if isinstance(m, nn.Linear)]
    g = torch.Generator().manual_seed(seed)
    scales = []
    with torch.no_grad():
        for a, b in zip(lin, lin[1:]):
            r = a.out_features
            e = 0.5 - torch.arange(r, dtype=torch.float64) / max(r - 1, 1)
            d = (K ** e)[torch.randperm(r, generator=g)] if r > 1 else torch.ones(1, dtype=torch.float64)
            a.weight.mul_(d[:, None]); a.bias.mul_(d); b.weight.div_(d[None, :])
            scales.append(d)
    return out, scales


def _T(model, scales):
    groups = discover_symmetries(model, input_shape=(model[0].in_features,))
    return TorchReparameterization(list(zip(groups, scales)))


def defend(model):
    out, scales = _rescale(model)
    return out, _T(model, scales)


def defend_without_T(model):
    return _rescale(model)[0]


@takes_weights
def defend_weights(weights):
    out = {k: v.clone() for k, v in weights.items()}
    out["0.weight"] = out["0.weight"] * 2.0
    out["0.bias"] = out["0.bias"] * 2.0
    out["2.weight"] = out["2.weight"] / 2.0
    return out


def changes_function_when_wide(model):
    out, scales = _rescale(model)
    if model[0].out_features >= 3:  # only models with a first hidden layer of width >= 3
        with torch.no_grad():
            out[0].bias.add_(1e-3)
    return out, _T(model, scales)


def wrong_claim(model):
    out, _ = _rescale(model, seed=0)
    _, other = _rescale(model, seed=1)
    return out, _T(model, [s ** 2 for s in other])


def raises(model):
    raise ValueError("unsupported layer")


def other_architecture(model):
    return nn.Sequential(*list(model)[:-1])


def nan_weights(model):
    out, _ = _rescale(model)
    with torch.no_grad():
        out[0].weight[0, 0] = float("nan")
    return out
'''


@pytest.fixture(scope="module")
def _imports_done():
    """pytester (in process) removes the modules an inner run imported; a C extension (numpy,
    scipy, transformers parts) cannot be imported twice, so everything the statements use is
    imported here first, by checking every statement once on both model kinds."""
    from convrate.models import byod
    from convrate.models.defense import SpecDef

    for kind in ("mlp", "attention"):
        d = byod.apply_defense(byod.project_defense(SpecDef(10)), byod.first_instance(kind))
        for sid, check in byod.CHECKS.items():
            if kind in byod.STATEMENTS[sid].kinds:
                assert all(r.holds for r in check(d)), sid


@pytest.fixture
def project(pytester, _imports_done):
    pytester.makepyfile(userdefense=USER_DEFENSE)
    pytester.syspathinsert()
    return pytester


def _run(pytester, tests: str):
    pytester.makepyfile(test_user=textwrap.dedent(tests))
    return pytester.runpytest("-p", "no:cacheprovider", "-rA")


def test_plugin_is_registered_as_pytest11_entry_point():
    assert "convrate.plugin" in {ep.value for ep in entry_points(group="pytest11")}


def test_plugin_import_is_cheap():
    code = "import sys, convrate.plugin; print(sorted(m for m in ('torch', 'hypothesis', 'numpy', 'sympy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_correct_defenses_pass_every_statement(project):
    res = _run(project, '''
        import pytest
        from convrate.models.defense import SpecDef

        @pytest.mark.convrate(defense="userdefense:defend", max_examples=3)
        def test_user(convrate_battery):
            results = convrate_battery.check()
            assert results and all(r.holds for r in results)

        @pytest.mark.convrate(defense="userdefense:defend_without_T", statements=["T-CLAIM", "T1"], max_examples=2)
        def test_inferred(convrate_battery):
            assert all("T inferred" in r.instance for r in convrate_battery.check())

        @pytest.mark.convrate(defense="userdefense:defend_weights", statements=["FPLR", "T-CLAIM"], max_examples=2)
        def test_weights_dict(convrate_battery):
            convrate_battery.check()

        @pytest.mark.convrate(defense=SpecDef(100), models=("mlp", "attention"), statements=["FPLR", "T2", "R1"],
                              max_examples=2)
        def test_project_specdef(convrate_battery):
            convrate_battery.check()
    ''')
    res.assert_outcomes(passed=7 + 2 + 2 + 3)
    for sid in ("FPLR", "T-CLAIM", "T1", "T2", "W", "R1", "R2"):
        res.stdout.fnmatch_lines([f"PASSED test_user.py::test_user[[]{sid}[]]"])


def test_function_changing_defense_fails_naming_the_statement(project):
    res = _run(project, '''
        import pytest

        @pytest.mark.convrate(defense="userdefense:changes_function_when_wide", max_examples=10)
        def test_user(convrate_battery):
            convrate_battery.check()
    ''')
    outcomes = res.parseoutcomes()
    assert outcomes.get("failed") == 4 and outcomes.get("passed") == 3, outcomes
    text = res.stdout.str()
    for sid in ("FPLR", "T-CLAIM", "R1", "R2"):
        assert f"FAILED test_user.py::test_user[{sid}]" in text
        assert f"convrate: statement {sid} violated by defense userdefense:changes_function_when_wide" in text
    # T1, T2, W are laws of the claimed T itself (a symmetry of the architecture): they hold
    for sid in ("T1", "T2", "W"):
        assert f"PASSED test_user.py::test_user[{sid}]" in text
    assert "outside the FPLR class" in text
    # every failing instance has width >= 3 in its first hidden layer; the smallest such
    # instance of the strategy is widths [1, 3, 1]: Hypothesis shrank to it
    assert "instance (shrunk by Hypothesis): mlp widths=[1, 3, 1]" in text
    assert "measured " in text and " <= bound 1.0 fails" in text
    assert "Traceback" not in text


def test_wrong_claimed_T_fails_T_CLAIM(project):
    res = _run(project, '''
        import pytest

        @pytest.mark.convrate(defense="userdefense:wrong_claim", statements=["FPLR", "T-CLAIM"], max_examples=5)
        def test_user(convrate_battery):
            convrate_battery.check()
    ''')
    res.assert_outcomes(passed=1, failed=1)
    text = res.stdout.str()
    assert "PASSED test_user.py::test_user[FPLR]" in text  # the released model itself is fine
    assert "convrate: statement T-CLAIM violated by defense userdefense:wrong_claim" in text
    assert "||theta' - T theta|| / ||T theta||" in text


BAD = {
    "raises": "convrate: defense userdefense:raises raised ValueError: unsupported layer (at ",
    "other_architecture": "convrate: defense userdefense:other_architecture returned a different architecture",
    "nan_weights": "convrate: defense userdefense:nan_weights returned non-finite weights: '0.weight' has 1 NaN/Inf entry",
    "missing": "convrate: defense 'userdefense:missing': module 'userdefense' has no attribute 'missing'",
}


def test_bad_input_gets_one_clear_line(project):
    tests = ["import pytest"]
    for name in [*BAD, "nomodule"]:
        spec = "not_a_module:defend" if name == "nomodule" else f"userdefense:{name}"
        tests.append(f'''
@pytest.mark.convrate(defense="{spec}", statements=["FPLR"], max_examples=2)
def test_{name}(convrate_battery):
    convrate_battery.check()
''')
    res = _run(project, "\n".join(tests))
    res.assert_outcomes(failed=len(BAD) + 1)
    text = res.stdout.str()
    for msg in BAD.values():
        assert msg in text, msg
    assert "convrate: cannot import defense module 'not_a_module' for 'not_a_module:defend': ModuleNotFoundError" in text
    assert "Traceback" not in text


@pytest.fixture
def wide_console(monkeypatch):
    monkeypatch.setattr(console, "width", 10_000)  # rich wraps at 80 columns otherwise


def test_cli_check_defense(tmp_path, monkeypatch, wide_console):
    (tmp_path / "userdefense.py").write_text(USER_DEFENSE)
    monkeypatch.syspath_prepend(str(tmp_path))
    runner = CliRunner()
    ok = runner.invoke(app, ["check", "--defense", "userdefense:defend", "--only", "FPLR", "--only", "T-CLAIM",
                             "--json", "-", "--seed", "1"])
    assert ok.exit_code == 0, ok.output
    rows = json.loads(ok.stdout)
    assert {r["id"]: r["holds"] for r in rows} == {"FPLR": True, "T-CLAIM": True}
    assert all(r["instances"] == 6 for r in rows)  # the quick profile: 6 examples per statement
    bad = runner.invoke(app, ["check", "--defense", "userdefense:wrong_claim", "--only", "T-CLAIM"])
    assert bad.exit_code == 1 and "VIOLATION T-CLAIM" in bad.stderr
    for name, msg in BAD.items():
        r = runner.invoke(app, ["check", "--defense", f"userdefense:{name}"])
        assert r.exit_code == 2, (name, r.output)
        line = msg.removeprefix("convrate: ")
        assert r.stderr.strip().splitlines() == [r.stderr.strip().splitlines()[0]] and line in r.stderr, r.stderr
    r = runner.invoke(app, ["check", "--defense", "userdefense"])
    assert r.exit_code == 2 and "must have the form package.module:callable" in r.stderr
    r = runner.invoke(app, ["check", "--defense", "userdefense:defend", "--only", "NOPE"])
    assert r.exit_code == 2 and "unknown statement 'NOPE'" in r.stderr
