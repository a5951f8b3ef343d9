"""Unique textual IDs from a generator: IDGenRec's Algorithm 1, batched and one item at a time.

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
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from recfm import distributed
from recfm.textid.diverse_beam import diverse_beam_search
from recfm.textid.ids import _fallback_base, normalize_id, with_suffix

log = logging.getLogger("recfm.textid")

CandidateFn = Callable[[list[str], float, int, int], list[list[str]]]
"""``candidate_fn(texts, penalty, min_len, max_len) -> candidates per text`` (lengths inclusive)."""


class UniqueIdConfig(BaseModel):
    """Diverse ID generation (paper section 3): k groups, penalty 0.1 step 0.1 up to 1.0, then the
    next length range with the penalty reset; after the last range, the suffix rule."""

    model_config = ConfigDict(extra="forbid")

    num_groups: int = Field(5, ge=1, description="k: candidates (DBS groups) per generation call")
    beams_per_group: int = Field(1, ge=1, description="beams inside each DBS group")
    penalty_start: float = Field(0.1, ge=0.0, description="diversity penalty of the first attempt")
    penalty_step: float = Field(0.1, gt=0.0, description="added to the penalty at each retry")
    penalty_max: float = Field(1.0, ge=0.0, description="past this penalty the next length range is tried")
    length_ranges: list[tuple[int, int]] = Field(
        default_factory=lambda: [(1, 10), (10, 20)],
        description="half-open ID length ranges in tokens (EOS not counted), tried in order",
    )
    batch_size: int = Field(64, ge=1, description="items per batched generation chunk (real generator)")
    suffix_start: int = Field(2, ge=1, description="first number of the last-resort suffix")
    no_repeat_words: bool = Field(True, description="forbid a candidate to repeat a word (no '1996 1996 ...'; "
                                  "not in the paper, which never met a trained-collapsed generator)")

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
                     length_penalty: float = 1.0, max_source_length: int = 256,
                     no_repeat_words: bool = False) -> CandidateFn:
    """The real candidate function: ``diverse_beam_search`` with ``min_new_tokens=min_len``,
    ``max_new_tokens=max_len``; returns ``num_groups`` normalised candidates per text."""

    def candidates(texts: list[str], penalty: float, min_len: int, max_len: int) -> list[list[str]]:
        return diverse_beam_search(model, tokenizer, texts, num_groups=num_groups, beams_per_group=beams_per_group,
                                   diversity_penalty=penalty, min_new_tokens=min_len, max_new_tokens=max_len,
                                   batch_size=batch_size, length_penalty=length_penalty,
                                   max_source_length=max_source_length, no_repeat_words=no_repeat_words)

    return candidates
