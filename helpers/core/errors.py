"""What may be missing here without being a bug: an external service (Elasticsearch,
MongoDB) that does not answer, or a method whose optional package or backend is absent.

Imports nothing.
"""


class ServiceUnavailable(RuntimeError):
    """Raised by a notebook when a service it needs cannot be reached.

    ``run_all.py`` reports such a notebook as *skipped* with this message,
    not as failed: the toolkit works without the service.
    """


class MethodUnavailable(RuntimeError):
    """A method that cannot run here: its optional package is not installed, or its
    backend / engine is not registered. A comparison reports it as *skipped*; any other
    error in a method is a failure."""
