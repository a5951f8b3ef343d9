"""A decoder-only language model built from a config (Llama architecture, SDPA attention), for
models trained from scratch on a catalog-trained tokenizer (``train_tokenizer``)."""

from __future__ import annotations

import logging

import torch

from recfm.models.loading import import_transformers

log = logging.getLogger("recfm.models")


def build_causal_lm(tokenizer, *, hidden_size: int = 128, num_layers: int = 2, num_heads: int = 2,
                    intermediate_size: int | None = None, max_positions: int = 1024, attention_dropout: float = 0.0,
                    seed: int | None = None):
    """A randomly initialised ``LlamaForCausalLM`` with its vocabulary sized to ``tokenizer``; pad and
    eos ids come from the tokenizer; ``seed`` makes the initialisation reproducible without touching
    the global RNG."""
    tf = import_transformers()
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer needs pad and eos tokens (train_tokenizer gives both)")
    if hidden_size % num_heads:
        raise ValueError(f"num_heads={num_heads} must divide hidden_size={hidden_size}")
    config = tf.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=max_positions, attention_dropout=attention_dropout,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        tie_word_embeddings=True, attn_implementation="sdpa",
    )
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = tf.LlamaForCausalLM(config)
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id, gen.bos_token_id = config.pad_token_id, config.eos_token_id, None
    log.info("built a Llama-style causal LM: %.1fM params, vocab %d", sum(p.numel() for p in model.parameters()) / 1e6,
             config.vocab_size)
    return model
