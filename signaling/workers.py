"""
C{--workers N}: one listening port, N worker processes sharing it.

The parent opens every C{--port} and hands the listening sockets to its
children (C{adoptStreamPort}), so the kernel spreads connections over them;
it serves nothing itself. Each worker is a node of a cluster on a Redis bus:
the one C{--redis} names, or a private C{redis-server} the parent starts on
a unix socket in a temporary directory. A worker that dies is started
again, under a new node id (its old peers are reaped and announced gone by
the others); the workers stop with the parent, and stop by themselves if
the parent is killed (they watch a pipe from it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import abstract, defer, fdesc
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.task import deferLater

from .logs import Logger

#: The environment variable that tells a worker which inherited file
#: descriptors are listening sockets: C{fd:family,...}.
WORKER_FDS_ENV = "SIGNALING_WORKER_FDS"
#: The workers' private directory (their unix sockets) and a worker's index.
WORKER_DIR_ENV = "SIGNALING_WORKER_DIR"
WORKER_INDEX_ENV = "SIGNALING_WORKER_INDEX"
#: The file descriptor of the pipe from the parent; end of file: it died.
PARENT_PIPE_FD = 0
#: Seconds before a dead worker is started again.
RESTART_DELAY = 0.5
#: Seconds the private Redis has to exit before it is killed.
STOP_TIMEOUT = 10.0
#: Seconds a worker has to exit after its drain (C{--drain-timeout}) before
#: it is killed: leaving the cluster, closing what remains.
STOP_MARGIN = 5.0

#: The parent's systemd notification settings, not passed to the workers.
_SYSTEMD_ONLY = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"})
_FAMILIES = {"inet": socket.AF_INET, "inet6": socket.AF_INET6}

_log = Logger()


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


def child_arguments(argv: list[str]) -> list[str]:
    """
    The parent's own C{twistd signaling} arguments without C{--workers} and
    C{--port}: a worker listens on the sockets it is handed.
    """
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--workers", "--port", "-p"):
            skip = True
            continue
        if arg.startswith(("--workers=", "--port=")):
            continue
        out.append(arg)
    return out


def metrics_socket_path(directory: str, index: int) -> str:
    """
    Where worker C{index} serves its own C{/metrics} to the parent, which
    adds up every worker's on the C{--metrics-port} scrape.
    """
    return os.path.join(directory, f"metrics{index}.sock")


def worker_route_of(environ, reactor: Any):
    """
    This worker's L{WorkerRoute}, or L{None} in a process that is no worker.
    """
    from .transports.worker_route import WorkerRoute

    if not environ.get(WORKER_DIR_ENV):
        return None
    return WorkerRoute(int(environ[WORKER_INDEX_ENV]), environ[WORKER_DIR_ENV], reactor)


class _PortService(Service):
    """
    Listens once started (a worker starts its listeners once it has joined
    the cluster) and stops listening when stopped.
    """

    port: Any = None

    def __init__(self, reactor: Any, factory: Any) -> None:
        self.reactor = reactor
        self.factory = factory

    def listen(self) -> Any:
        raise NotImplementedError()

    def startService(self) -> None:
        Service.startService(self)
        self.port = self.listen()

    def stopService(self):
        Service.stopService(self)
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


class LocalSocketService(_PortService):
    """
    A worker's unix socket, where the other workers pass on requests for
    its Engine.IO sessions.
    """

    def __init__(self, reactor: Any, path: str, factory: Any) -> None:
        super().__init__(reactor, factory)
        self.path = path

    def listen(self) -> Any:
        # Left by this worker's predecessor, if it died.
        if os.path.exists(self.path):
            os.unlink(self.path)
        return self.reactor.listenUNIX(self.path, self.factory, mode=0o600)


def worker_ports(environ) -> list[tuple[int, int]] | None:
    """
    The listening sockets a worker inherited, as (fd, address family), or
    L{None} in a process that is no worker.
    """
    value = environ.get(WORKER_FDS_ENV)
    if not value:
        return None
    ports = []
    for item in value.split(","):
        fd, family = item.split(":")
        ports.append((int(fd), _FAMILIES[family]))
    return ports


class AdoptedPortService(_PortService):
    """
    A worker's listener: serves a listening socket its parent opened.
    """

    def __init__(self, reactor: Any, fd: int, family: int, factory: Any) -> None:
        super().__init__(reactor, factory)
        self.fd = fd
        self.family = family

    def listen(self) -> Any:
        port = self.reactor.adoptStreamPort(self.fd, self.family, self.factory)
        # adoptStreamPort took a copy of it.
        os.close(self.fd)
        return port


class ParentWatch(abstract.FileDescriptor):
    """
    Reads (and ignores) the pipe from the parent; its end means the parent
    is gone, and so must the worker be.
    """

    def __init__(
        self, reactor: Any, on_gone: Callable[[], None], fd: int = PARENT_PIPE_FD
    ) -> None:
        super().__init__(reactor)
        self.fd = fd
        self.on_gone = on_gone
        fdesc.setNonBlocking(fd)
        self.startReading()

    def fileno(self) -> int:
        return self.fd

    def doRead(self):
        return fdesc.readFromFD(self.fd, lambda data: None)

    def connectionLost(self, reason) -> None:
        abstract.FileDescriptor.connectionLost(self, reason)
        _log.warn("the parent process is gone; this worker stops")
        self.on_gone()


class _Worker(ProcessProtocol):
    def __init__(self, service: WorkersService, index: int, node_id: str) -> None:
        self.service = service
        self.index = index
        self.node_id = node_id
        self.ended: defer.Deferred = defer.Deferred()

    def processEnded(self, reason) -> None:
        self.ended.callback(None)
        self.service.worker_ended(self, reason.value)


class WorkersService(Service):
    """
    The parent of C{--workers}: holds the ports, runs the private Redis if
    there is no C{--redis}, and keeps C{count} workers running.

    :param listeners: (description, endpoint) of every C{--port}.
    :param arguments: The workers' C{twistd signaling} arguments.
    :param describe_port: How a listening port is named in the log line
        that says the server listens.
    :param stop_timeout: Seconds the workers have to exit after SIGTERM
        (their drain and L{STOP_MARGIN}) before they are killed.
    """

    def __init__(
        self,
        reactor: Any,
        listeners: list[tuple[str, Any]],
        arguments: list[str],
        count: int,
        redis_url: str | None,
        node_base: str,
        restart_delay: float = RESTART_DELAY,
        describe_port: Callable[[Any], str] = str,
        stop_timeout: float = 10.0 + STOP_MARGIN,
    ) -> None:
        self.reactor = reactor
        self.listeners = listeners
        self.arguments = arguments
        self.count = count
        self.redis_url = redis_url
        self.node_base = node_base
        self.restart_delay = restart_delay
        self.describe_port = describe_port
        self.stop_timeout = stop_timeout
        self.ports: list = []
        self.workers: dict[int, _Worker] = {}
        self.generation = 0
        self.redis: subprocess.Popen | None = None
        self.redis_directory: str | None = None
        self.directory: str | None = None
        self.stopping = False

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        for description, endpoint in self.listeners:
            outcome: list = []
            endpoint.listen(Factory.forProtocol(ProcessProtocol)).addBoth(
                outcome.append
            )
            port = outcome[0] if outcome else None
            if port is None or not hasattr(port, "fileno"):
                error = port.getErrorMessage() if port is not None else "not at once"
                raise SystemExit(
                    f"twistd signaling: cannot listen on {description}: {error}"
                )
            # The parent only holds it; the workers accept.
            port.stopReading()
            self.ports.append(port)
            _log.info("signaling listening on {url}", url=self.describe_port(port))

    def startService(self) -> None:
        Service.startService(self)
        self.directory = tempfile.mkdtemp(prefix="signaling-workers-")
        if self.redis_url is None:
            self.redis_url = self._start_redis()
        for index in range(self.count):
            self.spawn(index)

    def _start_redis(self) -> str:
        binary = redis_server_binary()
        if binary is None:
            raise SystemExit(
                "twistd signaling: --workers needs redis-server installed, or --redis"
            )
        self.redis_directory = tempfile.mkdtemp(prefix="signaling-redis-")
        path = os.path.join(self.redis_directory, "redis.sock")
        self.redis = subprocess.Popen(
            [
                binary,
                "--port",
                "0",
                "--unixsocket",
                path,
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.redis_directory,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            # Out of the terminal's foreground group, as the workers: it
            # stops after them, when the parent says.
            start_new_session=True,
        )
        _wait_for_unix_socket(path, self.redis)
        _log.info(
            "started a private redis-server for the workers (pid {pid})",
            pid=self.redis.pid,
        )
        return f"unix://{path}"

    def spawn(self, index: int) -> None:
        self.generation += 1
        # A new id for each start: the dead worker's peers are reaped under
        # the old one.
        node_id = f"{self.node_base}-w{index}.{self.generation}"
        worker = _Worker(self, index, node_id)
        child_fds: dict[int, Any] = {0: "w", 1: 1, 2: 2}
        described = []
        for offset, port in enumerate(self.ports):
            fd = 3 + offset
            child_fds[fd] = port.fileno()
            family = (
                "inet6"
                if port.getHost().type == "TCP" and ":" in port.getHost().host
                else "inet"
            )
            described.append(f"{fd}:{family}")
        environ = {
            # Only the parent speaks to systemd (NotifyAccess=main).
            **{
                name: value
                for name, value in os.environ.items()
                if name not in _SYSTEMD_ONLY
            },
            WORKER_FDS_ENV: ",".join(described),
            WORKER_DIR_ENV: self.directory,
            WORKER_INDEX_ENV: str(index),
        }
        args = [
            sys.executable,
            "-c",
            # A process group of its own: a terminal's Ctrl-C (SIGINT to
            # the foreground group) reaches the parent alone, which stops
            # the workers in order (SIGTERM, drain) instead of all at once.
            "import os; os.setpgid(0, 0); "
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "signaling",
            *self.arguments,
            "--redis",
            self.redis_url,
            "--node-id",
            node_id,
        ]
        process = self.reactor.spawnProcess(
            worker, sys.executable, args, env=environ, childFDs=child_fds
        )
        self.workers[index] = worker
        _log.info(
            "worker {index} started (pid {pid}, node {node})",
            index=index,
            pid=process.pid,
            node=node_id,
        )

    def metrics_sockets(self) -> list[str]:
        """
        The metrics sockets of the running workers.
        """
        if self.directory is None:
            return []
        return [
            metrics_socket_path(self.directory, index) for index in sorted(self.workers)
        ]

    def worker_ended(self, worker: _Worker, status: Any) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        if self.stopping or not self.running:
            return
        _log.warn(
            "worker {index} (node {node}) exited: {status}; starting it again",
            index=worker.index,
            node=worker.node_id,
            status=str(status),
        )
        self.reactor.callLater(self.restart_delay, self._respawn, worker.index)

    def _respawn(self, index: int) -> None:
        if not self.stopping and self.running and index not in self.workers:
            self.spawn(index)

    @defer.inlineCallbacks
    def stopService(self):
        self.stopping = True
        Service.stopService(self)
        # The parent's copy of each listening socket first: once the
        # draining workers close theirs, new connections are refused
        # instead of waiting in a backlog nobody accepts from.
        for port in self.ports:
            yield port.stopListening()
        self.ports = []
        workers = list(self.workers.values())
        for worker in workers:
            try:
                worker.transport.signalProcess("TERM")
            except Exception:
                pass
        if workers:
            _log.info(
                "stopping {count} workers: they drain, then exit (killed after {timeout} s)",
                count=len(workers),
                timeout=self.stop_timeout,
            )
            waiting = defer.DeferredList([worker.ended for worker in workers])
            timeout = deferLater(self.reactor, self.stop_timeout, lambda: None)
            yield defer.DeferredList([waiting, timeout], fireOnOneCallback=True)
            for worker in workers:
                if not worker.ended.called:
                    _log.warn(
                        "worker {index} still runs {timeout} s after SIGTERM: killed",
                        index=worker.index,
                        timeout=self.stop_timeout,
                    )
                    try:
                        worker.transport.signalProcess("KILL")
                    except Exception:
                        pass
            # A killed worker is reaped before the Redis it used goes.
            yield waiting
        if self.redis is not None:
            os.kill(self.redis.pid, signal.SIGTERM)
            try:
                self.redis.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(self.redis.pid, signal.SIGKILL)
                self.redis.wait()
            self.redis = None
        for directory in (self.redis_directory, self.directory):
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
        self.redis_directory = self.directory = None


def _die_with_parent() -> None:
    """
    In the private redis-server's process, before it runs: be sent SIGTERM
    when the parent dies, even by C{kill -9} (Linux; elsewhere it outlives
    a killed parent).
    """
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _wait_for_unix_socket(
    path: str, process: subprocess.Popen, timeout: float = 10
) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(
                "twistd signaling: the private redis-server exited at once"
            )
        try:
            with socket.socket(socket.AF_UNIX) as client:
                client.settimeout(1)
                client.connect(path)
                client.sendall(b"PING\r\n")
                if client.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit("twistd signaling: the private redis-server did not start")
