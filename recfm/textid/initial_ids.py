"""Initial textual IDs (or warm-start targets) of a catalog: an imported ID table, extractive
salient words, or keywords from a pretrained causal LM.

    from recfm.textid.initial_ids import InitialIds, initial_ids

    targets, report = initial_ids(ds.item_ids, ds.item_text, InitialIds(kind="extractive"))
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from recfm.textid.ids import _strip_fields, extractive_ids, make_unique, normalize_id, read_id_table

log = logging.getLogger("recfm.textid")


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

    kind: Literal["table", "extractive", "keywords_llm"] = Field(
        "extractive", description="table: read an ID file; extractive: TF-IDF salient words of the item text; "
        "keywords_llm: keywords written by a pretrained causal LM")
    path: str | None = Field(None, description="kind=table: the ID file (lines 'ITEM_KEY word word ...'); "
                             "'dataset:NAME' is a file inside the dataset's folder")
    max_words: int = Field(4, ge=1, description="kind=extractive (and the fallback of the others): words per ID")
    model: str = Field("smollm2-135m-instruct", description="kind=keywords_llm: the causal LM (an offline alias, a "
                       "folder or a hub name)")
    num_keywords: int = Field(3, ge=1, description="kind=keywords_llm: keywords asked for per item")
    system: str = Field(DEFAULT_KEYWORD_SYSTEM, description="kind=keywords_llm: the system prompt")
    shots: list[tuple[str, str]] = Field(default_factory=lambda: list(DEFAULT_KEYWORD_SHOTS),
                                         description="kind=keywords_llm: (item text, keywords) example pairs")
    batch_size: int = Field(16, ge=1, description="kind=keywords_llm: prompts per generation batch")
    max_new_tokens: int = Field(20, ge=1, description="kind=keywords_llm: most tokens an answer may have")
    max_prompt_chars: int = Field(600, ge=16, description="kind=keywords_llm: item text cut to this many characters")
    unique: bool | None = Field(None, description="apply the suffix rule (make_unique) to the result; None = only "
                                "for kind=table")

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
