"""The installed package is this tree's code, with no runtime dependency."""

import importlib.metadata
import os
import sys

import fleetwire
from conftest import SDK

SRC = os.path.join(SDK, "src", "fleetwire")


def test_installed_package_is_this_tree():
    installed = os.path.dirname(os.path.abspath(fleetwire.__file__))
    sources = sorted(f for f in os.listdir(SRC) if f.endswith(".py"))
    assert "wire.py" in sources and "sender.py" in sources
    for name in sources:
        with open(os.path.join(SRC, name), "rb") as a:
            want = a.read()
        path = os.path.join(installed, name)
        assert os.path.exists(path), f"{name} is not installed: pip install ./sdk/python"
        with open(path, "rb") as b:
            assert b.read() == want, (
                f"installed {path} differs from {SRC}/{name}: run "
                "`python3 -m pip install ./sdk/python` again")


def test_no_runtime_dependencies():
    requires = importlib.metadata.requires("fleetwire") or []
    # Only the optional "test" extra (pytest) may appear.
    assert all("extra ==" in r for r in requires), requires
    assert importlib.metadata.version("fleetwire") == fleetwire.__version__


def test_imports_nothing_outside_the_standard_library():
    import ast
    stdlib = set(sys.stdlib_module_names) if hasattr(sys, "stdlib_module_names") else None
    for name in os.listdir(SRC):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(SRC, name), encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module.split(".")[0]]
            else:
                continue
            for m in mods:
                if stdlib is not None:
                    assert m in stdlib, f"{name} imports {m}"
