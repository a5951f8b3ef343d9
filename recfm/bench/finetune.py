"""LoRA fine-tuning of a scorer on click pairs, with early stopping on validation AUC (RecBench-MD).

    from recfm.bench.finetune import FinetuneConfig, finetune, load_adapter

    history = finetune(scorer, (h, c, y), (groups, vh, vc, vy), FinetuneConfig(max_steps=2000), "runs/ft")
    scorer.score(test_h, test_c)            # scores with the adapted model
    load_adapter(fresh_scorer, "runs/ft")   # the same adapters on a freshly loaded model

The paper's recipe: LoRA with rank 32, alpha 128, learning rate 1e-4, Adam, early stopping
on validation AUC. The scorer's model is wrapped in place with peft (``scorer.model`` becomes
a ``PeftModel``; only the adapters train) and the loss is binary cross-entropy with logits:

- prompt paradigm: the logit is the Yes-No margin ``LSE(yes) - LSE(no)`` of
  :meth:`PromptScorer.logit_margin`, so ``sigmoid(logit)`` is exactly the P(yes) the scorer
  reports: training and scoring read the same number.
- embedding paradigm: the logit is ``cosine_scale * cosine + bias`` with a FIXED scale
  (default 10: a cosine lives in [-1, 1], whose sigmoid would span only 0.27..0.73, too flat to
  fit 0/1 labels) and a learnable scalar bias (the base rate, which pretrained encoders put far
  from 0: their cosines are mostly positive). Neither changes the ORDER of the scores, so the
  scorer keeps reporting the plain cosine and the bias is not saved.

Validation AUC (``click_metrics`` on the validation pairs, scored with ``scorer.score``) is
measured before training (step 0: the zero-shot model, which LoRA starts from, as its B
matrices are zero), every ``eval_every`` steps and after the last step. The adapter weights
of the best evaluation are kept on the CPU and restored at the end, so fine-tuning never
returns a model worse on validation than the one it started from. Training stops early after
``patience`` evaluations in a row without a better AUC, at ``max_steps``, or after
``max_minutes`` (checked after every step; the final evaluation comes after the limit).

Everything is seeded from ``config.seed`` (adapter initialisation, dropout, batch order)
without touching the caller's global random state. Runs where the model is (CPU or GPU), in
the scorer's precision: float32, or bf16 mixed precision with ``autocast="bf16"`` (or ``"auto"``) in
the scorer's options (LoRA weights and optimizer state stay float32).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from recfm import distributed
from recfm.bench.metrics import click_metrics

# LoRA target modules by architecture family, tried in order: the first family whose
# attention projections the model has wins ("auto").
AUTO_TARGETS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "k_proj", "v_proj", "o_proj"),  # Llama, Mistral, Qwen, SmolLM, ...
    ("q_proj", "k_proj", "v_proj", "out_proj"),  # OPT, BART-style
    ("query", "key", "value", "dense"),  # BERT-like encoders (dense: attention output and feed-forward)
    ("c_attn", "c_proj"),  # GPT-2
    ("q", "k", "v", "o"),  # T5
)


class FinetuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lora_r: int = Field(32, ge=1, description="LoRA rank (paper: 32)")
    lora_alpha: float = Field(128, gt=0, description="LoRA alpha (paper: 128)")
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: Literal["auto"] | list[str] = Field(
        "auto", description="'auto': q/k/v/o projections for decoders, query/key/value/dense for BERT-like encoders"
    )
    lora_last_layers: int | None = Field(
        None, ge=1, description="adapt only the top N transformer layers (None = all): backward stops below them, "
        "which halves a CPU step of SmolLM2 with N=6 of 30",
    )
    cache_frozen_layers: bool = Field(
        True, description="with lora_last_layers, prompt paradigm: keep each training prompt's hidden states below the "
        "adapted layers from its first step (the frozen layers make the same every time) and run only the top layers "
        "after; the same losses and gradients as the full pass, one float32 state per prompt token in memory",
    )
    optimizer: Literal["adam"] = Field("adam", description="Adam, as in the paper")
    lr: float = Field(1e-4, gt=0, description="learning rate (paper: 1e-4)")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping (None = off)")
    batch_size: int = Field(8, ge=1)
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (None = epochs decide)")
    eval_every: int = Field(200, ge=1, description="validation AUC every this many steps (and after the last)")
    eval_at_start: bool = Field(
        True, description="also measure the untrained model (step 0), which early stopping can keep"
    )
    patience: int = Field(3, ge=1, description="stop after this many evaluations in a row without a better AUC")
    max_minutes: float | None = Field(None, gt=0, description="wall-clock budget for training (None = no limit)")
    cosine_scale: float = Field(10.0, gt=0, description="embedding paradigm: fixed logit scale applied to the cosine")
    seed: int = Field(0, ge=0)
    show_progress: bool = True


# ---------------------------------------------------------------------------------------------
# LoRA wrapping
# ---------------------------------------------------------------------------------------------


def resolve_target_modules(model, target_modules: str | Sequence[str] = "auto") -> list[str]:
    """The module names LoRA adapts; ``"auto"`` picks them by architecture (see ``AUTO_TARGETS``)."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if target_modules != "auto":
        targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
        missing = [t for t in targets if t not in names]
        if missing:
            raise ValueError(f"target modules {missing} not found in {type(model).__name__}")
        return targets
    for family in AUTO_TARGETS:
        if all(t in names for t in family[:3]):
            return [t for t in family if t in names]
    raise ValueError(
        f"cannot pick LoRA target modules for {type(model).__name__} automatically; "
        f"pass FinetuneConfig(target_modules=[...]) naming its attention projections"
    )


def _with_lora(scorer, config: FinetuneConfig):
    from peft import LoraConfig, PeftModel, get_peft_model

    if isinstance(scorer.model, PeftModel):  # a second fine-tuning run goes on training the same adapters
        for name, p in scorer.model.named_parameters():
            p.requires_grad_("lora_" in name)
        return scorer.model
    targets = resolve_target_modules(scorer.model, config.target_modules)
    layers = None
    if config.lora_last_layers is not None:
        n_layers = getattr(scorer.model.config, "num_hidden_layers", None)
        if n_layers is None:
            raise ValueError(f"lora_last_layers needs a model config with num_hidden_layers ({type(scorer.model).__name__})")
        layers = list(range(max(0, n_layers - config.lora_last_layers), n_layers))
    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, target_modules=targets,
        layers_to_transform=layers,
    )
    scorer.model = get_peft_model(scorer.model, lora)
    return scorer.model


def load_adapter(scorer, path: str | Path):
    """Apply adapters saved by :func:`finetune` (``output_dir``) to ``scorer``'s model, for scoring."""
    from peft import PeftModel

    from recfm.models.loading import require_safetensors

    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{path} holds no adapter_config.json (save adapters with finetune(..., output_dir))")
    require_safetensors(path, "load_adapter", name="adapter_model.safetensors")
    if isinstance(scorer.model, PeftModel):
        name = f"loaded_{len(scorer.model.peft_config)}"
        scorer.model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        scorer.model.set_adapter(name)
    else:
        scorer.model = PeftModel.from_pretrained(scorer.model, str(path), is_trainable=False)
    scorer.model.eval()
    return scorer


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------


def _check_split(name: str, columns: Sequence[Sequence], labels) -> np.ndarray:
    n = len(labels)
    if any(len(c) != n for c in columns):
        raise ValueError(f"{name}: columns of unequal lengths {[len(c) for c in columns]} and {n} labels")
    if n == 0:
        raise ValueError(f"{name}: no pairs")
    y = np.asarray(labels, dtype=np.float32)
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"{name}: labels must be 0 or 1")
    return y


def _rng_devices(model) -> list[int]:
    device = next(model.parameters()).device
    return [device.index or 0] if device.type == "cuda" else []


class _FrozenStates:
    """The training prompts' hidden states below the adapted layers, made on a prompt's first step
    and reused after (``config.cache_frozen_layers``; inactive for the embedding paradigm, without
    ``lora_last_layers`` and for models whose layers cannot be split)."""

    def __init__(self, scorer, config: FinetuneConfig, histories, candidates):
        from recfm.models.batching import splittable

        self.scorer, self.top = scorer, config.lora_last_layers
        self.histories, self.candidates = histories, candidates
        self.active = bool(config.cache_frozen_layers and self.top and scorer.paradigm == "prompt"
                           and splittable(scorer.model) and not self._trains_below(scorer.model, self.top))
        self.states: dict[int, torch.Tensor] = {}

    @staticmethod
    def _trains_below(model, top: int) -> bool:
        """Whether any trainable weight lives below the top ``top`` layers (an adapter of an earlier
        stage trained on all layers): then the lower layers are not frozen and nothing is cached."""
        import re

        from recfm.models.batching import unwrap_peft

        first_top = len(unwrap_peft(model).model.layers) - top
        for name, p in model.named_parameters():
            m = re.search(r"\.layers\.(\d+)\.", name)
            if p.requires_grad and (m is None or int(m.group(1)) < first_top):
                return True
        return False

    def margins(self, rows: Sequence[int]) -> torch.Tensor:
        new = [int(r) for r in rows if int(r) not in self.states]
        if new:
            ids = self.scorer.token_ids([self.histories[r] for r in new], [self.candidates[r] for r in new])
            self.states.update(zip(new, self.scorer.frozen_states(ids, self.top)))
        return self.scorer.top_margin([self.states[int(r)] for r in rows], self.top)


def finetune(
    scorer,
    train: tuple[Sequence[Sequence[str]], Sequence[str], Sequence[int]],
    valid: tuple[Sequence, Sequence[Sequence[str]], Sequence[str], Sequence[int]],
    config: FinetuneConfig | None = None,
    output_dir: str | Path | None = None,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Fine-tune ``scorer`` (a PromptScorer or EmbeddingScorer) with LoRA; see the module doc.

    ``train = (histories, candidates, labels)``, ``valid = (groups, histories, candidates,
    labels)``. Returns the history: ``steps`` and ``losses`` (every step), ``eval_steps`` and
    ``valid_auc`` (every evaluation), ``best_step``, ``best_auc``, ``stopped`` (why training
    ended), ``seconds``, ``trainable_params``. With ``output_dir`` the best adapters are saved
    there (``save_pretrained``) with ``finetune.json`` (the history and the config).
    """
    config = config or FinetuneConfig()
    say = log or (lambda message: None)
    if scorer.paradigm not in ("prompt", "embedding"):
        raise ValueError(f"unknown scorer paradigm {scorer.paradigm!r}")
    train_h, train_c, train_y = train
    y_train = _check_split("train", (train_h, train_c), train_y)
    valid_g, valid_h, valid_c, valid_y = valid
    y_valid = _check_split("valid", (valid_g, valid_h, valid_c), valid_y)
    if y_valid.min() == y_valid.max():
        raise ValueError("valid: labels must hold both classes, or AUC is undefined")

    t0 = time.perf_counter()
    steps_per_epoch = math.ceil(len(y_train) / config.batch_size)
    total = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    history: dict = {"steps": [], "losses": [], "eval_steps": [], "valid_auc": [], "best_step": None,
                     "best_auc": None, "stopped": "completed", "total_steps_planned": total}

    with torch.random.fork_rng(devices=_rng_devices(scorer.model)):
        torch.manual_seed(config.seed)
        model = _with_lora(scorer, config)
        params = [p for p in model.parameters() if p.requires_grad]
        history["trainable_params"] = int(sum(p.numel() for p in params))
        bias = None
        if scorer.paradigm == "embedding":
            bias = torch.zeros((), device=params[0].device, requires_grad=True)
            params = params + [bias]
        optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        adapters = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

        def snapshot() -> dict[str, torch.Tensor]:
            return {n: p.detach().to("cpu", copy=True) for n, p in adapters}

        def evaluate(step: int) -> float:
            # several processes: each scores its share of the pairs, gathered by index
            scores = distributed.map_sharded(
                lambda idx: scorer.score([valid_h[i] for i in idx], [valid_c[i] for i in idx]), len(y_valid))
            auc = click_metrics(valid_g, y_valid, scores)["auc"]
            history["eval_steps"].append(step)
            history["valid_auc"].append(auc)
            return auc

        best_state, best_auc, best_step, bad_evals = snapshot(), -math.inf, 0, 0

        def record(step: int) -> bool:
            """Evaluate; keep the state if best; True when patience has run out."""
            nonlocal best_state, best_auc, best_step, bad_evals
            auc = evaluate(step)
            if auc > best_auc:
                best_state, best_auc, best_step, bad_evals = snapshot(), auc, step, 0
            else:
                bad_evals += 1
            say(f"finetune step {step}/{total}: valid AUC {auc:.4f} (best {best_auc:.4f} at step {best_step})")
            return bad_evals >= config.patience

        if config.eval_at_start:
            record(0)
        frozen = _FrozenStates(scorer, config, train_h, train_c)
        rng = np.random.default_rng(config.seed)
        world = distributed.world_size()
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"finetune ({scorer.paradigm})", unit="step", disable=not config.show_progress,
                   mininterval=2)
        step, last_eval, stop = 0, 0, False
        try:
            while step < total and not stop:
                order = rng.permutation(len(y_train))
                for start in range(0, len(order), config.batch_size):
                    rows = order[start : start + config.batch_size]
                    mine, _ = distributed.batch_share(rows)  # every process drew the same batch: it trains on its part
                    model.train()
                    optimizer.zero_grad(set_to_none=True)
                    local_sum = 0.0
                    if len(mine):
                        h = [train_h[r] for r in mine]
                        c = [train_c[r] for r in mine]
                        target = torch.as_tensor(y_train[mine], device=params[0].device)
                        if frozen.active:
                            logits = frozen.margins(mine)
                        elif scorer.paradigm == "prompt":
                            logits = scorer.logit_margin(scorer.encode(h, c))
                        else:
                            logits = config.cosine_scale * scorer.cosine(h, c) + bias
                        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
                        # this process's share of the batch mean: summed over processes it is the mean
                        (loss * (len(mine) / len(rows))).backward()
                        local_sum = float(loss.detach()) * len(mine)
                    distributed.sum_gradients(params)
                    [batch_sum] = distributed.all_sum(local_sum)
                    if config.max_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                    optimizer.step()
                    step += 1
                    history["steps"].append(step)
                    history["losses"].append(batch_sum / len(rows))
                    bar.update(1)
                    bar.set_postfix(loss=f"{history['losses'][-1]:.4f}", best_auc=f"{best_auc:.4f}", refresh=False)
                    if step % config.eval_every == 0:
                        last_eval = step
                        if record(step):
                            history["stopped"] = f"early stopping: {config.patience} evaluations without a better AUC"
                            stop = True
                    minutes = (time.perf_counter() - t0) / 60
                    if not stop and config.max_minutes is not None and minutes >= config.max_minutes:
                        history["stopped"] = f"time limit ({config.max_minutes} min)"
                        stop = True
                    if world > 1 and distributed.any_process(stop):
                        stop = True
                        history["stopped"] = history["stopped"] if history["stopped"] != "completed" else "time limit"
                    if stop or step >= total:
                        break
            if last_eval != step:
                record(step)
        finally:
            bar.close()

        with torch.no_grad():
            for n, p in adapters:
                p.copy_(best_state[n].to(p.device))
        model.eval()

    history.update(best_step=best_step, best_auc=best_auc, seconds=round(time.perf_counter() - t0, 2),
                   trained_steps=step)
    if bias is not None:
        history["bias"] = float(bias.detach())
    say(f"finetune done in {history['seconds']} s ({history['stopped']}): best valid AUC {best_auc:.4f} at step "
        f"{best_step}")
    if output_dir is not None and distributed.is_main():
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(output_dir))
        record_file = {"history": history, "config": config.model_dump(), "paradigm": scorer.paradigm}
        (output_dir / "finetune.json").write_text(json.dumps(record_file, indent=2) + "\n")
    return history
