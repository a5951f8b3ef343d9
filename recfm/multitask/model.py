"""One causal-LM backbone for generative and embedding recommendation tasks (RecFound 4.1).

- Generative branch: the chat prompt (system + the record's prompt) followed by the target; token
  cross-entropy on the target tokens only. A record with options is trained to answer the letter
  of the right option (A, B, ...; options are listed with their letters in the prompt), and
  scored by the next-token logits of the option letters (one forward pass per record); a record
  without options (free text, e.g. the published RecFound data) is trained on its response and
  scored by exact match of a greedy answer.
- Embedding branch: ``instruction <|embed|> text`` (items: ``<|embed|> text``), mean pooling of
  the last hidden states over the non-padding tokens, L2 normalisation; InfoNCE over the batch
  (every other positive is a negative, plus optional hard negatives) with a temperature.

Adapters: TMoLE (task-routed experts), or plain LoRA, which is TMoLE with a single shared expert
(its gate is always 1), so both variants share one code path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from recfm.models.batching import (autocast_context, autocast_dtype, batch_progress, last_logits_only, length_batches,
                                   length_groups, pad_batch, pad_token_id)
from recfm.models.embedding import mean_pool
from recfm.multitask.records import EMBED_TOKEN, EmbRecord, GenRecord
from recfm.multitask.tmole import TMoLE, TMoLEConfig, attach_tmole

LETTERS = [chr(ord("A") + i) for i in range(26)]


class MultiTaskModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backbone: str = Field("smollm2-135m-instruct", description="alias, folder or hub name of a causal LM")
    adapter: Literal["tmole", "lora"] = Field("tmole", description="lora = one shared expert, no routing (the ablation)")
    tmole: TMoLEConfig = Field(default_factory=TMoLEConfig, description="task-routed LoRA experts")
    temperature: float = Field(0.05, gt=0, description="InfoNCE temperature")
    max_length: int = Field(512, ge=16, description="prompts are cut from the left (the oldest history) to this")
    autocast: Literal["bf16", "auto"] | None = Field(
        None, description="bf16 mixed precision for the forward passes; auto = bf16 only where the device computes it "
                          "natively (a GPU, a CPU with AVX512-BF16/AMX), else float32")
    device: str = Field("cpu", description="'cpu', 'cuda', 'cuda:1', ...; under a multi-GPU launch 'cuda' is each "
                        "process's own GPU")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: Literal["generative", "embedding"]


def option_prompt(record: GenRecord) -> str:
    """The record's prompt with lettered options (the letters are what the model answers)."""
    if not record.options:
        return record.prompt()
    if len(record.options) > len(LETTERS):
        raise ValueError(f"{record.task}: {len(record.options)} options, at most {len(LETTERS)} supported")
    listed = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(record.options))
    body = "\n\n".join(p for p in (record.instruction, record.input) if p)
    return f"{body}\n\nOptions:\n{listed}\n\nAnswer with the letter of one option."


def target_text(record: GenRecord) -> str:
    if record.options:
        return LETTERS[record.options.index(record.response)]
    return record.response


class MultiTaskModel:
    def __init__(self, model, tokenizer, tasks: Sequence[TaskSpec], config: MultiTaskModelConfig):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.tasks = list(tasks)
        self.task_index = {t.name: i for i, t in enumerate(self.tasks)}
        if EMBED_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [EMBED_TOKEN]})
        if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
            _grow_embeddings(model, len(tokenizer))
        tcfg = config.tmole
        if config.adapter == "lora":
            tcfg = tcfg.model_copy(update={"n_embedding": 0, "n_generative": 0, "n_shared": 1})
        self.tmole: TMoLE = attach_tmole(model, tcfg, [t.kind for t in self.tasks])
        self.pad_id = pad_token_id(tokenizer)
        self.eos_id = tokenizer.eos_token_id
        self.letter_ids = []
        for letter in LETTERS:
            ids = tokenizer.encode(letter, add_special_tokens=False)
            self.letter_ids.append(ids[0] if len(ids) == 1 else None)
        self.device = next(model.parameters()).device
        # logits = the output layer of the last hidden states (Llama, Mistral, Qwen2; not Gemma-2's soft cap)
        self.plain_head = getattr(model.config, "final_logit_softcapping", None) is None
        self.last_logits_only = last_logits_only(model)  # forward arguments for the last position's logits alone
        self.autocast = autocast_dtype(config.autocast, self.device)

    # -- plumbing --------------------------------------------------------------------------
    def ids_of(self, tasks: Sequence[str]) -> torch.Tensor:
        unknown = sorted(set(tasks) - set(self.task_index))
        if unknown:
            raise KeyError(f"unknown tasks {unknown}; the model knows {sorted(self.task_index)}")
        return torch.tensor([self.task_index[t] for t in tasks], device=self.device)

    def _chat(self, record: GenRecord) -> list[int]:
        messages = [{"role": "system", "content": record.system}, {"role": "user", "content": option_prompt(record)}]
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = f"{record.system}\n\n{option_prompt(record)}\n\nAnswer: "
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return ids[-self.config.max_length :]

    def _pad(self, rows: list[list[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = pad_batch(rows, self.pad_id, "left" if left else "right")
        return ids.to(self.device), mask.to(self.device)

    # -- generative ------------------------------------------------------------------------
    def target_tokens(self, records: Sequence[GenRecord]) -> int:
        """How many tokens ``generative_loss`` averages over for ``records`` (targets plus eos)."""
        return sum(len(self._target(r)) for r in records)

    def _target(self, record: GenRecord) -> list[int]:
        return self.tokenizer.encode(target_text(record), add_special_tokens=False) + [self.eos_id]

    def generative_loss(self, records: Sequence[GenRecord], reduction: str = "mean") -> torch.Tensor:
        """Token cross-entropy of the targets (letter or response, then eos) given the prompts: the
        mean, or with ``reduction="sum"`` the sum (a process's share of a batch split over processes).
        Records run in groups of similar length (``length_groups``): same loss, less padding."""
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")
        rows, labels = [], []
        for r in records:
            prompt = self._chat(r)
            target = self._target(r)
            rows.append(prompt + target)
            labels.append([-100] * len(prompt) + target)
        total = torch.zeros((), device=self.device)
        for group in length_groups([len(row) for row in rows]):
            ids, mask = self._pad([rows[i] for i in group], left=False)
            lab = torch.full_like(ids, -100)
            for row, i in enumerate(group):
                lab[row, : len(labels[i])] = torch.tensor(labels[i])
            targets = lab[:, 1:]
            scored = targets != -100  # the answer's tokens: the output layer runs on these positions only
            with self.tmole.tasks(self.ids_of([records[i].task for i in group])), \
                    autocast_context(self.device, self.autocast):
                if self.plain_head:
                    hidden = self._body()(input_ids=ids, attention_mask=mask).last_hidden_state
                    logits = self.model.get_output_embeddings()(hidden[:, :-1][scored])
                else:
                    logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1][scored]
            total = total + F.cross_entropy(logits.float(), targets[scored], reduction="sum")
        return total if reduction == "sum" else total / sum(len(lb) - lb.count(-100) for lb in labels)

    def _body(self):
        """The transformer under the output layer (its last hidden states)."""
        return self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model.base_model

    @torch.no_grad()
    def choose(self, records: Sequence[GenRecord], batch_size: int = 8, progress: bool | None = None) -> list[int]:
        """Index of the predicted option per record (argmax of the option letters' next-token logits).
        Prompts run in batches of similar length (less padding), and only the last position's logits
        are computed."""
        if any(t is None for r in records for t in self.letter_ids[: len(r.options)]):
            raise ValueError("the tokenizer does not encode option letters as single tokens")
        prompts = [self._chat(r) for r in records]
        out = [0] * len(records)
        batches = length_batches([len(p) for p in prompts], batch_size)
        with batch_progress(len(batches), progress, f"answering {records[0].task if records else ''}") as bar:
            for batch in batches:
                chunk = [records[i] for i in batch]
                ids, mask = self._pad([prompts[i] for i in batch], left=True)
                position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
                with self.tmole.tasks(self.ids_of([r.task for r in chunk])), \
                        autocast_context(self.device, self.autocast):
                    logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                                        **self.last_logits_only).logits[:, -1].float()
                for i, row, r in zip(batch, logits, chunk):
                    out[i] = int(row[self.letter_ids[: len(r.options)]].argmax())
                bar.update()
        return out

    @torch.no_grad()
    def answer(self, records: Sequence[GenRecord], max_new_tokens: int = 16) -> list[str]:
        """Greedy answers for records without options."""
        out = []
        for r in records:
            ids = torch.tensor([self._chat(r)], device=self.device)
            with self.tmole.tasks(self.ids_of([r.task])), autocast_context(self.device, self.autocast):
                gen = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                          max_new_tokens=max_new_tokens, pad_token_id=self.pad_id)
            out.append(self.tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True).strip())
        return out

    # -- embedding -------------------------------------------------------------------------
    def embed(self, texts: Sequence[str], tasks: Sequence[str]) -> torch.Tensor:
        """L2-normalised mean-pooled last hidden states, one row per text (keeps gradients if enabled)."""
        rows = [self.tokenizer.encode(t, add_special_tokens=False)[-self.config.max_length :] or [self.eos_id]
                for t in texts]
        ids, mask = self._pad(rows, left=False)
        with self.tmole.tasks(self.ids_of(tasks)), autocast_context(self.device, self.autocast):
            hidden = self._body()(input_ids=ids, attention_mask=mask).last_hidden_state
        return F.normalize(mean_pool(hidden.float(), mask), dim=-1)

    def embedding_loss(self, records: Sequence[EmbRecord]) -> torch.Tensor:
        """InfoNCE: each query against every positive of the batch and all hard negatives."""
        tasks = [r.task for r in records]
        q = self.embed([r.query_text() for r in records], tasks)
        docs = [EmbRecord.item_text(r.positive) for r in records]
        doc_tasks = list(tasks)
        for r in records:
            docs += [EmbRecord.item_text(n) for n in r.negatives]
            doc_tasks += [r.task] * len(r.negatives)
        d = self.embed(docs, doc_tasks)
        logits = q @ d.T / self.config.temperature
        return F.cross_entropy(logits, torch.arange(len(records), device=logits.device))

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return self.tmole.parameters()


def _grow_embeddings(model, size: int) -> None:
    """Room for the added tokens, their rows set to the mean of the existing ones: deterministic,
    so a reloaded model (backbone + saved adapter) embeds exactly as the trained one did (the
    rows stay frozen and are not saved with the adapter)."""
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(size, mean_resizing=False)
    with torch.no_grad():
        for matrix in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}.values():
            matrix.weight[old:] = matrix.weight[:old].mean(0)


def load_multitask_model(tasks: Sequence[TaskSpec], config: MultiTaskModelConfig) -> MultiTaskModel:
    from recfm.models import load_causal_lm

    device = config.device
    if device == "cuda" and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.current_device()}"  # the launcher set each process's GPU
    model, tokenizer = load_causal_lm(config.backbone, padding_side="right", device=device)
    return MultiTaskModel(model, tokenizer, tasks, config)
