"""Speed of the textual-ID machinery on a real catalog (Amazon Beauty, 12,101 item IDs).

1. Constrained decoding: the same model (the CPU preset's T5, d_model 128), beam 10, the same
   test users; our vectorised trie (``TrieLogitsProcessor``) vs transformers
   ``generate(prefix_allowed_tokens_fn=...)`` over a dict-of-dicts trie (the public code's way)
   vs unconstrained beam search. Reports the whole search time, the time inside the constraint
   alone, and whether the top-10 lists are identical.
2. ID assignment: batched Algorithm 1 vs one item at a time (the paper's loop), the same
   generator and schedule; both must give unique, non-empty IDs.

Writes docs/results.md between the 'textid-speed' markers.

    python benchmarks/textid_speed.py --users 256 --items 1000
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import write_section  # noqa: E402


class Timed:
    """Wraps a logits processor and adds up the seconds spent inside it."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0

    def __call__(self, input_ids, scores):
        t0 = time.perf_counter()
        out = self.inner(input_ids, scores)
        self.seconds += time.perf_counter() - t0
        return out


def decoding(args) -> list[str]:
    from transformers import LogitsProcessorList
    from transformers.generation.logits_process import PrefixConstrainedLogitsProcessor

    from recfm.data.registry import load_dataset
    from recfm.textid.config import Catalog, TextIDConfig
    from recfm.textid.constrained import TrieLogitsProcessor, constrained_topk
    from recfm.textid.reference import dict_trie, make_prefix_allowed_tokens_fn
    from recfm.textid.training import TextIDModel

    data = load_dataset(args.dataset)
    cfg = TextIDConfig(backbone="t5-tiny-scratch", t5={"d_model": 128, "d_ff": 512, "d_kv": 32, "dropout_rate": 0.0},
                       vocab_size=4000, initial_ids={"kind": "table", "path": "dataset:item_initial_ids.txt"},
                       prompt_ids="item", max_history=10, num_beams=args.beams, warm_start_epochs=0)
    from recfm.data.registry import resolve

    model = TextIDModel(cfg, data.n_items, Catalog.of(data, resolve(args.dataset)[2]))
    model._build(lambda s: None)
    if args.weights:  # a trained recommender folder (e.g. runs/bench/amazon-beauty/textid/recommender)
        from recfm.models import load_seq2seq

        model.rec.model, _ = load_seq2seq(args.weights)
    rec = model.rec
    trie = rec.items.trie
    cases = data.split().test.subset(slice(0, args.users))
    prompts = rec.prompts(cases.histories)
    enc = rec.batch(prompts)
    batches = [{"input_ids": enc["input_ids"][s : s + args.batch], "attention_mask": enc["attention_mask"][s : s + args.batch]}
               for s in range(0, args.users, args.batch)]
    k = args.beams

    def stock_cache():  # what plain generate() builds: reorders the cross-attention cache every step
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        return EncoderDecoderCache(DynamicCache(), DynamicCache())

    variants = {  # name -> (our trie processor?, dict-trie prefix fn?, stock cache?)
        "ours: vectorised trie processor + shared cross-attention cache": ("trie", False),
        "public code: generate(prefix_allowed_tokens_fn), dict trie, stock cache": ("prefix", True),
        "prefix_allowed_tokens_fn, dict trie, our cache": ("prefix", False),
        "unconstrained beam search, our cache": ("none", False),
        "unconstrained beam search, stock cache": ("none", True),
    }
    results = {}
    for name, (kind, stock) in variants.items():
        total, inside, lists = 0.0, 0.0, []
        for b in batches:
            kwargs = {"past_key_values": stock_cache()} if stock else {}
            timer = None
            if kind == "trie":
                timer = Timed(TrieLogitsProcessor(trie, 1, inplace=True))
            elif kind == "prefix":
                timer = Timed(PrefixConstrainedLogitsProcessor(make_prefix_allowed_tokens_fn(dict_trie(trie), 1), k))
            if timer is not None:
                kwargs["logits_processor"] = LogitsProcessorList([timer])
            t0 = time.perf_counter()
            items, _ = constrained_topk(rec.model, rec.tokenizer, trie, b, k, num_beams=k, constraint="none", **kwargs)
            total += time.perf_counter() - t0
            inside += timer.seconds if timer else 0.0
            lists += items.tolist()
        results[name] = (total, inside, lists)
        print(f"{name}: {total:.2f}s total, {inside:.3f}s in the constraint", flush=True)
    names = list(results)
    ours, public, prefix_ours, free = (results[n] for n in names[:4])
    same = ours[2] == public[2] == prefix_ours[2]
    lines = [
        f"Command: `python benchmarks/textid_speed.py --users {args.users} --batch {args.batch} --beams {k}"
        f"{' --weights ' + args.weights if args.weights else ''}`; {dt.date.today().isoformat()}; "
        f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, CPU.  ",
        f"{args.dataset}: {trie.n_items} item IDs, trie of {trie.n_nodes} nodes, longest ID {trie.max_len} tokens; "
        f"{args.users} test users in batches of {args.batch}, beam {k}, top-{k} lists; model: "
        f"{'trained ' + args.weights if args.weights else 'the CPU preset T5 (d_model 128), untrained'}.",
        "",
        "| decoding | whole search s | users/s | s inside the constraint | public code / this (search) | public code / this (constraint) | this / unconstrained (our cache) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (total, inside, _) in results.items():
        ratio_in = f"{public[1] / inside:.1f}x" if inside else "-"
        lines.append(f"| {name} | {total:.2f} | {args.users / total:.1f} | {inside:.3f} | {public[0] / total:.2f}x | "
                     f"{ratio_in} | {total / free[0]:.2f}x |")
    lines += ["", f"Top-{k} lists identical between ours and both prefix_allowed_tokens_fn runs: **{same}** "
              f"({len(ours[2])} users)."]
    return lines


def assignment(args) -> list[str]:
    from recfm.data.registry import load_dataset
    from recfm.textid.generator import IDGenerator
    from recfm.textid.ids import read_id_table
    from recfm.textid.unique_ids import UniqueIdConfig

    data = load_dataset(args.dataset)
    texts = data.item_text[: args.items]
    from recfm.data.registry import resolve

    table = read_id_table(resolve(args.dataset)[2] / "item_initial_ids.txt")
    targets = [table.get(i, "") for i in data.item_ids[: args.items]]
    gen = IDGenerator.from_texts(data.item_text, size="tiny", vocab_size=4000, dropout_rate=0.0)
    gen.warm_start(texts, targets, epochs=args.warm_epochs, progress=False)
    cfg = UniqueIdConfig(batch_size=args.batch)
    rows = []
    for name, sequential in (("batched Algorithm 1", False), ("one item at a time", True)):
        t0 = time.perf_counter()
        ids, stats = gen.assign(texts, cfg, sequential=sequential)
        secs = time.perf_counter() - t0
        unique = len(set(ids)) == len(ids) and all(ids)
        rows.append((name, secs, stats, unique))
        print(f"{name}: {secs:.1f}s, unique={unique}, {stats.as_dict()}", flush=True)
    (bn, bs, bst, bu), (sn, ss, sst, su) = rows
    lines = [
        f"Command: `python benchmarks/textid_speed.py --items {args.items} --warm-epochs {args.warm_epochs}`; "
        f"{dt.date.today().isoformat()}; {platform.machine()}, {os.cpu_count()} cores, CPU.  ",
        f"The first {args.items} {args.dataset} items; generator: tiny T5 warm-started {args.warm_epochs} epoch(s) on "
        "the paper's initial IDs; schedule of the paper (5 groups, penalty 0.1..1.0, lengths [1,10) then [10,20)).",
        "",
        "| assignment | seconds | items/s | unique & non-empty | second attempt | longer ID | suffixed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, secs, st, uq in rows:
        d = st.as_dict()
        lines.append(f"| {name} | {secs:.1f} | {args.items / secs:.1f} | {uq} | {d['second_attempt_share']:.2%} | "
                     f"{d['longer_id_share']:.2%} | {d['suffixed']} |")
    lines += ["", f"Speed-up of the batched version: **{ss / bs:.1f}x** (target >= 10x)."]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="amazon-beauty")
    ap.add_argument("--users", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--beams", type=int, default=10)
    ap.add_argument("--weights", default=None, help="a trained recommender folder to time instead of a fresh model")
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--warm-epochs", type=int, default=2)
    ap.add_argument("--only", choices=["decoding", "assignment"], default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    if args.only in (None, "decoding"):
        write_section("textid-decoding", "\n".join(decoding(args)))
    if args.only in (None, "assignment"):
        write_section("textid-assignment", "\n".join(assignment(args)))
    print("wrote docs/results.md")


if __name__ == "__main__":
    main()
