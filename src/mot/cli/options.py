"""What every ``mot`` command shares: the generation flags, spelled once, and the old spellings as hidden aliases.

Generation flags (every command that generates spells them this way; defaults and help vary per command):

    --max-new-tokens N   --temperature T   --top-k K   --top-p P   --seed S   --stop TEXT (repeatable)

:func:`generation_params` turns them into one :class:`mot.generation.GenerationParams` (a bad value is a
usage error, exit 2).  Every flag is dashed; every command is declared with ``cls=MotCommand``, which keeps the
older spellings working without listing them in ``--help``:

- an underscored flag is its dashed form (``--top_p`` -> ``--top-p``, ``--no_check_compilation`` ->
  ``--no-check-compilation``, ``--k_max`` -> ``--k-max``);
- a renamed flag is its new name (``RENAMED``: ``--max-tokens``/``--max_tokens`` -> ``--max-new-tokens``).

An alias applies only where the command declares its target, and only to option names (never to values).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import typer
from typer.core import TyperCommand

from mot.errors import UsageError

# old name (dashed) -> the one spelling
RENAMED: dict[str, str] = {
    "--max-tokens": "--max-new-tokens",
    "--default-max-tokens": "--default-max-new-tokens",
}


# ------------------------------------------------------------------------------------------- aliases


def canonical_flag(name: str, declared: Iterable[str]) -> str:
    """The declared option ``name`` stands for: itself, its dashed form, or a renamed flag's new name."""
    declared = set(declared)
    if name in declared or not name.startswith("--"):
        return name
    dashed = "--" + name[2:].replace("_", "-")
    for candidate in (dashed, RENAMED.get(dashed, "")):
        if candidate in declared:
            return candidate
    return name


def canonical_args(params: Sequence[Any], args: Sequence[str]) -> list[str]:
    """``args`` with every aliased option name replaced by its declared spelling; values are left alone.

    ``params`` are the command's click parameters (typer's own copy of click or click itself)."""
    declared: set[str] = set()
    takes_value: set[str] = set()
    for param in params:
        if getattr(param, "param_type_name", None) == "option":
            declared.update(param.opts, param.secondary_opts)
            if not param.is_flag and not param.count:
                takes_value.update(param.opts)
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            out += args[i - 1:]
            break
        if not arg.startswith("-") or arg == "-":
            out.append(arg)
            continue
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        name = canonical_flag(name, declared)
        out.append(name + eq + value)
        if not eq and name in takes_value and i < len(args):
            out.append(args[i])  # the option's value, whatever it looks like
            i += 1
    return out


class MotCommand(TyperCommand):
    """A typer command that accepts the hidden aliases of its flags (see the module docstring)."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        return super().parse_args(ctx, canonical_args(self.get_params(ctx), args))


def run(function) -> None:
    """``typer.run`` with the aliases (the standalone ``python -m mot.cli.<module>`` entry points)."""
    app = typer.Typer(add_completion=False)
    app.command(cls=MotCommand)(function)
    app()


# ---------------------------------------------------------------------------------- generation flags


def max_new_tokens_option(default: int | None, help: str = "New tokens at most.", **kwargs: Any):
    return typer.Option(default, "--max-new-tokens", help=help, **kwargs)


def temperature_option(default: float | None, help: str = "0 = greedy.", **kwargs: Any):
    return typer.Option(default, "--temperature", help=help, **kwargs)


def top_k_option(default: int | None, help: str = "0 = off.", **kwargs: Any):
    return typer.Option(default, "--top-k", help=help, **kwargs)


def top_p_option(default: float | None, help: str = "1 = off.", **kwargs: Any):
    return typer.Option(default, "--top-p", help=help, **kwargs)


def seed_option(default: int | None = None, help: str = "Sampling seed.", **kwargs: Any):
    return typer.Option(default, "--seed", help=help, **kwargs)


def stop_option(help: str = "Stop string (repeatable).", **kwargs: Any):
    return typer.Option([], "--stop", help=help, **kwargs)


def generation_params(max_new_tokens: int | None = None, temperature: float | None = None,
                      top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                      stop: Sequence[str] = (), *, defaults=None, top_p_when_greedy: bool = True):
    """The flags as one ``GenerationParams``: a flag left at ``None`` takes ``defaults``' value (any object
    with some of ``GenerationParams``' fields, e.g. a config's ``inference`` section; else the
    ``GenerationParams`` default); ``top_p_when_greedy=False`` turns nucleus sampling off (1.0) when the
    temperature is 0, as the benchmark commands do.  A bad value is a :class:`~mot.errors.UsageError`."""
    from mot.generation import GenerationParams

    fallback = GenerationParams()

    def pick(value, name):
        if value is not None:
            return value
        return getattr(defaults, name, getattr(fallback, name))

    temperature = pick(temperature, "temperature")
    top_p = pick(top_p, "top_p")
    if not top_p_when_greedy and not temperature > 0:
        top_p = 1.0
    try:
        return GenerationParams(max_new_tokens=pick(max_new_tokens, "max_new_tokens"), temperature=temperature,
                                top_k=pick(top_k, "top_k"), top_p=top_p, seed=pick(seed, "seed"),
                                stop=list(stop) or list(getattr(defaults, "stop", None) or []))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
