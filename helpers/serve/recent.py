"""Recently viewed products: the last few a user looked at, kept in a browser session.

    from helpers.serve.recent import RecentlyViewed
    seen = RecentlyViewed.from_list(session.get("recent"), n=5)
    seen.add(1000010653)
    session["recent"] = seen.to_list()
    rel.related_to_recent(seen.ids, k=10)      # helpers.serve.related

Plain data only (a list of ints), so it lives in a Streamlit session state or a Flask
signed cookie. Imports nothing of helpers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

MAX_RECENT = 10


class RecentlyViewed:
    """The last ``n`` products a user viewed, most recent first, each once.

    Plain data (a list of ints) so it lives in a Streamlit session state or a Flask
    session cookie: ``RecentlyViewed.from_list(session.get("recent"))``.
    """

    def __init__(self, n: int = 5, ids: Iterable[int] = ()) -> None:
        if not 1 <= n <= MAX_RECENT:
            raise ValueError(f"n must lie in [1, {MAX_RECENT}], got {n}")
        self._ids: deque[int] = deque(maxlen=n)
        for pid in reversed(list(ids)):
            self.add(pid)

    def add(self, product_id: int) -> None:
        pid = int(product_id)
        if pid in self._ids:
            self._ids.remove(pid)
        self._ids.appendleft(pid)

    @property
    def ids(self) -> list[int]:
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def to_list(self) -> list[int]:
        return self.ids

    @classmethod
    def from_list(cls, data: Any, n: int = 5) -> RecentlyViewed:
        """From stored data; anything malformed (an edited cookie) gives an empty list."""
        try:
            ids = [int(x) for x in (data or [])][:n]
        except (TypeError, ValueError):
            ids = []
        return cls(n, ids)
