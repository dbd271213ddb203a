"""The package installs and every console script is on the venv's PATH."""
import os
import subprocess
import sys

import pushjobs

SCRIPTS = ["push-jobs-server", "push-jobs-server-ctl", "push-jobs-client", "pushjobs"]


def test_version_is_semver():
    parts = pushjobs.__version__.split(".")
    assert len(parts) == 3 and all(p.isdigit() for p in parts)


def test_console_scripts_installed():
    bindir = os.path.dirname(sys.executable)
    for name in SCRIPTS:
        assert os.access(os.path.join(bindir, name), os.X_OK), name
