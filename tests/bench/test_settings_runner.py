"""The settings matrix and the resumable runner (with a stand-in scorer; real scorers have their own tests)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recfm.bench.report import transfer_rows, write_reports
from recfm.bench.runner import BenchConfig, BenchOutputError, BenchRunner, ModelSpec
from recfm.bench.settings import plans_for
from recfm.data.dataset import SequenceDataset

DOMAINS = {"ml-a": "movies", "ml-b": "movies", "shop": "retail", "books": "books"}


def keys(setting, target="ml-a", **kw):
    return [p.key for p in plans_for(setting, target, DOMAINS, **kw)]


def test_settings_name_their_training_data():
    assert keys("zero_shot") == ["zero-shot"]
    assert keys("target") == ["ml-a"]
    assert keys("same_domain_other") == ["ml-b"]
    assert keys("other_domain") == ["shop", "books"]
    assert keys("domain_all") == ["ml-a+ml-b"]
    assert keys("zero_resource") == ["shop+books"]
    assert keys("all") == ["ml-a+ml-b+shop+books"]
    assert keys("two_stage") == ["shop+books > ml-a"]
    assert keys("two_stage", two_stage_order="target_then_others") == ["ml-a > shop+books"]
    assert keys("same_domain_other", target="shop") == []
    with pytest.raises(ValueError, match="unknown setting"):
        plans_for("nope", "ml-a", DOMAINS)
    with pytest.raises(ValueError, match="no domain"):
        plans_for("target", "elsewhere", DOMAINS)


def tiny_dataset(name: str, n_users=40, n_items=30, seed=0) -> SequenceDataset:
    rng = np.random.default_rng(seed)
    seqs = [rng.choice(np.arange(1, n_items + 1), size=8, replace=False) for _ in range(n_users)]
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])
    return SequenceDataset(name, [f"i{i}" for i in range(n_items)], [f"item {i} text" for i in range(n_items)],
                           [f"item {i}" for i in range(n_items)], [f"u{u}" for u in range(n_users)], offsets,
                           np.concatenate(seqs).astype(np.int64), np.zeros(offsets[-1]))


class FakeScorer:
    """Scores by a per-scorer bias learnt in 'fine-tuning'; counts calls."""

    loads = 0

    def __init__(self):
        FakeScorer.loads += 1
        self.bias = 0.0

    def score(self, histories, candidates):
        return np.array([hash((len(h), c)) % 997 / 997 + self.bias for h, c in zip(histories, candidates)])


@pytest.fixture()
def fake(monkeypatch, tmp_path):
    monkeypatch.setenv("RECFM_CACHE_DIR", str(tmp_path / "cache"))
    data = {"ml-a": tiny_dataset("ml-a", seed=1), "shop": tiny_dataset("shop", seed=2)}
    calls = {"finetune": 0, "crash_after": None, "scored": 0}
    monkeypatch.setattr(BenchRunner, "dataset", lambda self, name: data[name])
    import recfm.bench.finetune as ft
    import recfm.bench.scorers as sc

    def load_scorer(path, paradigm, **kw):
        return FakeScorer()

    def finetune(scorer, train, valid, cfg, output_dir=None, log=print):
        calls["finetune"] += 1
        calls["config"] = cfg
        scorer.bias = 0.1
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "adapter.txt").write_text("bias=0.1")
        return {"steps": 1}

    def load_adapter(scorer, path):
        scorer.bias = 0.1

    original_score = FakeScorer.score

    def score(self, h, c):
        calls["scored"] += 1
        if calls["crash_after"] is not None and calls["scored"] > calls["crash_after"]:
            raise KeyboardInterrupt("killed")
        return original_score(self, h, c)

    monkeypatch.setattr(FakeScorer, "score", score)
    monkeypatch.setattr(sc, "load_scorer", load_scorer)
    monkeypatch.setattr(ft, "finetune", finetune)
    monkeypatch.setattr(ft, "load_adapter", load_adapter)
    return calls


def bench_config(tmp_path) -> BenchConfig:
    return BenchConfig(output=str(tmp_path / "out"), datasets={"ml-a": {"domain": "movies"}, "shop": {"domain": "retail"}},
                       targets=["ml-a", "shop"], models=[{"name": "m", "path": "x", "paradigm": "prompt"}],
                       settings=["zero_shot", "target", "other_domain"], test_users=20, valid_users=10, train_users=20)


def test_runner_resumes_after_a_kill_and_never_recomputes_a_cell(fake, tmp_path):
    cfg = bench_config(tmp_path)
    fake["crash_after"] = 3
    with pytest.raises(KeyboardInterrupt):
        BenchRunner(cfg).run()
    done = sorted((tmp_path / "out").glob("cells/*/*/*.json"))
    assert len(done) == 3
    stamps = {p: p.stat().st_mtime_ns for p in done}
    fake["crash_after"] = None
    cells = BenchRunner(cfg).run()
    assert len(cells) == 6  # 2 targets x (zero-shot, target, one other-domain source)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items()), "finished cells were rewritten"
    assert fake["finetune"] == 2, "one fine-tuning per plan (ml-a, shop), shared by its two targets"
    assert fake["scored"] == 3 + 1 + 3  # 3 before the kill, the killed one, then the 3 remaining
    # reports
    paths = write_reports(tmp_path / "out")
    assert paths["heatmap"].stat().st_size > 1000 and "| ml-a |" in paths["leaderboard"].read_text()
    rows = transfer_rows(cells)
    header = paths["transfer_csv"].read_text().splitlines()[0]
    assert header.startswith("model,source,setting,target,auc")
    ft = [r for r in rows if r["source"] != "zero-shot"]
    assert len(ft) == 4 and all(r["gain_over_zero_shot"] is not None for r in ft)
    cell = json.loads(next((tmp_path / "out").glob("cells/m/shop/ml-a.json")).read_text())
    assert cell["setting"] == "other_domain" and cell["target"] == "shop" and cell["finetune"]["plan"] == "ml-a"


def test_model_finetune_fields_override_the_config_and_titles_are_cut(fake, tmp_path):
    cfg = bench_config(tmp_path).model_copy(update={
        "finetune": {"lr": 1e-4, "max_minutes": 9, "lora_r": 8},
        "models": [ModelSpec(name="m", path="x", paradigm="prompt", finetune={"max_minutes": 2, "lora_last_layers": 6})],
        "settings": ["target"], "targets": ["ml-a"], "max_title_chars": 8,
    })
    runner = BenchRunner(cfg)
    runner.run()
    used = fake["config"]
    assert (used.lr, used.max_minutes, used.lora_r, used.lora_last_layers) == (1e-4, 2, 8, 6)
    _, histories, candidates = runner.texts("ml-a", "test")
    assert max(len(t) for t in candidates) <= 8 and max(len(t) for h in histories for t in h) <= 8


def test_a_bench_folder_grows_but_never_mixes_two_configs(fake, tmp_path):
    cfg = bench_config(tmp_path).model_copy(update={"settings": ["zero_shot"], "targets": ["ml-a"]})
    BenchRunner(cfg).run()
    scored = fake["scored"]
    # more targets and models add cells beside the finished ones
    grown = cfg.model_copy(update={"targets": ["ml-a", "shop"],
                                   "models": [*cfg.models, ModelSpec(name="m2", path="y", paradigm="embedding")]})
    assert len(BenchRunner(grown).run()) == 4 and fake["scored"] == scored + 3
    # what a finished cell was computed with may not change under it
    for change in ({"test_users": 30}, {"task": cfg.task.model_copy(update={"history_len": 5})},
                   {"models": [ModelSpec(name="m", path="other", paradigm="prompt")]}):
        before = fake["scored"]
        with pytest.raises(BenchOutputError, match="another config") as e:
            BenchRunner(grown.model_copy(update=change)).run()
        assert fake["scored"] == before and "choose another --output" in str(e.value)
    assert "models[m].path ('x' there, 'other' now)" in str(e.value)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(BenchOutputError, match="holds no bench run"):
        BenchRunner(cfg, output=foreign).run()


def test_mind_goodreads_and_hm_folders_enter_the_matrix_with_their_domains(tmp_path, monkeypatch):
    """A registered name under the shared data root (``mind``) and a folder given by path (H&M) get
    the domain their format implies, so the other-domain setting pairs them without a domain line."""
    from tests.data.test_source_mind_goodreads_hm import HM_ARTICLES, HM_TRANSACTIONS, MIND_BEHAVIORS, MIND_NEWS

    from recfm.data.registry import resolve

    (tmp_path / "shared" / "mind").mkdir(parents=True)
    (tmp_path / "shared" / "mind" / "behaviors.tsv").write_text(MIND_BEHAVIORS)
    (tmp_path / "shared" / "mind" / "news.tsv").write_text(MIND_NEWS)
    (tmp_path / "h-and-m").mkdir()
    (tmp_path / "h-and-m" / "transactions_train.csv").write_text(HM_TRANSACTIONS)
    (tmp_path / "h-and-m" / "articles.csv").write_text(HM_ARTICLES)
    monkeypatch.setenv("RECFM_SHARED_DATA", str(tmp_path / "shared"))
    assert resolve("mind")[1:3] == ("mind", tmp_path / "shared" / "mind")
    hm = str(tmp_path / "h-and-m")
    config = BenchConfig(datasets={"mind": {}, hm: {}, "movielens-1m": {}}, targets=["mind"],
                         models=[{"name": "m", "path": "x", "paradigm": "embedding"}])
    assert config.domains() == {"mind": "news", hm: "fashion", "movielens-1m": "movies"}
    assert [p.key for p in plans_for("other_domain", "mind", config.domains())] == [hm, "movielens-1m"]
    with pytest.raises(ValueError, match="no domain"):
        BenchConfig(datasets={str(tmp_path / "shared"): {}}, targets=["mind"],
                    models=[{"name": "m", "path": "x", "paradigm": "embedding"}]).domains()
    monkeypatch.setenv("RECFM_SHARED_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(Exception, match="behaviors.tsv and news.tsv"):
        resolve("mind")
