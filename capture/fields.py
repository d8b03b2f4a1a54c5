"""A frozen dataclass's fields as a JSON-ready dict (pure; standard library only)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


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
