"""The benchmark modules import each other by bare name (they run as scripts from benchmarks/)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
