"""Shared paths and fixtures of the fleetwire SDK tests.

The tests import the *installed* package (`pip install ./sdk/python`);
test_package.py checks that it is this tree's code.
"""

import os

import pytest

SDK = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(SDK))
VECTORS = os.path.join(REPO, "proto", "vectors")
SPEC = os.path.join(REPO, "proto", "PROTOCOL.md")


def pytest_configure(config):
    try:
        import fleetwire  # noqa: F401
    except ImportError as e:
        pytest.exit(f"the fleetwire package is not installed ({e}): run "
                    "`python3 -m pip install ./sdk/python` from the repository root",
                    returncode=4)
