"""
The shipped unit, C{systemd/signaling.service}, run by a real systemd.

systemd boots as PID 1 of its own PID, mount, UTS and IPC namespaces: the
machine's network is shared (so the test reaches the unit's C{tls:8443} and
metrics port on loopback), while everything it writes lands in private
mounts: C{/opt} (where the unit expects the virtualenv), an overlay on
C{/etc} (for C{/etc/signaling/tls}), C{/run}, C{/tmp} and C{/var/tmp}. The
unit is used as shipped, with one drop-in: C{DefaultDependencies=no}, so
that starting it does not pull in C{sysinit.target}, whose services (tmpfiles,
sysctl, udev) would act on this machine rather than on a VM of its own.
Killing that PID 1 ends every process in its namespace.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import ssl
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import orjson
import pytest
import trustme
import websocket

from .realsockets import ROOT, build_wheel

SYSTEMD = Path("/lib/systemd/systemd")
# The interpreter an operator's "python3 -m venv" uses: a system one, since
# the unit's ProtectHome= hides anything under /root or /home.
SYSTEM_PYTHON = Path("/usr/bin/python3")

BOOT = r"""
set -euo pipefail
mount --make-rprivate /
mount -t tmpfs -o mode=0755 opt /opt
mkdir -p /opt/stage /opt/overlay /opt/signaling/dependencies
mount --bind -o ro "$STAGE" /opt/stage
mount --bind -o ro "$DEPENDENCIES" /opt/signaling/dependencies
"$SYSTEM_PYTHON" -m venv --without-pip /opt/signaling/.venv
site=$(/opt/signaling/.venv/bin/python -c \
    "import sysconfig; print(sysconfig.get_path('purelib'))")
echo /opt/signaling/dependencies > "$site/test-dependencies.pth"
"$TEST_PYTHON" -m pip --python /opt/signaling/.venv/bin/python install \
    --quiet --no-deps /opt/stage/*.whl
printf '#!/opt/signaling/.venv/bin/python\nimport sys\nfrom twisted.scripts.twistd import run\nsys.exit(run())\n' \
    > /opt/signaling/.venv/bin/twistd
chmod -R a+rX /opt/signaling/.venv
chmod 0755 /opt/signaling /opt/signaling/.venv/bin/twistd
mkdir -p /opt/overlay/etc /opt/overlay/work
mount -t overlay etc -o lowerdir=/etc,upperdir=/opt/overlay/etc,workdir=/opt/overlay/work /etc
mkdir -p /etc/signaling/tls
install -m 0600 /opt/stage/cert.pem /opt/stage/key.pem /etc/signaling/tls/
mount -t tmpfs -o mode=1777 tmp /tmp
mount -t tmpfs -o mode=1777 tmp /var/tmp
mount -t tmpfs -o mode=0755 run /run
mkdir -p /run/systemd/system/signaling.service.d
cp /opt/stage/signaling.service /run/systemd/system/
printf '[Unit]\nDefaultDependencies=no\n[Service]\nStandardOutput=append:/run/signaling.log\n' \
    > /run/systemd/system/signaling.service.d/test.conf
printf '[Unit]\nDescription=nothing but the unit under test\n' \
    > /run/systemd/system/idle.target
# Private from the machine (above), shared within: systemd moves the
# credentials it mounts for a service in from a mount namespace of its own.
mount --make-rshared /
exec "$SYSTEMD" --system --unit=idle.target
"""


class Systemd:
    """
    A systemd running as PID 1 of its own namespaces; C{pid} as this
    machine sees it.
    """

    def __init__(self, pid: int, log: Path) -> None:
        self.pid = pid
        self.log = log

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-p", "systemctl", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def service_log(self) -> str:
        try:
            return Path(f"/proc/{self.pid}/root/run/signaling.log").read_text()
        except OSError as error:
            return f"(no log: {error})"

    def show(self, unit: str, *names: str) -> dict[str, str]:
        out = self.ctl("show", unit, *(f"--property={name}" for name in names))
        return dict(line.split("=", 1) for line in out.stdout.splitlines())


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(child) for child in text.split()]


@pytest.fixture(scope="module")
def credentials(tmp_path_factory):
    """
    A stage directory holding the wheel of this tree, the unit and a
    certificate for 127.0.0.1; the path of the CA that issued it.
    """
    stage = tmp_path_factory.mktemp("systemd-stage")
    build_wheel(stage)
    shutil.copy(ROOT / "systemd" / "signaling.service", stage / "signaling.service")
    authority = trustme.CA()
    issued = authority.issue_cert("localhost", "127.0.0.1")
    (stage / "cert.pem").write_bytes(
        b"".join(blob.bytes() for blob in issued.cert_chain_pems)
    )
    (stage / "key.pem").write_bytes(issued.private_key_pem.bytes())
    ca = stage.parent / "systemd-ca.pem"
    authority.cert_pem.write_to_path(str(ca))
    return stage, str(ca)


@pytest.fixture(scope="module")
def systemd(credentials, tmp_path_factory):
    stage, _ = credentials
    script = tmp_path_factory.mktemp("systemd-boot") / "boot.sh"
    script.write_text(BOOT)
    log = script.with_name("boot.log")
    environment = dict(
        os.environ,
        STAGE=str(stage),
        DEPENDENCIES=sysconfig.get_path("purelib"),
        SYSTEM_PYTHON=str(SYSTEM_PYTHON),
        TEST_PYTHON=sys.executable,
        SYSTEMD=str(SYSTEMD),
    )
    with log.open("wb") as output:
        unshare = subprocess.Popen(
            [
                "unshare",
                "--pid",
                "--fork",
                "--mount",
                "--mount-proc",
                "--uts",
                "--ipc",
                "bash",
                str(script),
            ],
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    pid = None
    try:
        deadline = time.monotonic() + 60
        state = ""
        while state not in ("running", "degraded"):
            assert unshare.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
            if pid is None:
                [pid] = children(unshare.pid) or [None]
                continue
            if Path(f"/proc/{pid}/comm").read_text().strip() != "systemd":
                continue
            manager = Systemd(pid, log)
            state = manager.ctl("is-system-running", timeout=10).stdout.strip()
        yield manager
    finally:
        # PID 1 of a namespace takes every process in it along.
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        else:
            unshare.kill()
        unshare.wait(10)


def https_status(path, port, ca):
    context = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            response = b""
            while chunk := tls.recv(65536):
                response += chunk
    return response


def metrics():
    with socket.create_connection(("127.0.0.1", 9100), timeout=5) as plain:
        plain.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        response = b""
        while chunk := plain.recv(65536):
            response += chunk
    return response.decode()


def close_code(client):
    while True:
        opcode, data = client.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return int.from_bytes(data[:2], "big")


def test_the_shipped_unit_starts_reloads_and_drains(systemd, credentials):
    """
    C{systemctl start} returns once the server said READY=1 on C{tls:8443}
    with the credentials systemd handed it; C{systemctl reload} keeps the
    process and its connections; C{systemctl stop} tells a native peer to
    reconnect elsewhere, closes it with 1001, and ends the unit cleanly
    (no SIGKILL), well inside C{TimeoutStopSec}.
    """
    _, ca = credentials
    started = systemd.ctl("start", "signaling.service", timeout=90)
    assert started.returncode == 0, started.stderr + systemd.service_log()
    unit = systemd.show(
        "signaling.service",
        "ActiveState",
        "SubState",
        "MainPID",
        "Type",
        "StatusErrno",
        "WatchdogTimestampMonotonic",
    )
    assert (unit["ActiveState"], unit["SubState"], unit["Type"]) == (
        "active",
        "running",
        "notify",
    )
    # WATCHDOG=1 is sent as soon as the server is ready.
    assert int(unit["WatchdogTimestampMonotonic"]) > 0
    main_pid = unit["MainPID"]

    assert https_status("/health", 8443, ca).startswith(b"HTTP/1.1 200 OK")
    client = websocket.create_connection(
        "wss://127.0.0.1:8443/signal", sslopt={"ca_certs": ca}, timeout=5
    )
    try:
        assert orjson.loads(client.recv())["type"] == "welcome"
        client.send(orjson.dumps({"type": "join", "room": "r"}))
        assert orjson.loads(client.recv())["type"] == "joined"
        assert re.search(r"^signaling_peers(\{[^}]*\})? 1\.0$", metrics(), re.M)

        reloaded = systemd.ctl("reload", "signaling.service")
        assert reloaded.returncode == 0, reloaded.stderr
        assert systemd.show("signaling.service", "MainPID")["MainPID"] == main_pid
        client.send(orjson.dumps({"type": "leave", "room": "r"}))
        assert orjson.loads(client.recv())["type"] == "left"
        # The server re-read the certificate: new connections still verify.
        assert https_status("/health", 8443, ca).startswith(b"HTTP/1.1 200 OK")

        stopped = systemd.ctl("stop", "--no-block", "signaling.service")
        assert stopped.returncode == 0, stopped.stderr
        message = orjson.loads(client.recv())
        assert (message["type"], message["reason"]) == ("reconnect", "going-away")
        assert close_code(client) == 1001
    finally:
        client.close()
    deadline = time.monotonic() + 30
    while (state := systemd.show("signaling.service", "ActiveState", "Result"))[
        "ActiveState"
    ] != "inactive":
        assert time.monotonic() < deadline, state
        time.sleep(0.1)
    assert state["Result"] == "success"
