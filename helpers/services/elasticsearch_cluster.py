"""A local Elasticsearch cluster: N nodes on loopback, each the node of
`helpers.services.elasticsearch` started with cluster settings.

    from helpers.services.elasticsearch_cluster import start_elasticsearch_cluster
    with start_elasticsearch_cluster(2) as cluster:   # returns once health is green, 2 nodes
        print(cluster.urls)                          # one HTTP address per node
        cluster.master()                             # the Server of the elected master
        cluster.nodes[1].kill()                      # a node crash (SIGKILL)

Each node has its own HTTP and transport port (free loopback ports), its own data, logs and
config under `<workdir>/node-<i>`, heap 512 MB. Every node seeds from all transport ports
(`discovery.seed_hosts`) and the first election counts every node
(`cluster.initial_master_nodes`). The cluster name is derived from the working folder, so
two clusters started on one machine never merge, and a restart on the same folder rejoins.

Two nodes survive the loss of one only if it is not the elected master: Elasticsearch keeps
the voting configuration odd, so of two master-eligible nodes only one votes (the master).
Three nodes survive the loss of any one.

Imports the standard library, `helpers.core.errors` and `helpers.services.{elasticsearch,
process}` only.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.core.errors import ServiceUnavailable
from helpers.services.elasticsearch import (
    ES_HEAP,
    ES_START_TIMEOUT,
    ES_VERSION,
    cluster_health,
    ensure_elasticsearch,
    start_elasticsearch,
    wait_for_elasticsearch,
)
from helpers.services.process import Server, discard, free_port

log = logging.getLogger(__name__)


@dataclass
class ElasticsearchCluster:
    """The nodes of a cluster we started (`Server` handles, in start order)."""

    name: str
    nodes: list[Server]
    node_names: list[str]
    workdir: Path
    owns_workdir: bool = False
    start_seconds: float = 0.0

    @property
    def url(self) -> str:
        """The HTTP address of the first node that is alive."""
        return next((n.url for n in self.nodes if n.alive()), self.nodes[0].url)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def alive(self) -> bool:
        return any(n.alive() for n in self.nodes)

    def health(self) -> dict[str, Any] | None:
        """`_cluster/health` as a live node answers it (None: no node answers)."""
        for n in self.nodes:
            if n.alive() and (h := cluster_health(n.url)) is not None:
                return h
        return None

    def master(self) -> Server:
        """The node elected master right now."""
        with urllib.request.urlopen(f"{self.url}/_cat/master?format=json", timeout=10) as r:
            name = json.loads(r.read())[0]["node"]
        return self.nodes[self.node_names.index(name)]

    def wait(self, nodes: int | None = None, status: str = "green",
             timeout: float = ES_START_TIMEOUT) -> dict[str, Any]:
        """Block until `nodes` nodes (default: all) have joined and health is `status` or
        better; ServiceUnavailable with the nodes' logs otherwise."""
        want = len(self.nodes) if nodes is None else nodes
        ok = ("green",) if status == "green" else ("yellow", "green")
        deadline = time.monotonic() + timeout
        h = None
        while time.monotonic() < deadline:
            h = self.health()
            if h and h.get("number_of_nodes") == want and h.get("status") in ok:
                return h
            time.sleep(0.5)
        logs = "\n".join(n.log_tail(10) for n in self.nodes)
        raise ServiceUnavailable(f"Elasticsearch cluster {self.name}: not {status} with {want} "
                                 f"nodes in {timeout:.0f} s (last health {h}):\n{logs}")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def cleanup(self) -> None:
        """Stop every node; delete the working folder if the start made it."""
        self.stop()
        if self.owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ElasticsearchCluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()


def start_elasticsearch_cluster(nodes: int = 2, port: int | None = None,
                                workdir: Path | None = None, heap: str = ES_HEAP,
                                version: str = ES_VERSION,
                                timeout: float | None = None) -> ElasticsearchCluster:
    """Start `nodes` Elasticsearch nodes on loopback as one cluster; return once its health
    is green with all of them joined.

    port: the first node's HTTP port (the others take free ports; None: all free).
    workdir: the cluster's folder, a `node-<i>` folder per node (a new temp folder if None;
    reuse it to restart the cluster on the same data).
    timeout: seconds to green (default: a node's start timeout per node, for the nodes'
    JVMs start on the same cores).
    """
    if nodes < 1:
        raise ValueError(f"a cluster needs at least one node, not {nodes}")
    ensure_elasticsearch(version)  # once, before the nodes start side by side
    timeout = ES_START_TIMEOUT * nodes if timeout is None else timeout
    ours = workdir is None
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="vps-es-cluster-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)  # as root the nodes run as vps-es: they must reach node-<i>
    name = re.sub(r"[^a-z0-9_-]+", "-", workdir.resolve().name.lower())
    names = [f"{name}-node-{i}" for i in range(nodes)]
    http = [port or free_port(), *(free_port() for _ in range(nodes - 1))]
    transport = [free_port() for _ in range(nodes)]
    common = {"cluster.name": name,
              "discovery.seed_hosts": ",".join(f"127.0.0.1:{p}" for p in transport),
              "cluster.initial_master_nodes": ",".join(names)}
    t0 = time.monotonic()
    servers: list[Server] = []
    try:
        # All launched before any is awaited: their JVMs start side by side.
        for i in range(nodes):
            member = {**common, "node.name": names[i], "transport.port": str(transport[i])}
            servers.append(start_elasticsearch(port=http[i], workdir=workdir / f"node-{i}",
                                               heap=heap, version=version, timeout=timeout,
                                               wait=False, cluster=member))
        for s in servers:
            wait_for_elasticsearch(s, timeout, nodes=nodes)
        cluster = ElasticsearchCluster(name, servers, names, workdir, ours)
        cluster.wait(timeout=max(10.0, timeout - (time.monotonic() - t0)))
    except BaseException:
        for s in servers:
            discard(s)
        if ours:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    cluster.start_seconds = time.monotonic() - t0
    log.info("Elasticsearch cluster %s: %d nodes green at %s in %.1f s", name, nodes,
             ", ".join(cluster.urls), cluster.start_seconds)
    return cluster
