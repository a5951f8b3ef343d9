"""Loading backbones and tokenizers: aliases, local folders, hub names, and GGUF files.

``load_causal_lm``, ``load_encoder``, ``load_seq2seq`` and ``load_tokenizer`` take one
``name_or_path``, resolved in this order:

1. an alias from ``recfm.models.registry.ALIASES`` (a model shipped in a pip package);
2. a ``.gguf`` file (causal LMs only): converted once, like the GGUF aliases;
3. anything else goes to transformers' ``from_pretrained``: a local folder written by
   ``save_pretrained``, or a Hugging Face hub name (needs internet).

GGUF models are dequantized and saved ONCE as a float32 safetensors folder under
``cache_root()/models/<alias>-<hash>/`` (``$RECFM_CACHE_DIR``, default ``~/.cache/recfm``),
written atomically; later loads read that folder (a few seconds instead of ~30-60 s).

transformers is imported lazily, so ``import recfm.models`` is cheap and the rest of recfm
works without it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from recfm.data.cache import cache_key, cache_root
from recfm.atomic import atomic_directory
from recfm.models.registry import ALIASES, ModelNotAvailableError, resolve_alias

log = logging.getLogger("recfm.models")

# Bump when the conversion itself changes, so old cached folders are not reused.
CONVERSION_VERSION = 1
CONVERSION_MARKER = "recfm-conversion.json"

_REQUIRED = "transformers tokenizers safetensors gguf sentencepiece"


def import_transformers():
    """transformers, or a one-line error saying how to install it."""
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ModelNotAvailableError(
            f"recfm.models needs transformers ({e}); run: pip install -c constraints.txt {_REQUIRED}"
        ) from e
    return transformers


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | str | None:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use e.g. torch.float32, 'bfloat16' or 'auto'")
    return value


def _n_params(model) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params"


# ---------------------------------------------------------------------------------------------
# from_pretrained with errors that say what to do
# ---------------------------------------------------------------------------------------------


def _looks_like_path(name: str) -> bool:
    """True for strings that can only be a local path (a hub name is 'name' or 'org/name')."""
    return (
        name.startswith((".", "/", "~"))
        or "\\" in name
        or name.count("/") > 1
        or name.endswith((".gguf", ".safetensors", ".bin", ".json"))
    )


def require_safetensors(folder: Path, what: str = "load", name: str | None = None) -> None:
    """Local weights are read from safetensors only: a pickle file (``*.bin``, ``*.pt``) can run code
    when loaded, so a folder holding weights in no other form is refused. ``name``: the one
    safetensors file the loader reads (e.g. peft's ``adapter_model.safetensors``), which must be
    there itself, since a loader that misses it falls back to its pickle twin."""
    folder = Path(folder)
    if not ((folder / name).is_file() if name else any(folder.glob("*.safetensors"))):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"))
        found = f" (it holds {', '.join(pickles)}: pickle files, which recfm never loads)" if pickles else ""
        wanted = name or ".safetensors weights"
        raise ModelNotAvailableError(f"{what}: {folder} holds no {wanted}{found}; convert them with "
                                     "save_pretrained(..., safe_serialization=True) in a trusted environment")


def _from_pretrained(cls, name_or_path: str | Path, what: str, **kwargs):
    """``cls.from_pretrained`` on a local folder or a hub name, with an actionable error."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir() and "Model" in cls.__name__:
            require_safetensors(path, what)
            kwargs["use_safetensors"] = True
        return cls.from_pretrained(str(path), **kwargs)
    if _looks_like_path(name):
        raise ModelNotAvailableError(f"{what}: no such file or folder: {path}")
    try:
        return cls.from_pretrained(name, **kwargs)
    except OSError as e:
        from huggingface_hub import constants

        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise ModelNotAvailableError(
            f"{what}: '{name}' is not a recfm alias ({', '.join(ALIASES)}) nor a local folder, and could "
            f"not be loaded from the Hugging Face hub{offline}. A hub name needs internet access; offline, "
            f"pass a local folder written by save_pretrained (or an alias). [{type(e).__name__}: {e}]"
        ) from e


def _finish_tokenizer(tokenizer, model=None, padding_side: str | None = None):
    """Give the tokenizer a pad token (its eos) if it lacks one, and set the padding side."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                "the tokenizer has neither a pad nor an eos token; add one with "
                "tokenizer.add_special_tokens({'pad_token': '<pad>'}) and resize the model's embeddings"
            )
        tokenizer.pad_token = tokenizer.eos_token
        log.info("tokenizer has no pad token: using its eos token %r", tokenizer.eos_token)
    if padding_side is not None:
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
        tokenizer.padding_side = padding_side
    if model is not None:
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        gen = getattr(model, "generation_config", None)
        if gen is not None and gen.pad_token_id is None:
            gen.pad_token_id = tokenizer.pad_token_id
    return tokenizer


def _place(model, device):
    if device is not None:
        model.to(device)
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------
# GGUF -> cached safetensors folder
# ---------------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "model"


def gguf_cache_dir(gguf_path: Path, alias: str | None = None) -> Path:
    """Where the converted copy of ``gguf_path`` lives: ``cache_root()/models/<alias>-<hash>``.

    The hash covers the GGUF file's name and size (and, for a file given by path rather than
    alias, its absolute location) plus ``CONVERSION_VERSION``.
    """
    gguf_path = Path(gguf_path)
    parts: list[Any] = ["gguf", gguf_path.name, gguf_path.stat().st_size, CONVERSION_VERSION]
    if alias is None:
        parts.append(str(gguf_path.resolve()))
    name = alias or _slug(gguf_path.stem)
    return cache_root() / "models" / f"{name}-{cache_key(*parts)[:12]}"


@contextlib.contextmanager
def _parse_gguf_once() -> Iterator[None]:
    """Speed-up for the one-off conversion: transformers parses the GGUF header three times
    (tokenizer, config, weights) and rebuilds gguf's tensor-name map once per module (~400
    times); memoize both while converting. Same files come out (checked byte for byte on
    SmolLM2); if transformers stops calling these, this is a no-op."""
    import gguf

    reader_cls, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple, Any] = {}

    def reader(path, *args, **kwargs):
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = reader_cls(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader = reader
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_cls, name_map


def _load_from_gguf(gguf_path: Path):
    """(model, tokenizer) read from a GGUF file by transformers, every weight dequantized."""
    tf = import_transformers()
    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise ModelNotAvailableError(f"reading GGUF files needs the gguf package; run: pip install gguf ({e})") from e
    folder, name = str(gguf_path.parent), gguf_path.name
    with _parse_gguf_once():
        model = tf.AutoModelForCausalLM.from_pretrained(
            folder,
            gguf_file=name,
            quantization_config=tf.GgufConfig(dequantize=True),
            dtype=torch.float32,
        )
        tokenizer = tf.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return model, tokenizer


def _drop_quantization(model) -> None:
    """Make the model save as a plain float model (no quantization_config in config.json)."""
    config = model.config
    if "quantization_config" in vars(config):
        del config.quantization_config
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if getattr(model, "is_quantized", False) and "is_quantized" in vars(model):
        model.is_quantized = False


def convert_gguf(gguf_path: str | Path, alias: str | None = None, force: bool = False) -> Path:
    """The cached safetensors folder for a GGUF file, converting it first if needed.

    The folder (``config.json``, ``model.safetensors``, ``tokenizer.json``, ...,
    ``recfm-conversion.json``) is written into a temporary sibling and renamed into place, so an
    interrupted conversion never leaves a partial folder; two processes converting at once
    both succeed and one copy is kept.
    """
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise ModelNotAvailableError(f"no such GGUF file: {gguf_path}")
    target = gguf_cache_dir(gguf_path, alias)
    if (target / CONVERSION_MARKER).is_file() and not force:
        log.info("using cached conversion of %s: %s", gguf_path.name, target)
        return target
    if target.exists():  # left by hand or by a forced reconversion: replace it
        log.warning("removing %s before (re)converting", target)
        shutil.rmtree(target)
    log.info(
        "converting %s (%.0f MB) to a float32 safetensors folder %s; once, about 30-60 s on CPU",
        gguf_path, gguf_path.stat().st_size / 2**20, target,
    )
    t0 = time.perf_counter()
    model, tokenizer = _load_from_gguf(gguf_path)
    _drop_quantization(model)
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        saved = json.loads((tmp / "config.json").read_text())
        if "quantization_config" in saved:  # never cache a model that would reload as quantized
            raise RuntimeError(f"conversion of {gguf_path} still carries a quantization_config")
        meta = {
            "source": gguf_path.name,
            "source_bytes": gguf_path.stat().st_size,
            "alias": alias,
            "conversion_version": CONVERSION_VERSION,
            "transformers": import_transformers().__version__,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        (tmp / CONVERSION_MARKER).write_text(json.dumps(meta, indent=2) + "\n")
    log.info("converted %s in %.1f s -> %s", gguf_path.name, time.perf_counter() - t0, target)
    return target


# ---------------------------------------------------------------------------------------------
# public loaders
# ---------------------------------------------------------------------------------------------


def _load_pair(auto_model, source, what: str, label: str, name_or_path, dtype, device, padding_side, pad_model: bool):
    """Model + tokenizer from ``source``, tokenizer padded, model placed and in eval mode."""
    tf = import_transformers()
    t0 = time.perf_counter()
    model = _from_pretrained(getattr(tf, auto_model), source, what, dtype=_as_dtype(dtype))
    tokenizer = _from_pretrained(tf.AutoTokenizer, source, what)
    _finish_tokenizer(tokenizer, model if pad_model else None, padding_side)
    _place(model, device)
    log.info("loaded %s %s (%s) from %s in %.1f s", label, name_or_path, _n_params(model), source,
             time.perf_counter() - t0)
    return model, tokenizer


def resolve_causal_lm(name_or_path: str | Path) -> str | Path:
    """The folder (or hub name) a causal LM is loaded from; converts GGUF aliases/files once."""
    entry = resolve_alias(str(name_or_path), "causal_lm")
    if entry is not None:
        source = entry.locate()
        return convert_gguf(source, entry.alias) if entry.gguf else source
    path = Path(str(name_or_path)).expanduser()
    if path.suffix == ".gguf":
        return convert_gguf(path)
    return name_or_path


def load_causal_lm(
    name_or_path: str | Path,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device | None = None,
    padding_side: str = "left",
):
    """(model, tokenizer) for a decoder-only LM, in eval mode.

    ``name_or_path``: an alias (``"smollm2-135m-instruct"``), a ``.gguf`` file, a local folder
    or a hub name. The tokenizer gets its eos token as pad token if it has none, and pads on
    the LEFT by default, so that batched ``generate()`` and "logits at position -1" scoring
    see every prompt's last token at the end; pass ``padding_side="right"`` for plain
    teacher-forced training.
    """
    source = resolve_causal_lm(name_or_path)
    return _load_pair("AutoModelForCausalLM", source, "load_causal_lm", "causal LM", name_or_path, dtype, device,
                      padding_side, pad_model=True)


def load_encoder(
    name_or_path: str | Path,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device | None = None,
):
    """(model, tokenizer) for a text encoder (``AutoModel``), in eval mode.

    ``name_or_path``: an alias (``"all-minilm-l6-v2"``), a local folder or a hub name. Turn
    texts into vectors with ``recfm.models.embed_texts``.
    """
    entry = resolve_alias(str(name_or_path), "encoder")
    source = entry.locate() if entry is not None else name_or_path
    return _load_pair("AutoModel", source, "load_encoder", "encoder", name_or_path, dtype, device, None, pad_model=False)


def load_seq2seq(
    name_or_path: str | Path,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device | None = None,
):
    """(model, tokenizer) for an encoder-decoder LM (``AutoModelForSeq2SeqLM``), in eval mode.

    No pretrained seq2seq model ships offline: locally, build one with ``build_seq2seq`` and a
    tokenizer from ``train_tokenizer``, ``save_pretrained`` both into one folder, and pass that
    folder here. Online, a hub name such as ``"google-t5/t5-small"`` works too.
    """
    resolve_alias(str(name_or_path), "seq2seq")  # raises for an alias of another kind
    return _load_pair("AutoModelForSeq2SeqLM", name_or_path, "load_seq2seq", "seq2seq", name_or_path, dtype, device,
                      None, pad_model=True)


def load_tokenizer(name_or_path: str | Path, padding_side: str | None = None):
    """Just the tokenizer of an alias, GGUF file, folder or hub name (pad token ensured)."""
    tf = import_transformers()
    entry = resolve_alias(str(name_or_path))
    if entry is not None:
        source = (convert_gguf(entry.locate(), entry.alias) if entry.gguf else entry.locate())
    else:
        source = resolve_causal_lm(name_or_path)
    tokenizer = _from_pretrained(tf.AutoTokenizer, source, "load_tokenizer")
    return _finish_tokenizer(tokenizer, None, padding_side)
