"""The face core imports nothing from the research and demo packages (info, experiments, synth, report)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE_PACKAGES = ("models", "losses", "data", "engine", "eval", "export", "serve", "detect")
RESEARCH = ("info", "experiments", "synth", "report")

# One fresh interpreter imports every core module (and the top-level ones) and lists which
# research packages ended up in sys.modules; modules a test process already imported cannot mask it.
_PROBE = f"""
import importlib, pkgutil, sys
import facevib
names = [m.name for m in pkgutil.iter_modules(facevib.__path__) if not m.ispkg]
for package in {CORE_PACKAGES!r}:
    module = importlib.import_module("facevib." + package)
    names += [info.name for info in pkgutil.walk_packages(module.__path__, module.__name__ + ".")]
for name in names:
    importlib.import_module(name if name.startswith("facevib.") else "facevib." + name)
print(sorted({{m.split(".")[1] for m in sys.modules if m.startswith("facevib.") and m.split(".")[1] in {RESEARCH!r}}}))
"""


def test_core_modules_import_no_research_package() -> None:
    result = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
