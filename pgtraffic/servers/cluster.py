"""One throwaway PostgreSQL cluster: initdb into a temp dir, start, stop, clean up.

A cluster created here is stopped when the creating process exits (normal exit,
an exception, Ctrl-C, SIGTERM routed to SystemExit) unless it was detached with
:meth:`Cluster.detach`, as ``pgtraffic servers start`` does. Clusters whose owner
died without cleaning up (kill -9) are found again through the registry and
stopped by :func:`reap_orphans`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from types import TracebackType

from pgtraffic.errors import ServerError
from pgtraffic.servers import registry
from pgtraffic.servers.installations import Installation, find_installation
from pgtraffic.servers.privileges import (
    Account,
    accessible_installation,
    give_to,
    run_as,
    server_account,
)
from pgtraffic.servers.profiles import Profile, profile_settings, render_conf

SUPERUSER = "postgres"
_LIVE: dict[str, Cluster] = {}


@dataclass(frozen=True, slots=True)
class StopReport:
    """How a cluster's stop went; ``died_unexpectedly`` means someone else killed it."""

    name: str
    was_running: bool
    died_unexpectedly: bool
    method: str
    leftover_processes_killed: int
    removed: bool

    def describe(self) -> str:
        if self.died_unexpectedly:
            state = "postmaster had died before stop was asked (killed or crashed)"
        elif self.was_running:
            state = f"stopped ({self.method})"
        else:
            state = "was not running"
        extra = []
        if self.leftover_processes_killed:
            extra.append(f"killed {self.leftover_processes_killed} leftover server processes")
        extra.append("files removed" if self.removed else "files kept")
        return f"{self.name}: {state}; " + ", ".join(extra)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(eq=False, repr=False)
class Cluster:
    """A PostgreSQL cluster pgtraffic created, living entirely under ``root``."""

    installation: Installation
    root: Path
    _: KW_ONLY
    port: int
    profile: Profile
    account: Account
    name: str
    owner_pid: int | None = field(init=False, default_factory=os.getpid)
    """The process that stops the cluster when it exits (None once detached)."""
    stop_report: StopReport | None = field(init=False, default=None)
    # --- where things are: data, socket and log directories, the startup log
    data_dir: Path = field(init=False)
    socket_dir: Path = field(init=False)
    log_dir: Path = field(init=False)
    startup_log: Path = field(init=False)

    def __post_init__(self) -> None:
        root = self.root
        self.data_dir, self.socket_dir, self.log_dir = root / "data", root / "socket", root / "log"
        self.startup_log = root / "startup.log"

    @property
    def version(self) -> str:
        return self.installation.version

    @property
    def major(self) -> int:
        return self.installation.major

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        """A libpq/asyncpg connection URI over TCP loopback."""
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def socket_dsn(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        """A connection URI over the cluster's private unix socket (faster)."""
        return f"postgresql://{user}@/{dbname}?host={self.socket_dir}&port={self.port}"

    def env(self, dbname: str = "postgres") -> dict[str, str]:
        """Environment for client programs (psql, pgbench) to reach this cluster."""
        env = dict(os.environ)
        for var in ("PGSERVICE", "PGPASSWORD", "PGSSLMODE", "PGOPTIONS"):
            env.pop(var, None)
        env.update(
            PGHOST=str(self.socket_dir),
            PGPORT=str(self.port),
            PGUSER=SUPERUSER,
            PGDATABASE=dbname,
            LC_ALL="C",
        )
        return env

    def log_files(self, pattern: str = "*.csv") -> list[Path]:
        """The cluster's log files matching ``pattern``, oldest first."""
        if not self.log_dir.is_dir():
            return []
        return sorted(self.log_dir.glob(pattern))

    # --- lifecycle --------------------------------------------------------------

    @classmethod
    def create(
        cls,
        installation: Installation | None = None,
        *,
        major: int | None = None,
        profile: Profile = Profile.TARGET,
        port: int | None = None,
        base_dir: Path | None = None,
        settings: Mapping[str, str] | None = None,
        start: bool = True,
    ) -> Cluster:
        """initdb a new cluster in a fresh temp dir and (by default) start it."""
        inst = installation or find_installation(major)
        account = server_account()
        inst = accessible_installation(inst, account)
        root = Path(tempfile.mkdtemp(prefix=f"pgtraffic-pg{inst.major}-", dir=base_dir))
        root.chmod(0o755)
        for sub in ("socket", "log"):
            (root / sub).mkdir(mode=0o755)
        give_to(account, root, root / "socket", root / "log")
        chosen_port = port or free_port()
        cluster = cls(
            inst,
            root,
            port=chosen_port,
            profile=profile,
            account=account,
            name=f"pg{inst.major}-{chosen_port}",
        )
        _LIVE[cluster.name] = cluster
        try:
            cluster._initdb()
            cluster._write_conf(settings)
            if start:
                cluster.start(retry_ports=port is None)
        except ServerError as exc:
            kept = cluster._keep_logs()
            cluster.stop()
            if kept is None:
                raise
            raise ServerError(
                exc.message.removesuffix(f" (server log: {exc.log_path})"),
                hint=exc.hint or f"its postgresql.conf and logs are kept in {kept}",
                log_path=kept / cluster.startup_log.name,
            ) from exc
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _keep_logs(self) -> Path | None:
        """Copy the start-up log, the server's logs and postgresql.conf out of the
        cluster (about to be removed) into a directory of their own; None if none."""
        sources = [self.startup_log, self.data_dir / "postgresql.conf", *self.log_files("*")]
        present = [p for p in sources if p.is_file()]
        if not present:
            return None
        kept = Path(tempfile.mkdtemp(prefix=f"pgtraffic-failed-{self.name}-", dir=self.root.parent))
        for path in present:
            with contextlib.suppress(OSError):
                shutil.copyfile(path, kept / path.name)
        return kept

    def _run_server_tool(
        self, tool: str, *args: str | os.PathLike[str], timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run ``tool -D DATA_DIR ARGS`` (initdb, pg_ctl) as the server's account."""
        argv = [self.installation.tool(tool), "-D", self.data_dir, *args]
        return run_as(self.account, argv, cwd=self.root, timeout=timeout)

    def _initdb(self) -> None:
        options = ("--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync")
        result = self._run_server_tool("initdb", "-U", SUPERUSER, *options)
        if result.returncode != 0:
            raise ServerError(
                f"initdb for PostgreSQL {self.version} failed: {result.stderr.strip()}"
            )

    def _write_conf(self, extra: Mapping[str, str] | None) -> None:
        settings = profile_settings(
            self.profile,
            port=self.port,
            socket_dir=self.socket_dir,
            log_dir=self.log_dir,
            extra=extra,
        )
        conf = self.data_dir / "postgresql.conf"
        text = conf.read_text() + render_conf(settings)
        # The file belongs to the server account; we may be root: write then hand over.
        conf.write_text(text)
        give_to(self.account, conf)

    def start(self, *, retry_ports: bool = False) -> None:
        """Start the server and wait until it accepts connections.

        A cluster started again after :meth:`stop` (``remove=False``) is owned again:
        it is stopped at exit like a new one, and its last stop report is cleared.
        """
        self._remove_stale_pid_file()
        if self.owner_pid is not None:
            _LIVE[self.name] = self
        self.stop_report = None
        for attempt in range(3):
            options = ("-l", self.startup_log, "-w", "-t", "60", "-o", f"-p {self.port}")
            result = self._run_server_tool("pg_ctl", *options, "start", timeout=90)
            if result.returncode == 0:
                self._register()
                return
            log = _tail(self.startup_log, 10_000)
            if retry_ports and attempt < 2 and "could not bind" in log:
                old = self.name
                self.port = free_port()
                self.name = f"pg{self.major}-{self.port}"
                _LIVE[self.name] = _LIVE.pop(old)
                self._write_conf({"port": str(self.port)})
                continue
            logs = [f"--- {self.startup_log.name}:\n{_last_lines(log)}"] if log.strip() else []
            logs += [f"--- {p.name}:\n{_last_lines(_tail(p))}" for p in self.log_files("*")[-1:]]
            raise ServerError(
                f"PostgreSQL {self.version} did not start: "
                f"{(result.stderr or result.stdout).strip()}\n" + "\n".join(logs),
                log_path=self.startup_log,
            )

    def _remove_stale_pid_file(self) -> None:
        """Drop the lock files (postmaster.pid, socket locks) of a killed postmaster.

        PostgreSQL refuses to start while the pid it names exists, and a killed
        postmaster can linger as a zombie when nothing reaps it (a container's
        init): it is dead for us (see _alive), so the file is stale.
        """
        if any(True for _ in _processes_in(self.data_dir)):
            return
        lock_files = [self.data_dir / "postmaster.pid", *self.socket_dir.glob(".s.PGSQL.*.lock")]
        for lock in lock_files:
            try:
                pid = int(lock.read_text().split("\n", 1)[0])
            except (OSError, ValueError):
                continue
            if not _alive(pid):
                lock.unlink(missing_ok=True)

    def _register(self) -> None:
        registry.save(
            registry.ServerRecord(
                name=self.name,
                root=str(self.root),
                port=self.port,
                bin_dir=str(self.installation.bin_dir),
                version=self.version,
                major=self.major,
                source=self.installation.source,
                profile=self.profile.value,
                owner_pid=self.owner_pid,
                owner_uid=os.geteuid(),
                dsn=self.dsn(),
                log_dir=str(self.log_dir),
            )
        )

    def require_passwords(self, *, trusted: tuple[str, ...] = (SUPERUSER,)) -> None:
        """Make every role but ``trusted`` log in with a password (scram-sha-256), on
        the socket and over TCP, and reload; set one with ``ALTER ROLE ... PASSWORD``."""
        lines = [f"local all {role} trust" for role in trusted]
        lines += [f"host all {role} 127.0.0.1/32 trust" for role in trusted]
        lines += [
            "local all all scram-sha-256",
            "host all all 127.0.0.1/32 scram-sha-256",
            "host all all ::1/128 scram-sha-256",
        ]
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text("\n".join(lines) + "\n")
        give_to(self.account, hba)
        result = self._run_server_tool("pg_ctl", "reload", timeout=60)
        if result.returncode != 0:
            raise ServerError(f"pg_ctl reload of {self.name} failed: {result.stderr.strip()}")

    def detach(self) -> None:
        """Keep the server running after this process exits (`servers start`)."""
        self.owner_pid = None
        _LIVE.pop(self.name, None)
        self._register()

    def postmaster_pid(self) -> int | None:
        """The live postmaster's pid, or None when it is not running."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def is_running(self) -> bool:
        return self.postmaster_pid() is not None

    def stop(self, *, remove: bool = True) -> StopReport:
        """Stop the server (fast, then immediate, then SIGKILL) and remove its files.

        Survives a postmaster that is already dead, and kills backends it left.
        """
        had_pid_file = (self.data_dir / "postmaster.pid").exists()
        pid = self.postmaster_pid()
        method = "none"
        if pid is not None:
            method = self._shutdown(pid)
        killed = _kill_processes_in(self.data_dir)
        removed = False
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)
            removed = not self.root.exists()
        report = StopReport(
            name=self.name,
            was_running=pid is not None,
            died_unexpectedly=pid is None and had_pid_file,
            method=method,
            leftover_processes_killed=killed,
            removed=removed,
        )
        self.stop_report = report
        _LIVE.pop(self.name, None)
        registry.forget(self.name)
        return report

    def _shutdown(self, pid: int) -> str:
        for mode in ("fast", "immediate"):
            result = self._run_server_tool(
                "pg_ctl", "-m", mode, "-w", "-t", "30", "stop", timeout=60
            )
            if result.returncode == 0 and _wait_dead(pid, 10):
                return mode
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_dead(pid, 10)
        return "SIGKILL"

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- clients ----------------------------------------------------------------

    def run_tool(
        self,
        name: str,
        *args: str | os.PathLike[str],
        dbname: str = "postgres",
        input: str | None = None,
        check: bool = True,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        """Run a client program of this installation (psql, pgbench, pg_dump) against it."""
        cmd = [str(self.installation.tool(name)), *map(str, args)]
        result = subprocess.run(
            cmd,
            env=self.env(dbname),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise ServerError(
                f"{name} failed against {self.name} (exit {result.returncode}): "
                f"{result.stderr.strip()[-2000:]}"
            )
        return result

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL through psql (unaligned, tuples only) and return its output."""
        result = self.run_tool(
            "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql, dbname=dbname
        )
        return result.stdout.strip()

    def __repr__(self) -> str:
        return f"<Cluster {self.name} PostgreSQL {self.version} {self.profile.value} {self.root}>"


def _tail(path: Path, size: int = 4000) -> str:
    """The last ``size`` characters of a text file ("" when it cannot be read)."""
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return ""


def _last_lines(text: str, count: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-count:])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own exited child not yet reaped) counts as dead.
    try:
        with Path(f"/proc/{pid}/stat").open() as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _wait_dead(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def _processes_in(directory: Path) -> Iterator[int]:
    """Pids of processes whose working directory is ``directory`` (server backends)."""
    target = str(directory.resolve()) if directory.exists() else str(directory)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = str((entry / "cwd").readlink())
        except OSError:
            continue
        if cwd == target or cwd == target + " (deleted)":
            yield int(entry.name)


def _kill_processes_in(directory: Path) -> int:
    killed = 0
    for pid in _processes_in(directory):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
            _wait_dead(pid, 5)
    return killed


def stop_all_owned() -> list[StopReport]:
    """Stop every cluster this process created and did not detach."""
    return [cluster.stop() for cluster in list(_LIVE.values())]


def reap_orphans() -> list[StopReport]:
    """Stop clusters whose owning process died without stopping them."""
    reports = []
    for record in registry.records():
        if record.owner_pid is not None and not record.owner_alive:
            reports.append(stop_record(record))
    return reports


@dataclass(frozen=True, slots=True)
class StopSelection:
    """Which registered servers a ``servers stop`` stops, and which it leaves alone."""

    stop: tuple[registry.ServerRecord, ...]
    left_alone: tuple[tuple[registry.ServerRecord, str], ...]
    """Each with why (another live process owns it, another user started it)."""


def select_to_stop(
    records: list[registry.ServerRecord],
    names: list[str] | None,
    *,
    force: bool = False,
    pid: int | None = None,
    uid: int | None = None,
) -> StopSelection:
    """Named servers (None: all of them) that the caller may stop: detached ones
    (``servers start``) and those whose owner has gone, of the caller's own user;
    ``force``: also those another live process still owns."""
    me_pid, me_uid = pid or os.getpid(), os.geteuid() if uid is None else uid
    wanted = records if names is None else [r for r in records if r.name in names]
    stop, left = [], []
    for record in wanted:
        reason = record.held_by(me_pid, me_uid)
        if reason is None or force:
            stop.append(record)
        else:
            left.append((record, reason))
    return StopSelection(tuple(stop), tuple(left))


def stop_record(record: registry.ServerRecord) -> StopReport:
    """Stop a cluster known only from its registry record (another process's)."""
    inst = Installation(Path(record.bin_dir), record.version, record.major, record.source)
    cluster = Cluster(
        inst,
        Path(record.root),
        port=record.port,
        profile=Profile(record.profile),
        account=server_account(),
        name=record.name,
    )
    return cluster.stop()


atexit.register(stop_all_owned)
