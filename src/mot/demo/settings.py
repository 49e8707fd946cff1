"""What ``mot demo`` runs: one validated settings object, and the ``mot thoughts train`` config it maps to."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import Field

from mot.config import ConfigModel
from mot.thoughts.config import DEFAULT_ENCODER

DEFAULT_EXPERTS = ("smollm2-135m", "qwen2.5-coder-0.5b", "gemma-3-270m")
DOMAINS = ("code", "prose", "math")


class DemoSettings(ConfigModel):
    """Every knob of the demo.  The defaults fit the issue's budget on 2 idle CPU cores.

    Training runs a fixed number of steps (``max_steps``: ``max_epochs`` over the training split), so two
    machines print the same table.  ``budget_minutes`` is only a cap: wall time for everything after the
    expert pool is ready (the one-time GGUF conversion of a fresh machine comes on top); when what is left
    of it is what the evaluation needs, training stops early (after ``min_steps``) and the report says so.
    The capacity control (the same MoT whose peers are copies of the primary) then trains exactly as many
    steps as MoT did.  Sizes are samples per domain.
    """

    experts: list[str] = Field(default_factory=lambda: list(DEFAULT_EXPERTS), min_length=2)
    output_dir: str = "runs/demo"
    budget_minutes: float = Field(15.0, gt=0, description="a cap on wall time; the default leaves the fixed "
                                                           "steps room on a loaded 2-core machine")
    seed: int = 0
    train_per_domain: int = Field(12, ge=1)
    test_per_domain: int = Field(8, ge=1)
    # MoT: small for the CPU (an interaction after each of 2 stacks, one peer per sample)
    top_k: int = Field(2, ge=1)
    num_stacks: int = Field(2, ge=1)
    shared_dim: int = Field(128, ge=1)
    interaction_heads: int = Field(4, ge=1)
    router_hidden_dim: int = Field(128, ge=1)
    encoder: str = DEFAULT_ENCODER
    # training
    batch_size: int = Field(4, ge=1)
    learning_rate: float = Field(2e-3, gt=0)
    max_epochs: float = Field(3.0, gt=0, description="cap on training length when the budget allows more")
    min_steps: int = Field(4, ge=1, description="trained even when the budget is already spent")
    route_weight: float = Field(1.0, ge=0, description="weight of the router's supervised loss during training")
    # generation
    generation_tokens: int = Field(12, ge=1)
    install: bool = Field(True, description="pip-install missing expert packages")

    def fingerprint(self) -> str:
        """What the cached stages depend on (not the budget, output dir or generation length)."""
        keep = self.model_dump(exclude={"budget_minutes", "output_dir", "generation_tokens", "install", "min_steps"})
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def max_steps(self) -> int:
        per_epoch = max(1, (self.train_per_domain * len(DOMAINS)) // self.batch_size)
        return max(self.min_steps, int(round(self.max_epochs * per_epoch)))

    def mot_config(self) -> dict[str, Any]:
        # consistency needs a second forward per step (half the steps on a CPU budget): off
        return {"top_k": self.top_k, "num_stacks": self.num_stacks, "shared_dim": self.shared_dim,
                "interaction_heads": self.interaction_heads, "router_hidden_dim": self.router_hidden_dim,
                "router_layers": 2, "dropout": 0.1, "router_type": "mlp", "lambda_consistency": 0.0,
                "entropy_weight": 0.01, "balance_weight": 0.01, "encoder": self.encoder}

    def training_config(self) -> dict[str, Any]:
        # constant lr after a short warmup: a time-bounded run may stop anywhere
        return {"batch_size": self.batch_size, "learning_rate": self.learning_rate, "max_steps": self.max_steps,
                "warmup_steps": 2, "min_lr_ratio": 1.0, "max_grad_norm": 1.0, "device": "cpu",
                "precision": "fp32", "seed": self.seed, "save_every": 2, "keep_last": 2, "log_every": 1,
                "best_metric": None, "tensorboard": False, "plots": True}

    def run_config(self) -> dict[str, Any]:
        """The ``mot thoughts train`` config of the same model, data and training (``configs/demo.json``).

        It reads the task files the demo writes (``<output_dir>/data/{train,test}.jsonl``) and trains
        ``max_steps`` steps with no time bound and without the router's supervised loss (which
        ``mot thoughts train`` does not have)."""
        data = Path(self.output_dir) / "data"
        return {
            "experiment_name": "demo-train",
            "description": "The model and data of `mot demo` (run `mot demo` first: it writes the task files).",
            "expert_models": list(self.experts),
            "mot_config": self.mot_config(),
            "training": self.training_config(),
            "data": {"sources": [{"kind": "pairs", "path": str(data / "train.jsonl")}],
                     "test_sources": [{"kind": "pairs", "path": str(data / "test.jsonl")}],
                     "split": [1.0, 0.0, 0.0], "seed": self.seed},
            "peer_cache": {"enabled": True, "directory": str(Path(self.output_dir) / "peer_cache")},
            "output_dir": str(Path(self.output_dir)),
        }
