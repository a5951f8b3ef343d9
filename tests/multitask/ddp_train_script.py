"""Run by test_multitask_model.py::test_training_under_two_processes_matches_one, alone or under torchrun:
8 multi-task steps of a tiny model; process 0 prints the per-step losses and a checksum of the adapter."""

import json
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]  # its tests, tests/helpers.py

from recfm import distributed  # noqa: E402
from recfm.multitask.s2sched import S2SchedConfig  # noqa: E402
from recfm.multitask.trainer import MultiTaskConfig, train_multitask  # noqa: E402
from test_multitask_model import TASKS, tiny_model  # noqa: E402

from movielens_fixture import fake_movielens  # noqa: E402
from recfm.multitask.movielens_tasks import MovieLensTasks, TaskConfig  # noqa: E402

distributed.init()
ml1m, ml100k = fake_movielens()
records = MovieLensTasks(ml1m, ml100k, TaskConfig(history_len=3, n_options=4, max_records=12)).build(TASKS)
model = tiny_model(records)
cfg = MultiTaskConfig(steps=8, gen_batch=5, emb_batch=4, lr=5e-3, checkpoints=2, num_threads=1,
                      s2sched=S2SchedConfig(warmup_ratio=0.25, window=4, valid_samples=2))
history = train_multitask(records, cfg, model, None, say=lambda m: None)
if distributed.is_main():
    weights = sum(float(v.double().abs().sum()) for v in model.tmole.state_dict().values())
    print(json.dumps({"gen_loss": history["gen_loss"], "emb_loss": history["emb_loss"], "weights": weights,
                      "processes": distributed.world_size()}))
