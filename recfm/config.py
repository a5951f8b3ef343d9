"""Run configuration: layered defaults < preset file < --config file < key=value overrides.

A fully resolved config is written to every run directory as ``config.yaml``, so a
run can be repeated from that file alone.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from recfm.data.preprocess import PrepConfig
from recfm.errors import ConfigError, describe_validation_error
from recfm.evaluation.protocol import Protocol
from recfm.overrides import deep_merge, nested
from recfm.overrides import parse_override as parse_key_value

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PRESET_DIR = PROJECT_ROOT / "configs"
TOP_LEVEL_KEYS = {"dataset", "model", "prep", "protocol", "seed"}


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="a registered dataset name, or the absolute path of a dataset folder")
    model: dict[str, Any] = Field(default_factory=dict, description="validated by the model's own config class")
    prep: PrepConfig | None = Field(None, description="None = the dataset's default preprocessing")
    protocol: Protocol = Field(default_factory=Protocol, description="evaluation protocol (docs/protocol.md)")
    seed: int = Field(0, description="seed of weight initialisation, data order and sampling")


__all__ = ["ConfigError", "RunConfig", "deep_merge", "dump", "parse_override", "preset_path", "read_yaml", "resolve"]


def parse_override(text: str) -> tuple[list[str], Any]:
    """``model.hidden=64`` -> (["model", "hidden"], 64). A bare key is a model key: ``epochs=3``."""
    return parse_key_value(text, TOP_LEVEL_KEYS, default_section="model")


def read_yaml(path: Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory: give a YAML file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start}): give a YAML file") from None
    except PermissionError:
        raise ConfigError(f"config file {path} cannot be read (permission denied)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, not a {type(data).__name__}")
    return data


def check_layer(layer: dict, source: str) -> None:
    """The shape every layer must have before it is merged: known top-level keys, and mappings
    where the run config holds sections (a list under ``model:`` would break the merge)."""
    for key in layer:
        if key not in TOP_LEVEL_KEYS:
            close = difflib.get_close_matches(str(key), sorted(TOP_LEVEL_KEYS), n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(sorted(TOP_LEVEL_KEYS))}"
            raise ConfigError(f"{source}: unknown top-level key '{key}' ({hint})")
    for section in ("model", "prep", "protocol"):
        value = layer.get(section)
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"{source}: '{section}' must be a mapping of {section} fields (key: value), "
                              f"not a {type(value).__name__}")


def canonical_dataset(dataset: str) -> str:
    """What a run records as its dataset: a registered name as it is, a folder as its absolute path
    (so the run is found again from any directory); ``a+b`` joins part by part."""
    from recfm.data.registry import DATASETS

    if dataset in DATASETS:
        return dataset
    path = Path(dataset).expanduser()
    if path.exists():
        return str(path.resolve())
    if "+" in dataset:
        return "+".join(canonical_dataset(part) for part in dataset.split("+") if part)
    return dataset


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
    """Return (run config, validated model config, the layers that were applied).

    Layers, lowest first: the model's defaults, the preset ``configs/MODEL-DATASET.yaml`` when the
    project ships one (unless ``use_preset`` is False), ``config_file``, then ``overrides``."""
    layers: list[str] = ["defaults"]
    data: dict = {"dataset": dataset, "model": {}}
    files = []
    if use_preset and (p := preset_path(model, dataset)):
        files.append(p)
    if config_file is not None:
        files.append(Path(config_file))
    for f in files:
        layer = read_yaml(f)
        check_layer(layer, str(f))
        data = deep_merge(data, layer)
        layers.append(_layer_name(f))
    for text in overrides:
        update = nested(*parse_override(text))
        check_layer(update, f"override {text!r}")
        data = deep_merge(data, update)
        layers.append(text)
    data["dataset"] = canonical_dataset(dataset)
    if data.get("model") is None:  # `model:` left empty in a file
        data["model"] = {}
    data["model"]["name"] = model
    try:
        run = RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"invalid configuration for {model} on {dataset}: {describe_validation_error(e, RunConfig)}") from None
    try:
        model_cfg = model_config_cls.model_validate(run.model)
    except ValidationError as e:
        raise ConfigError(f"invalid configuration for {model} on {dataset}: "
                          f"{describe_validation_error(e, model_config_cls, prefix=('model',))}") from None
    run.model = model_cfg.model_dump()
    return run, model_cfg, layers


def _layer_name(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def dump(run: RunConfig, layers: list[str] | None = None) -> str:
    """The resolved config as YAML; ``layers`` go in a comment on top (YAML readers skip it, so the
    file stays re-runnable with ``--config``)."""
    text = yaml.safe_dump(run.model_dump(mode="json"), sort_keys=False)
    if layers:
        text = f"# resolved from: {' < '.join(layers)}\n" + text
    return text
