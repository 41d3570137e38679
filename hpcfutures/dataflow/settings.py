"""TaskSettings: where and how one dataflow task runs, and the one way to derive new settings.

``DataflowExecutor.options()``, ``DataflowView.options()`` and the apps all layer changes
over a base with :meth:`TaskSettings.layered`, which checks each value and names the
parameter when one is wrong.  Whether executor labels exist is the executor's to check.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from .._validate import check_bool, check_count, check_seconds
from ..errors import ConfigurationError
from ..resources import Resources

#: The per-task options ``options()`` takes, in the order its signature lists them.
OPTION_NAMES = ("executors", "retries", "walltime", "priority", "resources", "cache", "ignore_for_cache")


def _labels(value: Any) -> tuple[str, ...]:
    labels = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, Iterable) else None
    if not labels or not all(isinstance(label, str) and label for label in labels):
        raise ConfigurationError(
            f"executors must be a label or a list of labels (non-empty strings), got {value!r}"
        )
    return labels


def _names(value: Any) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, Iterable) else None
    if names is None or not all(isinstance(n, str) for n in names):
        raise ConfigurationError(f"ignore_for_cache must be argument names, got {value!r}")
    return names


def _checked(name: str, value: Any) -> Any:
    """``value`` as the field ``name`` holds it, or ConfigurationError naming the parameter."""
    if name == "executors":
        return _labels(value)
    if name == "ignore_for_cache":
        return _names(value)
    if name == "retries":
        check_count("retries", value, 0)
    elif name == "walltime":
        check_seconds("walltime", value)
    elif name == "priority":
        check_count("priority", value, None, note="higher runs first")
    elif name == "resources":
        if not isinstance(value, Resources):
            raise ConfigurationError(f"resources must be a hpcfutures.Resources, got {type(value).__name__}")
    elif name in ("cache", "join"):
        check_bool(name, value)
    else:
        raise TypeError(f"unknown task setting {name!r}; the settings are {', '.join(OPTION_NAMES)}")
    return value


@dataclass(frozen=True)
class TaskSettings:
    """Where and how a task runs: executor labels, retry budget, caching and backend options.

    ``None`` in ``retries`` or ``cache`` means the DataflowExecutor's default.  Build
    variants with :meth:`layered`, which validates; the constructor does not.
    """

    executors: tuple[str, ...] | None = None  # None: the default executor
    retries: int | None = None
    walltime: float | None = None
    priority: int | None = None
    resources: Resources | None = None
    join: bool = False
    cache: bool | None = None
    ignore_for_cache: tuple[str, ...] = ()
    _backend_options: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        opts = {"walltime": self.walltime, "priority": self.priority, "resources": self.resources}
        object.__setattr__(self, "_backend_options", {k: v for k, v in opts.items() if v is not None})

    def layered(self, **changes: Any) -> TaskSettings:
        """These settings with ``changes`` over them; a change of None leaves a setting as it is.

        Raises:
            ConfigurationError: a value is of the wrong kind (the message names the setting).
            TypeError: an unknown setting.
        """
        checked = {name: _checked(name, value) for name, value in changes.items() if value is not None}
        return replace(self, **checked) if checked else self

    def backend_options(self) -> dict[str, Any]:
        """The settings the backend executor's ``options()`` must carry, if any."""
        return self._backend_options


DEFAULT_SETTINGS = TaskSettings()
