"""Plugin discovery: entry points in the ``sjc`` group, loaded into a pluggy manager.

Built-in plugins are found exactly like third-party ones. ``SJC_PLUGINS`` (a comma-separated
list of entry-point or distribution names; empty means none) restricts what loads, which
helps when a broken plugin needs to be isolated. A registry is a plain value built by
:func:`load_registry`; nothing here is global.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from typing import Any

import pluggy
from pydantic import BaseModel

from sjc_core import hookspecs
from sjc_core.errors import SjcError, closest_first, shorten

KINDS = ("priors", "fields", "losses", "estimators")
SINGULAR = {"priors": "prior", "fields": "field", "losses": "loss", "estimators": "estimator"}
ENTRY_POINT_GROUP = "sjc"
ENV_ALLOW = "SJC_PLUGINS"


@dataclass(frozen=True)
class PluginInfo:
    """One registered thing: a prior, field, loss or estimator."""

    kind: str
    name: str
    factory: Callable[..., Any]
    description: str
    options: type[BaseModel]
    distribution: str
    version: str
    module: str

    def option_rows(self) -> list[dict[str, Any]]:
        """Options as rows of name, type and default (for listings)."""
        rows = []
        for opt_name, info in self.options.model_fields.items():
            default = None if info.is_required() else info.get_default(call_default_factory=True)
            rows.append(
                {
                    "name": opt_name,
                    "type": _type_name(info.annotation),
                    "default": _jsonable(default),
                    "required": info.is_required(),
                    "description": info.description or "",
                }
            )
        return rows


@dataclass(frozen=True)
class ImportedFactory:
    """A factory named by module and attribute and imported on its first call, as an entry
    point names a plugin: a registration can list a plugin without importing its
    implementation (and torch), and the registering layer need not import the one below it."""

    module: str
    attribute: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(self.module), self.attribute)(*args, **kwargs)


@dataclass
class Registry:
    """Everything the installed plugins registered, plus the manager for command hooks."""

    entries: dict[tuple[str, str], PluginInfo] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    manager: pluggy.PluginManager | None = None

    def names(self, kind: str) -> list[str]:
        return sorted(name for k, name in self.entries if k == kind)

    def of_kind(self, kind: str) -> list[PluginInfo]:
        return [self.entries[(kind, n)] for n in self.names(kind)]

    def get(self, kind: str, name: str, where: str | None = None) -> PluginInfo:
        """The plugin, or an error listing the known names of that kind, closest first."""
        try:
            return self.entries[(kind, name)]
        except KeyError:
            known = closest_first(name, self.names(kind))
            listing = ", ".join(known) if known else "none installed"
            prefix = f"{where}: " if where else ""
            raise SjcError(f"{prefix}unknown {SINGULAR[kind]} {shorten(name)} (known: {listing})") from None


@lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The process's plugin registry, loaded on first use (the core and the commands share it)."""
    return load_registry()


def _type_name(annotation: Any) -> str:
    """A readable type for listings: ``float``, ``int | None``, ``tuple[float, float]`` (no Annotated noise)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return "Literal[" + ", ".join(repr(a) for a in args) + "]"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None and args:
        name = getattr(origin, "__name__", str(origin).replace("typing.", ""))
        return f"{name}[{', '.join(_type_name(a) for a in args)}]"
    if isinstance(annotation, type):
        return "None" if annotation is type(None) else annotation.__name__
    return str(annotation).replace("typing.", "")


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return str(value)


def _allowed(ep: metadata.EntryPoint, allow: set[str] | None) -> bool:
    if allow is None:
        return True
    dist = ep.dist.name if ep.dist else ""
    return ep.name in allow or dist in allow


def _allow_list() -> set[str] | None:
    raw = os.environ.get(ENV_ALLOW)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _stderr_warning(message: str) -> None:
    print(f"sjc: warning: {message}", file=sys.stderr)


def load_registry(
    entry_points: Iterable[metadata.EntryPoint] | None = None,
    warn: Callable[[str], None] = _stderr_warning,
) -> Registry:
    """Discover, import and register every allowed plugin.

    A module that fails to import costs one warning line; the others still load. Two
    plugins registering the same kind and name is an error naming both distributions.
    """
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    registry = Registry(manager=manager)
    origin: dict[str, tuple[str, str, str]] = {}
    eps = entry_points if entry_points is not None else metadata.entry_points(group=ENTRY_POINT_GROUP)
    allow = _allow_list()
    for ep in sorted(eps, key=lambda e: e.name):
        if not _allowed(ep, allow):
            continue
        dist = ep.dist.name if ep.dist else "unknown"
        version = ep.dist.version if ep.dist else ""
        try:
            module = ep.load()
        except Exception as exc:  # a broken plugin must not take the others down
            message = f"plugin '{ep.name}' ({dist}) failed to import: {type(exc).__name__}: {exc}"
            registry.warnings.append(message)
            warn(message.splitlines()[0])
            continue
        plugin_name = f"{dist}:{ep.name}"
        if manager.is_registered(module) or manager.has_plugin(plugin_name):
            continue
        try:
            manager.register(module, name=plugin_name)
        except pluggy.PluginValidationError as exc:  # e.g. a hook with unknown arguments
            message = f"plugin '{ep.name}' ({dist}) is not a valid sjc plugin: {exc}"
            registry.warnings.append(message)
            warn(message.splitlines()[0])
            continue
        origin[plugin_name] = (dist, version, ep.value)

    for kind in KINDS:
        caller = getattr(manager.hook, f"register_{kind}")
        for impl in caller.get_hookimpls():
            dist, version, module_name = origin.get(impl.plugin_name, ("unknown", "", impl.plugin_name))
            register = _registrar(registry, kind, dist, version, module_name)
            # pluggy lets an implementation take a subset of the spec's arguments.
            try:
                impl.function(**({"register": register} if "register" in impl.argnames else {}))
            except SjcError:
                raise
            except Exception as exc:  # a buggy hook costs a warning, like a failed import
                message = f"plugin '{impl.plugin_name}' failed to register {kind}: {type(exc).__name__}: {exc}"
                registry.warnings.append(message)
                warn(message.splitlines()[0])
    return registry


def _registrar(registry: Registry, kind: str, dist: str, version: str, module: str) -> Callable[..., None]:
    def register(
        name: str,
        factory: Callable[..., Any],
        description: str,
        options: type[BaseModel],
    ) -> None:
        key = (kind, name)
        if key in registry.entries:
            first = registry.entries[key]
            raise SjcError(
                f"{SINGULAR[kind]} '{name}' is registered twice: by {first.distribution} "
                f"({first.module}) and by {dist} ({module}); uninstall one, or restrict "
                f"plugins with {ENV_ALLOW}"
            )
        registry.entries[key] = PluginInfo(
            kind=kind,
            name=name,
            factory=factory,
            description=description.strip().splitlines()[0] if description.strip() else "",
            options=options,
            distribution=dist,
            version=version,
            module=module,
        )

    return register

