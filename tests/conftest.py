"""Make the ``infinisynth`` library under ``plugins/`` importable in tests."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

pytest_plugins = ["tests.support.fixtures"]
