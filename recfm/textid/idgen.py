"""IDGenRec's ID generator side: unique textual item IDs (Algorithm 1, batched), initial IDs, and a
seq2seq ``IDGenerator`` that can be warm-started on target IDs.

    from recfm.textid.idgen import IDGenerator, InitialIds, UniqueIdConfig, assign_unique_ids, initial_ids

    targets, report = initial_ids(ds.item_ids, ds.item_text, InitialIds(kind="extractive"))
    gen = IDGenerator.from_texts(ds.item_text, size="tiny")        # Unigram tokenizer + random T5
    gen.warm_start(ds.item_text, targets, epochs=3)                # teacher forcing, text -> ID
    ids, stats = gen.assign(ds.item_text)                          # unique IDs, Algorithm 1
    stats.as_dict()   # items, second_attempt_share, longer_id_share, suffixed, rounds, seconds

Algorithm 1 (paper section 2.3, implementation details in section 3): per item, generate k=5
candidates with diverse beam search at diversity penalty 0.1; take the first candidate (group
order) not yet in the global set U; if none is free, raise the penalty by 0.1; past 1.0 the ID
length range moves from [1, 10) to [10, 20) tokens and the penalty restarts at 0.1. The paper's
pseudo-code initialises penalty and length outside the item loop, but its statistics ("11.20% of
items needed a second attempt") and the authors' code reset them per item; so do we.

``assign_unique_ids`` (batched) and ``assign_unique_ids_sequential`` (the paper's loop, one item
and one generation call at a time) differ only in WHEN an item claims its ID:

* batched: round r generates candidates for all still-unassigned items at once (they all sit at
  the same (penalty, length) step, since every item starts at the first step and each failed
  round moves all failures one step on); claims are then made item by item in item order against
  the global U, so the result is deterministic;
* sequential: item i finishes all its rounds before item i+1 starts.

Both only ever assign an ID after checking it against the same global U and adding it there, and
both end with the same deterministic last resort (``"<id> 2"``, ``"<id> 3"``, ... the first that
is free), so both guarantee the same thing: every item gets a non-empty normalised ID, no two
items share one. The IDs themselves can differ: in the batched loop an item's round-1 candidate
can be taken by a later item's round-1 claim before the earlier item reaches round 2.

ID lengths are in generator tokens, EOS not counted; a range ``(lo, hi)`` is half-open like the
paper's ``[1, 10)`` and reaches the candidate function as inclusive ``min_len=lo, max_len=hi-1``.
"""

from __future__ import annotations

import logging
import math
import re
import string
import time
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from recfm import distributed
from recfm.textid.diverse_beam import diverse_beam_search

log = logging.getLogger("recfm.textid")

CandidateFn = Callable[[list[str], float, int, int], list[list[str]]]
"""``candidate_fn(texts, penalty, min_len, max_len) -> candidates per text`` (lengths inclusive)."""


# ---------------------------------------------------------------------------------------------
# Normalisation and the last-resort suffix
# ---------------------------------------------------------------------------------------------

_PUNCT = set(string.punctuation) | set("\u2018\u2019\u201c\u201d\u2013\u2014\u2026\u00b7\u2022")


def _is_punct(ch: str) -> bool:
    return ch in _PUNCT or unicodedata.category(ch).startswith("P")


def normalize_id(text: str) -> str:
    """NFKC, lowercase, whitespace runs to one space, punctuation stripped at both ends.
    ``""`` means the ID is invalid (empty, or punctuation only)."""
    s = " ".join(unicodedata.normalize("NFKC", text or "").lower().split())
    i, j = 0, len(s)
    while i < j and (_is_punct(s[i]) or s[i].isspace()):
        i += 1
    while j > i and (_is_punct(s[j - 1]) or s[j - 1].isspace()):
        j -= 1
    return s[i:j]


def with_suffix(base: str, taken: set[str], start: int = 2) -> str:
    """The first of ``"base 2"``, ``"base 3"``, ... not in ``taken`` (``base`` normalised; an empty
    base becomes ``"item"``)."""
    base = normalize_id(base) or "item"
    n = start
    while f"{base} {n}" in taken:
        n += 1
    return f"{base} {n}"


def make_unique(ids: Sequence[str], taken: Iterable[str] = (), start: int = 2) -> tuple[list[str], int]:
    """Normalise ``ids`` and make them unique in order with the suffix rule: the first holder of an
    ID keeps it, later duplicates (and empty IDs, base ``"item"``) get ``"<id> 2"``, ``"<id> 3"``,
    ... Returns the IDs and how many got a suffix. ``taken``: IDs already in use elsewhere."""
    used = set(taken)
    out, n_suffixed = [], 0
    for x in ids:
        x = normalize_id(x)
        if not x or x in used:
            x = with_suffix(x, used, start)
            n_suffixed += 1
        used.add(x)
        out.append(x)
    return out, n_suffixed


# ---------------------------------------------------------------------------------------------
# Algorithm 1
# ---------------------------------------------------------------------------------------------


class UniqueIdConfig(BaseModel):
    """Diverse ID generation (paper section 3): k groups, penalty 0.1 step 0.1 up to 1.0, then the
    next length range with the penalty reset; after the last range, the suffix rule."""

    model_config = ConfigDict(extra="forbid")

    num_groups: int = Field(5, ge=1, description="k: candidates (DBS groups) per generation call")
    beams_per_group: int = Field(1, ge=1, description="beams inside each DBS group")
    penalty_start: float = Field(0.1, ge=0.0)
    penalty_step: float = Field(0.1, gt=0.0)
    penalty_max: float = Field(1.0, ge=0.0)
    length_ranges: list[tuple[int, int]] = Field(
        default_factory=lambda: [(1, 10), (10, 20)],
        description="half-open ID length ranges in tokens (EOS not counted), tried in order",
    )
    batch_size: int = Field(64, ge=1, description="items per batched generation chunk (real generator)")
    suffix_start: int = Field(2, ge=1, description="first number of the last-resort suffix")

    @model_validator(mode="after")
    def _check(self) -> "UniqueIdConfig":
        if not self.length_ranges:
            raise ValueError("length_ranges needs at least one range")
        for lo, hi in self.length_ranges:
            if not 0 <= lo < hi:
                raise ValueError(f"length range [{lo}, {hi}) is empty")
            if hi - 1 < 1:
                raise ValueError(f"length range [{lo}, {hi}) allows no token")
        if self.penalty_max < self.penalty_start:
            raise ValueError("penalty_max < penalty_start")
        return self

    def schedule(self) -> list[tuple[float, int, int]]:
        """The generation attempts in order: ``(penalty, min_len, max_len)``, lengths inclusive.
        Penalties are computed as start + i * step (rounded), never accumulated, so 1.0 is reached
        exactly (the authors' ``dp += 0.1; if dp == 1`` never fires in floating point)."""
        n = int(math.floor((self.penalty_max - self.penalty_start) / self.penalty_step + 1e-9)) + 1
        penalties = [round(self.penalty_start + i * self.penalty_step, 10) for i in range(n)]
        return [(p, lo, hi - 1) for lo, hi in self.length_ranges for p in penalties]


@dataclass
class AssignStats:
    """How hard uniqueness was. ``second_attempt``: items that needed more than one generation
    round; ``longer_id``: items that reached a later (longer) length range; ``suffixed``: items
    that exhausted the schedule and got the last-resort suffix (counted in both shares too).
    ``attempts_histogram``: generation rounds an item needed -> number of items; a suffixed item
    counts as ``len(schedule) + 1``."""

    items: int = 0
    second_attempt: int = 0
    longer_id: int = 0
    suffixed: int = 0
    rounds: int = 0  # candidate_fn calls
    generated: int = 0  # item-generations (sum over rounds of items in that round)
    max_attempts: int = 0  # most rounds any item needed
    seconds: float = 0.0
    attempts_histogram: dict[int, int] = field(default_factory=dict)  # rounds needed -> items

    @property
    def second_attempt_share(self) -> float:
        return self.second_attempt / self.items if self.items else 0.0

    @property
    def longer_id_share(self) -> float:
        return self.longer_id / self.items if self.items else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["second_attempt_share"] = self.second_attempt_share
        d["longer_id_share"] = self.longer_id_share
        d["items_per_second"] = self.items / self.seconds if self.seconds > 0 else None
        return d


def _fallback_base(text: str, words: int = 5) -> str:
    return normalize_id(" ".join(_WORD.findall(_strip_fields(text).lower())[:words])) or "item"


def _finish_stats(stats: AssignStats, attempts: list[int], n_steps: int, per_range: int, t0: float) -> AssignStats:
    stats.items = len(attempts)
    stats.second_attempt = sum(a > 1 for a in attempts)
    stats.longer_id = sum(a > per_range for a in attempts)
    stats.max_attempts = max(attempts, default=0)
    stats.attempts_histogram = dict(sorted(Counter(attempts).items()))
    stats.seconds = time.perf_counter() - t0
    return stats


def _check_candidates(cands: list[list[str]], n: int) -> list[list[str]]:
    if len(cands) != n:
        raise ValueError(f"candidate_fn returned {len(cands)} candidate lists for {n} texts")
    return [[normalize_id(c) for c in per] for per in cands]


def assign_unique_ids(
    texts: Sequence[str],
    candidate_fn: CandidateFn,
    config: UniqueIdConfig | None = None,
    *,
    taken: Iterable[str] = (),
    progress: bool = False,
) -> tuple[list[str], AssignStats]:
    """Algorithm 1, batched: one ``candidate_fn`` call per round for ALL unassigned items, claims
    in item order against the global set U (``taken`` seeds U, e.g. with user IDs). Items without a
    free candidate move one step on in ``config.schedule()``; past its end they take the suffix
    rule on their first candidate of the last round. Returns ``(ids, stats)``; ``ids`` are unique,
    normalised and non-empty."""
    cfg = config or UniqueIdConfig()
    t0 = time.perf_counter()
    texts = list(texts)
    schedule = cfg.schedule()
    per_range = len(schedule) // len(cfg.length_ranges)
    used: set[str] = set(taken)
    ids: list[str | None] = [None] * len(texts)
    attempts = [0] * len(texts)
    last_base: list[str] = [""] * len(texts)
    stats = AssignStats()
    pending = list(range(len(texts)))
    for step, (penalty, lo, hi) in enumerate(schedule):
        if not pending:
            break
        # Generation is the cost: several processes each generate for their share of the pending items,
        # then every process makes the same claims in item order from the gathered candidates.
        cands = distributed.map_sharded_list(
            lambda idx: _check_candidates(candidate_fn([texts[pending[j]] for j in idx], penalty, lo, hi), len(idx)),
            len(pending))
        stats.rounds += 1
        stats.generated += len(pending)
        still = []
        for i, per in zip(pending, cands):  # item order: deterministic claims
            attempts[i] = step + 1
            free = next((c for c in per if c and c not in used), None)
            if free is None:
                last_base[i] = next((c for c in per if c), last_base[i])
                still.append(i)
            else:
                used.add(free)
                ids[i] = free
        log.log(logging.INFO if progress else logging.DEBUG, "round %d (penalty %.1f, length %d-%d): %d items, "
                "%d assigned, %d left", step + 1, penalty, lo, hi, len(pending), len(pending) - len(still), len(still))
        pending = still
    for i in pending:  # schedule exhausted: deterministic last resort
        ids[i] = with_suffix(last_base[i] or _fallback_base(texts[i]), used, cfg.suffix_start)
        used.add(ids[i])
        attempts[i] = len(schedule) + 1
        stats.suffixed += 1
    return [x for x in ids if x is not None], _finish_stats(stats, attempts, len(schedule), per_range, t0)


def assign_unique_ids_sequential(
    texts: Sequence[str],
    candidate_fn: CandidateFn,
    config: UniqueIdConfig | None = None,
    *,
    taken: Iterable[str] = (),
) -> tuple[list[str], AssignStats]:
    """Algorithm 1 exactly as the paper's loop: one item at a time, one generation call per
    attempt (``candidate_fn([text], ...)``). Same schedule, suffix rule and stats as
    ``assign_unique_ids``; the reference for the batched version's throughput."""
    cfg = config or UniqueIdConfig()
    t0 = time.perf_counter()
    schedule = cfg.schedule()
    per_range = len(schedule) // len(cfg.length_ranges)
    used: set[str] = set(taken)
    ids: list[str] = []
    attempts: list[int] = []
    stats = AssignStats()
    for text in texts:
        found, base = None, ""
        for step, (penalty, lo, hi) in enumerate(schedule):
            per = _check_candidates(candidate_fn([text], penalty, lo, hi), 1)[0]
            stats.rounds += 1
            stats.generated += 1
            found = next((c for c in per if c and c not in used), None)
            if found is not None:
                attempts.append(step + 1)
                break
            base = next((c for c in per if c), base)
        if found is None:
            found = with_suffix(base or _fallback_base(text), used, cfg.suffix_start)
            attempts.append(len(schedule) + 1)
            stats.suffixed += 1
        used.add(found)
        ids.append(found)
    return ids, _finish_stats(stats, attempts, len(schedule), per_range, t0)


def dbs_candidate_fn(model, tokenizer, *, num_groups: int = 5, beams_per_group: int = 1, batch_size: int = 64,
                     length_penalty: float = 1.0, max_source_length: int = 256) -> CandidateFn:
    """The real candidate function: ``diverse_beam_search`` with ``min_new_tokens=min_len``,
    ``max_new_tokens=max_len``; returns ``num_groups`` normalised candidates per text."""

    def candidates(texts: list[str], penalty: float, min_len: int, max_len: int) -> list[list[str]]:
        return diverse_beam_search(model, tokenizer, texts, num_groups=num_groups, beams_per_group=beams_per_group,
                                   diversity_penalty=penalty, min_new_tokens=min_len, max_new_tokens=max_len,
                                   batch_size=batch_size, length_penalty=length_penalty,
                                   max_source_length=max_source_length)

    return candidates


# ---------------------------------------------------------------------------------------------
# Initial IDs: an imported table, extractive salient words, or LLM keywords
# ---------------------------------------------------------------------------------------------

_FIELD = re.compile(r"(?:^|;)\s*[A-Za-z_][\w ]{0,30}?:\s")
_WORD = re.compile(r"[^\W_]+(?:['\u2019&.+-][^\W_]+)*")
STOPWORDS = frozenset(
    "a an and are as at be by for from has have in into is it its of on or s that the this to with without "
    "your you our my all per".split()
)


def _strip_fields(text: str) -> str:
    """``"title: foo; brand: bar"`` -> ``"foo ; bar"``: field names are not content."""
    return _FIELD.sub(" ; ", text or "")


def _words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFKC", _strip_fields(text)).lower())


def extractive_ids(texts: Sequence[str], max_words: int = 4, *, stopwords: Iterable[str] = STOPWORDS) -> list[str]:
    """Salient words of each text by TF-IDF over the catalog (``texts``), the ``max_words`` best
    (ties: earlier word) kept in their original order; field names (``title:``) and stopwords
    dropped (stopwords only if something else is left). Duplicates are possible: these are
    warm-start targets; ``make_unique`` if you need IDs."""
    stop = set(stopwords)
    docs = [_words(t) for t in texts]
    df = Counter(w for d in docs for w in set(d))
    n = len(docs)
    out = []
    for d in docs:
        content = [w for w in d if w not in stop] or d
        tf = Counter(content)
        first: dict[str, int] = {}
        for pos, w in enumerate(content):
            first.setdefault(w, pos)
        score = {w: tf[w] * (math.log((1 + n) / (1 + df[w])) + 1.0) for w in tf}
        best = sorted(score, key=lambda w: (-score[w], first[w]))[:max_words]
        out.append(normalize_id(" ".join(sorted(best, key=first.__getitem__))))
    return out


def read_id_table(path: str | Path) -> dict[str, str]:
    """``ITEM_ID textual id words`` per line (IDGenRec's ``item_initial_ids.txt``); blank lines
    skipped; a repeated ITEM_ID keeps its first line; IDs normalised (may be ``""``)."""
    table: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.strip().split(maxsplit=1)
            if parts and parts[0] not in table:
                table[parts[0]] = normalize_id(parts[1] if len(parts) > 1 else "")
    return table


# SmolLM2-135M-Instruct echoes the product for a bare instruction; a system prompt plus a few
# chat-format examples makes it answer with keywords (checked on amazon-beauty items).
DEFAULT_KEYWORD_SYSTEM = (
    "You extract {n} short keywords from a product title: the brand, the product type and one "
    "feature. Reply with the keywords only, separated by commas."
)
DEFAULT_KEYWORD_SHOTS: list[tuple[str, str]] = [
    ("maybelline color sensational creamy matte lipstick red", "maybelline, lipstick, matte"),
    ("neutrogena hydro boost water gel face moisturizer 1.7 oz", "neutrogena, moisturizer, gel"),
    ("remington pro ceramic hair straightener 1 inch", "remington, hair straightener, ceramic"),
]


class InitialIds(BaseModel):
    """Where the first IDs (or warm-start targets) come from.

    * ``table``: an ID file (``path``), mapped onto the dataset's item ids; items missing from it
      get extractive IDs (reported).
    * ``extractive``: TF-IDF salient words (``max_words``).
    * ``keywords_llm``: ``num_keywords`` keywords per item from a pretrained causal LM (``model``,
      ``recfm.models.load_causal_lm``), batched greedy decoding of a chat prompt (``system`` +
      the example pairs ``shots`` + the item text without field names); an unparseable answer
      falls back to the extractive ID (reported).

    ``unique``: apply the suffix rule (``make_unique``) to the result; ``None`` = only for
    ``table`` (generated targets for warm-starting are better without numeric suffixes)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["table", "extractive", "keywords_llm"] = "extractive"
    path: str | None = None
    max_words: int = Field(4, ge=1)
    model: str = "smollm2-135m-instruct"
    num_keywords: int = Field(3, ge=1)
    system: str = DEFAULT_KEYWORD_SYSTEM
    shots: list[tuple[str, str]] = Field(default_factory=lambda: list(DEFAULT_KEYWORD_SHOTS))
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(20, ge=1)
    max_prompt_chars: int = Field(600, ge=16)
    unique: bool | None = None

    @model_validator(mode="after")
    def _check(self) -> "InitialIds":
        if self.kind == "table" and not self.path:
            raise ValueError("InitialIds(kind='table') needs path=")
        return self


@dataclass
class InitialIdReport:
    kind: str
    items: int
    missing: list[str] = field(default_factory=list)  # dataset items absent from the table
    unused_table_rows: int = 0  # table items not in the dataset
    fallbacks: int = 0  # items given an extractive ID (missing from the table / unparseable LLM answer)
    suffixed: int = 0  # items made unique with the suffix rule
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["missing"] = len(self.missing)
        d["missing_examples"] = self.missing[:10]
        return d


def import_id_table(item_ids: Sequence[str], path: str | Path, texts: Sequence[str] | None = None,
                    max_words: int = 4) -> tuple[list[str], InitialIdReport]:
    """IDs of ``item_ids`` from a table file (not yet made unique). Items missing from the table
    (or with an empty ID there) get the extractive ID of their text if ``texts`` is given, else
    ``""``; they are listed in the report."""
    table = read_id_table(path)
    report = InitialIdReport(kind="table", items=len(item_ids))
    wanted = set(item_ids)
    report.unused_table_rows = sum(1 for k in table if k not in wanted)
    ids = [table.get(it, "") for it in item_ids]
    report.missing = [it for it in item_ids if it not in table]
    blanks = [i for i, x in enumerate(ids) if not x]
    if blanks and texts is not None:
        fill = extractive_ids(texts, max_words)
        for i in blanks:
            ids[i] = fill[i]
        report.fallbacks = len(blanks)
    if report.missing:
        log.warning("%s: %d of %d items missing from the ID table (e.g. %s)", path, len(report.missing),
                    len(item_ids), report.missing[:3])
    return ids, report


_BULLET = re.compile(r"^\s*(?:[-*\u2022]+|\d+[.):]|(?:keywords?|tags?|title|product)\s*:)\s*", re.IGNORECASE)


def parse_keywords(answer: str, num_keywords: int = 3) -> str:
    """An LLM answer -> one normalised ID: the first paragraph, split on commas / semicolons /
    newlines / slashes / pipes, bullets, numbering and labels (``Keywords:``) removed, each keyword
    normalised, duplicates dropped, the first ``num_keywords`` joined by spaces. ``""`` if nothing
    usable."""
    text = (answer or "").strip().split("\n\n")[0]
    seen: list[str] = []
    for part in re.split(r"[,;\n/|]", text):
        kw = normalize_id(_BULLET.sub("", part).strip().strip("\"'`*"))
        if kw and kw not in seen:
            seen.append(kw)
        if len(seen) == num_keywords:
            break
    return " ".join(seen)


def _plain_item_text(text: str, max_chars: int) -> str:
    """``"title: foo; brand: bar"`` -> ``"foo; bar"`` (field names dropped, at most max_chars)."""
    parts = [" ".join(p.split()) for p in _strip_fields(text).split(";")]
    return "; ".join(p for p in parts if p)[:max_chars]


def keyword_prompts(tokenizer, texts: Sequence[str], num_keywords: int = 3, *, system: str = DEFAULT_KEYWORD_SYSTEM,
                    shots: Sequence[tuple[str, str]] = DEFAULT_KEYWORD_SHOTS, max_chars: int = 600) -> list[str]:
    """One prompt per text: the tokenizer's chat template over (system, example turns, item) or,
    without a template, the same as plain ``Title: ... / Keywords: ...`` lines."""
    sys_text = system.format(n=num_keywords)
    prompts = []
    for t in texts:
        item = _plain_item_text(t or "", max_chars)
        if getattr(tokenizer, "chat_template", None):
            msgs = [{"role": "system", "content": sys_text}]
            for q, a in shots:
                msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            msgs.append({"role": "user", "content": item})
            prompts.append(tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
        else:
            lines = [sys_text, ""] + [f"Title: {q}\nKeywords: {a}\n" for q, a in shots] + [f"Title: {item}\nKeywords:"]
            prompts.append("\n".join(lines))
    return prompts


@torch.inference_mode()
def greedy_generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 24, batch_size: int = 16,
                    progress: bool = False) -> list[str]:
    """Batched greedy decoding of a causal LM (left padding built here, whatever the tokenizer's
    side; prompts sorted by length into batches); returns the decoded continuations."""
    from tqdm.auto import tqdm

    enc = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    order = sorted(range(len(enc)), key=lambda i: -len(enc[i]))
    out: list[str] = [""] * len(enc)
    was_training = model.training
    model.eval()
    try:
        for s in tqdm(range(0, len(order), batch_size), desc="keywords", disable=not progress):
            chunk = order[s : s + batch_size]
            length = max(len(enc[i]) for i in chunk)
            ids = torch.full((len(chunk), length), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), length), dtype=torch.long)
            for r, i in enumerate(chunk):
                ids[r, length - len(enc[i]) :] = torch.tensor(enc[i])
                mask[r, length - len(enc[i]) :] = 1
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 num_beams=1, max_new_tokens=max_new_tokens, pad_token_id=pad,
                                 eos_token_id=tokenizer.eos_token_id, top_p=None, top_k=None, temperature=None)
            for r, i in enumerate(chunk):
                out[i] = tokenizer.decode(gen[r, length:], skip_special_tokens=True)
    finally:
        model.train(was_training)
    return out


def llm_keyword_ids(texts: Sequence[str], model, tokenizer, num_keywords: int = 3, *,
                    system: str = DEFAULT_KEYWORD_SYSTEM, shots: Sequence[tuple[str, str]] = DEFAULT_KEYWORD_SHOTS,
                    batch_size: int = 16, max_new_tokens: int = 20, max_prompt_chars: int = 600,
                    progress: bool = False) -> tuple[list[str], list[str]]:
    """Keywords per item from a causal LM (greedy, batched). Returns ``(ids, raw_answers)``;
    an ID is ``""`` where the answer had nothing usable."""
    prompts = keyword_prompts(tokenizer, texts, num_keywords, system=system, shots=shots, max_chars=max_prompt_chars)
    answers = greedy_generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              progress=progress)
    return [parse_keywords(a, num_keywords) for a in answers], answers


def initial_ids(item_ids: Sequence[str], texts: Sequence[str], config: InitialIds | None = None, *,
                model=None, tokenizer=None, progress: bool = False) -> tuple[list[str], InitialIdReport]:
    """Initial IDs for a catalog (``item_ids`` and their ``texts``, e.g. ``ds.item_ids``,
    ``ds.item_text``) as ``config`` says. ``keywords_llm`` loads ``config.model`` unless a
    ``model``/``tokenizer`` pair is passed. Returns the IDs and a report."""
    cfg = config or InitialIds()
    if len(item_ids) != len(texts):
        raise ValueError(f"{len(item_ids)} item ids but {len(texts)} texts")
    t0 = time.perf_counter()
    if cfg.kind == "table":
        ids, report = import_id_table(item_ids, cfg.path, texts, cfg.max_words)
    elif cfg.kind == "extractive":
        ids, report = extractive_ids(texts, cfg.max_words), InitialIdReport(kind="extractive", items=len(texts))
    else:
        if model is None or tokenizer is None:
            from recfm.models import load_causal_lm

            model, tokenizer = load_causal_lm(cfg.model)
        ids, _ = llm_keyword_ids(texts, model, tokenizer, cfg.num_keywords, system=cfg.system, shots=cfg.shots,
                                 batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens,
                                 max_prompt_chars=cfg.max_prompt_chars, progress=progress)
        report = InitialIdReport(kind="keywords_llm", items=len(texts))
        bad = [i for i, x in enumerate(ids) if not x]
        if bad:
            fill = extractive_ids(texts, cfg.max_words)
            for i in bad:
                ids[i] = fill[i]
            report.fallbacks = len(bad)
    unique = cfg.unique if cfg.unique is not None else cfg.kind == "table"
    if unique:
        ids, report.suffixed = make_unique(ids)
    report.seconds = time.perf_counter() - t0
    return ids, report


# ---------------------------------------------------------------------------------------------
# The ID generator
# ---------------------------------------------------------------------------------------------


class IDGenerator:
    """A seq2seq model (T5) + tokenizer that turns item text into textual IDs.

    ``generate_ids`` runs batched diverse beam search; ``assign`` runs Algorithm 1 on it;
    ``warm_start`` trains text -> target ID with teacher forcing; ``save_pretrained`` /
    ``from_pretrained`` use one Hugging Face folder (model + tokenizer). Encoder-decoders only
    (``diverse_beam_search`` itself also takes causal LMs)."""

    def __init__(self, model, tokenizer, *, max_source_length: int = 256, max_target_length: int = 24):
        if not getattr(model.config, "is_encoder_decoder", False):
            raise ValueError("IDGenerator wraps an encoder-decoder (seq2seq) model")
        self.model = model
        self.tokenizer = tokenizer
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length

    @classmethod
    def from_texts(cls, texts: Sequence[str], size: str = "tiny", vocab_size: int = 8000, seed: int = 0,
                   lowercase: bool = True, **t5_overrides) -> "IDGenerator":
        """A fresh generator: a Unigram tokenizer trained on ``texts`` (lowercased by default, as
        IDs are) and a randomly initialised T5 (``recfm.models.build_seq2seq``)."""
        from recfm.models import build_seq2seq, train_tokenizer

        tok = train_tokenizer(texts, vocab_size=vocab_size, lowercase=lowercase)
        return cls(build_seq2seq(size, tok, seed=seed, **t5_overrides).eval(), tok)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = None, **kwargs) -> "IDGenerator":
        from recfm.models import load_seq2seq

        model, tok = load_seq2seq(path, device=device)
        return cls(model, tok, **kwargs)

    def save_pretrained(self, path: str | Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate_ids(self, texts: Sequence[str], *, num_groups: int = 5, beams_per_group: int = 1,
                     diversity_penalty: float = 0.0, min_new_tokens: int = 1, max_new_tokens: int = 9,
                     batch_size: int = 64, length_penalty: float = 1.0) -> list[list[str]]:
        """``num_groups`` normalised candidate IDs per text (diverse beam search)."""
        return diverse_beam_search(self.model, self.tokenizer, texts, num_groups=num_groups,
                                   beams_per_group=beams_per_group, diversity_penalty=diversity_penalty,
                                   min_new_tokens=min_new_tokens, max_new_tokens=max_new_tokens,
                                   batch_size=batch_size, length_penalty=length_penalty,
                                   max_source_length=self.max_source_length)

    def candidate_fn(self, num_groups: int = 5, beams_per_group: int = 1, batch_size: int = 64) -> CandidateFn:
        return dbs_candidate_fn(self.model, self.tokenizer, num_groups=num_groups, beams_per_group=beams_per_group,
                                batch_size=batch_size, max_source_length=self.max_source_length)

    def assign(self, texts: Sequence[str], config: UniqueIdConfig | None = None, *, sequential: bool = False,
               taken: Iterable[str] = (), progress: bool = False) -> tuple[list[str], AssignStats]:
        """Unique IDs for ``texts`` by Algorithm 1 (batched unless ``sequential``)."""
        cfg = config or UniqueIdConfig()
        fn = self.candidate_fn(cfg.num_groups, cfg.beams_per_group, cfg.batch_size)
        if sequential:
            return assign_unique_ids_sequential(texts, fn, cfg, taken=taken)
        return assign_unique_ids(texts, fn, cfg, taken=taken, progress=progress)

    # -- training ---------------------------------------------------------------------------

    def _batch(self, texts: Sequence[str], targets: Sequence[str]) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        src = tok(list(texts), truncation=True, max_length=self.max_source_length, padding=True, return_tensors="pt")
        eos = tok.eos_token_id
        tgt = tok(list(targets), add_special_tokens=False)["input_ids"]
        tgt = [x[: self.max_target_length - 1] + [eos] for x in tgt]
        labels = torch.full((len(tgt), max(len(x) for x in tgt)), -100, dtype=torch.long)
        for i, x in enumerate(tgt):
            labels[i, : len(x)] = torch.tensor(x)
        dev = self.device
        return {"input_ids": src["input_ids"].to(dev), "attention_mask": src["attention_mask"].to(dev),
                "labels": labels.to(dev)}

    @torch.no_grad()
    def loss(self, texts: Sequence[str], targets: Sequence[str], batch_size: int = 64) -> float:
        """Mean teacher-forced cross-entropy per target token (eval mode, no dropout)."""
        was = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        try:
            for s in range(0, len(texts), batch_size):
                b = self._batch(texts[s : s + batch_size], targets[s : s + batch_size])
                n = int((b["labels"] != -100).sum())
                total += float(self.model(**b).loss) * n
                count += n
        finally:
            self.model.train(was)
        return total / max(count, 1)

    def warm_start(self, texts: Sequence[str], targets: Sequence[str], epochs: int = 1, lr: float = 1e-3,
                   batch_size: int = 32, *, seed: int = 0, weight_decay: float = 0.0, max_grad_norm: float = 1.0,
                   progress: bool = True) -> list[float]:
        """Teacher-forced training on (text -> target ID) pairs, e.g. extractive or table IDs, with
        AdamW; pairs with an empty target are skipped. Shuffling and dropout are seeded (the global
        RNG is left alone). Returns the mean training loss of each epoch; the model ends in eval mode."""
        from tqdm.auto import tqdm

        if len(texts) != len(targets):
            raise ValueError(f"{len(texts)} texts but {len(targets)} targets")
        pairs = [(x, normalize_id(y)) for x, y in zip(texts, targets) if normalize_id(y)]
        if not pairs:
            raise ValueError("warm_start needs at least one non-empty target")
        opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=weight_decay)
        gen = torch.Generator().manual_seed(seed)
        losses: list[float] = []
        n_batches = math.ceil(len(pairs) / batch_size)
        self.model.train()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                bar = tqdm(total=epochs * n_batches, desc="warm-start", disable=not progress, unit="batch")
                for epoch in range(epochs):
                    perm = torch.randperm(len(pairs), generator=gen).tolist()
                    total, count = 0.0, 0
                    for s in range(0, len(perm), batch_size):
                        chunk = [pairs[i] for i in perm[s : s + batch_size]]
                        b = self._batch([p[0] for p in chunk], [p[1] for p in chunk])
                        loss = self.model(**b).loss
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        if max_grad_norm:
                            torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_grad_norm)
                        opt.step()
                        total += float(loss.detach()) * len(chunk)
                        count += len(chunk)
                        bar.update(1)
                        bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss.detach()):.3f}")
                    losses.append(total / count)
                    log.info("warm-start epoch %d/%d: loss %.4f", epoch + 1, epochs, losses[-1])
                bar.close()
        finally:
            self.model.eval()
        return losses
