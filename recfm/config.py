"""Run configuration: layered defaults < preset file < --config file < key=value overrides.

A fully resolved config is written to every run directory as ``config.yaml``, so a
run can be repeated from that file alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from recfm.data.preprocess import PrepConfig
from recfm.evaluation.protocol import Protocol

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PRESET_DIR = PROJECT_ROOT / "configs"
TOP_LEVEL_KEYS = {"dataset", "model", "prep", "protocol", "seed"}


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str
    model: dict[str, Any] = Field(default_factory=dict, description="validated by the model's own config class")
    prep: PrepConfig | None = Field(None, description="None = the dataset's default preprocessing")
    protocol: Protocol = Field(default_factory=Protocol)
    seed: int = 0


class ConfigError(ValueError):
    pass


def parse_override(text: str) -> tuple[list[str], Any]:
    """``model.hidden=64`` -> (["model", "hidden"], 64). A bare key is a model key: ``epochs=3``."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (e.g. epochs=5 or protocol.exclude_history=true)")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"override {text!r} has an empty key")
    if path[0] not in TOP_LEVEL_KEYS:
        path = ["model", *path]
    return path, yaml.safe_load(raw) if raw.strip() else None


def deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def preset_path(model: str, dataset: str) -> Path | None:
    """configs/<model>-<dataset>.yaml when the project ships one (tuned on validation only)."""
    p = PRESET_DIR / f"{model}-{dataset}.yaml"
    return p if p.is_file() else None


def resolve(
    model: str,
    dataset: str,
    model_config_cls: type[BaseModel],
    config_file: Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    use_preset: bool = True,
) -> tuple[RunConfig, BaseModel, list[str]]:
    """Return (run config, validated model config, the layers that were applied)."""
    layers: list[str] = ["defaults"]
    data: dict = {"dataset": dataset, "model": {}}
    files = []
    if config_file is None and use_preset and (p := preset_path(model, dataset)):
        files.append(p)
    if config_file is not None:
        files.append(Path(config_file))
    for f in files:
        layer = read_yaml(f)
        unknown = set(layer) - TOP_LEVEL_KEYS
        if unknown:
            raise ConfigError(f"{f}: unknown top-level keys {sorted(unknown)}; allowed: {sorted(TOP_LEVEL_KEYS)}")
        data = deep_merge(data, layer)
        layers.append(str(f))
    for text in overrides:
        path, value = parse_override(text)
        update: Any = value
        for key in reversed(path):
            update = {key: update}
        data = deep_merge(data, update)
        layers.append(text)
    data["dataset"] = dataset
    data.setdefault("model", {})["name"] = model
    try:
        run = RunConfig.model_validate(data)
        model_cfg = model_config_cls.model_validate(run.model)
    except Exception as e:  # pydantic's message lists every bad field
        raise ConfigError(f"invalid configuration for {model} on {dataset}:\n{e}") from None
    run.model = model_cfg.model_dump()
    return run, model_cfg, layers


def dump(run: RunConfig) -> str:
    return yaml.safe_dump(run.model_dump(mode="json"), sort_keys=False)
