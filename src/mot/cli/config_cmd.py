"""``mot config``: validate a config file against its schema and show the resolved result."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import typer

from mot.cli.options import MotCommand
from mot.errors import UsageError

app = typer.Typer(no_args_is_help=True)

# kind -> "module:Class" of the top-level schema.  Kinds are added as their model kinds land.
CONFIG_KINDS: dict[str, str] = {
    "thoughts": "mot.thoughts.run_config:MoTRunConfig",
    "llama": "mot.moellama.config:MoeLlamaFileConfig",
    "multitoken": "mot.multitoken.run_config:MultiTokenRunConfig",
}


def schema_for(kind: str | None, schema: str | None, data: dict) -> type:
    """The schema class named by ``--schema``, by ``--kind``, or detected from the file's top-level keys."""
    if schema:
        module_name, _, attr = schema.replace(":", ".").rpartition(".")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError):
            raise UsageError(f"--schema {schema!r}: cannot import it; give 'package.module:ClassName'") from None
    if kind is None:
        kind = detect_kind(data)
    if kind not in CONFIG_KINDS:
        known = ", ".join(sorted(CONFIG_KINDS)) or "(none installed)"
        raise UsageError(f"unknown config kind {kind!r}; known kinds: {known} (or pass --schema module:Class)")
    module_name, attr = CONFIG_KINDS[kind].split(":")
    return getattr(importlib.import_module(module_name), attr)


def detect_kind(data: dict) -> str:
    """Guess a config's kind from its top-level keys (each kind's files have a distinctive one)."""
    from mot.config import ConfigModel  # noqa: F401

    if "expert_models" in data or "mot_config" in data:
        return "thoughts"
    if "model" in data and isinstance(data["model"], dict) and "num_experts" in data["model"]:
        return "llama"
    if "heads" in data or "k_max" in data:
        return "multitoken"
    raise UsageError("cannot tell this config's kind from its keys; pass --kind " +
                     ("|".join(sorted(CONFIG_KINDS)) or "KIND"))


@app.command("check", cls=MotCommand)
def check(
    path: Path = typer.Argument(..., help="Config file (.json, .hocon or .conf)."),
    kind: str | None = typer.Option(None, "--kind", "-k", help="Config kind; detected from keys if omitted."),
    schema: str | None = typer.Option(None, "--schema", help="Schema class as module:Class (any ConfigModel)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a key: --set a.b.c=value (repeatable)."),
    show: bool = typer.Option(False, "--show/--no-show", help="Print the validated config as JSON."),
) -> None:
    """Validate a config file; print 'ok' (or the resolved config with --show)."""
    from mot.config import apply_overrides, read_config_file, validate_config

    data = apply_overrides(read_config_file(path), overrides)
    cls = schema_for(kind, schema, data)
    cfg = validate_config(data, cls, str(path))
    if show:
        typer.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))
    else:
        typer.echo(f"{path}: ok ({cls.__name__})")
