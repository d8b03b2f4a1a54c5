"""Running PostgreSQL servers when we are root.

``initdb`` and ``postgres`` refuse to run as root. When the effective uid is 0 the
server programs run as an unprivileged system user (``pgtraffic``, created when
missing), and an installation that user cannot read (a wheel under ``/root``) is
mirrored once into a world-readable cache directory.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pgtraffic.errors import ServerError
from pgtraffic.servers.installations import Installation

SERVICE_USER = os.environ.get("PGTRAFFIC_SERVICE_USER", "pgtraffic")
MIRROR_ROOT = Path(os.environ.get("PGTRAFFIC_MIRROR_DIR", "/var/cache/pgtraffic/pginstall"))


@dataclass(frozen=True, slots=True)
class Account:
    """The OS account server programs run as."""

    name: str
    uid: int
    gid: int
    home: Path

    @property
    def is_current(self) -> bool:
        return self.uid == os.geteuid()


def current_account() -> Account:
    entry = pwd.getpwuid(os.geteuid())
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))


def server_account() -> Account:
    """The account servers run as: ourselves, or the service user when we are root."""
    if os.geteuid() != 0:
        return current_account()
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        _create_service_user()
        entry = pwd.getpwnam(SERVICE_USER)
    if entry.pw_uid == 0:
        raise ServerError(f"service user {SERVICE_USER} has uid 0; PostgreSQL will not run as it")
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))


def _create_service_user() -> None:
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    try:
        subprocess.run(
            [
                useradd,
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                SERVICE_USER,
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise ServerError(
            f"running as root, and could not create the unprivileged user {SERVICE_USER!r} "
            f"that PostgreSQL needs: {detail.strip()}",
            hint="create it yourself (useradd --system pgtraffic), or set "
            "PGTRAFFIC_SERVICE_USER to an existing unprivileged user",
        ) from exc


def run_as(
    account: Account,
    args: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run a program as ``account``, capturing its output (never raises on exit status)."""
    options: dict[str, object] = {"capture_output": True, "text": True, "check": False}
    if not account.is_current:
        options.update(user=account.uid, group=account.gid, extra_groups=[])
    run_env = dict(os.environ if env is None else env)
    run_env.setdefault("LC_ALL", "C")
    if not account.is_current:
        run_env["HOME"] = str(cwd or "/")
        run_env["USER"] = run_env["LOGNAME"] = account.name
    argv = [str(a) for a in args]
    try:
        result: subprocess.CompletedProcess[str] = subprocess.run(
            argv, env=run_env, cwd=cwd, timeout=timeout, **options
        )  # type: ignore[call-overload]
        return result
    except OSError as exc:  # not executable by that account: report like a failed run
        return subprocess.CompletedProcess(argv, 126, "", f"{argv[0]}: {exc.strerror}")


def give_to(account: Account, *paths: Path) -> None:
    """Make ``paths`` owned by ``account`` (a no-op when that is us)."""
    if account.is_current:
        return
    for path in paths:
        os.chown(path, account.uid, account.gid)


def accessible_installation(inst: Installation, account: Account) -> Installation:
    """``inst``, or a readable mirror of it when ``account`` cannot run its programs."""
    if account.is_current:
        return inst
    check = run_as(account, [inst.bin_dir / "postgres", "--version"], cwd=Path("/"))
    if check.returncode == 0:
        return inst
    return _mirror(inst, account)


def _mirror(inst: Installation, account: Account) -> Installation:
    """Copy the installation (and a wheel's bundled ``<pkg>.libs``) to MIRROR_ROOT."""
    root = inst.bin_dir.parent
    package_dir = root.parent
    digest = hashlib.sha256(str(inst.bin_dir).encode()).hexdigest()[:12]
    target = MIRROR_ROOT / f"{inst.version}-{digest}"
    mirrored_bin = target / package_dir.name / root.name / "bin"
    marker = target / ".complete"
    if not marker.exists():
        staging = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(
            root,
            staging / package_dir.name / root.name,
            symlinks=True,
            ignore=shutil.ignore_patterns("include"),
        )
        libs = package_dir.parent / f"{package_dir.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        for path in [MIRROR_ROOT, *MIRROR_ROOT.parents]:
            if path == Path("/"):
                break
            if path.exists():
                path.chmod(path.stat().st_mode | 0o055)
        _make_world_readable(staging)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        marker.touch()
    mirrored = Installation(mirrored_bin, inst.version, inst.major, inst.source + " (mirrored)")
    check = run_as(account, [mirrored_bin / "postgres", "--version"], cwd=Path("/"))
    if check.returncode != 0:
        raise ServerError(
            f"user {account.name} cannot run PostgreSQL from {inst.bin_dir} nor from its "
            f"copy in {target}: {check.stderr.strip()}",
            hint="pass --pg-bin with an installation readable by that user",
        )
    return mirrored


def _make_world_readable(top: Path) -> None:
    """Directories 755; files readable by all, and executable by all if by their owner."""
    for dirpath, _dirnames, filenames in os.walk(top):
        base = Path(dirpath)
        base.chmod(0o755)
        for name in filenames:
            path = base / name
            if not path.is_symlink():
                mode = path.stat().st_mode
                path.chmod(mode | 0o444 | (0o111 if mode & 0o100 else 0))
