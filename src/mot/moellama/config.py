"""moellama's config file schema (``configs/moellama.hocon``) and device resolution.

The sections and keys follow the upstream moellama config: ``model``, ``device``, ``training``,
``inference``, ``paths``.  ``ModelConfig`` is also what ``model.MoeLlama`` is built from.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mot.config import ConfigModel


class ModelConfig(ConfigModel):
    """Architecture of one moellama model.  Every MoE option is a field, so an experiment is a config."""

    vocab_size: int = Field(8192, ge=8)
    dim: int = Field(256, ge=2)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(8, ge=1)
    num_kv_heads: int | None = Field(None, ge=1)  # grouped-query attention; None: = num_heads
    num_experts: int = Field(8, ge=1)
    top_k: int = Field(2, ge=1)
    ffn_dim: int = Field(512, ge=1)  # hidden size of each expert (and of the shared expert)
    shared_expert: bool = False  # one always-on SwiGLU expert, added ungated
    max_seq_len: int = Field(256, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    load_balancing_loss_coef: float = Field(0.01, ge=0.0)
    router_z_loss_coef: float = Field(0.001, ge=0.0)
    router_noise_std: float = Field(0.0, ge=0.0)  # Gaussian noise on router logits, training only
    # the routed experts' mixture (weights summing to one) is multiplied by this; None: top_k (see MoE)
    routed_scaling_factor: float | None = Field(None, gt=0.0)
    tie_embeddings: bool = True
    rope_theta: float = Field(10000.0, gt=0.0)
    norm_eps: float = Field(1e-5, gt=0.0)
    init_std: float = Field(0.02, gt=0.0)

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        if self.top_k > self.num_experts:
            raise ValueError(f"model.top_k ({self.top_k}) must be <= model.num_experts ({self.num_experts})")
        if self.dim % self.num_heads:
            raise ValueError(f"model.dim ({self.dim}) must be divisible by model.num_heads ({self.num_heads})")
        if (self.dim // self.num_heads) % 2:
            raise ValueError(f"head size model.dim / model.num_heads ({self.dim // self.num_heads}) must be even (RoPE)")
        if self.num_heads % self.kv_heads:
            raise ValueError(
                f"model.num_heads ({self.num_heads}) must be divisible by model.num_kv_heads ({self.kv_heads})"
            )
        return self

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def route_scale(self) -> float:
        return float(self.top_k) if self.routed_scaling_factor is None else self.routed_scaling_factor


class DeviceConfig(ConfigModel):
    type: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    num_cpu_threads: int = Field(0, ge=0)  # 0: leave torch's default
    gpu_ids: list[int] = Field(default_factory=list)


class LlamaTrainingConfig(ConfigModel):
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(3e-4, gt=0.0)
    epochs: int = Field(1, ge=1)
    eval_steps: int = Field(100, ge=1)
    dataset: str = "tiny_shakespeare"  # tiny_shakespeare | shakespeare | path to .txt/.jsonl/folder | hf:name
    seq_len: int = Field(128, ge=2)
    num_workers: int = Field(0, ge=0)
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    seed: int = 1337
    tokenizer_vocab_size: int | None = Field(None, ge=8)  # None: = model.vocab_size
    # engine knobs beyond the upstream keys (mot.training.TrainingConfig)
    max_steps: int | None = Field(None, ge=1)  # optimizer steps; wins over epochs
    warmup_steps: int = Field(50, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)  # cosine decays to learning_rate * this
    weight_decay: float = Field(0.1, ge=0.0)
    gradient_accumulation_steps: int = Field(1, ge=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16/fp16 on CUDA, fp32 elsewhere
    max_val_windows: int | None = Field(256, ge=1)  # validate on this many evenly spaced windows; null: all
    save_every: int | None = Field(None, ge=1)  # checkpoint every N steps (None: at every eval, and the end)
    keep_last: int = Field(2, ge=1)


class InferenceConfig(ConfigModel):
    max_new_tokens: int = Field(128, ge=0)
    temperature: float = Field(0.8, ge=0.0)
    top_k: int = Field(50, ge=0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)


class PathsConfig(ConfigModel):
    model_path: str = "runs/moellama/model"
    output_dir: str = "runs/moellama"


class MoeLlamaFileConfig(ConfigModel):
    """The whole moellama config file."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    device: DeviceConfig = Field(default_factory=DeviceConfig)
    training: LlamaTrainingConfig = Field(default_factory=LlamaTrainingConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    paths: PathsConfig = Field(default_factory=PathsConfig)

    @model_validator(mode="after")
    def _check_seq_len(self) -> MoeLlamaFileConfig:
        if self.training.seq_len > self.model.max_seq_len:
            raise ValueError(
                f"training.seq_len ({self.training.seq_len}) must be <= model.max_seq_len ({self.model.max_seq_len})"
            )
        return self


def resolve_device(kind: str = "auto", gpu_ids: list[int] | None = None):
    """``auto`` picks CUDA, then MPS, then CPU.  An explicit kind that is not available is an error."""
    import torch

    from mot.errors import UsageError

    gpu = f"cuda:{gpu_ids[0]}" if gpu_ids else "cuda"
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device(gpu)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError("device.type = cuda but no CUDA device is available; set device.type = auto or cpu")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("device.type = mps but MPS is not available; set device.type = auto or cpu")
    return torch.device(gpu if kind == "cuda" else kind)
