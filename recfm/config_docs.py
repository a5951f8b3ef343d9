"""What `recfm models` prints: every config field (nested ones as ``section.field``) with its type,
default and description, and which shipped preset overrides which field per dataset."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from recfm.config import PRESET_DIR, read_yaml
from recfm.errors import ConfigError, submodel


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    text = str(annotation).replace("typing.", "")
    for prefix in ("recfm.", "pydantic."):
        while prefix in text:  # recfm.textid.initial_ids.InitialIds -> InitialIds
            start = text.index(prefix)
            end = start
            while end < len(text) and (text[end].isalnum() or text[end] in "._"):
                end += 1
            text = text[:start] + text[start:end].rsplit(".", 1)[-1] + text[end:]
    return text


def _default(info) -> Any:
    if info.default is not PydanticUndefined:
        return info.default
    if info.default_factory is not None:
        try:
            return info.default_factory()
        except TypeError:  # a factory that wants the validated data
            return None
    return PydanticUndefined


def describe_fields(config: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(field, type, default, description) rows; a nested model's fields follow as ``name.field``."""
    rows = []
    for name, info in config.model_fields.items():
        if name == "name" and not prefix:
            continue
        default = _default(info)
        nested = submodel(info.annotation)
        shown = "(required)" if default is PydanticUndefined else (
            "(see below)" if isinstance(default, BaseModel) else repr(default))
        rows.append((prefix + name, _type_name(info.annotation), shown, info.description or ""))
        if nested is not None:
            rows += describe_fields(nested, prefix=f"{prefix}{name}.")
    return rows


def _flatten(mapping: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def preset_overrides(model: str) -> list[tuple[str, dict[str, Any]]]:
    """(preset file name, the fields it sets) for every shipped ``configs/MODEL-*.yaml``."""
    out = []
    for path in sorted(PRESET_DIR.glob(f"{model}-*.yaml")):
        try:
            layer = read_yaml(path)
        except ConfigError:
            continue
        fields = _flatten({k: v for k, v in layer.items() if k != "model"}) | _flatten(layer.get("model") or {})
        out.append((path.name, fields))
    return out


__all__ = ["describe_fields", "preset_overrides"]
