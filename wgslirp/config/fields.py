"""Reading the settings' metadata back out of the Structs, once, at import.

The loader, the renderers and the documentation all need the same flat list
(environment name, parser kind, limits, default, nesting path) that the Structs
in :mod:`wgslirp.config.schema` only imply through their annotations. Deriving it
here, in one place, is what keeps those three from disagreeing about a setting.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Annotated, Any, Literal, NamedTuple, Union, get_args, get_origin, get_type_hints

import msgspec
from msgspec import Meta

from wgslirp.config.schema import (
    Config,
    EgressConfig,
    HealthConfig,
    MetricsConfig,
    PeerConfig,
    TcpConfig,
    UdpConfig,
)

__all__ = [
    "BY_ENV",
    "CONFIG_FIELDS",
    "EXTRAS",
    "NESTED",
    "PEER_FIELDS",
    "Field",
    "fields_of",
]


class Field(NamedTuple):
    """One setting flattened out of the Structs: what the loader, the renderers and the docs
    need to know about it, without each re-reading the annotations."""

    path: tuple[str, ...]
    env: str
    description: str
    group: str
    kind: str
    base: Any
    optional: bool
    ge: int | float | None
    le: int | float | None
    gt: int | float | None
    extra: Mapping[str, Any]
    default: Any


def unwrap(tp: Any) -> tuple[Any, bool, list[Meta]]:
    """Peel ``Annotated`` and ``X | None`` off a field's type, keeping every Meta: a limit
    may sit inside the optional (``Annotated[int, Meta(ge=1)] | None``) and the docs outside."""
    metas: list[Meta] = []
    optional = False
    while True:
        if get_origin(tp) is Annotated:
            metas.extend(m for m in tp.__metadata__ if isinstance(m, Meta))
            tp = tp.__origin__
            continue
        if get_origin(tp) in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) == 1 and len(get_args(tp)) == 2:
                optional = True
                tp = args[0]
                continue
        return tp, optional, metas


def first_meta(metas: list[Meta], attr: str) -> Any:
    """The first Meta that sets ``attr``, since one field's metadata may be split across several."""
    for m in metas:
        v = getattr(m, attr)
        if v is not None:
            return v
    return None


def _kind_of(base: Any, extra: Mapping[str, Any], where: str) -> str:
    if "kind" in extra:
        return str(extra["kind"])
    if base is bool:
        return "flag" if extra.get("flag") else "bool"
    if base is int:
        return "int"
    if base is float:
        return "duration"
    if get_origin(base) is Literal:
        return "choice"
    if base == tuple[str, ...]:
        return "cidrs"
    raise TypeError(f"{where}: no parser for {base!r}")


def fields_of(cls: type[msgspec.Struct], prefix: tuple[str, ...] = ()) -> list[Field]:
    hints = get_type_hints(cls, include_extras=True)
    out: list[Field] = []
    for info in msgspec.structs.fields(cls):
        base, optional, metas = unwrap(hints[info.name])
        extra: Mapping[str, Any] = first_meta(metas, "extra") or {}
        path = (*prefix, info.name)
        if "env" not in extra:
            if isinstance(base, type) and issubclass(base, msgspec.Struct):
                out.extend(fields_of(base, path))
                continue
            raise TypeError(f"{cls.__name__}.{info.name} has no environment variable")
        if info.default is not msgspec.NODEFAULT:
            default = info.default
        elif info.default_factory is not msgspec.NODEFAULT:
            default = info.default_factory()
        else:
            default = msgspec.NODEFAULT
        out.append(
            Field(
                path=path,
                env=str(extra["env"]),
                description=str(first_meta(metas, "description")),
                group=str(extra["group"]),
                kind=_kind_of(base, extra, ".".join(path)),
                base=base,
                optional=optional,
                ge=first_meta(metas, "ge"),
                le=first_meta(metas, "le"),
                gt=first_meta(metas, "gt"),
                extra=extra,
                default=default,
            )
        )
    return out


CONFIG_FIELDS = fields_of(Config)
PEER_FIELDS = fields_of(PeerConfig)
NESTED: dict[str, type[msgspec.Struct]] = {
    "metrics": MetricsConfig,
    "health": HealthConfig,
    "tcp": TcpConfig,
    "udp": UdpConfig,
    "egress": EgressConfig,
}
BY_ENV = {f.env: f for f in CONFIG_FIELDS}


def _extras_of(cls: type[msgspec.Struct]) -> dict[str, Mapping[str, Any]]:
    hints = get_type_hints(cls, include_extras=True)
    out: dict[str, Mapping[str, Any]] = {}
    for info in msgspec.structs.fields(cls):
        _, _, metas = unwrap(hints[info.name])
        out[info.name] = first_meta(metas, "extra") or {}
    return out


# Per Struct, per field name: the ``extra`` dict (secret, env, ...), for code that walks a
# loaded Config's attributes rather than the flat field list.
_STRUCTS: tuple[type[msgspec.Struct], ...] = (Config, PeerConfig, *NESTED.values())
EXTRAS = {cls: _extras_of(cls) for cls in _STRUCTS}
