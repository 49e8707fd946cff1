"""``mot multitoken train -c CONFIG``: the run config (a ``mot.config`` schema), and the flags that override it.

A config file (``.json``/``.hocon``/``.conf``, e.g. ``configs/multitoken_smollm2.json``)::

    {
      "backbone": {"model": "smollm2-135m", "dtype": "float32", "quant": "none", "device": "cpu"},
      "data": "qa.jsonl",
      "out": "runs/mt",
      "heads": {"num_heads": 4, "k_max": 3},
      "training": {"stage1_epochs": 1, "stage2_epochs": 1, "ppo_steps": 0, "batch_size": 8, "learning_rate": 0.001}
    }

``heads`` holds :class:`~mot.multitoken.config.MultiTokenConfig`'s fields and ``training``
:class:`~mot.multitoken.curriculum.CurriculumConfig`'s (less ``device``, which is ``backbone.heads_device`` or
``backbone.device``, and ``progress``) plus ``val_fraction``; both sections are built from those dataclasses,
so their defaults are the ones training uses.  Relative paths are read from the working directory, as the flags
are.  ``--set key.path=value`` and then every flag given on the command line (``FLAG_KEYS``) override the file.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from pydantic import Field, create_model

from mot.config import ConfigModel, apply_overrides, read_config_file, set_key, validate_config
from mot.errors import UsageError
from mot.multitoken.config import MultiTokenConfig
from mot.multitoken.curriculum import CurriculumConfig

__all__ = ["FLAG_KEYS", "MultiTokenRunConfig", "load_multitoken_run_config"]


def _section(source: type, name: str, exclude: tuple[str, ...] = ()) -> type[ConfigModel]:
    """A ``ConfigModel`` with the fields (types and defaults) of the dataclass ``source``."""
    hints = typing.get_type_hints(source)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(source):
        if f.name in exclude:
            continue
        default = f.default if f.default is not dataclasses.MISSING else Field(default_factory=f.default_factory)
        fields[f.name] = (hints[f.name], default)
    return create_model(name, __base__=ConfigModel, __module__=__name__, **fields)


HeadsSection = _section(MultiTokenConfig, "HeadsSection")


class TrainingSection(_section(CurriculumConfig, "CurriculumSection", exclude=("device", "progress"))):
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)  # held-out share of the data for validation


class BackboneSection(ConfigModel):
    model: str | None = None  # hub id, local dir, .gguf, or asset alias (required: here or --model)
    dtype: str = "float32"  # float32 | bfloat16 | float16
    quant: str = "none"  # none | 8bit | 4bit (CUDA)
    device: str = "cpu"
    heads_device: str | None = None  # default: the backbone's device


class MultiTokenRunConfig(ConfigModel):
    backbone: BackboneSection = Field(default_factory=BackboneSection)
    data: Path | None = None  # JSONL with {"question": ..., "response": ...} per line (required: here or --data)
    out: Path | None = None  # output directory: s1/, s2/, ppo_final/ and run state (required: here or --out)
    heads: HeadsSection = Field(default_factory=HeadsSection)
    training: TrainingSection = Field(default_factory=TrainingSection)

    def multitoken_config(self) -> MultiTokenConfig:
        return MultiTokenConfig(**self.heads.model_dump())

    def curriculum_config(self) -> CurriculumConfig:
        training = self.training.model_dump(exclude={"val_fraction"})
        return CurriculumConfig(**training, device=self.backbone.heads_device or self.backbone.device)


# ``mot multitoken train`` parameter -> the key it overrides
FLAG_KEYS: dict[str, str] = {
    "model": "backbone.model", "dtype": "backbone.dtype", "quant": "backbone.quant",
    "backbone_device": "backbone.device", "heads_device": "backbone.heads_device",
    "data": "data", "out": "out",
    "heads": "heads.num_heads", "k_max": "heads.k_max", "untie_heads": "heads.untie_heads",
    "token_conditioning": "heads.token_conditioning", "chain_conditioning": "heads.chain_conditioning",
    "draft_vocab": "heads.draft_vocab_size", "head_type": "heads.head_type",
    "stage1_epochs": "training.stage1_epochs", "stage2_epochs": "training.stage2_epochs",
    "ppo_steps": "training.ppo_steps", "batch": "training.batch_size", "lr": "training.learning_rate",
    "max_length": "training.max_length", "save_every": "training.save_every",
    "save_backbone": "training.save_backbone", "self_distill": "training.self_distill",
    "val_fraction": "training.val_fraction", "seed": "training.seed",
}


def load_multitoken_run_config(config: str | Path | None = None, overrides: typing.Sequence[str] = (),
                    flags: dict[str, Any] | None = None) -> MultiTokenRunConfig:
    """The run config: ``config`` (if any), then ``--set`` ``overrides``, then ``flags`` (parameter name ->
    value, the flags given on the command line) on top; a bad key or value is one ``ConfigError`` line."""
    data = read_config_file(config) if config is not None else {}
    data = apply_overrides(data, overrides)
    for name, value in (flags or {}).items():
        set_key(data, FLAG_KEYS[name].split("."), str(value) if isinstance(value, Path) else value,
                f"--{name.replace('_', '-')}")
    cfg = validate_config(data, MultiTokenRunConfig, str(config) if config is not None else "command line")
    for key, flag in (("backbone.model", "--model"), ("data", "--data"), ("out", "--out")):
        section, _, name = key.rpartition(".")
        if getattr(getattr(cfg, section) if section else cfg, name) is None:
            raise UsageError(f"multitoken train: give {flag} (or {key} in the -c config)")
    return cfg
