"""Starting local servers (Elasticsearch, mongod) for tests, demos and users.

`process` holds the `Server` handle (it stops only its own process) and `free_port`;
`elasticsearch` fetches and starts a node; `elasticsearch_cluster` starts N of them as one
cluster on loopback; `mongod` starts a mongod; `servers` is the command line
(`python -m helpers.services.servers es|mongod|fetch`, `es --nodes 2`) and re-exports them
all. The names below come from the first four (standard library only, nothing heavy), not
from `servers`, so that `python -m helpers.services.servers` finds that module not yet
imported. Imports those four modules only.
"""

from helpers.services.elasticsearch import (
    ensure_elasticsearch,
    es_health,
    start_elasticsearch,
    wait_for_elasticsearch,
)
from helpers.services.elasticsearch_cluster import (
    ElasticsearchCluster,
    start_elasticsearch_cluster,
)
from helpers.services.mongod import mongod_path, start_mongod
from helpers.services.process import Server, free_port

__all__ = [
    "ElasticsearchCluster", "Server", "ensure_elasticsearch", "es_health", "free_port",
    "mongod_path", "start_elasticsearch", "start_elasticsearch_cluster", "start_mongod",
    "wait_for_elasticsearch",
]
