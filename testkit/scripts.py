"""deploy/'s Python scripts (not a package) loaded as modules, for the tests that call their functions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def load(relative: str) -> ModuleType:
    """``deploy/<relative>`` as a module; registered in ``sys.modules`` (its dataclasses need it)."""
    path = DEPLOY / relative
    spec = importlib.util.spec_from_file_location(f"embsvc_deploy_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
