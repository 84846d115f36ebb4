"""Loading and running the repository's scripts (benchmarks/, examples/) from tests."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_script(path: Path) -> ModuleType:
    """Imports a script as a module named after its file, registered in ``sys.modules`` (its
    dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_script(path: Path, *args: object, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs a script in a fresh interpreter on this checkout, one torch thread, output captured."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(path), *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout
    )
