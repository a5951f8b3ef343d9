"""Every config field a user can set carries a description (what `recfm models` and the docs print)."""

from __future__ import annotations

import inspect
import typing

from pydantic import BaseModel

from recfm.bench.runner import BenchConfig
from recfm.config import RunConfig
from recfm.model_table import MODELS
from recfm.multitask.run import MultiTaskRunConfig


def models_in(annotation) -> list[type[BaseModel]]:
    """The pydantic models inside an annotation (``Foo``, ``Foo | None``, ``list[Foo]``, ``dict[str, Foo]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in models_in(arg)]


def undocumented(cls, seen: set) -> list[str]:
    if cls in seen:
        return []
    seen.add(cls)
    out = []
    for name, field in cls.model_fields.items():
        if not field.description:
            out.append(f"{inspect.getsourcefile(cls).rsplit('recfm/', 1)[-1]}: {cls.__name__}.{name}")
        for sub in models_in(field.annotation):
            out += undocumented(sub, seen)
    return out


def test_every_config_field_is_documented():
    seen: set = set()
    roots = [e.config for e in MODELS.values()] + [RunConfig, MultiTaskRunConfig, BenchConfig]
    assert [f for cls in roots for f in undocumented(cls, seen)] == []
