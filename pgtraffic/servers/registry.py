"""Where running clusters are written down, so that `servers stop` and orphan
reaping can find servers started by another (possibly dead) process."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


def state_dir() -> Path:
    explicit = os.environ.get("PGTRAFFIC_STATE_DIR")
    if explicit:
        path = Path(explicit)
    elif os.geteuid() == 0:
        path = Path("/var/lib/pgtraffic/servers")
    else:
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        path = Path(base) / "pgtraffic" / "servers"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True, slots=True)
class ServerRecord:
    """What is known of one cluster pgtraffic started."""

    name: str
    root: str
    port: int
    bin_dir: str
    version: str
    major: int
    source: str
    profile: str
    owner_pid: int | None
    """The process that stops it on exit; None once detached (`servers start`)."""
    dsn: str
    log_dir: str
    owner_uid: int | None = None
    """The user who started it (None in records written before pgtraffic kept it)."""

    @property
    def owner_alive(self) -> bool:
        if self.owner_pid is None:
            return True
        try:
            os.kill(self.owner_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def held_by(self, pid: int, uid: int) -> str | None:
        """Why the caller (process ``pid`` of user ``uid``) should leave this server
        alone, or None when it may stop it: one started by ``servers start``
        (detached), or one whose owning process is gone, by the same user (pure but
        for the liveness check)."""
        if self.owner_uid is not None and self.owner_uid != uid:
            return f"started by another user (uid {self.owner_uid})"
        if self.owner_pid is not None and self.owner_pid != pid and self.owner_alive:
            return f"in use by process {self.owner_pid}{_command_of(self.owner_pid)}"
        return None


def _command_of(pid: int) -> str:
    """`` (command line)`` of a process, shortened, or "" when it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    text = raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()
    return f" ({text[:60]}{'...' if len(text) > 60 else ''})" if text else ""


def save(record: ServerRecord) -> None:
    path = state_dir() / f"{record.name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2))
    tmp.replace(path)


def forget(name: str) -> None:
    (state_dir() / f"{name}.json").unlink(missing_ok=True)


def records() -> list[ServerRecord]:
    found = []
    for path in sorted(state_dir().glob("*.json")):
        try:
            found.append(ServerRecord(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            path.unlink(missing_ok=True)
    return found
