"""Every shipped preset of a `recfm train` model is a valid config of that model (the layered YAML
the CLI reads, validated by the model's own config class), so a typo in a preset fails here, not
an hour into a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from recfm.config import read_yaml
from recfm.model_table import MODELS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted(p for p in CONFIGS.glob("*.yaml") if p.name.split("-", 1)[0] in MODELS)


def test_the_presets_are_found():
    assert {p.name.split("-", 1)[0] for p in PRESETS} == {"sasrec", "gru4rec", "textid"}


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_validates(path):
    layer = read_yaml(path)
    assert set(layer) <= {"model", "prep", "protocol", "seed"}, f"{path.name}: unknown top-level keys"
    entry = MODELS[path.name.split("-", 1)[0]]
    entry.config.model_validate({"name": entry.name, **(layer.get("model") or {})})
