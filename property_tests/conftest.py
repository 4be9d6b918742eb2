"""Hypothesis profiles: ``ci`` (derandomized, bounded, fits CI), ``dev``, ``thorough``.

Select with the environment variable HYPOTHESIS_PROFILE (default ``dev``).
"""
from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", max_examples=15, derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", max_examples=30, deadline=None)
settings.register_profile("thorough", max_examples=400, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
