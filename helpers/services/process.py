"""The handle of a server process we started, and what every server start shares.

`Server` is that handle: URL, port, working folder, pid file; it signals only its own process
(the pid file's pid is checked against the start time and command line recorded in /proc as
it started, for a pid may since belong to another process), and restarts it through the start
function that made it. `free_port` picks a loopback port; `discard` stops a server that failed
to start. Imports only the standard library; `helpers.services.elasticsearch` and
`helpers.services.mongod` import it, never the other way round.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A server process we started: its URL, pid and working folder."""

    name: str
    url: str
    workdir: Path
    pidfile: Path
    port: int
    start_seconds: float = 0.0
    restart_args: dict[str, Any] = field(default_factory=dict, repr=False)
    # (start time in clock ticks since boot, command line) of the process, from
    # /proc/<pid>/stat and /proc/<pid>/cmdline when it started: a pid alone may have been
    # reused by another process since (and root may signal any process).
    process: tuple[int, bytes] | None = field(default=None, repr=False)
    # The start function that made it (start_elasticsearch, start_mongod): `restart` calls it
    # with port, workdir and restart_args.
    starter: Callable[..., Server] | None = field(default=None, repr=False, compare=False)
    # True when the start made workdir (a temp folder): `discard` removes it again.
    owns_workdir: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        pid = self.pid
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def remember_process(self) -> None:
        """Record who the pid file's process is, as it starts (see `is_ours`)."""
        pid = self.pid
        self.process = _process_identity(pid) if pid is not None else None

    def is_ours(self, pid: int) -> bool:
        """Whether pid is still the process we started: its start time and command line as
        recorded. Unrecorded (it died before we saw it): only a process whose command line
        names our working folder. Where /proc is absent, the pid is trusted."""
        if not Path("/proc/self/stat").exists():
            return True
        now = _process_identity(pid)
        if now is None:
            return False  # gone
        if self.process is not None:
            # The same start tick is the same process: a reused pid belongs to a process
            # started later. (The command line is not compared: read as the process starts,
            # it was seen to differ from the one read later, and stop() then left our own
            # mongod running.)
            return now[0] == self.process[0]
        return str(self.workdir).encode() in now[1]

    def _our_pid(self) -> int | None:
        pid = self.pid
        if pid is not None and not self.is_ours(pid):
            if _process_identity(pid) is not None:  # gone (killed, crashed): nothing to say
                log.warning("%s: pid %d of %s is no longer the process we started; not "
                            "signalling it", self.name, pid, self.pidfile)
            return None
        return pid

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests)."""
        _signal_and_wait(self._our_pid(), signal.SIGKILL, 30)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM by pid, then SIGKILL if it does not stop in time; only if that pid is
        still the process we started."""
        pid = self._our_pid()
        if pid is not None and not _signal_and_wait(pid, signal.SIGTERM, timeout):
            log.warning("%s (pid %d) ignored SIGTERM for %.0f s: killing it", self.name, pid,
                        timeout)
            _signal_and_wait(pid, signal.SIGKILL, 30)

    def restart(self) -> Server:
        """Start again on the same port and data folder (after stop or a crash)."""
        self.stop()
        if self.starter is None:
            raise ValueError(f"{self.name} at {self.url}: no start function to restart it "
                             "with (a Server made by hand)")
        new = self.starter(port=self.port, workdir=self.workdir, **self.restart_args)
        self.start_seconds, self.pidfile = new.start_seconds, new.pidfile
        self.process = new.process
        return self

    def cleanup(self) -> None:
        """Stop and delete the working folder (data, logs)."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()

    def log_tail(self, lines: int = 20) -> str:
        logs = sorted(self.workdir.glob("logs/*.log")) + [self.workdir / "console.log"]
        out = []
        for f in logs:
            if f.is_file() and f.stat().st_size:
                out += [f"--- {f.name}", *f.read_text(errors="replace").splitlines()[-lines:]]
        return "\n".join(out)


def discard(server: Server) -> None:
    """Stop a server that failed to start; remove its folder if we made it."""
    if server.owns_workdir:
        server.cleanup()
    else:
        server.stop()


def _process_identity(pid: int) -> tuple[int, bytes] | None:
    """(start time in clock ticks since boot, command line) of a live process, or None."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_bytes()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    # Field 22 (starttime), counted after the command name: "(name)" may hold spaces.
    fields = stat_line[stat_line.rindex(b")") + 2:].split()
    return int(fields[19]), cmdline


def _signal_and_wait(pid: int | None, sig: int, timeout: float) -> bool:
    """Send `sig` to pid and wait until it is gone; True if it is gone."""
    if pid is None:
        return True
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            # Reap it if it is our child (mongod), else just probe it.
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False
