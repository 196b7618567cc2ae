"""Moved: the independent codec is now `fleetwire.wire` in sdk/python/ (the
`fleetwire` Python package). This file only keeps
tests/interop/aioquic_client.py working until that script imports the
package; it adds nothing and should be deleted then.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "sdk", "python", "src"))

from fleetwire.wire import *  # noqa: E402,F401,F403
