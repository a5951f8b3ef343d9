"""Multi-task records from MovieLens-shaped data, their JSON round trip and the RecFound loader."""

from __future__ import annotations

import json

import pytest

from movielens_fixture import fake_movielens
from recfm.multitask.movielens_tasks import MovieLensTasks, TaskConfig
from recfm.multitask.recfound_jsonl import read_recfound_jsonl
from recfm.multitask.records import EMB_TASKS, FREE_TEXT_TASKS, GEN_TASKS, SENTIMENTS, EmbRecord, GenRecord, read_records, write_records

@pytest.fixture(scope="module")
def tasks():
    ml1m, ml100k = fake_movielens()
    return MovieLensTasks(ml1m, ml100k, TaskConfig(history_len=5, max_records=None)).build()


def test_every_task_has_records_in_every_split(tasks):
    assert set(tasks) == set(GEN_TASKS) | set(EMB_TASKS)
    for task, splits in tasks.items():
        for split, records in splits.items():
            assert records, f"{task}/{split} is empty"
            for r in records:
                if isinstance(r, GenRecord):
                    assert r.options and r.response in r.options and r.instruction
                else:
                    assert r.query and r.positive


def test_users_and_pairs_do_not_cross_splits(tasks):
    def inputs(task, split):
        return {r.input for r in tasks[task][split]}

    for task in ("seqrec", "sentiment"):
        assert not inputs(task, "train") & (inputs(task, "valid") | inputs(task, "test"))
    pairs = {s: {frozenset(r.input.splitlines()) for r in tasks["relation"][s] if r.response.startswith("watched")}
             for s in ("train", "valid", "test")}
    assert not pairs["train"] & (pairs["valid"] | pairs["test"])
    i2i = {s: {(r.query, r.positive) for r in tasks["item2item"][s]} for s in ("train", "test")}
    assert not {frozenset(p) for p in i2i["train"]} & {frozenset(p) for p in i2i["test"]}


def test_seqrec_has_20_options_and_sentiment_follows_the_rating(tasks):
    r = tasks["seqrec"]["test"][0]
    assert len(r.options) == 20 and len(set(r.options)) == 20
    assert r.input.count("\n") == 5  # "History:" + 5 items
    assert {r.response for r in tasks["sentiment"]["train"]} <= set(SENTIMENTS)


def test_building_is_seeded(tasks):
    ml1m, ml100k = fake_movielens()
    again = MovieLensTasks(ml1m, ml100k, TaskConfig(history_len=5, max_records=None)).build(["seqrec", "relation"])
    assert again["seqrec"]["test"] == tasks["seqrec"]["test"] and again["relation"]["valid"] == tasks["relation"]["valid"]


def test_free_text_profiles_summarise_only_what_the_prompt_shows():
    ml1m, ml100k = fake_movielens()
    built = MovieLensTasks(ml1m, ml100k, TaskConfig(history_len=5, max_records=None)).build(list(FREE_TEXT_TASKS))
    for split in ("train", "valid", "test"):
        users, items = built["user_profile"][split], built["item_profile"][split]
        assert users and items and all(not r.options for r in users + items)
        for r in users:
            genres = r.response.split(";")[0].removeprefix("likes ").split(" and ")
            decade = r.response.rsplit("from the ", 1)[1]
            assert all(g in r.input for g in genres)  # every genre named is one of the shown movies'
            shown_years = [line.split("(")[-1][:3] for line in r.input.splitlines()[1:]]
            assert decade[:3] in shown_years
        for r in items:
            assert r.response.startswith("released in the ") and "genres: " in r.response
    assert {r.input for r in built["item_profile"]["train"]}.isdisjoint({r.input for r in built["item_profile"]["test"]})


def test_jsonl_round_trip_and_bad_lines(tmp_path, tasks):
    records = tasks["seqrec"]["train"][:3] + tasks["query2item"]["train"][:2]
    assert write_records(records, tmp_path / "r.jsonl") == 5
    assert read_records(tmp_path / "r.jsonl") == records
    (tmp_path / "bad.jsonl").write_text('{"task": "x", "oops": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_records(tmp_path / "bad.jsonl")


def test_recfound_published_format(tmp_path):
    gen = {"text": ["Pick the next item. Options: A: x B: y", "B"], "task": "Sequential_Recommendation", "source": "Books"}
    multi = {"text": ["first question", "first answer", "second question", "yes"], "task": "Product_Matching"}
    emb = {"query": ["Retrieve the next item", "User bought: a, b"], "pos": [["", "Title: c"]],
           "neg": [["", "Title: d"], ["", ["Title: e", "Title: f"]]], "task": "Emb_user", "source": "Books"}
    (tmp_path / "g.jsonl").write_text("\n".join(json.dumps(x) for x in (gen, multi, emb)) + "\n")
    g, m, e = read_recfound_jsonl(tmp_path / "g.jsonl")
    assert g == GenRecord("Sequential_Recommendation", "", "Pick the next item. Options: A: x B: y", "B")
    assert m.input == "first question\n\nfirst answer\n\nsecond question" and m.response == "yes"
    assert e == EmbRecord("Emb_user", "Retrieve the next item", "User bought: a, b", "Title: c",
                          ["Title: d", "Title: e", "Title: f"])
    (tmp_path / "a.json").write_text(json.dumps([emb]))
    assert read_recfound_jsonl(tmp_path / "a.json") == [e]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": ["only a prompt"], "task": "t"}))
    with pytest.raises(ValueError, match="pairs"):
        read_recfound_jsonl(tmp_path / "bad.jsonl")
