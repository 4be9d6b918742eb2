"""Hypothesis profiles of this project; convrate's plugin runs under whichever is loaded."""
import os

from hypothesis import settings

settings.register_profile("ci", max_examples=4, derandomize=True, deadline=None)
settings.register_profile("dev", max_examples=10, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
