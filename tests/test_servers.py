"""helpers.services.servers stops only the process it started, whatever the pid file says now."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from helpers.services.servers import Server

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def _server(tmp_path, pid: int) -> Server:
    pidfile = tmp_path / "mongod.pid"
    pidfile.write_text(f"{pid}\n")
    return Server("mongod", "mongodb://127.0.0.1:1", tmp_path, pidfile, 1)


def test_stop_leaves_a_process_that_is_not_ours(tmp_path):
    first = _sleeper()
    server = _server(tmp_path, first.pid)
    server.remember_process()  # as at start
    first.kill()
    first.wait()  # it exited; its pid may now be anyone's
    # A reused pid belongs to a process started later: at least one clock tick (the unit of
    # the recorded start time) after ours. Two started within one tick, with one command
    # line, would look the same (the pid itself is not part of what is recorded).
    time.sleep(3 / os.sysconf("SC_CLK_TCK"))
    other = _sleeper()  # the same command line, another process
    try:
        server.pidfile.write_text(f"{other.pid}\n")  # as if the pid had been reused
        server.stop(timeout=5)
        server.kill()
        assert other.poll() is None  # still running: never signalled
    finally:
        other.kill()
        other.wait()


def test_stop_stops_our_process(tmp_path):
    proc = _sleeper()
    try:
        server = _server(tmp_path, proc.pid)
        server.remember_process()
        server.stop(timeout=10)
        assert proc.wait(5) is not None
    finally:
        proc.kill()


def test_unrecorded_process_is_ours_only_if_it_names_our_folder(tmp_path):
    """Not recorded (it died before we saw it): a process is ours only if its command
    line names our working folder."""
    stranger = _sleeper()
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                             str(tmp_path)])
    try:
        _server(tmp_path, stranger.pid).stop(timeout=5)
        assert stranger.poll() is None
        _server(tmp_path, ours.pid).stop(timeout=10)
        assert ours.wait(5) is not None
    finally:
        for p in (stranger, ours):
            p.kill()
            p.wait()
