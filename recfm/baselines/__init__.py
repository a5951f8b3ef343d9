"""The model table: name -> (config class, model class). Explicit rows, no registration magic.

Every model class follows one contract:
    model = Model(config, n_items)
    model.fit(split, protocol, log)   # sees split.train and split.valid only; selects on validation
    model.recommend(histories, k, exclude)  # the Recommender seam
    model.save(dir); Model.load(dir, config, n_items)

Models that read item text (``uses_catalog = True`` on the class, e.g. ``textid``) also take
``catalog=`` (a ``recfm.textid.config.Catalog``: item keys, texts, titles) in both calls.
``weights_dir`` is where a run keeps the weights ("" = the run directory itself).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from recfm.baselines.gru4rec import GRU4Rec, GRU4RecConfig
from recfm.baselines.pop import MostPopular, PopConfig
from recfm.baselines.sasrec import SASRec, SASRecConfig
from recfm.textid.config import TextIDConfig
from recfm.textid.training import TextIDModel


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    config: type[BaseModel]
    model: type
    weights_dir: str = "model"
    # What the model writes into a run directory besides the files every run has (recfm.rundir):
    # the only names ``--overwrite`` deletes.
    artifacts: tuple[str, ...] = ("model",)


MODELS: dict[str, ModelEntry] = {
    e.name: e
    for e in [
        ModelEntry("pop", "MostPopular: training-split item counts", PopConfig, MostPopular),
        ModelEntry("sasrec", "SASRec: causal self-attention, full-softmax cross-entropy", SASRecConfig, SASRec),
        ModelEntry("gru4rec", "GRU4Rec: GRU over the item sequence, full-softmax cross-entropy", GRU4RecConfig, GRU4Rec),
        ModelEntry("textid", "IDGenRec: a language model writes the next item's textual ID (trie-constrained)",
                   TextIDConfig, TextIDModel, weights_dir="",
                   artifacts=("recommender", "id_generator", "item_ids.tsv", "item_ids.initial.tsv", "textid.json")),
    ]
}
