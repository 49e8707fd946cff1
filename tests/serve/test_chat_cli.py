"""``mot chat`` through a pseudo-terminal: multi-turn, streaming, params, Ctrl+C, exit."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pexpect
import pytest

from mot.generation import GenerationParams

ROOT = Path(__file__).resolve().parents[2]


def spawn(*args: str) -> pexpect.spawn:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "TOKENIZERS_PARALLELISM": "false", "TERM": "dumb", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
    return pexpect.spawn(sys.executable, list(args), cwd=str(ROOT), env=env, encoding="utf-8", timeout=60,
                         dimensions=(40, 200), preexec_fn=interactive_signals)


def interactive_signals() -> None:
    """Ctrl+C as in a terminal: a suite started in the background (``cmd &``) has SIGINT ignored, the child
    would inherit that, and Python installs no KeyboardInterrupt handler for an ignored SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_chat_multi_turn_streams_greedy_replies_and_changes_params(tiny_experts, tiny_hf):
    path = str(tiny_experts["gpt2"].path)
    child = spawn("-m", "mot.cli.chat_cmd", "--model", path, "--temperature", "0", "--max-tokens", "6",
                  "--verbose")
    try:
        child.expect("you> ")
        child.sendline("def f(x):")
        child.expect(r"\[(\d+) tokens, first token \d+ ms, [\d.]+ tokens/s\]")
        shown = child.before.replace("\r\n", "\n")
        child.expect("you> ")
        first = [{"role": "user", "content": "def f(x):"}]
        expected = "".join(tiny_hf.stream(first, GenerationParams(max_new_tokens=6)))
        assert expected.strip() and expected.strip() in shown
        child.sendline("params max_tokens=3 temperature=0.5 top_k=5")
        child.expect(r"temperature=0\.5 max_tokens=3 top_k=5")
        child.sendline("params bogus=1")
        child.expect("error: expected KEY=VALUE")
        child.sendline("params temperature=0")
        child.expect("you> ")
        child.sendline("and then?")  # the second turn sees the first: history goes into the prompt
        child.expect(r"\[(\d+) tokens")
        assert int(child.match.group(1)) <= 3
        shown = child.before.replace("\r\n", "\n")
        child.expect("you> ")
        history = first + [{"role": "assistant", "content": expected}, {"role": "user", "content": "and then?"}]
        second = "".join(tiny_hf.stream(history, GenerationParams(max_new_tokens=3)))
        assert second.strip() in shown
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_ctrl_c_stops_the_reply_not_the_chat():
    child = spawn("-m", "tests.serve.chat_driver")
    try:
        child.expect("you> ")
        child.sendline("go")
        child.expect(r"w5 ")  # the reply is streaming
        child.sendintr()
        child.expect(r"\[stopped\]")
        child.expect("you> ")  # still chatting
        child.sendline("quit")
        child.expect(r"produced=(\d+) closed=True")
        assert int(child.match.group(1)) < 10_000
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_chat_bad_settings_are_a_usage_error(capsys):
    from mot.cli.chat_cmd import chat
    from mot.errors import UsageError

    with pytest.raises(UsageError, match="temperature"):
        chat(model="x", system=None, temperature=-1.0, max_tokens=8, top_k=0, top_p=1.0, seed=None, mode="fast",
             device="cpu", dtype="float32", verbose=False)
