"""The model table: every model ``recfm train`` knows, one explicit row each, no registration magic.

A row names its config and model classes as ``"module:Class"`` strings, imported on first use, so
reading the table (``recfm models``, a config check) imports no model package, and no model
package depends on another through it. The model classes follow
:class:`recfm.recommender.TrainableRecommender` (its contract and capability flags).

To add a model: write its package (config class + model class), add a row below, add a preset
``configs/NAME-DATASET.yaml`` when it has tuned settings.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from pydantic import BaseModel


def _import(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    config_class: str  # "module:Class" of its pydantic config
    model_class: str  # "module:Class" of the model (a TrainableRecommender)
    weights_dir: str = "model"  # where a run keeps the weights ("" = the run directory itself)
    # What the model writes into a run directory besides the files every run has (recfm.rundir):
    # the only names ``--overwrite`` deletes.
    artifacts: tuple[str, ...] = ("model",)

    @property
    def config(self) -> type[BaseModel]:
        return _import(self.config_class)

    @property
    def model(self) -> type:
        return _import(self.model_class)


MODELS: dict[str, ModelEntry] = {
    e.name: e
    for e in [
        ModelEntry("pop", "MostPopular: training-split item counts",
                   "recfm.baselines.pop:PopConfig", "recfm.baselines.pop:MostPopular"),
        ModelEntry("sasrec", "SASRec: causal self-attention, full-softmax cross-entropy",
                   "recfm.baselines.sasrec:SASRecConfig", "recfm.baselines.sasrec:SASRec"),
        ModelEntry("gru4rec", "GRU4Rec: GRU over the item sequence, full-softmax cross-entropy",
                   "recfm.baselines.gru4rec:GRU4RecConfig", "recfm.baselines.gru4rec:GRU4Rec"),
        ModelEntry("textid", "IDGenRec: a language model writes the next item's textual ID (trie-constrained)",
                   "recfm.textid.config:TextIDConfig", "recfm.textid.training:TextIDModel", weights_dir="",
                   artifacts=("recommender", "id_generator", "item_ids.tsv", "item_ids.initial.tsv", "textid.json")),
    ]
}
