"""
The package as an operator installs it: a wheel built from the tree and
installed into a fresh virtualenv.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from signaling import __version__

from .realsockets import build_wheel, stop_process


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """
    A fresh virtualenv with the wheel of this tree in it. Its dependencies
    are this test environment's (a .pth file points at them), so that the
    test needs no network; the package itself comes only from the wheel.
    """
    work = tmp_path_factory.mktemp("package")
    wheel = build_wheel(work / "dist")
    venv = work / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)],
        check=True,
        timeout=60,
    )
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [
                str(python),
                "-c",
                "import sysconfig; print(sysconfig.get_path('purelib'))",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "test-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    # Twisted's own console script, as installing Twisted into it would
    # have made it.
    twistd = venv / "bin" / "twistd"
    twistd.write_text(
        f"#!{python}\nimport sys\nfrom twisted.scripts.twistd import run\nsys.exit(run())\n"
    )
    twistd.chmod(0o755)
    return wheel, venv, work


def test_the_wheel_carries_the_plugin(installed):
    wheel, _, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/signaling_plugin.py" in names
    assert "signaling/tap.py" in names
    assert not any(name.startswith("tests/") for name in names)


def test_installed_twistd_signaling_help_and_version(installed):
    _, venv, work = installed
    twistd = str(venv / "bin" / "twistd")
    # Run outside the tree: only the wheel's plugin can be found.
    help_text = subprocess.run(
        [twistd, "signaling", "--help"],
        cwd=work,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "--metrics-port" in help_text
    version = subprocess.run(
        [twistd, "signaling", "--version"],
        cwd=work,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert version.startswith(f"signaling {__version__} (Twisted ")
    location = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import signaling; print(signaling.__file__)",
        ],
        cwd=work,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert location.startswith(str(venv))


def test_installed_server_answers_health(installed):
    _, venv, work = installed
    log_path = work / "twistd.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [
                str(venv / "bin" / "twistd"),
                "-n",
                "--pidfile=",
                "signaling",
                "--port",
                "tcp:0:interface=127.0.0.1",
            ],
            cwd=work,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": ""},
        )
    try:
        deadline = time.monotonic() + 20
        while not (
            found := re.search(r"ws://127\.0\.0\.1:(\d+)/", log_path.read_text())
        ):
            assert process.poll() is None and time.monotonic() < deadline, (
                log_path.read_text()
            )
            time.sleep(0.05)
        with urllib.request.urlopen(
            f"http://127.0.0.1:{found.group(1)}/health", timeout=5
        ) as response:
            assert response.status == 200
            assert b'"status":"ok"' in response.read()
    finally:
        stop_process(process)
