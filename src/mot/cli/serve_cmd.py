"""``mot serve``: an OpenAI-compatible API and a web chat UI over the models named at start.

    MOT_API_KEY=KEY mot serve --model tiny=./models/tiny --model smol=smollm2-135m [--host 127.0.0.1]
              [--port 8000] [--api-key-file FILE] [--max-concurrency N] [--max-queue N] [--cors-origin URL]

The API key comes from ``MOT_API_KEY`` or ``--api-key-file``: ``--api-key KEY`` still works but puts the key
in the process's command line, which every local user can read (``ps``, ``/proc/PID/cmdline``), so it warns.

The lead registers ``serve`` as a single command; ``python -m mot.cli.serve_cmd`` runs it standalone.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path

import typer

from mot.cli import options as opts
from mot.errors import UsageError


def serve(
    model: list[str] = typer.Option(..., "--model", "-m", help="NAME=SPEC to serve as NAME (SPEC: local dir, .gguf, "
                                    "packaged GGUF alias, hub id, MoT checkpoint dir -> NAME:fast and NAME:full); "
                                    "repeatable. Only these names can be requested."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to bind."),
    api_key: str | None = typer.Option(None, "--api-key",
                                       help="Require 'Authorization: Bearer KEY' on everything but /health and "
                                            "the chat UI. Prefer the MOT_API_KEY environment variable (read when "
                                            "this option is absent) or --api-key-file: a key on the command line "
                                            "is readable by every local user."),
    api_key_file: Path | None = typer.Option(None, "--api-key-file", dir_okay=False,
                                             help="Read the API key from this file (its first line)."),
    max_concurrency: int = typer.Option(4, "--max-concurrency", min=1, help="Generations running at once."),
    max_queue: int = typer.Option(32, "--max-queue", min=0, help="Requests waiting beyond that; more get 429."),
    cors_origin: list[str] = typer.Option([], "--cors-origin", help="Allow browser calls from this origin "
                                          "(repeatable; CORS is off by default)."),
    default_max_tokens: int = typer.Option(256, "--default-max-new-tokens", min=1,
                                           help="New tokens when a request gives no max_tokens."),
    device: str = typer.Option("cpu", "--device", help="Device for the models (cpu, cuda, cuda:1, mps)."),
    dtype: str = typer.Option("float32", "--dtype", help="Model dtype: float32|bfloat16|float16."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
    multitoken_lookup: int | None = typer.Option(
        None, "--multitoken-lookup", min=0, help="Multi-token checkpoints: prompt-lookup drafts per pass (0: off; "
                                                 "default: mot.serve.registry.MULTITOKEN_LOOKUP, 5)."),
    multitoken_tree: int | None = typer.Option(
        None, "--multitoken-tree", min=0, help="Multi-token checkpoints: draft-tree nodes per pass (0: the heads' "
                                               "chain; default: mot.serve.registry.MULTITOKEN_TREE, 3)."),
) -> None:
    """Serve models over an OpenAI-compatible API (with streaming) and a web chat UI at /."""
    import uvicorn

    from mot.serve import ModelRegistry, create_app

    api_key = _api_key(api_key, api_key_file)
    if not _is_loopback(host) and api_key is None:
        typer.echo(f"warning: serving on {host} without --api-key: anyone who can reach this port can use the models",
                   err=True)
    registry = ModelRegistry.from_specs(model, device=device, dtype=dtype,
                                        multitoken={k: v for k, v in (("lookup", multitoken_lookup),
                                                                      ("tree", multitoken_tree)) if v is not None})
    app = create_app(registry, api_key=api_key, max_concurrency=max_concurrency, max_queue=max_queue,
                     cors_origins=tuple(cors_origin), default_max_tokens=default_max_tokens)
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    typer.echo(f"serving {', '.join(registry.names())} at http://{shown}:{port}  (API: /v1, chat UI: /)", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=3)


def _api_key(api_key: str | None, api_key_file: Path | None) -> str | None:
    """The key from ``--api-key`` (warned about) or ``--api-key-file``, else ``MOT_API_KEY`` (empty: unset)."""
    if api_key is not None and api_key_file is not None:
        raise UsageError("the API key is given twice (--api-key and --api-key-file): keep one, preferably "
                         "--api-key-file or the MOT_API_KEY variable")
    if api_key_file is not None:
        try:
            lines = Path(api_key_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--api-key-file {api_key_file}: cannot read it ({exc}); give a readable text "
                             "file holding the key") from None
        api_key = lines[0] if lines else ""
        if not api_key.strip():
            raise UsageError(f"--api-key-file {api_key_file}: its first line is empty; write the key there")
        return api_key.strip()
    if api_key is None:
        return os.environ.get("MOT_API_KEY", "").strip() or None
    if not api_key.strip():
        raise UsageError("--api-key is empty; give a key or leave the option out")
    typer.echo("warning: --api-key puts the key in this process's command line, readable by every local "
               "user (ps, /proc/PID/cmdline); set MOT_API_KEY or use --api-key-file instead", err=True)
    return api_key


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(opts.run(serve))
