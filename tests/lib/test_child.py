"""qpy.child: a tool's child that runs one of our programs warm."""
from __future__ import annotations

import subprocess
import sys

CRASHING = """import sys
from qpy import child, warm
def boom(program, argv):
    raise KeyError("no such thing")
warm.run_or_exec = boom
sys.exit(child.wait(child.start(["x"], program="predate")))
"""


def test_a_warm_child_that_raises_writes_one_line_naming_it_and_exits_111():
    r = subprocess.run([sys.executable, "-c", CRASHING], capture_output=True, timeout=60)
    assert r.returncode == 111
    assert r.stderr == b"crashed: KeyError: 'no such thing' (<string>:4)\n"
