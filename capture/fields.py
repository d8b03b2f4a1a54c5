"""A frozen dataclass's fields to and from a JSON-ready dict (pure; standard library only)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def field_dict(
    obj: DataclassInstance,
    *,
    exclude: Iterable[str] = (),
    rename: Mapping[str, str] | None = None,
    **values: Any,
) -> dict[str, Any]:
    """Every field of ``obj`` by name, in declaration order: ``exclude``'s left out,
    ``rename``'s under their new key, ``values``' given instead of the field's own
    (in the field's place; a name that is no field comes after the fields)."""
    skip = frozenset(exclude)
    names = rename or {}
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if f.name not in skip:
            out[names.get(f.name, f.name)] = (
                values.pop(f.name) if f.name in values else getattr(obj, f.name)
            )
    out.update(values)
    return out


def from_fields(cls: type[T], obj: Mapping[str, Any], **values: Any) -> T:
    """A ``cls`` from the dict ``obj``: each field by name, ``obj[name]`` where the field
    has no default, else ``obj``'s value or the default when ``obj`` has none;
    ``values``' given instead (for the fields that need converting)."""
    for f in dataclasses.fields(cls):
        if f.name in values:
            continue
        if f.name in obj:
            values[f.name] = obj[f.name]
        elif f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
        else:
            raise KeyError(f.name)
    return cls(**values)
