"""User-facing errors: one base class the CLI catches, and pydantic errors in one short line each.

Every mistake a user can fix (a bad path, a bad config, a malformed file, a damaged run) derives
from :class:`RecfmError`, so the command line prints its message and exits 2 instead of showing
a traceback. This module imports nothing of recfm: every layer may use it.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, Sequence

from pydantic import BaseModel, ValidationError


class RecfmError(Exception):
    """A mistake the user can fix; its message says what and how."""


class ConfigError(RecfmError, ValueError):
    """A configuration that cannot be used: unknown key, wrong type, bad value, unreadable file."""


def submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``annotation`` (``Foo``, ``Foo | None``, ``Optional[Foo]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if (found := submodel(arg)) is not None:
                return found
    return None


def _fields_at(model: type[BaseModel] | None, loc: Sequence[Any]) -> list[str]:
    """Field names of the (nested) model that holds the key at ``loc``."""
    for part in loc[:-1]:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return []
        model = submodel(model.model_fields[part].annotation)
    return list(model.model_fields) if model is not None else []


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_validation_error(error: ValidationError, model: type[BaseModel] | None = None,
                              prefix: Sequence[str] = ()) -> str:
    """``model.epochs = 'abc': Input should be a valid integer`` for each problem, ``; ``-joined.
    An unknown key names the nearest valid one. No documentation URLs, no input dumps."""
    parts = []
    for err in error.errors(include_url=False):
        loc = [*prefix, *(str(p) for p in err.get("loc", ()))]
        where = ".".join(loc) or "(top level)"
        if err.get("type") == "extra_forbidden":
            key = str(err["loc"][-1]) if err.get("loc") else ""
            valid = [f for f in _fields_at(model, [str(p) for p in err.get("loc", ())]) if f != "name"]
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else (f" (valid: {', '.join(valid)})" if valid else "")
            parts.append(f"unknown key '{where}'{hint}")
        elif err.get("type") == "missing":
            parts.append(f"'{where}' is required")
        else:
            parts.append(f"{where} = {_short(err.get('input'))}: {err.get('msg')}")
    return "; ".join(parts)
