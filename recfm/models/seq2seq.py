"""Seq2seq models built from a config, and SentencePiece-style tokenizers trained on given texts.

No pretrained T5 ships offline, so generative recommenders (IDGenRec-style) start from

    tok = train_tokenizer(item_texts, vocab_size=8000)       # Unigram, T5-style specials
    model = build_seq2seq("small", tok)                      # T5 with t5-small dims, random init

and save both with ``save_pretrained`` into one folder that ``load_seq2seq(folder)`` reads back.
Online users can instead pass a hub name (``load_seq2seq("google-t5/t5-small")``).
"""

from __future__ import annotations

import json
import logging
import string
import time
from pathlib import Path
from typing import Any, Iterable

import torch

from recfm.models.loading import import_transformers

log = logging.getLogger("recfm.models")

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"

# T5 sizes. "small" is exactly t5-small (60M params with a 32k vocab); "mini" follows
# google/t5-efficient-mini; "tiny" is for tests and smoke runs. T5 defaults fill in the rest
# (relu feed-forward, 32 relative-attention buckets, dropout 0.1, tied embeddings).
SEQ2SEQ_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=64, d_ff=256, d_kv=16, num_heads=4, num_layers=2, num_decoder_layers=2),
    "mini": dict(d_model=384, d_ff=1536, d_kv=32, num_heads=8, num_layers=4, num_decoder_layers=4),
    "small": dict(d_model=512, d_ff=2048, d_kv=64, num_heads=8, num_layers=6, num_decoder_layers=6),
}

# Always in the vocabulary, seen in the texts or not, so unseen item text rarely maps to <unk>.
DEFAULT_ALPHABET = list(string.ascii_letters + string.digits + string.punctuation)


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 8000,
    output_dir: str | Path | None = None,
    *,
    add_eos: bool = True,
    extra_ids: int = 0,
    lowercase: bool = False,
    model_max_length: int = 512,
    initial_alphabet: Iterable[str] = DEFAULT_ALPHABET,
):
    """Train a SentencePiece-style Unigram tokenizer on ``texts`` (e.g. a catalog's item text).

    Returns a transformers fast tokenizer (``PreTrainedTokenizerFast``) with T5's layout:
    ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2 (then ``<extra_id_0..extra_ids-1>`` if asked),
    NFKC normalization, the ``▁`` word-boundary marker, and ``</s>`` appended to every encoded
    text when ``add_eos`` (as T5 does). ``vocab_size`` is an upper bound: a small corpus gives
    fewer pieces. Saved with ``save_pretrained`` it reloads with ``AutoTokenizer.from_pretrained``;
    if ``output_dir`` is given it is saved there.
    """
    import_transformers()
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    extras = [f"<extra_id_{i}>" for i in range(extra_ids)]
    specials = [PAD, EOS, UNK, *extras]
    if vocab_size <= len(specials) + 1:
        raise ValueError(f"vocab_size={vocab_size} leaves no room beyond the {len(specials)} special tokens")
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError("train_tokenizer needs at least one non-empty text")

    t0 = time.perf_counter()
    alphabet = sorted(set(initial_alphabet))
    tok = Tokenizer(models.Unigram())
    norms = [normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    if lowercase:
        norms.append(normalizers.Lowercase())
    tok.normalizer = normalizers.Sequence(norms)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        unk_token=UNK,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    # The alphabet also goes in as one text: characters the trainer only "requires" get
    # arbitrary (hash-ordered) scores, seen ones get real ones, which _canonical_order can sort.
    corpus = [*texts, " ".join(alphabet)] if alphabet else texts
    tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    tok = _canonical_order(tok, specials)
    if add_eos:
        eos_id = tok.token_to_id(EOS)
        tok.post_processor = processors.TemplateProcessing(
            single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, eos_id)]
        )
    kwargs: dict[str, Any] = {}
    if extras:
        kwargs["additional_special_tokens"] = extras
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        model_max_length=model_max_length,
        padding_side="right",
        **kwargs,
    )
    assert (fast.pad_token_id, fast.eos_token_id, fast.unk_token_id) == (0, 1, 2), "special-token ids moved"
    log.info("trained a Unigram tokenizer on %d texts: %d pieces in %.1f s", len(texts), len(fast),
             time.perf_counter() - t0)
    if output_dir is not None:
        fast.save_pretrained(str(output_dir))
        log.info("saved tokenizer to %s", output_dir)
    return fast


def _canonical_order(tok, specials: list[str]):
    """Same texts, same ids and scores. The Unigram trainer lists pieces in hash-map order, its
    scores vary in the last bits between runs, and characters it keeps only because they are
    required get scores min, min - 1e-4, min - 2e-4, ... in hash-map order. So: sort pieces by
    (score rounded to 1e-6, piece) after the specials, and hand that trailing run of scores out
    to its single characters in sorted order."""
    from tokenizers import Tokenizer

    state = json.loads(tok.to_str())
    vocab = state["model"]["vocab"]
    if [piece for piece, _ in vocab[: len(specials)]] != specials:  # pragma: no cover - trainer changed
        raise RuntimeError("the Unigram trainer no longer puts the special tokens first")
    rest = sorted(((p, round(s, 6)) for p, s in vocab[len(specials) :]), key=lambda x: (-x[1], x[0]))
    start = len(rest) - 1
    while start > 0 and any(abs(rest[start - 1][1] - rest[start][1] - gap) < 1e-6 for gap in (0.0, 1e-4)):
        start -= 1
    chars = [i for i in range(start, len(rest)) if len(rest[i][0]) == 1]
    if len(chars) > 1:
        pieces = sorted(rest[i][0] for i in chars)
        scores = sorted((rest[i][1] for i in chars), reverse=True)
        for i, piece, score in zip(chars, pieces, scores):
            rest[i] = (piece, score)
        rest[start:] = sorted(rest[start:], key=lambda x: (-x[1], x[0]))
    state["model"]["vocab"] = [[piece, 0.0] for piece in specials] + [list(x) for x in rest]
    return Tokenizer.from_str(json.dumps(state))


def build_seq2seq(size: str, tokenizer, *, seed: int | None = None, **overrides):
    """A randomly initialised ``T5ForConditionalGeneration`` sized ``"tiny"``, ``"mini"`` or
    ``"small"`` (= t5-small dims), with its vocabulary sized to ``tokenizer`` (``len(tokenizer)``).

    pad/eos ids come from the tokenizer and ``decoder_start_token_id`` = pad, as in T5.
    ``overrides`` are T5Config fields (e.g. ``dropout_rate=0.0``); ``seed`` makes the
    initialisation reproducible without touching the global RNG.
    """
    tf = import_transformers()
    if size not in SEQ2SEQ_SIZES:
        raise ValueError(f"unknown seq2seq size {size!r}; choose one of {sorted(SEQ2SEQ_SIZES)}")
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer needs pad and eos tokens (train_tokenizer gives both)")
    fields = {
        **SEQ2SEQ_SIZES[size],
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "decoder_start_token_id": tokenizer.pad_token_id,
        **overrides,
    }
    config = tf.T5Config(**fields)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = tf.T5ForConditionalGeneration(config)
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id = config.pad_token_id, config.eos_token_id
    gen.decoder_start_token_id = config.decoder_start_token_id
    log.info("built T5 %s: %.1fM params, vocab %d", size, sum(p.numel() for p in model.parameters()) / 1e6,
             config.vocab_size)
    return model
