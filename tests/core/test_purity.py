"""The core is pure: importing it pulls in no I/O framework."""

import subprocess
import sys


def test_core_imports_no_io_frameworks():
    code = (
        "import sys, pushjobs.core, pushjobs.core.job, pushjobs.core.node, pushjobs.core.agent, "
        "pushjobs.core.liveness, pushjobs.core.actions\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('zmq', 'flask', 'peewee', 'gevent', 'socket'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
