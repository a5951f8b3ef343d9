"""The recommender's backbone: loading it (t5-* from a config on a catalog tokenizer, pretrained
seq2seq or causal LMs, optional LoRA) and checking that the ID generator shares its vocabulary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from recfm.textid.config import TextIDConfig
from recfm.textid.generator import IDGenerator
from recfm.textid.prompts import TEMPLATES

T5_PREFIX = "t5-"  # "t5-tiny" / "t5-mini" / "t5-small": built from a config on a catalog tokenizer


def _is_seq2seq_folder(path: str) -> bool | None:
    cfg = Path(path) / "config.json"
    if cfg.is_file():
        return bool(json.loads(cfg.read_text()).get("is_encoder_decoder", False))
    return None


def load_backbone(name: str, catalog_texts: Sequence[str], cfg: TextIDConfig, extra_texts: Sequence[str] = ()):
    """(model, tokenizer) of the recommender; t5-* sizes get a tokenizer trained on the catalog."""
    from recfm.models import build_seq2seq, load_causal_lm, load_seq2seq, train_tokenizer
    from recfm.models.registry import resolve_alias

    if name.startswith(T5_PREFIX):
        tok = train_tokenizer([*catalog_texts, *extra_texts, *TEMPLATES], vocab_size=cfg.vocab_size, lowercase=True)
        return build_seq2seq(name[len(T5_PREFIX):], tok, seed=cfg.seed, **cfg.t5), tok
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
