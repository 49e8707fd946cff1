"""The config of a Mixture-of-Thoughts training run (``mot thoughts train -c CONFIG``).

Top-level keys follow the upstream RouterDC/MoT configs::

    {
      "experiment_name": "mot_routerdc",
      "expert_models": ["mistralai/Mistral-7B-Instruct-v0.2", {"spec": "smollm2-135m", "dtype": "float32"}],
      "mot_config": {"num_stacks": 4, "top_k": 3, "shared_dim": 768, "router_hidden_dim": 256,
                     "interaction_heads": 8},
      "training": {"batch_size": 4, "learning_rate": 1e-4, "num_epochs": 3, "gradient_accumulation_steps": 8},
      "data": {"sources": [{"kind": "cpp_cuda", "path": "data/cpp_cuda.jsonl"}], "split": [0.8, 0.1, 0.1]},
      "output_dir": "runs"
    }

``mot_config`` is ``mot.thoughts.MoTConfig``; ``training`` is ``mot.training.TrainingConfig`` (plus the
upstream spellings ``eval_steps``, ``save_steps``, ``logging_steps``, ``warmup_ratio``, ``fp16``, ``bf16``,
``max_grad_norm`` defaulting to 0.3 for MoT).  Load with ``mot.config.load_config(path, MoTRunConfig, overrides)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveFloat, field_validator, model_validator

from mot.config import ConfigModel
from mot.thoughts.config import MoTConfig
from mot.training import TrainingConfig

# The default prompt templates of the ``cpp_cuda`` and ``qa`` sources (``DataSource.template``);
# ``mot.thoughts.data`` formats the pairs with them.
CPP_CUDA_TEMPLATE = "### Translate C++ to CUDA:\n{source}\n### CUDA:\n"
QA_TEMPLATE = "Question: {question}\nAnswer:"


class ExpertEntry(ConfigModel):
    """One expert: a spec for ``mot.experts.resolve_expert`` (hub id, local dir, .gguf, packaged alias)."""

    spec: str = Field(min_length=1)
    dtype: str = "float32"
    quantization: Literal["4bit", "8bit"] | None = None
    device: str | None = Field(None, description="None: the training device")


def _expert_entry(value: Any) -> Any:
    if isinstance(value, str):
        return {"spec": value}
    if isinstance(value, dict) and "spec" not in value:
        for alias in ("name", "path", "model", "model_name"):
            if alias in value:
                value = dict(value)
                value["spec"] = value.pop(alias)
                break
    return value


class MoTTrainingConfig(TrainingConfig):
    """``TrainingConfig`` with the MoT default clip (0.3) and the upstream key spellings."""

    max_grad_norm: PositiveFloat | None = Field(0.3, description="clip the global grad norm; null disables")
    warmup_ratio: float | None = Field(None, ge=0.0, le=1.0,
                                       description="warmup as a share of the run's steps (wins over warmup_steps)")

    @model_validator(mode="before")
    @classmethod
    def _upstream_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for upstream, ours in (("eval_steps", "eval_every"), ("save_steps", "save_every"),
                               ("logging_steps", "log_every"), ("max_norm", "max_grad_norm"),
                               ("save_total_limit", "keep_last"), ("grad_clip", "max_grad_norm")):
            if upstream in data:
                if ours in data:
                    raise ValueError(f"give either {upstream} or {ours}, not both")
                data[ours] = data.pop(upstream)
        for flag, precision in (("fp16", "fp16"), ("bf16", "bf16")):
            if flag in data:
                if data.pop(flag) is True:
                    data["precision"] = precision
        return data

    def engine_config(self, total_steps: int | None = None) -> TrainingConfig:
        """The plain ``TrainingConfig`` the Trainer takes (``warmup_ratio`` turned into steps)."""
        values = self.model_dump(exclude={"warmup_ratio"})
        if self.warmup_ratio is not None and total_steps is not None:
            values["warmup_steps"] = int(round(self.warmup_ratio * total_steps))
        return TrainingConfig(**values)


class DataSource(ConfigModel):
    """One source of prompt/target pairs (see ``mot.thoughts.data``)."""

    kind: Literal["cpp_cuda", "qa", "pairs", "benchmark", "stdlib_qa"]
    path: str | None = Field(None, description="file or directory (relative to the config file's folder)")
    name: str | None = Field(None, description="benchmark name for kind 'benchmark' (mot.data.BENCHMARKS)")
    split: str | None = Field(None, description="benchmark split for kind 'benchmark'")
    limit: int | None = Field(None, ge=1)
    template: str | None = Field(None, description="prompt template ({source} for cpp_cuda, {question} for qa)")

    @model_validator(mode="after")
    def _check(self) -> DataSource:
        if self.kind in ("cpp_cuda", "qa", "pairs") and not self.path:
            raise ValueError(f"a '{self.kind}' source needs a path")
        if self.kind == "benchmark" and not self.name:
            raise ValueError("a 'benchmark' source needs a name (e.g. gsm8k, mmlu, cpp_cuda)")
        return self


class DataConfig(ConfigModel):
    """Where the pairs come from and how they are split.

    ``sources`` are pooled and split by ``split`` ratios (train, val, test) with ``seed``.  Explicit
    ``val_sources`` / ``test_sources`` replace the split for that part (the pool then goes to train,
    minus exact duplicates of val/test pairs)."""

    sources: list[DataSource] = Field(min_length=1)
    val_sources: list[DataSource] = Field(default_factory=list)
    test_sources: list[DataSource] = Field(default_factory=list)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 42
    max_samples: int | None = Field(None, ge=1, description="cap on pooled pairs, taken before splitting")
    max_val_samples: int | None = Field(None, ge=1)

    @field_validator("sources", "val_sources", "test_sources", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value


class EvaluationConfig(ConfigModel):
    """Generation metrics on a fixed validation subset (greedy, so the numbers are not noisy)."""

    generation_samples: int = Field(0, ge=0, description="first N validation pairs; 0: loss only")
    max_new_tokens: int = Field(128, ge=1)
    mode: Literal["fast", "full"] = "fast"


class PeerCacheConfig(ConfigModel):
    """Precompute the peers' per-stack states once per sample (memory-mapped on disk)."""

    enabled: bool = False
    directory: str | None = Field(None, description="default: <output_dir>/peer_cache")
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"


class MoTRunConfig(ConfigModel):
    experiment_name: str = Field("mot", min_length=1)
    expert_models: list[ExpertEntry] = Field(min_length=1)
    mot_config: MoTConfig = Field(default_factory=MoTConfig)
    training: MoTTrainingConfig = Field(default_factory=MoTTrainingConfig)
    data: DataConfig
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    peer_cache: PeerCacheConfig = Field(default_factory=PeerCacheConfig)
    output_dir: str = "runs"
    description: str | None = None

    @field_validator("expert_models", mode="before")
    @classmethod
    def _entries(cls, value: Any) -> Any:
        return [_expert_entry(v) for v in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _check(self) -> MoTRunConfig:
        if self.mot_config.top_k > len(self.expert_models):
            raise ValueError(f"mot_config.top_k={self.mot_config.top_k} but only {len(self.expert_models)} "
                             f"expert_models; set top_k <= {len(self.expert_models)}")
        return self

    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.experiment_name


def resolve_paths(config: MoTRunConfig, base: Path) -> MoTRunConfig:
    """Make data paths relative to the config file's folder absolute (paths that exist as given win)."""
    def fix(source: DataSource) -> DataSource:
        if source.path is None:
            return source
        path = Path(source.path).expanduser()
        if not path.is_absolute() and not path.exists() and (base / path).exists():
            return source.model_copy(update={"path": str(base / path)})
        return source

    data = config.data
    new = data.model_copy(update={"sources": [fix(s) for s in data.sources],
                                  "val_sources": [fix(s) for s in data.val_sources],
                                  "test_sources": [fix(s) for s in data.test_sources]})
    return config.model_copy(update={"data": new})


__all__ = [
    "CPP_CUDA_TEMPLATE",
    "QA_TEMPLATE",
    "DataConfig",
    "DataSource",
    "EvaluationConfig",
    "ExpertEntry",
    "MoTRunConfig",
    "MoTTrainingConfig",
    "PeerCacheConfig",
    "resolve_paths",
]
