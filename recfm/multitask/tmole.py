"""TMoLE: task-wise mixture of low-rank experts (RecFound 4.2), attachable to any PyTorch model.

Every adapted projection ``W0`` (by default the attention q/k/v/o projections) gets N low-rank
experts ``(A_j, B_j)`` split into embedding, generative and shared groups. A sample of task i is
routed by its task embedding ``e_i`` (one learnable table for the whole model) through the
projection's router MLP; experts of the other task type are masked out before the softmax:

    v_i = softmax(mask_type(i)(MLP(e_i)))                         (eq. 1)
    o   = W0 x + scaling * sum_j v_ij B_j A_j dropout(x)          (eq. 2, scaling = alpha / r)

B starts at zero, so an attached model computes exactly what the base model did. The router
depends on the task only, not on the token, so it runs once per sample per projection.

    tmole = attach_tmole(model, TMoLEConfig(), task_types=["generative", "embedding", ...])
    with tmole.tasks(task_ids):          # one task id per row of the batch
        out = model(**batch)
    tmole.routing()                      # [n_tasks, n_layers, N] routing distributions (Figure 2)

Nothing in transformers or peft is patched: ``attach_tmole`` swaps the target ``nn.Linear``
children for :class:`TMoLELinear` wrappers that keep the original module (and its weights) inside.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

TaskType = Literal["embedding", "generative"]


class TMoLEConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1, description="rank of every expert (paper: 16)")
    alpha: float = Field(64, gt=0, description="scaling = alpha / r (paper: 64)")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the experts' input (paper: 0.1)")
    n_embedding: int = Field(2, ge=0, description="experts only embedding tasks use")
    n_generative: int = Field(2, ge=0, description="experts only generative tasks use")
    n_shared: int = Field(2, ge=0, description="experts every task uses")
    task_dim: int = Field(512, ge=1, description="task embedding size (paper: 512)")
    router_hidden: int = Field(64, ge=1, description="hidden width of each projection's router MLP")
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                                      description="names of the nn.Linear layers that get experts")
    last_layers: int | None = Field(
        None, ge=1, description="adapt only the top N transformer layers (None = all, as the paper): a CPU "
        "saving, the backward pass stops below them",
    )

    @property
    def n_experts(self) -> int:
        return self.n_embedding + self.n_generative + self.n_shared

    def expert_mask(self, task_type: TaskType) -> torch.Tensor:
        """True for the experts a task of ``task_type`` may use: its own group and the shared one."""
        own = {"embedding": (True, False), "generative": (False, True)}[task_type]
        return torch.tensor([own[0]] * self.n_embedding + [own[1]] * self.n_generative + [True] * self.n_shared)


class TaskState(nn.Module):
    """What every TMoLE layer reads: the task embedding table, the task-type masks, the current task ids."""

    def __init__(self, config: TMoLEConfig, task_types: Sequence[TaskType]):
        super().__init__()
        if config.n_experts < 1:
            raise ValueError("TMoLE needs at least one expert")
        for t in set(task_types):
            if not bool(config.expert_mask(t).any()):
                raise ValueError(f"no expert is open to {t} tasks: give them n_{t} > 0 or shared experts")
        self.task_types = list(task_types)
        self.task_embedding = nn.Embedding(len(task_types), config.task_dim)
        nn.init.normal_(self.task_embedding.weight, std=1.0)
        masks = torch.stack([config.expert_mask(t) for t in task_types])
        self.register_buffer("masks", masks, persistent=False)
        self.task_ids: torch.Tensor | None = None


class TMoLELinear(nn.Module):
    """``base(x) + scaling * sum_j v_j B_j A_j dropout(x)`` with v from the task router (module doc)."""

    def __init__(self, base: nn.Linear, config: TMoLEConfig, state: TaskState):
        super().__init__()
        self.base = base
        self.state = [state]  # a list: the shared state must not become a child module of every layer
        n, r = config.n_experts, config.r
        self.scaling = config.alpha / r
        self.lora_A = nn.Parameter(torch.empty(n, base.in_features, r))
        self.lora_B = nn.Parameter(torch.zeros(n, r, base.out_features))
        for j in range(n):  # as peft initialises LoRA's A (kaiming-uniform, a=sqrt(5)); B = 0
            nn.init.kaiming_uniform_(self.lora_A.data[j].T, a=math.sqrt(5))
        self.router = nn.Sequential(nn.Linear(config.task_dim, config.router_hidden), nn.GELU(),
                                    nn.Linear(config.router_hidden, n))
        self.dropout = nn.Dropout(config.dropout)

    def gates(self, task_ids: torch.Tensor) -> torch.Tensor:
        """Routing distributions v [len(task_ids), N] (eq. 1): masked experts get exactly 0."""
        state = self.state[0]
        logits = self.router(state.task_embedding(task_ids))
        logits = logits.masked_fill(~state.masks[task_ids], float("-inf"))
        return torch.softmax(logits.float(), dim=-1).to(logits.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        task_ids = self.state[0].task_ids
        if task_ids is None:
            raise RuntimeError("TMoLE layers need the batch's task ids: call the model inside `with tmole.tasks(ids):`")
        if task_ids.shape[0] != x.shape[0]:
            raise ValueError(f"{task_ids.shape[0]} task ids for a batch of {x.shape[0]} rows")
        v = self.gates(task_ids).to(x.dtype)  # [b, N]
        h = torch.einsum("b...i,nir->b...nr", self.dropout(x), self.lora_A.to(x.dtype))
        h = h * v.view(v.shape[0], *([1] * (h.dim() - 3)), v.shape[1], 1)
        return out + self.scaling * torch.einsum("b...nr,nro->b...o", h, self.lora_B.to(x.dtype))


class TMoLE:
    """Handle on a model with TMoLE layers: set task ids, read routings, get/set the trainable weights."""

    def __init__(self, model: nn.Module, state: TaskState, layers: dict[str, TMoLELinear], config: TMoLEConfig):
        self.model, self.state, self.layers, self.config = model, state, layers, config

    @contextlib.contextmanager
    def tasks(self, task_ids: torch.Tensor | Sequence[int]) -> Iterator[None]:
        device = self.state.task_embedding.weight.device
        previous = self.state.task_ids
        self.state.task_ids = torch.as_tensor(task_ids, dtype=torch.long, device=device)
        try:
            yield
        finally:
            self.state.task_ids = previous

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_parameters()]

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        out = [("task_embedding.weight", self.state.task_embedding.weight)]
        for name, layer in self.layers.items():
            out += [(f"{name}.{n}", p) for n, p in layer.named_parameters() if not n.startswith("base.")]
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.named_parameters()}

    def load_state_dict(self, weights: dict[str, torch.Tensor]) -> None:
        own = dict(self.named_parameters())
        missing, unexpected = set(own) - set(weights), set(weights) - set(own)
        if missing or unexpected:
            raise KeyError(f"TMoLE weights do not match: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
        with torch.no_grad():
            for n, p in own.items():
                p.copy_(weights[n].to(p.device, p.dtype))

    @torch.no_grad()
    def routing(self) -> torch.Tensor:
        """[n_tasks, n_layers, N]: every task's routing distribution in every TMoLE layer."""
        ids = torch.arange(len(self.state.task_types), device=self.state.task_embedding.weight.device)
        return torch.stack([layer.gates(ids).float().cpu() for layer in self.layers.values()], dim=1)


def attach_tmole(model: nn.Module, config: TMoLEConfig, task_types: Sequence[TaskType]) -> TMoLE:
    """Wrap ``model``'s target projections with TMoLE layers; freeze everything else."""
    for p in model.parameters():
        p.requires_grad_(False)
    state = TaskState(config, task_types)
    layers: dict[str, TMoLELinear] = {}
    targets = [(name, module) for name, module in model.named_modules()
               if name.rsplit(".", 1)[-1] in config.target_modules and isinstance(module, nn.Linear)]
    if config.last_layers is not None:
        n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
        if n_layers is None:
            raise ValueError("last_layers needs a model whose config has num_hidden_layers")
        keep = {f".layers.{i}." for i in range(max(0, n_layers - config.last_layers), n_layers)}
        targets = [(n, m) for n, m in targets if any(k in f".{n}" for k in keep)]
    if not targets:
        raise ValueError(f"no nn.Linear named {config.target_modules} in {type(model).__name__}")
    device = next(model.parameters()).device
    state.to(device)
    for name, module in targets:
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        layer = TMoLELinear(module, config, state).to(device)
        setattr(parent, name.rsplit(".", 1)[-1], layer)
        layers[name] = layer
    return TMoLE(model, state, layers, config)
