"""The recommender's backbone and the ID generator: loading them (``t5-SIZE-scratch`` built from a
config on a catalog tokenizer, pretrained seq2seq or causal LMs by path or hub name, optional LoRA)
and checking that the two share one vocabulary.

Names follow what users expect from the hub: ``t5-small`` is the pretrained checkpoint (online);
a model built from a config says so in its name (``t5-tiny-scratch``, ``t5-mini-scratch``,
``t5-small-scratch`` = the t5-small architecture, randomly initialised)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

from recfm.textid.config import TextIDConfig
from recfm.textid.generator import IDGenerator
from recfm.textid.prompts import TEMPLATES

SCRATCH = re.compile(r"^t5-(?P<size>tiny|mini|small)-scratch$")
RENAMED = {"t5-tiny": "t5-tiny-scratch", "t5-mini": "t5-mini-scratch", "tiny": "t5-tiny-scratch",
           "mini": "t5-mini-scratch", "small": "t5-small-scratch"}


def scratch_size(name: str) -> str | None:
    """The T5 size of a ``t5-SIZE-scratch`` name, None for a pretrained model's path or hub name;
    raises for the names recfm used before models built from a config said so."""
    if name in RENAMED:
        raise ValueError(f"{name!r} is now called {RENAMED[name]!r} (a T5 built from a config, randomly initialised); "
                         "'t5-small' means the pretrained hub checkpoint")
    match = SCRATCH.match(name)
    return match["size"] if match else None


def _is_seq2seq_folder(path: str) -> bool | None:
    cfg = Path(path) / "config.json"
    if cfg.is_file():
        return bool(json.loads(cfg.read_text()).get("is_encoder_decoder", False))
    return None


def load_backbone(name: str, catalog_texts: Sequence[str], cfg: TextIDConfig, extra_texts: Sequence[str] = (),
                  tokenizer=None):
    """(model, tokenizer) of the recommender. A ``t5-SIZE-scratch`` backbone is built on ``tokenizer``
    when given (a pretrained generator's), else on a tokenizer trained on the catalog."""
    from recfm.models import build_seq2seq, load_causal_lm, load_seq2seq, train_tokenizer
    from recfm.models.registry import resolve_alias

    size = scratch_size(name)
    if size is not None:
        tok = tokenizer or train_tokenizer([*catalog_texts, *extra_texts, *TEMPLATES], vocab_size=cfg.vocab_size,
                                           lowercase=True)
        return build_seq2seq(size, tok, seed=cfg.seed, **cfg.t5), tok
    alias = resolve_alias(name)
    if alias is not None and alias.kind == "encoder":
        raise ValueError(f"backbone {name!r} is an encoder, not a generative model; use a seq2seq or causal LM")
    seq2seq = (alias.kind == "seq2seq") if alias is not None else _is_seq2seq_folder(name)
    if seq2seq is None:  # a hub name: whichever architecture it has
        try:
            model, tok = load_seq2seq(name)
        except Exception:
            model, tok = load_causal_lm(name)
    else:
        model, tok = (load_seq2seq if seq2seq else load_causal_lm)(name)
    if cfg.lora_r:
        model = _with_lora(model, cfg)
    return model, tok


def load_generator(name: str, tokenizer, cfg: TextIDConfig) -> IDGenerator:
    """The ID generator: ``t5-SIZE-scratch`` built on the recommender's ``tokenizer``, or a pretrained
    seq2seq checkpoint (a folder or hub name, e.g. the paper's tag-generation T5-small) with its own."""
    from recfm.models import build_seq2seq, load_seq2seq

    size = scratch_size(name)
    if size is None:
        model, tok = load_seq2seq(name)
        return IDGenerator(model, tok)
    dropout = {} if cfg.generator_dropout is None else {"dropout_rate": cfg.generator_dropout}
    return IDGenerator(build_seq2seq(size, tokenizer, seed=cfg.seed + 1, **dropout), tokenizer)


def _with_lora(model, cfg: TextIDConfig):
    from peft import LoraConfig, get_peft_model

    targets = ["q", "k", "v", "o"] if getattr(model.config, "is_encoder_decoder", False) else ["q_proj", "k_proj", "v_proj", "o_proj"]
    peft_cfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.05, target_modules=targets)
    return get_peft_model(model, peft_cfg)


def check_shared_vocabulary(generator: IDGenerator, recommender_model, tokenizer) -> None:
    """The soft-embedding step multiplies generator probabilities by the recommender's embedding
    matrix: both must index the same vocabulary."""
    gen_vocab = generator.model.get_output_embeddings().weight.shape[0]
    rec_rows = recommender_model.get_input_embeddings().weight.shape[0]
    if generator.tokenizer.get_vocab() != tokenizer.get_vocab() or gen_vocab > rec_rows:
        raise ValueError(
            "the ID generator and the recommender must share one tokenizer (generator vocabulary "
            f"{gen_vocab}, recommender embedding rows {rec_rows}); build the generator on the recommender's "
            "tokenizer (TextIDModel does) instead of loading one with its own vocabulary"
        )
