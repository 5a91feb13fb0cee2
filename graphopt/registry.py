"""Plugin discovery (pluggy, entry-point group `graphopt`), the pass registry, and passes configured from it.

Each `load_registry()` call builds its own plugin manager and registry: no process-global
state, so two pipelines in one process (or a test) never see each other's plugins.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.metadata
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import pluggy

from graphopt import hookspecs
from graphopt.parameter_names import parameter
from graphopt.errors import PluginError, UsageError, did_you_mean
from graphopt.options import build_options
from graphopt.passes import Pass

__all__ = ["PassRegistry", "Plugins", "load_registry", "configure_passes", "ENTRY_POINT_GROUP"]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "graphopt"
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


@dataclasses.dataclass(frozen=True)
class RegisteredPass:
    cls: type[Pass]
    plugin: str


class PassRegistry:
    """Pass classes by name, each with the plugin that registered it."""

    def __init__(self) -> None:
        self._passes: dict[str, RegisteredPass] = {}
        self._plugin = "<api>"

    @contextlib.contextmanager
    def registering_for(self, plugin: str) -> Iterator[None]:
        previous, self._plugin = self._plugin, plugin
        try:
            yield
        finally:
            self._plugin = previous

    def add(self, pass_cls: type[Pass]) -> None:
        """Registers a pass class; refuses a malformed pass or a name taken by another plugin."""
        plugin = self._plugin
        if not (isinstance(pass_cls, type) and issubclass(pass_cls, Pass)):
            raise PluginError(f"plugin '{plugin}' registered {pass_cls!r}, which is not a graphopt.Pass subclass")
        name = pass_cls.name
        if not isinstance(name, str) or not _NAME.match(name):
            raise PluginError(f"plugin '{plugin}': pass {pass_cls.__name__} has no valid name ({name!r})")
        if not dataclasses.is_dataclass(pass_cls.Options):
            raise PluginError(f"plugin '{plugin}': {name}.Options must be a dataclass")
        if pass_cls.run is Pass.run:
            raise PluginError(f"plugin '{plugin}': pass '{name}' does not implement run()")
        taken = self._passes.get(name)
        if taken is not None and taken.cls is not pass_cls:
            raise PluginError(f"pass name '{name}' registered twice: by plugin '{taken.plugin}' "
                              f"({taken.cls.__module__}.{taken.cls.__qualname__}) and by plugin '{plugin}' "
                              f"({pass_cls.__module__}.{pass_cls.__qualname__})")
        self._passes[name] = RegisteredPass(pass_cls, plugin)

    def get(self, name: str) -> type[Pass]:
        try:
            return self._passes[name].cls
        except KeyError as error:
            known = ", ".join(sorted(self._passes)) or "none"
            raise UsageError(f"unknown pass '{name}'{did_you_mean(name, self._passes)} (registered passes: {known})") from error

    def plugin_of(self, name: str) -> str:
        return self._passes[name].plugin

    def names(self) -> list[str]:
        return sorted(self._passes)

    def __contains__(self, name: str) -> bool:
        return name in self._passes

    def __len__(self) -> int:
        return len(self._passes)


@dataclasses.dataclass
class Plugins:
    """A loaded plugin manager, its registry, and the warnings loading produced."""

    manager: pluggy.PluginManager
    registry: PassRegistry
    warnings: list[str]


def load_registry(extra_plugins: Iterable[Any] = (), *, entry_points: bool = True) -> Plugins:
    """Loads every plugin of the `graphopt` entry-point group, then `extra_plugins`, and registers their
    passes; one that fails to import, misspells a hook or raises is a warning naming it (logged, and
    kept in `Plugins.warnings`)."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        logger.warning(message)

    candidates: list[tuple[str, Any]] = []
    if entry_points:
        for entry_point in _entry_points(tuple(sys.path)):
            try:
                candidates.append((entry_point.name, entry_point.load()))
            except Exception as error:  # a broken plugin must not take the others down
                warn(f"plugin '{entry_point.name}' failed to import: {type(error).__name__}: {error}")
    for plugin in extra_plugins:
        candidates.append((getattr(plugin, "__name__", type(plugin).__name__), plugin))

    for name, plugin in candidates:
        try:
            manager.register(plugin, name=name)
        except ValueError as error:
            warn(f"plugin '{name}' not loaded: {error}")
            continue
        # Registering creates a caller even for a hook without a spec; only a spec makes it known.
        unknown = [hook for hook in _declared_hooks(plugin) if getattr(manager.hook, hook).spec is None]
        if unknown:
            manager.unregister(plugin)
            warn(f"plugin '{name}' not loaded: unknown hook {', '.join(unknown)} (misspelled?)")

    registry = PassRegistry()
    for impl in manager.hook.graphopt_register_passes.get_hookimpls():
        with registry.registering_for(impl.plugin_name):
            try:
                impl.function(registry=registry)
            except Exception as error:
                warn(f"plugin '{impl.plugin_name}' failed to register its passes: {type(error).__name__}: {error}")
    return Plugins(manager, registry, warnings)


@functools.lru_cache(maxsize=4)
def _entry_points(search_path: tuple[str, ...]) -> list:
    """The `graphopt` entry points installed on `search_path`, by name: finding them reads every
    installed distribution's metadata (15 ms with torch's stack installed), once per process and path."""
    return sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)


def _declared_hooks(plugin: Any) -> list[str]:
    marker = f"{hookspecs.PROJECT}_impl"
    return [name for name in dir(plugin) if name.startswith("graphopt_") and hasattr(getattr(plugin, name, None), marker)]


def configure_passes(registry: PassRegistry, names: list[str], options: dict[str, dict[str, Any]] | None = None,
                     text_options: dict[str, dict[str, str]] | None = None) -> list[Pass]:
    """Pass instances for `names`, options from typed values (API, recipe) then text (`--set`)."""
    options, text_options = options or {}, text_options or {}
    if not names:
        raise UsageError(f"no passes given: {parameter('passes')} names none")
    for pass_name in list(options) + list(text_options):
        if pass_name not in names:
            registry.get(pass_name)  # an unknown pass is the better error
            raise UsageError(f"options given for pass '{pass_name}', which is not in {parameter('passes')} ({','.join(names)})")
    configured = []
    for name in names:
        cls = registry.get(name)
        typed = build_options(name, cls.Options, options.get(name, {}), text_options.get(name, {}))
        configured.append(cls(typed))
    _check_declared_order(configured)
    return configured


def _check_declared_order(passes: list[Pass]) -> None:
    positions: dict[str, list[int]] = {}
    for index, pass_ in enumerate(passes):
        positions.setdefault(pass_.name, []).append(index)
    for index, pass_ in enumerate(passes):
        for earlier in pass_.after:
            if any(other > index for other in positions.get(earlier, ())):
                raise UsageError(f"pass '{pass_.name}' must run after '{earlier}' (declared by '{pass_.name}'); reorder {parameter('passes')}")
        for later in pass_.before:
            if any(other < index for other in positions.get(later, ())):
                raise UsageError(f"pass '{pass_.name}' must run before '{later}' (declared by '{pass_.name}'); reorder {parameter('passes')}")
