"""
The benchmark: our server against the naive relay (and PeerJS server when
Node is present), driven by the Node load generator on the other core.

Run it with C{make bench} (quick) or C{make bench BENCH_ARGS=--full}; see
docs/performance.rst. Each scenario starts a fresh server pinned to one core
with C{taskset}, runs C{bench/loadgen.js} pinned to the other, reads the
server's CPU time and RSS from C{/proc/PID}, prints one JSON line, and stops
both processes by PID. The last thing printed is the comparison table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

#: Extra environment for the servers (--server-env), e.g. to debug them.
SERVER_ENV: dict[str, str] = {}
#: Extra flags for the load generator's node (--node-flag), e.g. --trace-gc.
NODE_FLAGS: list[str] = []
#: Extra options for our server (--auth adds --auth required and a key).
SIGNALING_ARGS: list[str] = []
#: What our server's WebSocket URLs end with (--auth: a token).
SIGNALING_QUERY: dict[str, str] = {}
#: The HS256 secret of --auth runs.
BENCH_SECRET = "the benchmark's JWT secret, long enough for HS256"

SCENARIOS = ("relay", "rate", "mesh", "connections", "churn", "storm")
#: Scenarios a server without rooms (PeerJS) can run.
ROOMLESS_SCENARIOS = ("relay", "rate", "connections", "storm")
#: The scenarios run with y-webrtc clients (against its bin/server.js too).
YWEBRTC_SCENARIOS = ("relay", "rate")
#: Our server in several processes: "cluster" is two --redis nodes with each
#: pair's ends on different nodes; "workers2"/"workers1" are --workers 2 and
#: --workers 1 under the same load (ends wherever the kernel puts them).
#: Their CPU is that of every process: nodes, parent and redis-server.
MULTI_PROCESS = ("cluster", "workers2", "workers1")
MULTI_PROCESS_SCENARIOS = ("relay", "rate")

QUICK = {
    "duration": 3,
    "warmup": 1,
    "pairs": 50,
    "rate": 10000,
    "rooms": 25,
    "connections": 2000,
    "cycles": 1000,
    "settle_cycles": 300,
}
FULL = {
    "duration": 10,
    "warmup": 2,
    "pairs": 50,
    "rate": 15000,
    "rooms": 100,
    "connections": 19000,
    "cycles": 10000,
    "settle_cycles": 2000,
}


def _time_wait_sockets() -> int:
    """
    How many TCP sockets of this machine are in TIME_WAIT (Linux's /proc).
    """
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines, None)
                count += sum(1 for line in lines if line.split(None, 4)[3] == "06")
        except OSError:
            pass
    return count


def _wait_for_time_wait(most: int = 5000, patience: float = 120) -> None:
    """
    Wait (up to C{patience} seconds) until earlier runs' sockets have left
    TIME_WAIT: a storm started with 100,000 of them showed stretches of
    seconds with no join, for every server.
    """
    deadline = time.monotonic() + patience
    while _time_wait_sockets() > most and time.monotonic() < deadline:
        time.sleep(2)


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _pinned(cpu: int | None, argv: list[str]) -> list[str]:
    if cpu is None:
        return argv
    return ["taskset", "-c", str(cpu), *argv]


def _cpus() -> tuple[int | None, int | None]:
    """
    The cores for the server and the load generator, or no pinning.
    """
    if shutil.which("taskset") is None:
        return None, None
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    return available[0], available[1]


def proc_figures(pid: int) -> dict[str, float]:
    """
    CPU seconds (user + system) and RSS bytes of process C{pid}.
    """
    with open(f"/proc/{pid}/stat") as stat_file:
        fields = stat_file.read().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of proc(5), counted after the ")" that ends comm.
    user, system = int(fields[11]) / TICKS, int(fields[12]) / TICKS
    cpu = user + system
    rss = int(fields[21]) * PAGE
    try:
        with open(f"/proc/{pid}/schedstat") as schedstat_file:
            # Time spent runnable but waiting for the core: other work.
            waited = int(schedstat_file.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        waited = 0.0
    return {
        "cpu": cpu,
        "system": system,
        "rss": rss,
        "wall": time.monotonic(),
        "waited": waited,
    }


class Server:
    """
    One server under test in a subprocess, stopped by its PID.
    """

    PATTERN = re.compile(r"listening on ws://127\.0\.0\.1:(\d+)")

    def __init__(self, name: str, cpu: int | None, label: str) -> None:
        self.name = name
        self.cpu = cpu
        self.label = label
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        #: More arguments (the cluster's --redis and --node-id).
        self.extra: list[str] = []

    def argv(self) -> list[str]:
        python = str(Path(sys.executable))
        if self.name in ("workers2", "workers1"):
            return [*Server("signaling", None, "").argv(), "--workers", self.name[-1]]
        if self.name == "signaling":
            twistd = str(Path(sys.executable).with_name("twistd"))
            return [
                twistd,
                "-n",
                "--pidfile=",
                "signaling",
                "--port",
                "tcp:0:interface=127.0.0.1",
                "--ping-interval",
                "0",
                "--max-peers-per-room",
                "0",
                "--max-rooms-per-peer",
                "0",
                # The load generator sends far faster than any signaling
                # client; the per-connection rate limit would cap it.
                "--max-message-rate",
                "0",
                # Every peer of the load generator comes from one address.
                "--max-connections-per-address",
                "0",
                "--max-new-connections-per-address",
                "0",
                # Idle peers of the connections scenario must not be swept.
                "--stale-timeout",
                "0",
                # PeerJS server runs with no such limit here either.
                "--peerjs-concurrent-limit",
                "1000000",
                *SIGNALING_ARGS,
            ]
        if self.name == "reference":
            return [python, str(BENCH / "reference_relay.py"), "--port", "0"]
        if self.name == "peerjs":
            return ["node", str(BENCH / "peerjs_server.js")]
        if self.name == "y-webrtc":
            return ["node", str(BENCH / "ywebrtc_server.js")]
        raise ValueError(self.name)

    def start(self, timeout: float = 20) -> str:
        RESULTS.mkdir(exist_ok=True)
        self.log_path = RESULTS / f"{self.label}.log"
        log_file = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            _pinned(self.cpu, [*self.argv(), *self.extra]),
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_raise_fd_limit,
            env={**os.environ, **SERVER_ENV},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.PATTERN.search(self.log_path.read_text(errors="replace"))
            if found:
                self.port = int(found.group(1))
                # Let start-up work (imports, gc.freeze) finish before measuring.
                time.sleep(0.3)
                return f"ws://127.0.0.1:{self.port}"
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start:\n{self.log_path.read_text()}")

    def figures(self) -> dict[str, float]:
        if self.name in ("workers2", "workers1"):
            return summed_figures([self.process.pid, *descendants(self.process.pid)])
        return proc_figures(self.process.pid)

    def stats(self) -> dict[str, Any] | None:
        if self.name == "peerjs":
            return None
        url = f"http://127.0.0.1:{self.port}/api/stats"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
        return {"peers": body["peers"]["total"], "rooms": body["rooms"]["total"]}

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)


def descendants(pid: int) -> list[int]:
    """
    Every process below C{pid} (workers, a private redis-server).
    """
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found.append(int(child))
            found.extend(descendants(int(child)))
    return found


def summed_figures(pids: list[int]) -> dict[str, float]:
    total = {"cpu": 0.0, "system": 0.0, "rss": 0.0, "waited": 0.0}
    for pid in pids:
        try:
            figures = proc_figures(pid)
        except OSError:
            continue
        for key in total:
            total[key] += figures[key]
    total["wall"] = time.monotonic()
    return total


class ClusterServers:
    """
    Two signaling nodes on one private redis-server (unix socket), pinned
    to the server's core; the same interface as L{Server}.
    """

    def __init__(self, cpu: int | None, label: str) -> None:
        import tempfile

        self.cpu = cpu
        self.label = label
        self.name = "cluster"
        self.directory = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        self.redis: subprocess.Popen | None = None
        self.nodes = [Server("signaling", cpu, f"{label}-node{i}") for i in (1, 2)]
        self.url_b: str | None = None

    def start(self) -> str:
        sock = self.directory / "redis.sock"
        self.redis = subprocess.Popen(
            _pinned(
                self.cpu,
                [
                    shutil.which("redis-server") or "redis-server",
                    "--port",
                    "0",
                    "--unixsocket",
                    str(sock),
                    "--unixsocketperm",
                    "700",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.directory),
                ],
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        extra = ["--redis", f"unix://{sock}"]
        urls = []
        for index, node in enumerate(self.nodes):
            node.extra = [*extra, "--node-id", f"bench{index + 1}"]
            urls.append(node.start())
        self.url_b = urls[1]
        self.port = self.nodes[0].port
        self.process = self.nodes[0].process
        return urls[0]

    def figures(self) -> dict[str, float]:
        pids = [node.process.pid for node in self.nodes]
        if self.redis is not None:
            pids.append(self.redis.pid)
        return summed_figures(pids)

    def stats(self) -> dict[str, Any] | None:
        return self.nodes[0].stats()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self.redis is not None and self.redis.poll() is None:
            os.kill(self.redis.pid, signal.SIGTERM)
            self.redis.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)


def run_loadgen(
    server: Server,
    url: str,
    cpu: int | None,
    settings: dict[str, Any],
    on_mark: Callable[[str], None] = lambda name: None,
) -> dict[str, Any]:
    """
    Run one scenario against C{server}; read its /proc figures at each mark.

    :param on_mark: Called with each mark's name once its figures are read,
        before the generator goes on.
    """
    timeout = settings["timeout"]
    generator = subprocess.Popen(
        _pinned(
            cpu,
            [
                "node",
                *NODE_FLAGS,
                str(BENCH / "loadgen.js"),
                json.dumps(
                    {
                        "url": url,
                        **settings,
                        **(SIGNALING_QUERY if server.name == "signaling" else {}),
                    }
                ),
            ],
        ),
        cwd=BENCH,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_raise_fd_limit,
    )
    marks: dict[str, dict[str, Any]] = {}
    result: dict[str, Any] | None = None
    # Whatever else the generator prints (e.g. NODE_OPTIONS=--trace-gc).
    chatter = open(RESULTS / f"{server.label}.loadgen.log", "w")
    error = None
    started = time.monotonic()
    try:
        for line in generator.stdout:
            if time.monotonic() - started > timeout + 10:
                error = "timed out"
                break
            line = line.strip()
            if not line.startswith("{"):
                chatter.write(line + "\n")
                continue
            message = json.loads(line)
            if "mark" in message:
                name = message["mark"]
                figures = server.figures()
                generator_cpu = proc_figures(generator.pid)["cpu"]
                if name in ("done",):
                    figures["stats"] = _settled_stats(server)
                elif name in ("settled", "start", "connected"):
                    figures["stats"] = server.stats() if name == "settled" else None
                marks[name] = {**message, **figures, "generator_cpu": generator_cpu}
                on_mark(name)
                generator.stdin.write("\n")
                generator.stdin.flush()
            elif "result" in message:
                result = message["result"]
            elif "error" in message:
                error = message["error"]
    finally:
        if generator.poll() is None:
            try:
                generator.wait(timeout=max(1, timeout - (time.monotonic() - started)))
            except subprocess.TimeoutExpired:
                os.kill(generator.pid, signal.SIGKILL)
                generator.wait(5)
    chatter.close()
    if result is None:
        stderr = generator.stderr.read()
        raise RuntimeError(f"load generator failed: {error or stderr[-2000:]}")
    return {"result": result, "marks": marks}


def _settled_stats(server: Server) -> dict[str, Any] | None:
    # Closes may still be in flight; give the hub up to 5 s to empty.
    deadline = time.monotonic() + 5
    stats = server.stats()
    while stats and (stats["peers"] or stats["rooms"]) and time.monotonic() < deadline:
        time.sleep(0.1)
        stats = server.stats()
    return stats


def _waiting(start: dict[str, Any], end: dict[str, Any]) -> float:
    """
    The share of the time between two marks the server was ready to run
    while another process had its core.
    """
    return round(
        (end["waited"] - start["waited"]) / max(end["wall"] - start["wall"], 1e-9), 3
    )


def _generator_busy(start: dict[str, Any], end: dict[str, Any]) -> float:
    """
    The share of the time between two marks the load generator was on its
    core: near 1, and it, not the server, may be setting the pace.
    """
    wall = max(end["wall"] - start["wall"], 1e-9)
    return round((end["generator_cpu"] - start["generator_cpu"]) / wall, 3)


def _cpu_ms_per_peer(
    start: dict[str, Any], end: dict[str, Any], peers: int
) -> float | None:
    """
    The server's CPU between two marks, in ms per peer.
    """
    return round((end["cpu"] - start["cpu"]) * 1000 / peers, 3) if peers else None


def _system_share(start: dict[str, Any], end: dict[str, Any]) -> float | None:
    """
    The share of the server's CPU between two marks spent in the kernel
    (socket calls, TCP): what no change to the server's Python can save.
    """
    if "system" not in start or "system" not in end:
        return None
    cpu = end["cpu"] - start["cpu"]
    return round((end["system"] - start["system"]) / cpu, 3) if cpu else None


#: The marks between which each scenario's figures are taken, and so its
#: profile: the rest of the run (setting up, closing) is left out.
MEASURED_SPANS = {
    "connections": ("start", "connected"),
    "storm": ("connected", "recovered"),
    "relay": ("start", "end"),
    "rate": ("start", "end"),
    "mesh": ("start", "end"),
    "churn": ("settled", "done"),
}


class Profiler:
    """
    py-spy sampling one server process into a raw (collapsed) profile,
    over the measured span of a scenario.
    """

    def __init__(self, pid: int, output: Path, rate: int) -> None:
        self.pid = pid
        self.output = output
        self.rate = rate
        self.process: subprocess.Popen | None = None

    def span(self, scenario: str) -> Callable[[str], None]:
        """
        The C{on_mark} callback that samples from the span's first mark to
        its last (the whole run for a scenario without one).
        """
        first, last = MEASURED_SPANS.get(scenario, (None, None))
        if first is None:
            self.start()

        def on_mark(name: str) -> None:
            if name == first:
                self.start()
            elif name == last:
                self.stop()

        return on_mark

    def start(self) -> None:
        if self.process is not None:
            return
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("py-spy")),
                "record",
                "--nonblocking",
                "--pid",
                str(self.pid),
                "--rate",
                str(self.rate),
                "--format",
                "raw",
                "--output",
                str(self.output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Sampling starts once py-spy has found the interpreter.
        time.sleep(0.3)

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            # py-spy writes its output when interrupted.
            os.kill(process.pid, signal.SIGINT)
            process.wait(30)


def measure(
    name: str,
    dialect: str,
    scenario: str,
    settings: dict[str, Any],
    cpus,
    profile: int = 0,
) -> dict[str, Any]:
    """
    One scenario against a fresh server; the JSON line's content.

    :param profile: Sample the server with py-spy into bench/results/, so
        many times a second (0: not at all).
    """
    label = f"{name}-{dialect}-{scenario}"
    server = (
        ClusterServers(cpus[0], label)
        if name == "cluster"
        else Server(name, cpus[0], label)
    )
    url = server.start()
    if dialect == "peerjs" and name != "peerjs":
        # Our PeerJS dialect is mounted at --peerjs-path (default /peerjs);
        # the PeerJS server's path is "/".
        url += "/peerjs"
    if dialect == "ywebrtc" and name != "y-webrtc":
        # y-webrtc's server takes any path; ours is at --y-webrtc-path.
        url += "/y-webrtc"
    if name == "cluster":
        settings = {**settings, "url_b": server.url_b}
    profiler = None
    try:
        idle = server.figures()
        if profile and name not in ("peerjs", *MULTI_PROCESS):
            profiler = Profiler(
                server.process.pid, RESULTS / f"{label}.profile.txt", profile
            )
        run = run_loadgen(
            server,
            url,
            cpus[1],
            {**settings, "dialect": dialect, "scenario": scenario},
            on_mark=profiler.span(scenario) if profiler else lambda name: None,
        )
    finally:
        if profiler is not None:
            profiler.stop()
        server.stop()
    result = run["result"]
    marks = run["marks"]
    line: dict[str, Any] = {
        "scenario": scenario,
        "server": name,
        "dialect": dialect,
        **result,
    }
    if scenario in ("relay", "rate", "mesh"):
        start, end = marks["start"], marks["end"]
        cpu = end["cpu"] - start["cpu"]
        messages = end.get("messages") or 0
        line["server_cpu_s"] = round(cpu, 3)
        wall = max(end["wall"] - start["wall"], 1e-9)
        line["server_cpu_busy"] = round(cpu / wall, 3)
        # The share of the run the server was ready but another process had
        # its core: a run with much of it was disturbed.
        line["server_waiting"] = round((end["waited"] - start["waited"]) / wall, 3)
        line["generator_cpu_busy"] = _generator_busy(start, end)
        line["server_cpu_us_per_msg"] = (
            round(cpu * 1e6 / messages, 2) if messages else None
        )
        line["server_rss_mb"] = round(end["rss"] / 2**20, 1)
    elif scenario == "connections":
        start, connected = marks["start"], marks["connected"]
        joined = connected.get("peers") or 0
        line["server_waiting"] = _waiting(start, connected)
        line["generator_cpu_busy"] = _generator_busy(start, connected)
        line["server_rss_idle_mb"] = round(start["rss"] / 2**20, 1)
        line["server_rss_connected_mb"] = round(connected["rss"] / 2**20, 1)
        line["rss_per_peer_kb"] = (
            round((connected["rss"] - start["rss"]) / joined / 1024, 2)
            if joined
            else None
        )
        # Taking the peers in (and half a second idle after).
        line["server_cpu_ms_per_peer"] = _cpu_ms_per_peer(start, connected, joined)
        line["server_system_share"] = _system_share(start, connected)
    elif scenario == "storm":
        connected, recovered = marks["connected"], marks["recovered"]
        back = recovered.get("peers") or 0
        line["server_waiting"] = _waiting(connected, recovered)
        line["generator_cpu_busy"] = _generator_busy(connected, recovered)
        # The mass close and every reconnection, per peer back.
        line["server_cpu_ms_per_peer"] = _cpu_ms_per_peer(connected, recovered, back)
    elif scenario == "churn":
        settled, done = marks["settled"], marks["done"]
        line["rss_settled_mb"] = round(settled["rss"] / 2**20, 2)
        line["rss_after_mb"] = round(done["rss"] / 2**20, 2)
        line["rss_growth"] = round(done["rss"] / settled["rss"] - 1, 4)
        line["hub_after"] = done.get("stats")
    line["server_rss_start_mb"] = round(idle["rss"] / 2**20, 1)
    return line


# ---------------------------------------------------------------- the table

#: The rows of the table: (scenario, metric, better, target). A target is a
#: ratio to the reference relay in the same run, or ("value", LIMIT) for a
#: limit on our own figure.
ROWS = [
    ("relay", "msg_per_s", "higher", 1.3),
    ("relay", "server_cpu_us_per_msg", "lower", 0.77),
    ("relay", "latency_ms.p50", "lower", None),
    ("relay", "latency_ms.p99", "lower", 1.0),
    ("rate", "delivered_fraction", "higher", None),
    ("rate", "latency_ms.p50", "lower", None),
    ("rate", "latency_ms.p99", "lower", None),
    ("rate", "server_cpu_us_per_msg", "lower", None),
    ("mesh", "total_ms", "lower", None),
    ("mesh", "signal_ms", "lower", None),
    ("connections", "joined", "higher", None),
    ("connections", "joins_per_s", "higher", None),
    ("connections", "rss_per_peer_kb", "lower", 1.05),
    ("connections", "longest_gap_ms", "lower", ("value", 50)),
    ("connections", "server_cpu_ms_per_peer", "lower", ("value", 0.2)),
    ("storm", "rejoined", "higher", None),
    ("storm", "recover_ms", "lower", None),
    ("storm", "longest_gap_ms", "lower", ("value", 50)),
    ("storm", "server_cpu_ms_per_peer", "lower", None),
    ("churn", "cycles", "higher", None),
    ("churn", "cycles_per_s", "higher", None),
    ("churn", "rss_growth", "lower", ("value", 0.05)),
    ("churn", "hub_after.peers", "lower", ("value", 0)),
    ("churn", "hub_after.rooms", "lower", ("value", 0)),
]


def _metric(line: dict[str, Any] | None, path: str) -> Any:
    value: Any = line
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return "/".join(str(v) for v in value.values())
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def table(lines: list[dict[str, Any]]) -> str:
    best: dict[tuple[str, str, str], dict[str, Any]] = {}
    for line in lines:
        key = (line["scenario"], line["server"], line["dialect"])
        previous = best.get(key)
        # Of repeated runs keep the one with the most throughput (the least
        # disturbed by other work on the machine).
        if previous is None or _score(line) > _score(previous):
            best[key] = line
    dialects = sorted(
        {
            line["dialect"]
            for line in lines
            if line["dialect"] not in ("peerjs", "ywebrtc")
            and line["server"] != "peerjs"
        }
    )
    header = f"{'scenario':<12} {'dialect':<8} {'metric':<24} {'signaling':>11} {'reference':>11} {'ratio':>7} {'target':>11} {'peerjs':>10}"
    out = [header, "-" * len(header)]
    for scenario, metric, better, target in ROWS:
        for dialect in dialects:
            ours = best.get((scenario, "signaling", dialect))
            theirs = best.get((scenario, "reference", dialect))
            if ours is None and theirs is None:
                continue
            a, b = _metric(ours, metric), _metric(theirs, metric)
            ratio = _ratio(a, b)
            verdict = ""
            sign = "≥" if better == "higher" else "≤"
            if isinstance(target, tuple):
                limit = target[1]
                if isinstance(a, (int, float)):
                    met = a >= limit if better == "higher" else a <= limit
                    verdict = f"{sign}{limit} {'ok' if met else 'MISS'}"
            elif target is not None and ratio is not None:
                met = ratio >= target if better == "higher" else ratio <= target
                verdict = f"{sign}{target}x {'ok' if met else 'MISS'}"
            peer = _metric(best.get((scenario, "peerjs", "peerjs")), metric)
            out.append(
                f"{scenario:<12} {dialect:<8} {metric:<24} {_format(a):>11} {_format(b):>11} "
                f"{_format(round(ratio, 3)) if ratio is not None else '-':>7} {verdict:>11} {_format(peer):>10}"
            )
    return "\n".join(out)


#: Of the multi-process runs against the in-process one, native dialect:
#: (scenario, metric, server, goal) with goal (kind, limit) where kind is
#: "+" (at most limit more) or "x" (at most limit times).
MULTI_ROWS = [
    ("relay", "msg_per_s", "cluster", None),
    ("relay", "latency_ms.p50", "cluster", None),
    ("relay", "latency_ms.p99", "cluster", ("+", 2.0)),
    ("relay", "server_cpu_us_per_msg", "cluster", ("x", 2.5)),
    ("rate", "delivered_fraction", "cluster", None),
    ("rate", "latency_ms.p50", "cluster", None),
    ("rate", "latency_ms.p99", "cluster", ("+", 2.0)),
    ("rate", "server_cpu_us_per_msg", "cluster", ("x", 2.5)),
    ("relay", "msg_per_s", "workers2", None),
    ("relay", "msg_per_s", "workers1", None),
    ("relay", "server_cpu_us_per_msg", "workers2", None),
    ("relay", "server_cpu_us_per_msg", "workers1", None),
    ("rate", "latency_ms.p99", "workers2", None),
    ("rate", "latency_ms.p99", "workers1", None),
]


def multi_process_table(lines: list[dict[str, Any]]) -> str:
    """
    The cross-node and --workers figures beside the in-process ones of the
    same run (native dialect); CPU counts every process of the server.
    """
    best = _best_by_server(lines, "native")
    if not any(server in MULTI_PROCESS for _, server in best):
        return ""
    header = f"{'scenario':<8} {'metric':<24} {'server':<9} {'value':>9} {'in-proc':>9} {'goal':>14}"
    out = [header, "-" * len(header)]
    for scenario, metric, server, goal in MULTI_ROWS:
        ours = _metric(best.get((scenario, server)), metric)
        single = _metric(best.get((scenario, "signaling")), metric)
        if ours is None:
            continue
        verdict = ""
        if (
            goal is not None
            and isinstance(ours, (int, float))
            and isinstance(single, (int, float))
        ):
            kind, limit = goal
            met = ours <= single + limit if kind == "+" else ours <= single * limit
            verdict = f"{kind}{limit} {'ok' if met else 'MISS'}"
        out.append(
            f"{scenario:<8} {metric:<24} {server:<9} {_format(ours):>9} {_format(single):>9} {verdict:>14}"
        )
    return "\n".join(out)


#: Our PeerJS dialect against the PeerJS server in the same run:
#: (scenario, metric, our server, goal ratio or None).
PEERJS_ROWS = [
    ("relay", "msg_per_s", "signaling", 0.8),
    ("relay", "msg_per_s", "workers2", 1.0),
    ("relay", "msg_per_s", "workers1", None),
    ("relay", "server_cpu_us_per_msg", "signaling", None),
    ("relay", "server_cpu_us_per_msg", "workers2", None),
    ("relay", "latency_ms.p50", "signaling", None),
    ("relay", "latency_ms.p99", "signaling", None),
    ("rate", "delivered_fraction", "signaling", None),
    ("rate", "latency_ms.p99", "signaling", None),
    ("rate", "server_cpu_us_per_msg", "signaling", None),
    ("connections", "joins_per_s", "signaling", 1.0),
    ("connections", "server_cpu_ms_per_peer", "signaling", None),
    ("connections", "rss_per_peer_kb", "signaling", None),
    ("storm", "recover_ms", "signaling", None),
    ("storm", "longest_gap_ms", "signaling", None),
]


def peerjs_table(lines: list[dict[str, Any]]) -> str:
    """
    Our PeerJS dialect (one process, --workers 2, --workers 1) beside the
    PeerJS server under the same load; ratio = ours / PeerJS server's.
    """
    best = _best_by_server(lines, "peerjs")
    if not any(server != "peerjs" for _, server in best):
        return ""
    header = f"{'scenario':<8} {'metric':<24} {'server':<9} {'value':>9} {'peerjs':>9} {'ratio':>7} {'goal':>10}"
    out = [header, "-" * len(header)]
    for scenario, metric, server, goal in PEERJS_ROWS:
        ours = _metric(best.get((scenario, server)), metric)
        theirs = _metric(best.get((scenario, "peerjs")), metric)
        if ours is None:
            continue
        ratio = _ratio(ours, theirs)
        verdict = ""
        if goal is not None and ratio is not None:
            verdict = f"≥{goal}x {'ok' if ratio >= goal else 'MISS'}"
        out.append(
            f"{scenario:<8} {metric:<24} {server:<9} {_format(ours):>9} {_format(theirs):>9} "
            f"{_format(round(ratio, 3)) if ratio is not None else '-':>7} {verdict:>10}"
        )
    return "\n".join(out)


def ywebrtc_table(lines: list[dict[str, Any]]) -> str:
    """
    Our y-webrtc dialect beside y-webrtc's own server (bin/server.js) under
    the same load; ratio = ours / theirs.
    """
    best = _best_by_server(lines, "ywebrtc")
    header = f"{'scenario':<8} {'metric':<24} {'signaling':>10} {'y-webrtc':>10} {'ratio':>7}"
    out = [header, "-" * len(header)]
    for scenario, metric in (
        ("relay", "msg_per_s"),
        ("relay", "server_cpu_us_per_msg"),
        ("relay", "latency_ms.p99"),
        ("rate", "delivered_fraction"),
        ("rate", "server_cpu_us_per_msg"),
    ):
        ours = _metric(best.get((scenario, "signaling")), metric)
        theirs = _metric(best.get((scenario, "y-webrtc")), metric)
        if ours is None and theirs is None:
            continue
        ratio = _ratio(ours, theirs)
        out.append(
            f"{scenario:<8} {metric:<24} {_format(ours):>10} {_format(theirs):>10} "
            f"{_format(round(ratio, 3)) if ratio is not None else '-':>7}"
        )
    return "\n".join(out) if len(out) > 2 else ""


def _ratio(ours: Any, theirs: Any) -> float | None:
    """
    C{ours / theirs} when both are numbers and C{theirs} is not 0.
    """
    if isinstance(ours, (int, float)) and isinstance(theirs, (int, float)) and theirs:
        return ours / theirs
    return None


def _best_by_server(
    lines: list[dict[str, Any]], dialect: str
) -> dict[tuple[str, str], dict[str, Any]]:
    """
    Of the runs in C{dialect}, the best of each (scenario, server).
    """
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for line in lines:
        if line["dialect"] != dialect:
            continue
        key = (line["scenario"], line["server"])
        if key not in best or _score(line) > _score(best[key]):
            best[key] = line
    return best


def _score(line: dict[str, Any]) -> float:
    for key in ("msg_per_s", "delivered_fraction", "joins_per_s", "cycles_per_s"):
        if isinstance(line.get(key), (int, float)):
            return line[key]
    total = line.get("total_ms")
    return -total if isinstance(total, (int, float)) else 0


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                model = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": sys.version.split()[0],
        "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--full",
        action="store_true",
        help="the long run: 19,000 peers, 10,000 churn cycles, 10 s relays",
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument(
        "--servers", default="signaling,reference,peerjs,cluster,workers2,workers1"
    )
    parser.add_argument(
        "--dialects",
        default="native,topic,peerjs",
        help="our dialects to run (peerjs: relay, rate, connections and storm only, "
        "against the PeerJS server; ywebrtc: relay and rate only, against "
        "--servers signaling,y-webrtc)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of each relay, rate and connections scenario, round the "
        "servers in turn; the best of each is tabled",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the Python servers with py-spy (pip install py-spy) into "
        "bench/results/, over each scenario's measured span",
    )
    parser.add_argument(
        "--profile-rate",
        type=int,
        default=400,
        help="samples a second with --profile (400)",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment variable for the servers",
    )
    parser.add_argument(
        "--node-flag",
        action="append",
        default=[],
        help="flag for the load generator's node, e.g. --node-flag=--trace-gc",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a load setting, e.g. --set pairs=100",
    )
    parser.add_argument(
        "--auth",
        action="store_true",
        help="run our server with --auth required; every peer presents a token (?token=)",
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="OPTION",
        help="an option for our one-process server, e.g."
        " --server-arg=--metrics-port=tcp:0:interface=127.0.0.1",
    )
    options = parser.parse_args(argv)
    SIGNALING_ARGS.extend(options.server_arg)
    if options.auth:
        import jwt

        SIGNALING_ARGS.extend(["--auth", "required", "--jwt-secret", BENCH_SECRET])
        token = jwt.encode(
            {"sub": "bench", "exp": int(time.time()) + 86400},
            BENCH_SECRET,
            algorithm="HS256",
        )
        SIGNALING_QUERY["query"] = "?token=" + token

    _raise_fd_limit()
    NODE_FLAGS.extend(options.node_flag)
    for item in options.server_env:
        name, _, value = item.partition("=")
        SERVER_ENV[name] = value
    settings: dict[str, Any] = dict(FULL if options.full else QUICK)
    for item in options.set:
        name, _, value = item.partition("=")
        try:
            settings[name] = json.loads(value)
        except ValueError:
            # A word: --set client=quick
            settings[name] = value
    settings.setdefault("timeout", 180)
    cpus = _cpus()
    servers = [s for s in options.servers.split(",") if s]
    if "peerjs" in servers and shutil.which("node") is None:
        servers.remove("peerjs")
    if "y-webrtc" in servers and shutil.which("node") is None:
        servers.remove("y-webrtc")
    about = {
        "machine": {**machine(), "pinned": cpus[0] is not None},
        "settings": settings,
    }
    print(json.dumps(about), flush=True)
    RESULTS.mkdir(exist_ok=True)
    record = open(
        RESULTS / time.strftime("bench-%Y%m%dT%H%M%S.jsonl", time.gmtime()), "w"
    )
    record.write(json.dumps(about) + "\n")
    lines = []
    for scenario in options.scenarios.split(","):
        repeats = options.repeat if scenario in ("relay", "rate", "connections") else 1
        # Repeats go round the servers in turn, so a burst of other work on
        # the machine does not land on one server's runs only.
        for _ in range(repeats):
            for name in servers:
                if name == "peerjs":
                    if scenario not in ROOMLESS_SCENARIOS:
                        continue
                    dialects = ["peerjs"]
                elif name == "y-webrtc":
                    if scenario not in YWEBRTC_SCENARIOS:
                        continue
                    dialects = ["ywebrtc"]
                elif name in MULTI_PROCESS:
                    if scenario not in MULTI_PROCESS_SCENARIOS:
                        continue
                    dialects = ["native"]
                    if name != "cluster" and "peerjs" in options.dialects:
                        # The load generator's PeerJS peers all connect to
                        # one URL: under --workers the kernel spreads them.
                        dialects.append("peerjs")
                else:
                    dialects = [
                        d
                        for d in options.dialects.split(",")
                        if d not in ("peerjs", "ywebrtc")
                        # The naive relay speaks neither PeerJS nor y-webrtc.
                        or (
                            d == "peerjs"
                            and scenario in ROOMLESS_SCENARIOS
                            and name != "reference"
                        )
                        or (
                            d == "ywebrtc"
                            and scenario in YWEBRTC_SCENARIOS
                            and name == "signaling"
                        )
                    ]
                for dialect in dialects:
                    if scenario in ("connections", "storm"):
                        _wait_for_time_wait()
                    try:
                        line = measure(
                            name,
                            dialect,
                            scenario,
                            settings,
                            cpus,
                            options.profile_rate if options.profile else 0,
                        )
                    except Exception as error:
                        line = {
                            "scenario": scenario,
                            "server": name,
                            "dialect": dialect,
                            "error": str(error)[-500:],
                        }
                    print(json.dumps(line), flush=True)
                    record.write(json.dumps(line) + "\n")
                    lines.append(line)
    record.close()
    print()
    about_machine = about["machine"]
    print(
        f"{about_machine['date']}: {about_machine['cpus']} x {about_machine['cpu_model']}, "
        f"Python {about_machine['python']}, server and generator "
        f"{'on separate cores' if about_machine['pinned'] else 'NOT pinned'}; "
        f"ratio = signaling / reference (the naive relay, same run)"
    )
    print(table([line for line in lines if "error" not in line]))
    multi = multi_process_table([line for line in lines if "error" not in line])
    if multi:
        print()
        print(multi)
    peerjs = peerjs_table([line for line in lines if "error" not in line])
    if peerjs:
        print()
        print(peerjs)
    ywebrtc = ywebrtc_table([line for line in lines if "error" not in line])
    if ywebrtc:
        print()
        print(ywebrtc)
    return 0 if all("error" not in line for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
