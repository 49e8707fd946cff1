"""``mot chat``: talk to one model in the terminal, replies streamed token by token.

    mot chat --model SPEC [--system TEXT] [--temperature T] [--max-new-tokens N] [--top-k K] [--top-p P] [--verbose]

At the ``you>`` prompt: a message, or ``params`` (show settings), ``params temperature=0.2 max_tokens=64``
(change them), ``reset`` (forget the conversation), ``help``, ``exit`` / ``quit`` (or Ctrl+D).
Ctrl+C while a reply streams stops that reply only; the conversation goes on.

The session is :class:`mot.chat.ChatSession` (the one ``mot llama chat`` uses too) over the model
``mot.loading`` opens for the spec; this module parses the flags and prints.  The lead registers ``chat`` as a
single command; ``python -m mot.cli.chat_cmd`` runs it standalone.
"""

from __future__ import annotations

import os
import sys

import typer

from mot.chat import ChatSession, ReplyStats
from mot.cli import options as opts

__all__ = ["ChatSession", "chat"]


def chat(
    model: str = typer.Option(..., "--model", "-m", help="Model spec: local dir, .gguf, packaged GGUF alias, hub id, "
                              "or a MoT, multi-token or moellama checkpoint dir."),
    system: str | None = typer.Option(None, "--system", help="System prompt."),
    temperature: float = opts.temperature_option(0.7, min=0.0),
    max_tokens: int = opts.max_new_tokens_option(256, "New tokens per reply at most.", min=1),
    top_k: int = opts.top_k_option(0, min=0),
    top_p: float = opts.top_p_option(1.0, min=0.0, max=1.0),
    seed: int | None = opts.seed_option(),
    mode: str = typer.Option("fast", "--mode", help="MoT checkpoints: generation mode (fast|full)."),
    device: str = typer.Option("cpu", "--device", help="Device for the model."),
    dtype: str = typer.Option("float32", "--dtype", help="float32|bfloat16|float16."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="After each reply: tokens, time to first token, tokens/s."),
) -> None:
    """Chat with a model in the terminal (multi-turn, streaming)."""
    from mot.serve.registry import ModelRegistry

    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:  # pragma: no cover - not on every platform
        pass
    params = opts.generation_params(max_tokens, temperature, top_k, top_p, seed)
    typer.echo(f"loading {model} ...", err=True)
    entries = ModelRegistry().load("chat", model, device=device, dtype=dtype)
    entry = next((e for e in entries if e.name.endswith(f":{mode}")), entries[0])
    # plain language models trained here chat in a user:/assistant: transcript; the others format messages
    session = ChatSession(entry.generator, params, system, verbose, transcript=entry.kind == "moellama",
                          on_stats=_print_stats)
    typer.echo(f"chatting with {model}{' (' + mode + ')' if len(entries) > 1 else ''}; "
               "type 'help' for commands, 'exit' to leave.", err=True)
    session.loop()


def _print_stats(stats: ReplyStats) -> None:
    ttft = stats.first_token * 1000 if stats.first_token is not None else float("nan")
    rate = stats.tokens / stats.elapsed if stats.elapsed > 0 else 0.0
    sys.stderr.write(f"[{stats.tokens} tokens, first token {ttft:.0f} ms, {rate:.1f} tokens/s]\n")
    sys.stderr.flush()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(opts.run(chat))
