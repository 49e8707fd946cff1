"""The ``mot`` command.

Command groups live one per module under ``mot.cli`` and are registered in ``GROUPS``; a group whose
feature has not landed is simply absent.  Modules keep heavy imports (torch, transformers) inside
their commands so ``mot --help`` stays fast.

Errors a user can cause (``mot.errors.MotError``) print one line and exit with the error's code
(2 for usage/config, 1 for runtime); other exceptions print one line too, and the traceback only
with ``--debug`` (or ``MOT_DEBUG=1``).
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import typer

from mot import __version__
from mot.cli.options import MotCommand
from mot.errors import MotError

# (name, "module:attribute", help).  A module's attribute is a typer.Typer (a group) or a function
# (a single command).
GROUPS: list[tuple[str, str, str]] = [
    ("demo", "mot.cli.demo_cmd:demo",
     "Train MoT over three real offline experts on a mixed-domain task and compare it with each expert."),
    ("thoughts", "mot.cli.thoughts_cmd:app", "Mixture of Thoughts: train, generate, route, translate."),
    ("multitoken", "mot.cli.multitoken_cmd:app", "Multi-token MoE heads on a frozen backbone: train, infer."),
    ("llama", "mot.cli.llama_cmd:app", "moellama: train, generate, chat, evaluate, export."),
    ("download", "mot.cli.download_cmd:download", "Prefetch the experts a config (or the command line) names."),
    ("config", "mot.cli.config_cmd:app", "Check and show configuration files."),
    ("eval", "mot.cli.eval_cmd:app", "Evaluate models on benchmarks (one table for several models)."),
    ("serve", "mot.cli.serve_cmd:serve", "Serve models over an OpenAI-compatible API with a web chat UI."),
    ("chat", "mot.cli.chat_cmd:chat", "Chat with a model in the terminal."),
]

_state = {"debug": bool(os.environ.get("MOT_DEBUG"))}

app = typer.Typer(
    name="mot",
    help="mot: sparse top-k routing over language-model experts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mot {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code",
        help="Load Mixture-of-Thoughts checkpoints whose router is an import path (that code runs): only for "
             "checkpoints you trust.  Same as MOT_TRUST_REMOTE_CODE=1."),
) -> None:
    """mot: sparse top-k routing over language-model experts."""
    if debug:
        _state["debug"] = True
    if trust_remote_code:
        from mot.thoughts.io import TRUST_ENV

        os.environ[TRUST_ENV] = "1"  # for this call only: main() restores the environment


def _register() -> None:
    for name, target, help_text in GROUPS:
        module_name, attr = target.split(":")
        obj = getattr(importlib.import_module(module_name), attr)
        if isinstance(obj, typer.Typer):
            app.add_typer(obj, name=name, help=help_text)
        else:
            app.command(name=name, help=help_text, cls=MotCommand)(obj)


_register()


def _fail(message: str, code: int) -> int:
    sys.stdout.flush()
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (also used by ``python -m mot``).

    Usage errors (unknown command, missing argument) are reported by typer itself with exit code 2.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    # Per call, not per process: tests and embedders call main() many times in one interpreter.
    _state["debug"] = bool(os.environ.get("MOT_DEBUG")) or "--debug" in args
    trust_before = os.environ.get("MOT_TRUST_REMOTE_CODE")
    try:
        app(args=args, prog_name="mot")
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except MotError as e:
        if _state["debug"]:
            traceback.print_exc()
        return _fail(" ".join(str(e).split()), e.exit_code)
    except Exception as e:  # anything else is a bug or an environment problem: one line unless --debug
        if _state["debug"]:
            traceback.print_exc()
            return 1
        return _fail(f"{type(e).__name__}: {' '.join(str(e).split())} (run with --debug for the traceback)", 1)
    finally:
        if trust_before is None:
            os.environ.pop("MOT_TRUST_REMOTE_CODE", None)
        else:
            os.environ["MOT_TRUST_REMOTE_CODE"] = trust_before


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
