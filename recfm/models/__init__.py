"""One place to get a backbone and its tokenizer (see docs/models.md).

    from recfm.models import load_causal_lm, load_encoder, load_seq2seq, build_seq2seq, train_tokenizer

    model, tok = load_causal_lm("smollm2-135m-instruct")   # offline alias, converted once, cached
    enc, etok = load_encoder("all-minilm-l6-v2")           # offline alias
    tok = train_tokenizer(item_texts, vocab_size=8000)     # Unigram tokenizer on your texts
    t5 = build_seq2seq("small", tok)                       # t5-small dims, random init
    lm = build_causal_lm(tok, hidden_size=128)             # Llama-style decoder, random init

Anything that is not an alias is a local folder (or a ``.gguf`` file) or a Hugging Face hub
name passed to transformers' ``from_pretrained``. Progress is logged to ``recfm.models``.
"""

from recfm.models.causal import build_causal_lm
from recfm.models.embedding import embed_texts, mean_pool
from recfm.models.loading import (
    convert_gguf,
    gguf_cache_dir,
    load_causal_lm,
    load_encoder,
    load_seq2seq,
    load_tokenizer,
)
from recfm.models.registry import ALIASES, ModelNotAvailableError, OfflineModel, resolve_alias
from recfm.models.seq2seq import SEQ2SEQ_SIZES, build_seq2seq, train_tokenizer

__all__ = [
    "ALIASES",
    "SEQ2SEQ_SIZES",
    "build_causal_lm",
    "ModelNotAvailableError",
    "OfflineModel",
    "build_seq2seq",
    "convert_gguf",
    "embed_texts",
    "gguf_cache_dir",
    "load_causal_lm",
    "load_encoder",
    "load_seq2seq",
    "load_tokenizer",
    "mean_pool",
    "resolve_alias",
    "train_tokenizer",
]
