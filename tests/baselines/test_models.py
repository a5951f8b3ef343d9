"""SASRec / GRU4Rec and the shared next-item trainer, on tiny synthetic data (a few seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from recfm.model_table import MODELS
from recfm.baselines import trainer as trainer_module
from recfm.baselines.gru4rec import GRU4Rec, GRU4RecConfig
from recfm.baselines.sasrec import SASRec, SASRecConfig
from recfm.baselines.trainer import full_softmax_cross_entropy
from recfm.data.windows import pad_right, training_windows
from recfm.data.split import LeaveOneOut, leave_one_out
from recfm.evaluation.protocol import Protocol, evaluate

N_ITEMS = 60
CONFIGS = Path(__file__).resolve().parents[2] / "configs"

TINY = dict(epochs=6, batch_size=32, lr=1e-2, max_len=12, patience=3, seed=3, num_threads=1, show_progress=False)
MODELS_UNDER_TEST = [
    (SASRec, SASRecConfig, dict(hidden_size=32, num_layers=1, num_heads=2, dropout=0.1)),
    (GRU4Rec, GRU4RecConfig, dict(embedding_size=32, hidden_size=32, dropout=0.1)),
    (SASRec, SASRecConfig, dict(hidden_size=32, num_layers=2, num_heads=2, dropout=0.1, block="sasrec",
                                positions="from_end", init="xavier", adam_beta2=0.98)),
]
IDS = ["sasrec", "gru4rec", "sasrec-authors"]


def successor_split(n_users: int = 160, seed: int = 0) -> LeaveOneOut:
    """Every user walks the item cycle 1 -> 2 -> ... -> N_ITEMS -> 1 from a random start."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n_users):
        start, length = rng.integers(0, N_ITEMS), rng.integers(5, 16)
        seqs.append((start + np.arange(length)) % N_ITEMS + 1)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])
    return leave_one_out(offsets, np.concatenate(seqs))


class Untouchable:
    """Stands in for split.test: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"fit read split.test.{name}")

    def __len__(self):
        raise AssertionError("fit read len(split.test)")

    def __iter__(self):
        raise AssertionError("fit iterated split.test")


@pytest.fixture(scope="module")
def split() -> LeaveOneOut:
    return successor_split()


def make(model_cls, cfg_cls, extra, **overrides):
    return model_cls(cfg_cls(**{**TINY, **extra, **overrides}), N_ITEMS)


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module", params=range(len(MODELS_UNDER_TEST)), ids=IDS)
def fitted(request, split):
    model_cls, cfg_cls, extra = MODELS_UNDER_TEST[request.param]
    model = make(model_cls, cfg_cls, extra)
    guarded = LeaveOneOut(train=split.train, valid=split.valid, test=Untouchable())
    history = model.fit(guarded, Protocol(), log=quiet)
    return model, history, request.param


def test_models_table_has_rows():
    assert {"pop", "sasrec", "gru4rec"} <= set(MODELS)
    assert MODELS["sasrec"].model is SASRec and MODELS["gru4rec"].config is GRU4RecConfig


def test_learns_successor_pattern_without_touching_test(fitted, split):
    model, history, _ = fitted
    valid = evaluate(model, split.valid, Protocol())
    assert valid["hr@10"] > 0.8, valid  # chance is 10 / 60
    test = evaluate(model, split.test, Protocol())
    assert test["hr@10"] > 0.8, test
    assert set(history) >= {"epochs", "best_epoch", "best_valid", "stopped"}
    assert history["stopped"] in {"patience", "budget", "max_epochs"}
    assert 1 <= history["best_epoch"] <= history["epochs"]


def test_fit_restores_the_best_validated_weights(fitted, split):
    model, history, _ = fitted
    valid = evaluate(model, split.valid, Protocol())
    assert valid["ndcg@10"] == pytest.approx(history["best_valid"]["ndcg@10"], abs=1e-6)


def test_save_load_round_trip(fitted, split, tmp_path):
    model, _, i = fitted
    model_cls, cfg_cls, _ = MODELS_UNDER_TEST[i]
    model.save(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.suffix in {".pt", ".pth", ".pkl", ".bin"}]
    loaded = model_cls.load(tmp_path, model.config, N_ITEMS)
    histories = split.test.histories[:40]
    assert torch.equal(model.score(histories), loaded.score(histories))
    assert np.array_equal(model.recommend(histories, 10).items, loaded.recommend(histories, 10).items)


@pytest.mark.parametrize("i", range(len(MODELS_UNDER_TEST)), ids=IDS)
def test_padding_does_not_change_scores(i):
    model_cls, cfg_cls, extra = MODELS_UNDER_TEST[i]
    model = make(model_cls, cfg_cls, extra, max_len=6)
    # larger weights than the init, so differences would show; computed in float64 (scores come back
    # as float32), so the check is not about float32 summation order, which CPUs' kernels change
    # with the batch shape
    model.net.double()
    with torch.no_grad():
        for p in model.net.parameters():
            p.mul_(20.0)
    histories = [[5], [1, 2, 3], list(range(1, 11)), [7, 7], [9, 10, 11, 12, 13, 14], []]
    batch = model.score(histories)
    assert batch.shape == (len(histories), N_ITEMS + 1)
    assert torch.isfinite(batch).all()
    for row, h in zip(batch, histories):
        alone = model.score([h])[0]
        assert torch.allclose(row, alone, rtol=1e-6, atol=1e-6 * float(row.abs().max())), h
    # only the last max_len items are read
    assert torch.allclose(model.score([list(range(1, 11))]), model.score([list(range(5, 11))]), atol=1e-6)
    top = model.recommend(histories, 5, exclude=[set(h) for h in histories])
    assert top.items.shape == (len(histories), 5)
    assert not any(set(r) & set(h) for r, h in zip(top.items.tolist(), histories))


@pytest.mark.parametrize("i", range(len(MODELS_UNDER_TEST)), ids=IDS)
def test_fit_is_deterministic_for_a_seed(split, i):
    model_cls, cfg_cls, extra = MODELS_UNDER_TEST[i]
    small = LeaveOneOut(split.train, split.valid.subset(slice(0, 40)), split.test)
    runs = []
    for seed in (7, 7, 8):
        model = make(model_cls, cfg_cls, extra, epochs=2, seed=seed)
        model.fit(small, Protocol(), log=quiet)
        runs.append(model.score(split.test.histories[:20]))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_early_stopping_restores_the_best_epoch(split, monkeypatch):
    """Scripted validation scores: best at epoch 2, then `patience` epochs without gains."""
    model = make(SASRec, SASRecConfig, MODELS_UNDER_TEST[0][2], epochs=20, patience=3)
    scripted = iter([0.1, 0.3, 0.2, 0.3, 0.25, 0.9])
    snapshots = []

    def fake_evaluate(recommender, cases, protocol):
        assert cases is split.valid
        snapshots.append({k: v.clone() for k, v in recommender.net.state_dict().items()})
        return {"ndcg@10": next(scripted), "hr@10": 0.0, "cases": len(cases), "eval_seconds": 0.0}

    monkeypatch.setattr(trainer_module, "evaluate", fake_evaluate)
    history = model.fit(split, Protocol(), log=quiet)
    assert history["stopped"] == "patience"
    assert history["epochs"] == 5 and history["best_epoch"] == 2
    assert history["best_valid"]["ndcg@10"] == 0.3  # a tie later is not an improvement
    state = model.net.state_dict()
    assert all(torch.equal(state[k], snapshots[1][k]) for k in state)
    assert not all(torch.equal(state[k], snapshots[-1][k]) for k in state)


def test_wall_clock_budget_stops_training(split):
    model = make(GRU4Rec, GRU4RecConfig, MODELS_UNDER_TEST[1][2], epochs=50, max_train_minutes=1e-6)
    history = model.fit(split, Protocol(), log=quiet)
    assert history["stopped"] == "budget" and history["epochs"] == 1 and history["best_epoch"] == 1


def test_training_windows_cover_every_transition_once():
    seqs = [np.arange(1, 121), np.arange(200, 203), np.array([9]), np.arange(300, 352)]
    w = training_windows(seqs, max_len=50)
    assert w.shape[1] == 51
    pairs = [(a, b) for row in w for a, b in zip(row[:-1], row[1:]) if b > 0]
    expected = [(a, b) for s in seqs for a, b in zip(s[:-1], s[1:])]
    assert sorted(pairs) == sorted(expected)
    # the most recent window ends at the last item; windows of one user overlap by one item
    assert list(w[0, [0, 50]]) == [70, 120] and list(w[1, [0, 50]]) == [20, 70]
    assert list(w[2, [0, 19, 20]]) == [1, 20, 0]
    assert list(w[-2, [0, 50]]) == [301, 351] and list(w[-1, :3]) == [300, 301, 0]  # 52 items: two windows


def test_pad_right_truncates_and_pads():
    seqs, last = pad_right([[1, 2, 3, 4], [5], []], max_len=3)
    assert seqs.tolist() == [[2, 3, 4], [5, 0, 0], [0, 0, 0]]
    assert last.tolist() == [2, 0, 0]


def test_fused_cross_entropy_matches_reference():
    g = torch.Generator().manual_seed(0)
    items = torch.randn(501, 8, generator=g, dtype=torch.float64, requires_grad=True)
    hidden = torch.randn(70, 8, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 500, (70,), generator=g)
    fused = full_softmax_cross_entropy(hidden, items[1:], labels)
    (2 * fused).backward()
    grads = hidden.grad.clone(), items.grad.clone()
    hidden.grad = items.grad = None
    reference = F.cross_entropy(hidden @ items[1:].T, labels)
    (2 * reference).backward()
    assert fused.item() == pytest.approx(reference.item(), rel=1e-9)
    assert torch.allclose(grads[0], hidden.grad) and torch.allclose(grads[1], items.grad)


def test_fused_cross_entropy_in_bf16_stays_close_to_float32():
    g = torch.Generator().manual_seed(1)
    items = torch.randn(3001, 32, generator=g) * 0.3
    hidden = torch.randn(200, 32, generator=g)
    labels = torch.randint(0, 3000, (200,), generator=g)
    results = []
    for dtype in (None, torch.bfloat16):
        h, it = hidden.clone().requires_grad_(), items.clone().requires_grad_()
        loss = full_softmax_cross_entropy(h, it[1:], labels, dtype)
        loss.backward()
        results.append((loss.item(), h.grad, it.grad))
    (exact, gh, gi), (low, lh, li) = results
    assert lh.dtype == torch.float32 and li.dtype == torch.float32  # gradients stay float32
    assert low == pytest.approx(exact, rel=5e-3)
    assert F.cosine_similarity(gh.flatten(), lh.flatten(), dim=0) > 0.999
    assert F.cosine_similarity(gi.flatten(), li.flatten(), dim=0) > 0.999


@pytest.mark.parametrize("cls,cfg_cls,kw", MODELS_UNDER_TEST, ids=IDS)
def test_bf16_autocast_learns_without_touching_test_and_scores_in_float32(cls, cfg_cls, kw, split):
    model = make(cls, cfg_cls, kw, autocast="bf16")
    history = model.fit(LeaveOneOut(split.train, split.valid, Untouchable()), Protocol(), log=quiet)
    assert history["precision"] == "bfloat16 autocast"
    assert evaluate(model, split.test, Protocol())["hr@10"] > 0.8  # chance: 10 / 60
    assert model.score([[1, 2, 3]]).dtype == torch.float32
    assert make(cls, cfg_cls, kw).fit(split, Protocol(), log=quiet)["precision"] == "float32"  # the default


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("sasrec-*.yaml")) + sorted(CONFIGS.glob("gru4rec-*.yaml"))
                         + sorted(CONFIGS.glob("textid-*.yaml")), ids=lambda p: p.name)
def test_presets_validate(path):
    data = yaml.safe_load(path.read_text())
    assert set(data) <= {"dataset", "model", "prep", "protocol", "seed"}
    name = path.name.split("-")[0]
    config = MODELS[name].config.model_validate({**data["model"], "name": name})
    assert config.num_threads is None or config.num_threads >= 1


def test_config_rejects_bad_fields():
    with pytest.raises(ValueError):
        SASRecConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError):
        GRU4RecConfig(unknown_field=1)


def test_denormals_are_flushed_only_inside_training_and_scoring(split):
    """Flushing denormals speeds up CPU training; it is thread state, so it must not outlive the
    call into recfm (the caller's float arithmetic would silently change)."""
    tiny = np.array([1e-310])  # a denormal double: flushed to 0 when the flag is on
    model = make(SASRec, SASRecConfig, MODELS_UNDER_TEST[0][2], epochs=1)
    model.fit(LeaveOneOut(split.train, split.valid.subset(slice(0, 10)), split.test), log=quiet)
    model.score([[1, 2]])
    assert float(torch.from_numpy(tiny * 1.0).mul(1.0)[0]) != 0.0


@pytest.mark.parametrize("i", range(len(MODELS_UNDER_TEST)), ids=IDS)
def test_a_training_rows_last_target_state_is_the_state_inference_gives_that_history(i):
    """The state that predicts a training row's last item is the one scoring that row's history
    alone gives (for from_end positions: the history's last item at position 0); models counting
    positions from the start see every prefix as inference does."""
    model_cls, cfg_cls, extra = MODELS_UNDER_TEST[i]
    model = make(model_cls, cfg_cls, extra, max_len=8)
    model.net.double().eval()
    rows = [[3, 4, 5, 6, 7, 8], [10, 11, 12, 0, 0, 0], [20, 21, 0, 0, 0, 0]]
    hidden, labels, mask, _ = trainer_module.NextItemLoss(model.net).target_states(torch.tensor(rows))
    every_prefix = getattr(model.config, "positions", "from_start") == "from_start"
    for r, row in enumerate(rows):
        real = [x for x in row if x]
        assert int(mask[r].sum()) == len(real) - 1
        for t in range(len(real) - 1) if every_prefix else [len(real) - 2]:
            alone = model._encode_last([real[: t + 1]])[0]
            assert torch.allclose(hidden[r, t], alone, atol=1e-10), (row, t)


def test_from_end_positions_put_every_rows_last_item_at_zero():
    model = make(SASRec, SASRecConfig, MODELS_UNDER_TEST[2][2])
    seqs = torch.tensor([[5, 6, 7, 0], [1, 0, 0, 0], [1, 2, 3, 4]])
    assert model.net.position_ids(seqs).tolist() == [[2, 1, 0, 0], [0, 0, 0, 0], [3, 2, 1, 0]]
    default = make(SASRec, SASRecConfig, MODELS_UNDER_TEST[0][2])
    assert default.net.position_ids(seqs).tolist() == [0, 1, 2, 3]


def test_the_authors_block_defaults_to_a_feed_forward_as_wide_as_the_model():
    model = make(SASRec, SASRecConfig, MODELS_UNDER_TEST[2][2])
    assert model.net.blocks[0].ff1.out_features == 32
    assert make(SASRec, SASRecConfig, MODELS_UNDER_TEST[0][2]).net.blocks[0].ff1.out_features == 128
    assert torch.equal(model.net.item_emb.weight[0], torch.zeros(32))  # padding row stays zero after Xavier


@pytest.mark.parametrize("cls,cfg_cls,kw", MODELS_UNDER_TEST[:2], ids=IDS[:2])
def test_item_dropout_drops_one_table_per_step_and_nothing_at_inference(cls, cfg_cls, kw):
    model = make(cls, cfg_cls, {**kw, "item_dropout": 0.5})
    net = model.net.train()
    torch.manual_seed(0)
    a, b = net.item_embeddings(), net.item_embeddings()
    assert not torch.equal(a, b) and (a == 0).float().mean() > 0.3  # a fresh mask per call (per step)
    assert torch.equal(a[0], torch.zeros_like(a[0]))
    seqs = torch.tensor([[1, 2, 3]])
    net.drop.p = 0.0  # only the table's dropout left: encoding with a given table reads that table
    for block in getattr(net, "blocks", []):
        block.p, block.drop.p = 0.0, 0.0
    assert not torch.allclose(net.encode(seqs, a), net.encode(seqs, net.item_emb.weight))  # the given table is read
    net.eval()
    assert torch.equal(net.item_embeddings(), net.item_emb.weight)
