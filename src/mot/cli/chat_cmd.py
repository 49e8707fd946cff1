"""``mot chat``: talk to one model in the terminal, replies streamed token by token.

    mot chat --model SPEC [--system TEXT] [--temperature T] [--max-tokens N] [--top-k K] [--top-p P] [--verbose]

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
from mot.errors import UsageError

__all__ = ["ChatSession", "chat"]


def chat(
    model: str = typer.Option(..., "--model", "-m", help="Model spec: local dir, .gguf, packaged GGUF alias, hub id, "
                              "or a MoT, multi-token or moellama checkpoint dir."),
    system: str | None = typer.Option(None, "--system", help="System prompt."),
    temperature: float = typer.Option(0.7, "--temperature", min=0.0, help="0 = greedy."),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="New tokens per reply at most."),
    top_k: int = typer.Option(0, "--top-k", min=0, help="0 = off."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="1 = off."),
    seed: int | None = typer.Option(None, "--seed", help="Sampling seed."),
    mode: str = typer.Option("fast", "--mode", help="MoT checkpoints: generation mode (fast|full)."),
    device: str = typer.Option("cpu", "--device", help="Device for the model."),
    dtype: str = typer.Option("float32", "--dtype", help="float32|bfloat16|float16."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="After each reply: tokens, time to first token, tokens/s."),
) -> None:
    """Chat with a model in the terminal (multi-turn, streaming)."""
    from mot.generation import GenerationParams
    from mot.serve.registry import ModelRegistry

    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:  # pragma: no cover - not on every platform
        pass
    try:
        params = GenerationParams(max_new_tokens=max_tokens, temperature=temperature, top_k=top_k,
                                  top_p=top_p, seed=seed)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
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
    sys.exit(typer.run(chat))
