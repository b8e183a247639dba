"""
C{--workers N} over a real C{twistd}: one port, worker processes on a
private C{redis-server}, all started and stopped by PID.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time

import websocket

from .realsockets import TWISTD, ROOT, TwistdServer
from .test_cluster_real import NativePeer, wait_for, wait_room
from .test_one_namespace_real import every_dialect_in_one_room


def start_workers(log_path, *args: str, env: dict | None = None) -> TwistdServer:
    server = TwistdServer(
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--ping-interval",
        "0",
        "--workers",
        "2",
        *args,
        env={"JWT_SECRET": "", **(env or {})},
    )
    server.start(log_path)
    server.base = server.urls[0].rsplit("/", 1)[0]
    server.http = server.base.replace("ws://", "http://")
    # Both workers have joined the cluster and listen.
    wait_for(lambda: server.log().count("joined the cluster as node") >= 2, timeout=10)
    return server


def worker_pids(server: TwistdServer) -> dict[str, int]:
    """
    The latest pid of each worker index, from the parent's log.
    """
    return {
        index: int(pid)
        for index, pid in re.findall(r"worker (\d+) started \(pid (\d+)", server.log())
    }


def private_redis_pid(server: TwistdServer) -> int:
    return int(
        re.search(
            r"private redis-server for the workers \(pid (\d+)\)", server.log()
        ).group(1)
    )


def node_of(server: TwistdServer, peer_id: str) -> str | None:
    """
    The node holding C{peer_id}, from the workers' private Redis.
    """
    path = re.search(
        r"joining the cluster at unix://(\S+) as node", server.log()
    ).group(1)
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(5)
        client.connect(path)
        key = b"signaling:peers"
        client.sendall(
            b"*3\r\n$4\r\nHGET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
            % (len(key), key, len(peer_id), peer_id.encode())
        )
        reply = client.recv(4096)
    if reply.startswith(b"$-1"):
        return None
    return reply.split(b"\r\n")[1].decode()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not alive: it is waiting for our wait().
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_every_dialect_over_two_workers(tmp_path):
    server = start_workers(tmp_path / "twistd.log")
    try:
        every_dialect_in_one_room(
            [server], settled=lambda count: wait_room([server], "lobby", count)
        )
    finally:
        server.stop()


def test_a_dead_worker_is_restarted_and_its_peers_announced_gone(tmp_path):
    """
    kill -9 of a worker: the peers it held are announced gone to the peers
    of the other worker, the parent starts it again, and stopping the parent
    stops every worker and the private Redis.
    """
    server = start_workers(tmp_path / "twistd.log")
    try:
        # Peers until both workers hold some (the kernel decides which).
        peers, held_by = [], set()
        # On a loaded machine one worker may win many accepts in a row: give
        # the other a moment between connections.
        while len(held_by) < 2 and len(peers) < 90:
            peers.append(NativePeer(server))
            held_by.add(
                wait_for(lambda: node_of(server, peers[-1].id)).rsplit("-w", 1)[1][0]
            )
            if len(held_by) < 2:
                time.sleep(0.02)
        known = {}
        for peer in peers:
            joined = peer.join("w")
            known[peer.id] = {member["id"] for member in joined["peers"]}
        wait_room([server], "w", len(peers))
        # Joins on two workers in quick succession: each peer ends up told
        # of every other once, in its join's list or in a notice.
        for peer in peers:
            peer.ws.settimeout(0.3)
            try:
                while True:
                    message = peer.next()
                    assert message["type"] == "peer-joined", message
                    assert message["peer"]["id"] not in known[peer.id], message
                    known[peer.id].add(message["peer"]["id"])
            except websocket.WebSocketTimeoutException:
                pass
            assert known[peer.id] == {other.id for other in peers} - {peer.id}
        before = worker_pids(server)
        os.kill(before["0"], signal.SIGKILL)
        survivors, dead, early = [], [], []
        for peer in peers:
            peer.ws.settimeout(1)
            try:
                received = peer.ws.recv()
            except websocket.WebSocketTimeoutException:
                survivors.append(peer)
            except (
                websocket.WebSocketConnectionClosedException,
                ConnectionError,
                OSError,
            ):
                dead.append(peer)
            else:
                if received:
                    survivors.append(peer)
                    early.append((peer, json.loads(received)))
                else:
                    # The worker's socket closed without a close frame.
                    dead.append(peer)
        assert survivors and dead, (len(survivors), len(dead))
        gone = {peer.id for peer in dead}
        told: dict[str, set] = {peer.id: set() for peer in survivors}
        for peer, message in early:
            assert message["type"] == "peer-left", message
            told[peer.id].add(message["peer"]["id"])
        for peer in survivors:
            peer.ws.settimeout(6)
            while told[peer.id] != gone:
                message = peer.next()
                assert message["type"] == "peer-left", message
                told[peer.id].add(message["peer"]["id"])
        wait_for(lambda: worker_pids(server)["0"] != before["0"], timeout=5)
        assert "worker 0 (node" in server.log() and "starting it again" in server.log()
        pids = [*worker_pids(server).values(), private_redis_pid(server)]
        for peer in survivors:
            peer.close()
    finally:
        server.stop()
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=5)


def test_workers_stop_when_the_parent_is_killed(tmp_path):
    server = start_workers(tmp_path / "twistd.log")
    pids = [*worker_pids(server).values(), private_redis_pid(server)]
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()
    try:
        wait_for(lambda: not any(alive(pid) for pid in pids), timeout=5)
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_workers_need_a_redis(tmp_path):
    """
    --workers with no --redis and no redis-server installed: one clear line.
    """
    done = subprocess.run(
        [
            TWISTD,
            "-n",
            "--pidfile=",
            "signaling",
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--workers",
            "2",
        ],
        cwd=ROOT,
        env={**os.environ, "PATH": str(tmp_path)},
        capture_output=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert (
        "--workers needs a Redis: install redis-server, or give --redis"
        in (done.stdout + done.stderr).decode()
    )


def test_polling_sessions_across_workers(tmp_path):
    """
    Socket.IO clients on long-polling only: each request lands on either
    worker, and reaches the session wherever it is held (a request for
    another worker's session is passed on to it).
    """
    import queue

    import socketio

    server = start_workers(tmp_path / "twistd.log")
    clients = []
    try:
        for name in ("left", "right"):
            inbox: queue.Queue = queue.Queue()
            client = socketio.Client(reconnection=False)
            for event in ("room-users", "user-joined", "offer"):
                client.on(
                    event,
                    lambda data, event=event, inbox=inbox: inbox.put((event, data)),
                )
            client.connect(
                server.http,
                transports=["polling"],
                auth={"userId": name},
                wait_timeout=10,
            )
            client.emit("join-room", {"roomId": "polled", "userId": name})
            event, _ = inbox.get(timeout=10)
            assert event == "room-users"
            clients.append((client, inbox))
        wait_room([server], "polled", 2)
        (left, left_inbox), (right, right_inbox) = clients
        # Many requests, so that both workers see some of each session's.
        for n in range(10):
            left.emit(
                "offer",
                {"roomId": "polled", "targetId": right.get_sid(), "offer": {"n": n}},
            )
            event, data = right_inbox.get(timeout=10)
            while event == "user-joined":
                event, data = right_inbox.get(timeout=10)
            assert (event, data["offer"], data["senderId"]) == (
                "offer",
                {"n": n},
                left.get_sid(),
            )
            right.emit(
                "offer",
                {"roomId": "polled", "targetId": left.get_sid(), "offer": {"n": -n}},
            )
            event, data = left_inbox.get(timeout=10)
            while event == "user-joined":
                event, data = left_inbox.get(timeout=10)
            assert (event, data["offer"]) == ("offer", {"n": -n})
        assert "Traceback" not in server.log()
    finally:
        for client, _ in clients:
            client.disconnect()
        server.stop()


def test_one_scrape_counts_every_worker(tmp_path):
    """
    With --workers 2, one scrape of --metrics-port covers both workers:
    every peer is counted once, whichever worker holds it, and the relay
    times of both workers add up.
    """
    from .test_operations_real import scrape

    server = start_workers(
        tmp_path / "twistd.log",
        "--metrics-port",
        "tcp:0:interface=127.0.0.1",
        "--relay-time-sample",
        "1",
    )
    peers = []
    try:
        held_by: dict[str, list] = {"0": [], "1": []}
        while min(map(len, held_by.values())) < 2 and len(peers) < 90:
            peers.append(NativePeer(server))
            worker = wait_for(lambda: node_of(server, peers[-1].id)).rsplit("-w", 1)
            held_by[worker[1][0]].append(peers[-1])
            time.sleep(0.02)
        assert min(map(len, held_by.values())) >= 2
        for peer in peers:
            peer.join("m")
        wait_room([server], "m", len(peers))
        # One offer within each worker: its arrival and its write are timed
        # in the same process.
        for sender, recipient, *_ in held_by.values():
            sender.offer("m", recipient.id, "x")
            message = recipient.next()
            while message["type"] != "offer":
                message = recipient.next()
        samples = scrape(server)
        assert samples['signaling_relay_seconds_count{dialect="native"}'] == 2
        assert samples["signaling_peers"] == len(peers)
        assert samples["signaling_peers_in_rooms"] == len(peers)
        assert samples[
            'signaling_connections{dialect="native",transport="websocket"}'
        ] == len(peers)
        # Both workers' histograms, added up: one lag sample per worker at least.
        assert samples["signaling_reactor_lag_seconds_count"] >= 2
        # Each worker's mirrors of the other's peers are not counted again.
        assert not [name for name in samples if 'transport="remote"' in name]
        assert (
            len(
                [
                    line
                    for line in server.log().splitlines()
                    if "signaling metrics on" in line
                ]
            )
            == 1
        )
    finally:
        for peer in peers:
            peer.close()
        server.stop()


def peers_on_both_workers(server: TwistdServer) -> dict[str, list[NativePeer]]:
    """
    Native peers until each worker holds at least one (the kernel decides
    which worker accepts), by worker index.
    """
    held_by: dict[str, list[NativePeer]] = {"0": [], "1": []}
    count = 0
    while not all(held_by.values()) and count < 90:
        peer = NativePeer(server)
        count += 1
        node = wait_for(lambda peer_id=peer.id: node_of(server, peer_id))
        held_by[node.rsplit("-w", 1)[1][0]].append(peer)
        time.sleep(0.02)
    assert all(held_by.values()), held_by
    return held_by


def test_sigterm_to_the_parent_drains_every_worker(tmp_path):
    """
    SIGTERM to the parent of --workers 2: each worker tells its native
    peers to reconnect and closes them with 1001, closes topic peers with
    1001 and sends Engine.IO clients the close packet; the parent waits for
    the workers, which exit once drained, and stops. Only the parent speaks
    to systemd: READY=1 once, STOPPING=1 as the drain begins.
    """
    from .test_operations_real import STOPPED_BY_SIGTERM, close_code

    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "notify"))
    receiver.settimeout(10)
    server = start_workers(
        tmp_path / "twistd.log",
        "--drain-timeout",
        "8",
        env={"NOTIFY_SOCKET": str(tmp_path / "notify")},
    )
    clients = []
    try:
        assert receiver.recv(256) == b"READY=1"
        natives = [
            peer.ws
            for peers in peers_on_both_workers(server).values()
            for peer in peers
        ]
        topics = []
        engines = []
        for _ in range(4):
            topic = websocket.create_connection(f"{server.base}/ws/lobby", timeout=10)
            assert json.loads(topic.recv())["type"] == "welcome"
            topics.append(topic)
            engine = websocket.create_connection(
                f"{server.base}/socket.io/?EIO=4&transport=websocket", timeout=10
            )
            assert engine.recv().startswith("0{")
            engine.send("40")
            assert engine.recv().startswith("40{")
            engines.append(engine)
        clients = natives + topics + engines
        pids = worker_pids(server)
        assert len(pids) == 2

        os.kill(server.process.pid, signal.SIGTERM)
        for native in natives:
            assert json.loads(native.recv()) == {
                "type": "reconnect",
                "reason": "going-away",
                "delayMs": 1000,
            }
            assert close_code(native) == 1001
        for topic in topics:
            assert close_code(topic) == 1001
        for engine in engines:
            assert engine.recv() == "1"
            assert close_code(engine) == 1001
        for client in clients:
            client.close()
        assert server.process.wait(15) in STOPPED_BY_SIGTERM
        assert receiver.recv(256) == b"STOPPING=1"
        # The parent has exited: whatever it sent is here already.
        receiver.setblocking(False)
        try:
            extra = receiver.recv(256)
        except BlockingIOError:
            extra = None
        assert extra is None
        assert not [pid for pid in pids.values() if alive(pid)]
        assert not alive(private_redis_pid(server))
        told = re.findall(r"told (\d+) peers the server is going away", server.log())
        assert len(told) == 2 and all(int(count) >= 1 for count in told), told
        assert sum(map(int, told)) == len(clients)
        assert len(re.findall(r"drained in \d", server.log())) == 2
        assert "after SIGTERM: killed" not in server.log()
        assert "Traceback" not in server.log()
    finally:
        for client in clients:
            client.close()
        receiver.close()
        server.stop()


def test_the_parent_waits_for_a_draining_worker_then_kills_a_stuck_one(tmp_path):
    """
    With --drain-timeout 1: a worker whose peer never answers the close
    drops it at its drain timeout and exits on its own, the parent waiting
    for it; a worker that cannot stop at all (SIGSTOPped) is killed by the
    parent once the drain timeout and its margin have passed, and no worker
    outlives the parent.
    """
    from signaling.workers import STOP_MARGIN

    from .test_operations_real import STOPPED_BY_SIGTERM

    server = start_workers(tmp_path / "twistd.log", "--drain-timeout", "1")
    silent = None
    try:
        held_by = peers_on_both_workers(server)
        # Worker 1's first peer stops reading: its close is never answered.
        silent = held_by["1"][0]
        for peers in held_by.values():
            for peer in peers:
                if peer is not silent:
                    peer.close()
        pids = worker_pids(server)
        os.kill(pids["0"], signal.SIGSTOP)

        os.kill(server.process.pid, signal.SIGTERM)
        assert server.process.wait(1 + STOP_MARGIN + 10) in STOPPED_BY_SIGTERM
        log = server.log()
        assert "drain timeout: 1 peers still connected are dropped" in log
        assert f"worker 0 still runs {1 + STOP_MARGIN} s after SIGTERM: killed" in log
        assert "worker 1 still runs" not in log
        assert not [pid for pid in pids.values() if alive(pid)]
    finally:
        if silent is not None:
            silent.ws.shutdown()
        server.stop()


def test_ctrl_c_reaches_the_parent_alone(tmp_path):
    """
    SIGINT to the server's whole process group (Ctrl-C in a terminal)
    reaches only the parent, which drains its workers as for SIGTERM: the
    workers and the private Redis are in groups of their own, so none of
    them stops by itself and none is started again.
    """
    log_path = tmp_path / "twistd.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [
                TWISTD,
                "-n",
                "--pidfile=",
                "signaling",
                "--port",
                "tcp:0:interface=127.0.0.1",
                "--ping-interval",
                "0",
                "--workers",
                "2",
            ],
            cwd=ROOT,
            env={**os.environ, "JWT_SECRET": ""},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            # A group of its own, as a shell gives a job, for the test to
            # signal as a terminal would.
            start_new_session=True,
        )
    server = TwistdServer()
    server.process = process
    server.log_path = log_path
    try:
        wait_for(
            lambda: server.log().count("joined the cluster as node") >= 2, timeout=10
        )
        base = re.search(r"signaling listening on (\S+)", server.log()).group(1)
        server.base = base.rsplit("/", 1)[0]
        peer = NativePeer(server)
        pids = worker_pids(server)
        redis = private_redis_pid(server)
        os.killpg(process.pid, signal.SIGINT)
        assert json.loads(peer.ws.recv())["type"] == "reconnect"
        peer.close()
        assert process.wait(20) is not None
        log = server.log()
        assert len(re.findall(r"told \d+ peers the server is going away", log)) == 2
        assert "starting it again" not in log
        assert "Traceback" not in log
        assert not [pid for pid in pids.values() if alive(pid)]
        assert not alive(redis)
    finally:
        server.stop()
