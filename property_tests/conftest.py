"""Hypothesis profiles: ``ci`` (derandomized, bounded, fits CI), ``dev``, ``thorough``, and
``mutation`` (``make mutation``: the ``ci`` examples, without shrinking -- a failing example is
found by exactly the same draws as under ``ci``, only not minimized, so a mutant killed under
``mutation`` is killed under ``ci``).

Select with the environment variable HYPOTHESIS_PROFILE (default ``dev``).
"""
from __future__ import annotations

import os

import pytest
from hypothesis import Phase, settings

settings.register_profile("ci", max_examples=15, derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", max_examples=30, deadline=None)
settings.register_profile("thorough", max_examples=400, deadline=None)
settings.register_profile("mutation", settings.get_profile("ci"), phases=[Phase.explicit, Phase.generate],
                          database=None, print_blob=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(autouse=True, scope="session")
def _torch_single_thread():
    """torch runs single-threaded in every test (``models.runtime.single_thread``: on 2 shared
    cores, OpenMP workers of the xdist processes contend and small float64 kernels slow down)."""
    from convrate.models.runtime import single_thread

    with single_thread():
        yield
