"""External services (Elasticsearch, MongoDB): a shared way to say one is not there."""


class ServiceUnavailable(RuntimeError):
    """Raised by a notebook when a service it needs cannot be reached.

    ``run_all.py`` reports such a notebook as *skipped* with this message,
    not as failed: the toolkit works without the service.
    """
