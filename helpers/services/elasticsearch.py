"""A local Elasticsearch node: fetch and unpack the distribution, start it, wait for health.

    from helpers.services.elasticsearch import start_elasticsearch
    with start_elasticsearch() as es:         # a free loopback port, data in a temp folder
        print(es.url)                         # http://127.0.0.1:<port>

The node is the integration-test server distribution that Elastic publishes on Maven
Central (`org.elasticsearch.distribution.integ-test-zip:elasticsearch:<version>:zip`),
fetched with `mvn dependency:copy` and unpacked once into the cache folder
($VPS_CACHE_DIR, else ~/.cache/visual-product-search, or /var/cache/visual-product-search
for root, whose home other users cannot enter). It has no bundled JDK: Java 21+ is looked up
under /usr/lib/jvm ($ES_JAVA_HOME wins). The node runs single-node (or, given `cluster`
settings, as a member of a cluster: helpers.services.elasticsearch_cluster), security off,
heap 512 MB, HTTP on loopback, data and logs in a temp folder, started with
`-d -p pidfile` and stopped by that pid. Elasticsearch refuses to run as root: as root
we create a system user (`vps-es`) and start the node as that user (setpriv), its folders
owned by it.

This zip ships only the core modules: dense_vector and `knn` work; Painless scripting does
not (no `script_score`; see helpers.index.elasticsearch_index for the exact yardstick).

Imports the standard library, `helpers.core.errors` and `helpers.services.process` only.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from pathlib import Path

from helpers.core.errors import ServiceUnavailable
from helpers.services.process import Server, discard, free_port

log = logging.getLogger(__name__)

# 9.2.8: the first 9.x tried that runs on the Temurin 25 JDK here (9.0.0 is served too, but
# its entitlement self-test fails on Java 25, and only Java 17 and 25 are installed; 8.x
# runs on 17 but the client is pinned to 9). No integ-test zip ships Painless (8.19 neither).
ES_VERSION = os.environ.get("VPS_ES_VERSION", "9.2.8")
ES_ARTIFACT = "org.elasticsearch.distribution.integ-test-zip:elasticsearch:{version}:zip"
ES_USER = "vps-es"
ES_HEAP = "512m"
ES_START_TIMEOUT = 240.0  # seconds; ~40 s on 2 busy cores


def cache_dir() -> Path:
    """Where downloaded servers are unpacked (outside git)."""
    if os.environ.get("VPS_CACHE_DIR"):
        return Path(os.environ["VPS_CACHE_DIR"])
    if os.geteuid() == 0:  # the node's user must be able to read it: not under /root
        return Path("/var/cache/visual-product-search")
    return Path.home() / ".cache" / "visual-product-search"


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
                        timeout: float = ES_START_TIMEOUT, wait: bool = True,
                        cluster: Mapping[str, str] | None = None) -> Server:
    """Start an Elasticsearch node on 127.0.0.1:port (free port if None).

    workdir: data, logs and config (a new temp folder if None; reuse it to restart on the
    same data). wait=False returns at once: call `wait_for_elasticsearch(server)` later.
    cluster: `-E` settings that make the node a member of a cluster (cluster.name,
    node.name, transport.port, discovery.seed_hosts, cluster.initial_master_nodes: see
    helpers.services.elasticsearch_cluster); None: a single-node cluster of its own.
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
    if cluster:
        # A member discovers its peers instead (single-node refuses discovery settings).
        del settings["discovery.type"]
        settings |= dict(cluster)
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
                    restart_args={"heap": heap, "version": version, "timeout": timeout,
                                  "cluster": cluster},
                    starter=start_elasticsearch, owns_workdir=ours)
    server._launcher = proc  # type: ignore[attr-defined]
    server._t0 = t0  # type: ignore[attr-defined]
    if wait:
        wait_for_elasticsearch(server, timeout)
    return server


def wait_for_elasticsearch(server: Server, timeout: float = ES_START_TIMEOUT,
                           nodes: int = 1) -> Server:
    """Block until the node answers health yellow/green with at least `nodes` nodes in its
    cluster; ServiceUnavailable with its log."""
    t0 = getattr(server, "_t0", time.monotonic())
    launcher: subprocess.Popen | None = getattr(server, "_launcher", None)
    deadline = t0 + timeout
    while True:  # asked at least once: a node started in the background may be up by now
        if server.process is None and server.pid is not None:
            server.remember_process()  # the node just wrote it: this pid is the node
        if launcher is not None and launcher.poll() not in (None, 0):
            msg = (f"Elasticsearch at {server.url} failed to start "
                   f"(exit {launcher.returncode}):\n{server.log_tail()}")
            discard(server)
            raise ServiceUnavailable(msg)
        # The -d launcher exits 0 once its node runs: until then a health answer could come
        # from another node already on that port.
        started = launcher is None or launcher.poll() == 0
        health = cluster_health(server.url) if started else None
        if health and health.get("status") in ("yellow", "green") \
                and health.get("number_of_nodes", 0) >= nodes:
            server.start_seconds = time.monotonic() - t0
            log.info("Elasticsearch up at %s (pid %s) in %.1f s", server.url, server.pid,
                     server.start_seconds)
            return server
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    msg = (f"Elasticsearch at {server.url} did not become healthy in {timeout:.0f} s:\n"
           f"{server.log_tail()}")
    discard(server)
    raise ServiceUnavailable(msg)


def es_health(url: str, timeout: float = 2.0) -> str | None:
    """The cluster health colour, or None if nothing answers at url."""
    health = cluster_health(url, timeout)
    return None if health is None else health.get("status")


def cluster_health(url: str, timeout: float = 2.0) -> dict | None:
    """`_cluster/health` of the node at url, or None if it does not answer (or has no
    elected master yet: 503)."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/_cluster/health", timeout=timeout) as r:
            return dict(json.loads(r.read()))
    except (OSError, ValueError, urllib.error.URLError):
        return None
