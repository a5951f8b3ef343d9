"""Configuration of the ``textid`` model (``TextIDConfig``) and the item catalog it reads (``Catalog``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from recfm.curves import REPORT_TO_HELP, ReportTo
from recfm.textid.initial_ids import InitialIds
from recfm.textid.item_level import ItemLevelConfig
from recfm.textid.sequence import SCRATCH_BACKBONE, SequenceConfig
from recfm.textid.prompts import TEMPLATES
from recfm.textid.unique_ids import UniqueIdConfig


class TextIDConfig(BaseModel):
    """Configuration of the ``textid`` model (IDGenRec). Defaults follow the paper where it says;
    ``configs/textid-*.yaml`` hold the CPU presets and ``configs/textid-paper.yaml`` the paper's sizes."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("textid", description="the model-table row (recfm models)")
    formulation: Literal["prompt", "items", "sequence"] = Field(
        "prompt", description="prompt: the paper's one prompt per history prefix through a language model; items: "
        "history items as positions of a causal transformer, the next ID decoded word by word, every next-item "
        "prediction of a sequence in one pass (sizes in `items`); sequence: a causal LM trained on each user's whole "
        "sequence of IDs written as text (backbone llama-scratch, sizes in `sequence`, or a pretrained causal LM)")
    loss: Literal["trie", "full"] = Field(
        "trie", description="trie: softmax of each ID token over the tokens the prefix trie allows there, no loss on "
        "forced tokens (what constrained decoding compares); full: softmax over the whole vocabulary (the paper)")
    items: ItemLevelConfig = Field(default_factory=ItemLevelConfig, description="sizes of formulation: items")
    sequence: SequenceConfig = Field(default_factory=SequenceConfig,
                                     description="sizes of formulation: sequence with backbone llama-scratch")
    backbone: str = Field("t5-small", description="t5-tiny-scratch|t5-mini-scratch|t5-small-scratch (a T5 built from "
                          "a config, random init), or a pretrained seq2seq or causal LM: path, hub name (t5-small = "
                          "the pretrained hub checkpoint, as in the paper) or offline alias (smollm2-135m-instruct)")
    t5: dict[str, Any] = Field(default_factory=dict, description="T5Config overrides for t5-*-scratch backbones")
    generator: str = Field("t5-tiny-scratch", description="the ID generator: t5-tiny-scratch|t5-mini-scratch|"
                           "t5-small-scratch built on the recommender's tokenizer, or a pretrained seq2seq folder / "
                           "hub name whose tokenizer the recommender then shares (the paper: "
                           "nandakishormpai/t5-small-machine-articles-tag-generation)")
    generator_dropout: float | None = Field(None, ge=0, lt=1, description="the generator's dropout (None = its size's default)")
    vocab_size: int = Field(8000, ge=64, description="catalog tokenizer size (t5-*-scratch backbones without a "
                            "pretrained generator)")
    lora_r: int = Field(0, ge=0, description=">0: train LoRA adapters of this rank (peft) instead of all weights")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)")
    initial_ids: InitialIds = Field(default_factory=InitialIds, description="where the first item IDs come from "
                                    "(a table, extractive words, LLM keywords)")
    unique: UniqueIdConfig = Field(default_factory=UniqueIdConfig, description="Algorithm 1: diverse beam search "
                                   "for unique generated IDs")
    prompt_ids: Literal["item", "user", "both"] = Field(
        "both", description="formulation prompt: what the prompt holds, the history's item IDs, a user ID, or both")
    strategy: Literal["rec_only", "id_only", "alternate"] = Field(
        "alternate", description="alternate: recommender and ID generator take turns (the paper); rec_only: the "
        "recommender on the initial IDs; id_only: only the generator, through the recommender as built")
    alternate_order: Literal["generator_first", "recommender_first"] = Field(
        "generator_first", description="generator_first: each round trains the generator, regenerates the IDs, then "
        "trains the recommender (the paper's order); recommender_first: recommender, then generator (none in the "
        "last round)")
    rounds: int = Field(3, ge=1, description="alternate rounds (the paper: 3)")
    rec_epochs: int = Field(10, ge=0, description="recommender epochs per round (the paper: 10)")
    gen_epochs: int = Field(1, ge=0, description="generator epochs per round (the paper: 1)")
    rec_lr: float = Field(1e-3, gt=0, description="recommender AdamW learning rate (the paper: 1e-3)")
    rec_lr_decay: Literal["none", "linear"] = Field(
        "none", description="formulations items and sequence: linear lowers the learning rate after every step, from "
        "rec_lr to 0 at the end of rec_epochs (budgeted training: set rec_epochs to what max_train_minutes allows, "
        "the cap then only a safety); none keeps rec_lr")
    gen_lr: float = Field(1e-8, gt=0, description="generator AdamW learning rate (the paper: 1e-8)")
    rec_weight_decay: float = Field(
        0.01, ge=0, description="recommender AdamW decoupled weight decay (0.01: torch's AdamW default, what every "
        "run before this field had); it shrinks every word embedding at every step, seen in the batch or not")
    gen_id_loss_weight: float = Field(
        1.0, ge=0, description="weight of the generator's text -> current ID loss added to each alternate-training "
        "generator step, a regulariser that keeps regenerated IDs readable and item-specific (0 = the paper: the "
        "recommendation loss only)")
    gen_max_instances: int | None = Field(None, ge=1, description="cap on training instances per generator epoch")
    warm_start_epochs: int = Field(1, ge=0, description="generator epochs on (item text -> initial ID) first")
    warm_start_lr: float = Field(1e-3, gt=0, description="generator learning rate of the warm start")
    batch_size: int = Field(64, ge=1, description="training prompts (formulation prompt) or windows per step")
    max_history: int = Field(20, ge=1, description="most recent history items in a prompt")
    max_instances_per_user: int | None = Field(None, ge=1, description="train on each user's most recent prefixes only")
    max_prompt_tokens: int = Field(512, ge=16, description="prompts are cut to this many tokens (oldest items first)")
    num_beams: int = Field(20, ge=1, description="beam of the trie-constrained search; the most items a request gets")
    eval_template: int = Field(0, ge=0, lt=len(TEMPLATES), description="formulation prompt: the template scored at "
                               "evaluation (training draws from all)")
    eval_batch_size: int = Field(64, ge=1, description="histories per beam search batch")
    valid_sample: int = Field(0, ge=0, description="validation cases used for epoch selection (0 = all)")
    eval_every: int = Field(1, ge=1, description="validate every this many recommender epochs")
    patience: int = Field(3, ge=1, description="stop after this many validations without a better NDCG@10")
    max_train_minutes: float | None = Field(None, gt=0, description="wall-clock training budget (the clock is read "
                                             "after every step); the best epoch so far is kept")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads; None = the recfm default")
    device: str = Field("cpu", description="'cpu', 'cuda', 'cuda:1', ...")
    autocast: Literal["auto", "bf16"] | None = Field(
        None, description="formulations items and sequence: the training forward pass in mixed precision, bf16 "
                          "(weights, optimizer and the trie softmax stay float32); auto = bf16 only where the device "
                          "computes it natively (AVX512-BF16/AMX CPUs, GPUs with bf16), else float32; None = float32. "
                          "Beam search is always float32")
    ema_decay: float = Field(0.0, ge=0, lt=1, description="formulations items and sequence: validate, select and "
                             "keep an exponential moving average of the weights (updated after every step, e.g. "
                             "0.999: a horizon of about 1,000 steps) instead of the last step's weights; training "
                             "itself is unchanged. 0 = off")
    seed: int = Field(0, description="seed of weight initialisation, data order and sampling")
    report_to: ReportTo = Field("none", description=REPORT_TO_HELP)

    @model_validator(mode="after")
    def _items_is_rec_only(self) -> "TextIDConfig":
        if self.formulation != "prompt" and self.strategy != "rec_only":
            raise ValueError(f"formulation {self.formulation!r} trains the recommender on fixed IDs: strategy must be "
                             f"'rec_only' (got {self.strategy!r}); alternate training needs formulation 'prompt'")
        if self.formulation == "sequence" and self.backbone.startswith("t5-"):
            raise ValueError(f"formulation 'sequence' needs a causal LM backbone ({SCRATCH_BACKBONE!r}, a pretrained "
                             f"causal LM or smollm2-135m-instruct), not {self.backbone!r}")
        if self.formulation == "prompt" and self.rec_lr_decay != "none":
            raise ValueError("rec_lr_decay is for formulations 'items' and 'sequence'; the prompt formulation keeps rec_lr")
        if self.formulation != "sequence" and self.backbone == SCRATCH_BACKBONE:
            raise ValueError(f"backbone {SCRATCH_BACKBONE!r} is built for formulation 'sequence'")
        return self
