"""``key=value`` overrides of nested configs and the merge that layers them: the one parser every
command uses (``recfm train``'s ``epochs=5`` / ``protocol.exclude_history=true``, ``recfm
multitask train``'s ``train.steps=50``)."""

from __future__ import annotations

from typing import Any, Collection, Iterable

import yaml

from recfm.errors import ConfigError


def parse_override(text: str, sections: Collection[str], default_section: str | None = None,
                   example: str = "epochs=5 or protocol.exclude_history=true") -> tuple[list[str], Any]:
    """``model.hidden=64`` -> (["model", "hidden"], 64). The first key must be one of ``sections``; a
    key outside them goes under ``default_section`` (``epochs=3`` -> model.epochs) or, without one, is
    refused. The value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (e.g. {example})")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"override {text!r} has an empty key")
    if path[0] not in sections:
        if default_section is None:
            raise ConfigError(f"override {text!r} must start with one of {', '.join(sorted(sections))} (e.g. {example})")
        path = [default_section, *path]
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
    return path, value


def nested(path: list[str], value: Any) -> dict:
    """``(["a", "b"], 1)`` -> ``{"a": {"b": 1}}``."""
    out: Any = value
    for part in reversed(path):
        out = {part: out}
    return out


def apply_overrides(data: dict, overrides: Iterable[str], sections: Collection[str],
                    default_section: str | None = None, example: str = "epochs=5") -> dict:
    for text in overrides:
        data = deep_merge(data, nested(*parse_override(text, sections, default_section, example)))
    return data


def deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
