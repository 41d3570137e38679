"""Module-level ``__getattr__`` and ``__dir__`` for packages whose names load on first use."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(
    package: str, table: dict[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return ``(__getattr__, __dir__)`` for *package*.

    *table* maps each public name to the module defining it (absolute, or relative to
    *package*); the first access imports that module and stores the value in *namespace*
    (the package's globals), so later accesses cost nothing.
    """

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(namespace["__all__"])

    return __getattr__, __dir__
