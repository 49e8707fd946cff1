"""``mot download``: prefetch every expert a config names (or the models given), in parallel
(``mot.experts.fetch``).  One line per model; a failure is one line naming the model and the fix, and the
command exits 1 if any model failed.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import typer

from mot.errors import MotError, UsageError
from mot.experts.fetch import config_models, fetch_model


def download(
    models: list[str] | None = typer.Argument(None, help="Model specs: hub ids, asset aliases (smollm2-135m), .gguf files."),
    config: Path | None = typer.Option(None, "--config", "-c", help="Prefetch every model this config names."),
    max_workers: int = typer.Option(4, "--max-workers", min=1, help="Models fetched in parallel."),
) -> None:
    """Prefetch experts so later runs load them offline in seconds."""
    specs = list(models or [])
    if config is not None:
        specs += config_models(config)
    specs = list(dict.fromkeys(specs))
    if not specs:
        raise UsageError("give model specs or -c CONFIG (e.g. `mot download smollm2-135m` or "
                         "`mot download -c configs/offline_mot.json`)")

    def one(spec: str) -> tuple[str, str | None, str | None]:
        try:
            return spec, fetch_model(spec), None
        except MotError as exc:
            return spec, None, " ".join(str(exc).split())

    failed = 0
    with ThreadPoolExecutor(max_workers=min(max_workers, len(specs))) as pool:
        for spec, where, error in pool.map(one, specs):
            if error is None:
                typer.echo(f"ok     {spec} -> {where}")
            else:
                failed += 1
                typer.echo(f"failed {spec}: {error}", err=True)
    if failed:
        raise MotError(f"{failed} of {len(specs)} model(s) could not be fetched (see above)")
