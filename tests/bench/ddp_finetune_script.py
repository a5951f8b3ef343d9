"""Run by tests/bench/test_scorers.py::test_finetune_under_two_processes_matches_one, alone or under torchrun:
LoRA fine-tuning of a tiny embedding scorer; process 0 prints the history as JSON."""

import json
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]  # its tests, tests/helpers.py

import torch  # noqa: E402

from recfm import distributed  # noqa: E402
from recfm.bench.finetune import FinetuneConfig, finetune  # noqa: E402
from recfm.bench.scorers import EmbeddingScorer  # noqa: E402
from test_scorers import FT, TRAIN, VALID, make_tokenizer, tiny_bert  # noqa: E402

distributed.init()
tok = make_tokenizer(add_eos=True)
model = tiny_bert(tok)
for module in model.modules():  # dropout masks differ between processes: off, for an exact comparison
    if isinstance(module, torch.nn.Dropout):
        module.p = 0.0
scorer = EmbeddingScorer(model, tok)
history = finetune(scorer, TRAIN[1:], VALID, FinetuneConfig(**{**FT, "max_steps": 30, "lora_dropout": 0.0}), log=None)
if distributed.is_main():
    print(json.dumps({**{k: history[k] for k in ("losses", "valid_auc", "best_step")},
                      "processes": distributed.world_size()}))
