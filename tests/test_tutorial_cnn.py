"""The CNN tutorial (examples/tutorial_cnn.py): its command line."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

TUTORIAL = Path(__file__).resolve().parent.parent / "examples" / "tutorial_cnn.py"


def load_tutorial() -> ModuleType:
    """Import the script as a module (examples/ is not a package)."""
    name = "sharpsim_tutorial_cnn"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TUTORIAL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_tutorial_cnn_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    tutorial = load_tutorial()
    ns = tutorial.parse_args(["--quick", "--out-dir", "somewhere"])
    assert ns.quick and ns.out_dir == "somewhere"
    monkeypatch.setenv("SHARPSIM_TUTORIAL_OUT", "from-env")
    ns = tutorial.parse_args(["-f", "kernel.json"])  # a notebook kernel's own arguments
    assert not ns.quick and ns.out_dir == "from-env"
