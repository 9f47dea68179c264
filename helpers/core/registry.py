"""Name -> class, imported on first use: the extension point of the index methods
(``helpers.index.METHODS``) and of the networks and runtimes of the extractors
(``helpers.models.NETS``, ``helpers.models.RUNTIMES``).

Adding one is one module with the class and one line in the registry. Nothing is imported
until it is asked for, so TensorFlow, OpenVINO or FAISS load only for what needs them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping


class Registry(Mapping[str, type]):
    """name -> class, as ``"package.module:Class"`` until first access."""

    def __init__(self, kind: str, targets: dict[str, str | type]) -> None:
        self.kind = kind
        self._targets: dict[str, str | type] = dict(targets)

    def __getitem__(self, name: str) -> type:
        if name not in self._targets:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self._targets)}")
        target = self._targets[name]
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            target = self._targets[name] = getattr(importlib.import_module(module), attr)
        return target

    def __contains__(self, name: object) -> bool:
        # Only the registered names: Mapping's default would import the module, and fail
        # when its engine (e.g. the elasticsearch client) is not installed.
        return name in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(self._targets)

    def __len__(self) -> int:
        return len(self._targets)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._targets)})"

    def register(self, name: str, target: str | type) -> None:
        """Add an entry: a class, or "package.module:Class" to import lazily."""
        self._targets[name] = target
