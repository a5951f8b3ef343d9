"""Foundation-model scorers for pairwise click prediction (RecBench-MD's two paradigms).

A scorer turns (user history, candidate item) pairs, given as text, into one score per pair
(higher = more likely clicked), which :func:`recfm.bench.metrics.click_metrics` measures.

- :class:`PromptScorer` (prompt-based, causal LMs): the pair is written as a prompt (an
  instruction, the numbered history, the candidate and an answer cue ending in
  ``"Answer (Yes or No):"``) and the score is the probability of "Yes" against "No" at the
  next token::

      P(yes) = exp(LSE(yes)) / (exp(LSE(yes)) + exp(LSE(no))) = sigmoid(LSE(yes) - LSE(no))

  where LSE(yes) is the log-sum-exp of the last-position logits over every single-token
  spelling of Yes for this tokenizer ("Yes", " Yes", "yes", " yes", "YES"), and likewise for
  No. The other tokens of the vocabulary play no part (a softmax restricted to the two
  answers). With a chat template the instruction is a user turn and the answer cue opens the
  assistant turn.
- :class:`EmbeddingScorer` (embedding-based, encoders or decoders): the user text (the
  history's titles joined, most recent last, cut from the FRONT to ``max_length`` tokens so
  the newest items survive) and the item text are embedded separately, by masked mean pooling
  or by the last non-pad token's state, and the score is their cosine similarity.

Both take texts; :func:`pair_texts` makes them from :class:`recfm.bench.tasks.ClickPairs` and
a catalogue's item texts. :func:`load_scorer` loads a model by alias, folder or hub name with
the ``recfm.models`` loaders. Fine-tuning (LoRA) is in :mod:`recfm.bench.finetune`.

Padding is done here, not by the tokenizer: prompts are LEFT-padded (the last position is
every prompt's last token) with position ids counted from each prompt's first real token, so
a batch scores exactly as its pairs one at a time; embedding inputs are right-padded and the
pooling reads the attention mask. Inputs are sorted by length before batching.
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from recfm.models.batching import autocast_context, autocast_dtype, pad_batch
from recfm.models.embedding import mean_pool

log = logging.getLogger("recfm.bench")

YES_VARIANTS = ("Yes", " Yes", "yes", " yes", "YES")
NO_VARIANTS = ("No", " No", "no", " no", "NO")
PARADIGMS = ("prompt", "embedding")


# ---------------------------------------------------------------------------------------------
# pairs -> texts
# ---------------------------------------------------------------------------------------------


def _clip(text: str, max_chars: int | None) -> str:
    text = " ".join(str(text).split())  # one line: titles go into numbered lists
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars].rstrip()
    return text


def pair_texts(pairs, item_text: Sequence[str], max_chars: int | None = 200) -> tuple[list[list[str]], list[str]]:
    """(histories, candidates) as text for :class:`~recfm.bench.tasks.ClickPairs`.

    Item index ``i`` (1-based, as in the datasets) is ``item_text[i - 1]``; padding (0) in the
    history rows is skipped, so ``histories[p]`` lists pair ``p``'s items oldest first. Each
    text is put on one line (whitespace runs become one space) and cut to ``max_chars``
    characters (None = no cut).
    """
    history = np.asarray(pairs.history)
    item = np.asarray(pairs.item)
    used = np.unique(np.concatenate([history[history > 0], item]))
    if used.size and (used.min() < 1 or used.max() > len(item_text)):
        raise ValueError(
            f"item indices must lie in 1..{len(item_text)} (0 = padding); found {used.min()}..{used.max()}"
        )
    text = {int(i): _clip(item_text[int(i) - 1], max_chars) for i in used}
    histories = [[text[i] for i in row if i > 0] for row in history.tolist()]
    candidates = [text[i] for i in item.tolist()]
    return histories, candidates


# ---------------------------------------------------------------------------------------------
# tokenizer and model helpers
# ---------------------------------------------------------------------------------------------


def answer_token_ids(
    tokenizer, yes: Sequence[str] = YES_VARIANTS, no: Sequence[str] = NO_VARIANTS
) -> tuple[list[int], list[int]]:
    """Token ids of the spellings of Yes and of No that this tokenizer encodes as ONE token.

    Spellings that map to the same token (e.g. "Yes" and " Yes" for SentencePiece-style
    tokenizers) count once. Raises ValueError when no spelling of an answer is a single token,
    or when a token would count for both answers.
    """

    def single(words: Sequence[str]) -> list[int]:
        found: list[int] = []
        for word in words:
            ids = tokenizer(word, add_special_tokens=False)["input_ids"]
            if len(ids) == 1 and ids[0] not in found and ids[0] != tokenizer.unk_token_id:
                found.append(int(ids[0]))
        return found

    yes_ids, no_ids = single(yes), single(no)
    for name, words, ids in (("Yes", yes, yes_ids), ("No", no, no_ids)):
        if not ids:
            raise ValueError(
                f"prompt scoring needs a single-token '{name}': none of {list(words)} is one token for this "
                f"tokenizer ({type(tokenizer).__name__}, {len(tokenizer)} tokens); use another model or pass "
                f"other answer words"
            )
    if set(yes_ids) & set(no_ids):
        raise ValueError(f"the Yes tokens {yes_ids} and the No tokens {no_ids} overlap")
    return yes_ids, no_ids


def special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer adds before and after a text (e.g. [CLS] / [SEP], <s>, </s>)."""
    probe = "hello world"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start]), list(full[start + len(plain) :])
    return [], []  # the specials change the text's own tokens: add none rather than guess


def _unwrap(model):
    """The transformers model under a peft wrapper (LoRA layers are injected into it in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _forward_params(model) -> set[str]:
    return set(inspect.signature(_unwrap(model).forward).parameters)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _pad_id(tokenizer) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def _length_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of similar length, longest first (an out-of-memory shows up at once)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _progress(total_batches: int, progress: bool | None, desc: str):
    from tqdm.auto import tqdm

    show = total_batches > 8 if progress is None else progress
    return tqdm(total=total_batches, desc=desc, unit="batch", leave=False, disable=not show, mininterval=2)


def _distinct(texts) -> tuple[list[str], list[int]]:
    """(distinct texts in order of first appearance, index of each input text among them)."""
    position: dict[str, int] = {}
    index = [position.setdefault(t, len(position)) for t in texts]
    return list(position), index


class _EvalMode:
    """Put a model in eval mode for a block and restore its training flag afterwards."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


# ---------------------------------------------------------------------------------------------
# prompt-based scoring
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptTemplate:
    """The wording of a click-prediction prompt. ``body`` is the instruction part (the user turn
    with a chat template); ``answer_cue`` follows it (the start of the assistant turn)."""

    instruction: str = (
        "You are a recommender system. Below are the items a user interacted with, oldest first. "
        "Decide whether the user will click on the candidate item."
    )
    history_header: str = "User history:"
    empty_history: str = "(no history)"
    candidate_header: str = "Candidate item:"
    question: str = "Will the user click on the candidate item?"
    answer_cue: str = "Answer (Yes or No):"

    def body(self, history: Sequence[str], candidate: str) -> str:
        lines = "\n".join(f"{i}. {title}" for i, title in enumerate(history, 1)) or self.empty_history
        return (
            f"{self.instruction}\n\n{self.history_header}\n{lines}\n\n"
            f"{self.candidate_header} {candidate}\n\n{self.question}"
        )


DEFAULT_TEMPLATE = PromptTemplate()


class PromptScorer:
    """P(Yes) from a causal LM's next-token logits after a click-prediction prompt (see the module doc).

    ``use_chat_template``: None = use the tokenizer's chat template when it has one. Prompts
    longer than ``max_length`` tokens lose their OLDEST history items (and, if even an empty
    history does not fit, their first tokens). ``progress``: None = a tqdm bar for more than
    8 batches. ``autocast="bf16"``: the forward pass in bfloat16 mixed precision (weights and
    scores stay float32).
    """

    paradigm = "prompt"

    def __init__(
        self,
        model,
        tokenizer,
        *,
        template: PromptTemplate = DEFAULT_TEMPLATE,
        batch_size: int = 16,
        max_length: int = 512,
        use_chat_template: bool | None = None,
        progress: bool | None = None,
        autocast: str | None = None,
    ):
        if batch_size < 1 or max_length < 8:
            raise ValueError(f"batch_size must be >= 1 and max_length >= 8, got {batch_size}, {max_length}")
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.batch_size = batch_size
        self.max_length = max_length
        self.progress = progress
        self.autocast = autocast_dtype(autocast)
        self.yes_ids, self.no_ids = answer_token_ids(tokenizer)
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        if use_chat_template and not has_chat:
            raise ValueError("use_chat_template=True but the tokenizer has no chat template")
        self.use_chat_template = has_chat if use_chat_template is None else bool(use_chat_template)
        # Without a chat template the tokenizer's own leading specials (<s>) are kept and its
        # trailing ones (</s>) dropped: the prompt must END with the answer cue.
        self._prefix = [] if self.use_chat_template else special_affixes(tokenizer)[0]
        self._pad_id = _pad_id(tokenizer)
        params = _forward_params(model)
        self._position_ids = "position_ids" in params
        self._extra: dict = {}
        if "logits_to_keep" in params:
            self._extra["logits_to_keep"] = 1
        elif "num_logits_to_keep" in params:
            self._extra["num_logits_to_keep"] = 1
        if "use_cache" in params:
            self._extra["use_cache"] = False
        self.truncated = 0  # prompts that lost history items in the last call

    # -- text ------------------------------------------------------------------------------------
    def build_prompt(self, history: Sequence[str], candidate: str) -> str:
        """The full prompt text (special tokens of a chat template included) for one pair."""
        body = self.template.body(history, candidate)
        if not self.use_chat_template:
            return f"{body}\n{self.template.answer_cue}"
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True
        )
        return text + self.template.answer_cue

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [self._prefix + list(x) for x in ids]

    def token_ids(self, histories: Sequence[Sequence[str]], candidates: Sequence[str]) -> list[list[int]]:
        """Prompt token ids per pair, each at most ``max_length`` long (oldest history items dropped first)."""
        if len(histories) != len(candidates):
            raise ValueError(f"{len(histories)} histories but {len(candidates)} candidates")
        ids = self._tokenize([self.build_prompt(h, c) for h, c in zip(histories, candidates)])
        self.truncated = 0
        for p, seq in enumerate(ids):
            if len(seq) <= self.max_length:
                continue
            self.truncated += 1
            history, candidate = list(histories[p]), candidates[p]
            lo, hi = 0, len(history) - 1  # keep the newest k items: largest k in [lo, hi] that fits
            best = None
            while lo <= hi:
                k = (lo + hi) // 2
                trial = self._tokenize([self.build_prompt(history[len(history) - k :] if k else [], candidate)])[0]
                if len(trial) <= self.max_length:
                    best, lo = trial, k + 1
                else:
                    hi = k - 1
            if best is None:  # even without history: keep the end (the candidate and the answer cue)
                trial = self._tokenize([self.build_prompt([], candidate)])[0]
                keep = self.max_length - len(self._prefix)
                best = self._prefix + trial[len(self._prefix) :][-keep:]
            ids[p] = best
        if self.truncated:
            log.info("%d of %d prompts were longer than %d tokens: oldest history items dropped",
                     self.truncated, len(ids), self.max_length)
        return ids

    # -- tensors ---------------------------------------------------------------------------------
    def collate(self, ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Left-padded model inputs (with position ids counted from each prompt's first token)."""
        input_ids, mask = pad_batch(ids, self._pad_id, "left")
        batch = {"input_ids": input_ids, "attention_mask": mask}
        if self._position_ids:
            batch["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        device = _device(self.model)
        return {k: v.to(device) for k, v in batch.items()}

    def encode(self, histories: Sequence[Sequence[str]], candidates: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.collate(self.token_ids(histories, candidates))

    def logit_margin(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """LSE(yes logits) - LSE(no logits) at the last position, one per row (keeps gradients)."""
        with autocast_context(_device(self.model), self.autocast):
            logits = self.model(**batch, **self._extra).logits[:, -1, :].float()
        return logits[:, self.yes_ids].logsumexp(-1) - logits[:, self.no_ids].logsumexp(-1)

    # -- scoring ---------------------------------------------------------------------------------
    def margins(self, histories: Sequence[Sequence[str]], candidates: Sequence[str]) -> np.ndarray:
        """The Yes-No log-odds per pair (float64); ``score`` is their sigmoid."""
        if len(candidates) == 0:
            return np.zeros(0)
        ids = self.token_ids(histories, candidates)
        out = np.empty(len(ids), dtype=np.float64)
        batches = _length_batches([len(x) for x in ids], self.batch_size)
        bar = _progress(len(batches), self.progress, "prompt scoring")
        with _EvalMode(self.model), torch.inference_mode(), bar:
            for rows in batches:
                out[rows] = self.logit_margin(self.collate([ids[r] for r in rows])).cpu().numpy()
                bar.update(1)
        return out

    def score(self, histories: Sequence[Sequence[str]], candidates: Sequence[str]) -> np.ndarray:
        """P(Yes) per pair in [0, 1] (float64), the softmax over the Yes and No tokens."""
        m = self.margins(histories, candidates)
        return 0.5 * (1.0 + np.tanh(0.5 * m))  # = sigmoid(m), without overflow for large |m|


# ---------------------------------------------------------------------------------------------
# embedding-based scoring
# ---------------------------------------------------------------------------------------------


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[batch, seq, dim] -> [batch, dim]: masked mean, or the state of the last position where the mask is 1."""
    if pooling == "mean":
        return mean_pool(hidden, attention_mask)
    if pooling == "last":
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask * positions).argmax(-1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"pooling must be 'mean' or 'last', not {pooling!r}")


class EmbeddingScorer:
    """Cosine similarity of a user embedding (history titles) and an item embedding (see the module doc).

    Works with encoders (``load_encoder``; ``pooling="mean"``, as sentence-transformers does)
    and decoders (``load_causal_lm``; ``pooling="last"``: the last real token has read the whole
    text). The hidden states are those of the transformer body (``model.base_model``), without
    any head. Texts are embedded once per distinct text within one ``score`` call. A text that
    tokenizes to nothing (an empty history, with a tokenizer that adds no special tokens) is
    embedded as the single token bos (else eos, unk or pad). ``autocast`` as for
    :class:`PromptScorer`.
    """

    paradigm = "embedding"

    def __init__(
        self,
        model,
        tokenizer,
        *,
        pooling: str = "mean",
        batch_size: int = 64,
        max_length: int = 256,
        separator: str = "; ",
        progress: bool | None = None,
        autocast: str | None = None,
    ):
        if pooling not in ("mean", "last"):
            raise ValueError(f"pooling must be 'mean' or 'last', not {pooling!r}")
        if batch_size < 1 or max_length < 4:
            raise ValueError(f"batch_size must be >= 1 and max_length >= 4, got {batch_size}, {max_length}")
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.batch_size = batch_size
        self.max_length = max_length
        self.separator = separator
        self.progress = progress
        self.autocast = autocast_dtype(autocast)
        self._prefix, self._suffix = special_affixes(tokenizer)
        if len(self._prefix) + len(self._suffix) >= max_length:
            raise ValueError(f"max_length={max_length} leaves no room beside the tokenizer's special tokens")
        self._pad_id = _pad_id(tokenizer)
        empty = [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id, self._pad_id]
        self._empty_id = next(int(t) for t in empty if t is not None)

    def user_text(self, history: Sequence[str]) -> str:
        return self.separator.join(history)

    def token_ids(self, texts: Sequence[str], keep: str = "head") -> list[list[int]]:
        """Token ids with the tokenizer's special tokens, at most ``max_length``: ``keep="tail"``
        cuts from the front (user texts: the newest items are last), ``"head"`` from the end."""
        room = self.max_length - len(self._prefix) - len(self._suffix)
        out = []
        for body in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
            body = list(body)
            if len(body) > room:
                body = body[-room:] if keep == "tail" else body[:room]
            seq = self._prefix + body + self._suffix
            out.append(seq or [self._empty_id])  # an empty text (no history) with a tokenizer that adds nothing
        return out

    def _body(self):
        base = _unwrap(self.model)
        return getattr(base, "base_model", base)  # LlamaForCausalLM -> LlamaModel; BertModel -> itself

    def embed_ids(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """Pooled (unnormalized) embeddings of one batch, float32; keeps gradients if enabled."""
        input_ids, mask = pad_batch(ids, self._pad_id, "right")
        device = _device(self.model)
        input_ids, mask = input_ids.to(device), mask.to(device)
        with autocast_context(_device(self.model), self.autocast):
            hidden = self._body()(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return pool(hidden.float(), mask, self.pooling)

    def embed(self, texts: Sequence[str], keep: str = "head", progress: bool | None = False) -> torch.Tensor:
        """L2-normalized embeddings [len(texts), dim] in length-sorted batches (gradients if enabled)."""
        if len(texts) == 0:
            raise ValueError("no texts to embed")
        ids = self.token_ids(texts, keep)
        parts, rows = [], []
        batches = _length_batches([len(x) for x in ids], self.batch_size)
        with _progress(len(batches), progress, "embedding") as bar:
            for batch_rows in batches:
                parts.append(self.embed_ids([ids[r] for r in batch_rows]))
                rows.append(torch.as_tensor(batch_rows))
                bar.update(1)
        vectors = torch.cat(parts)[torch.argsort(torch.cat(rows).to(parts[0].device))]
        return torch.nn.functional.normalize(vectors, dim=-1)

    def cosine(
        self, histories: Sequence[Sequence[str]], candidates: Sequence[str], progress: bool | None = False
    ) -> torch.Tensor:
        """Cosine similarity per pair as a tensor (gradients if enabled); each distinct text embedded once."""
        if len(histories) != len(candidates):
            raise ValueError(f"{len(histories)} histories but {len(candidates)} candidates")
        user_keys, user_index = _distinct(self.user_text(h) for h in histories)
        item_keys, item_index = _distinct(candidates)
        u = self.embed(user_keys, keep="tail", progress=progress)
        v = self.embed(item_keys, keep="head", progress=progress)
        u = u[torch.as_tensor(user_index, device=u.device)]
        v = v[torch.as_tensor(item_index, device=v.device)]
        return (u * v).sum(-1)

    def score(self, histories: Sequence[Sequence[str]], candidates: Sequence[str]) -> np.ndarray:
        """Cosine similarity per pair in [-1, 1] (float64)."""
        if len(candidates) == 0:
            return np.zeros(0)
        progress = self.progress if self.progress is not None else len(candidates) > 8 * self.batch_size
        with _EvalMode(self.model), torch.inference_mode():
            return self.cosine(histories, candidates, progress=progress).double().cpu().numpy()


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------


def model_kind(name_or_path: str | Path) -> str:
    """"causal_lm" or "encoder" for an alias, a ``.gguf`` file, a folder or a hub name (its config's architectures)."""
    from recfm.models.registry import resolve_alias

    entry = resolve_alias(str(name_or_path))
    if entry is not None:
        kind = entry.kind
    elif str(name_or_path).endswith(".gguf"):
        kind = "causal_lm"
    else:
        config_file = Path(str(name_or_path)).expanduser() / "config.json"
        if config_file.is_file():
            config = json.loads(config_file.read_text())
        else:  # a hub name
            from recfm.models.loading import _from_pretrained, _transformers

            config = _from_pretrained(_transformers().AutoConfig, name_or_path, "load_scorer").to_dict()
        archs = config.get("architectures") or []
        if config.get("is_encoder_decoder"):
            kind = "seq2seq"
        elif any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
            kind = "causal_lm"
        else:
            kind = "encoder"
    if kind == "seq2seq":
        raise ValueError(f"{name_or_path!r} is an encoder-decoder model; the scorers take causal LMs or encoders")
    return kind


def load_scorer(model: str | Path, paradigm: str, *, dtype=torch.float32, device=None, **kwargs):
    """A scorer for ``model`` (alias, ``.gguf`` file, local folder or hub name), loaded with ``recfm.models``.

    ``paradigm="prompt"``: ``load_causal_lm`` + :class:`PromptScorer`. ``"embedding"``:
    encoders via ``load_encoder`` (mean pooling), causal LMs via ``load_causal_lm`` with
    ``pooling="last"`` (override with ``pooling=``). Other keyword arguments go to the scorer.
    """
    from recfm.models import load_causal_lm, load_encoder

    if paradigm not in PARADIGMS:
        raise ValueError(f"paradigm must be one of {PARADIGMS}, not {paradigm!r}")
    if paradigm == "prompt":
        m, tok = load_causal_lm(model, dtype=dtype, device=device)
        return PromptScorer(m, tok, **kwargs)
    if model_kind(model) == "causal_lm":
        m, tok = load_causal_lm(model, dtype=dtype, device=device)
        kwargs.setdefault("pooling", "last")
    else:
        m, tok = load_encoder(model, dtype=dtype, device=device)
    return EmbeddingScorer(m, tok, **kwargs)
