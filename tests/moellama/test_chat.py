"""`mot llama chat` driven through a pseudo-terminal: streaming, `params`, Ctrl+C, `exit`."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import pytest
import torch

from mot.generation import GenerationParams
from mot.moellama.chat import ChatSession, parse_assignments
from mot.moellama.generate import MoeLlamaGenerator
from tests.moellama.conftest import tiny_model

pexpect = pytest.importorskip("pexpect")
REPO = Path(__file__).resolve().parents[2]


def interactive_signals() -> None:
    """Ctrl+C as in a terminal, even when the suite runs in the background with SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _llama_command() -> list[str]:
    """``python -m mot llama`` once the group is registered, else the typer app run directly."""
    from mot.cli.main import GROUPS

    if any(name == "llama" for name, _, _ in GROUPS):
        return ["-m", "mot", "llama"]
    return ["-c", "from mot.cli.llama_cmd import app; app()"]


@pytest.fixture(scope="module")
def endless_model_dir(tmp_path_factory, tokenizer):
    """A random tiny moellama (saved HF-native) that never samples EOS greedily and may write 2k tokens."""
    from mot.moellama.hf import MoeLlamaConfig, MoeLlamaForCausalLM

    model = tiny_model(seed=1, vocab_size=len(tokenizer), max_seq_len=2048)
    with torch.no_grad():
        model.embed.weight[tokenizer.eos_token_id] = 0.0  # tied head: the EOS logit is 0, never the greedy max
    hf = MoeLlamaForCausalLM(MoeLlamaConfig.from_model_config(model.cfg))
    hf.model.load_state_dict(model.state_dict())
    path = tmp_path_factory.mktemp("chat-model")
    hf.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_chat_in_a_pty_streams_changes_params_survives_ctrl_c_and_exits(endless_model_dir):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO / "src"))
    args = [*_llama_command(), "chat", "--model-path", str(endless_model_dir), "--temperature", "0",
            "--max-tokens", "5", "--verbose", "--set", "device.type=cpu"]
    child = pexpect.spawn(sys.executable, args, cwd=str(REPO), env=env, encoding="utf-8", timeout=90,
                          preexec_fn=interactive_signals)
    try:
        child.expect("you> ")
        child.sendline("params")
        child.expect(r"temperature=0\.0 max_tokens=5 top_k=\d+")
        child.expect("you> ")
        child.sendline("params top_k=7 temperature=0")
        child.expect("top_k=7")
        child.sendline("params top_k=oops")
        child.expect("error: top_k: 'oops' is not a number")

        child.expect("you> ")
        child.sendline("Speak, speak.")
        child.expect("moellama> ")
        child.expect(r"\[(\d+) tokens in [\d.]+s, first token \d+ ms, [\d.]+ tokens/s\]")
        assert 1 <= int(child.match.group(1)) <= 5

        # a reply of up to 2,000 tokens: its first pieces arrive while it is still being generated
        child.expect("you> ")
        child.sendline("params max_tokens=2000")
        child.expect("max_tokens=2000")
        child.expect("you> ")
        child.sendline("Tell me everything.")
        child.expect("moellama> ")
        child.expect(r"\S{3}", timeout=30)  # streamed text, long before 2,000 tokens are done
        child.sendintr()  # Ctrl+C
        child.expect(r"\[stopped\]", timeout=30)
        child.expect(r"\[(\d+) tokens")
        assert int(child.match.group(1)) < 2000
        child.expect("you> ")  # back at the prompt: the program survived

        child.sendline("params max_tokens=3")
        child.expect("max_tokens=3")
        child.expect("you> ")
        child.sendline("again")
        child.expect(r"\[\d tokens")  # the session still chats after the interruption
        child.expect("you> ")
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before


def test_session_keeps_a_transcript_and_drops_old_turns_to_fit_the_context(tokenizer):
    model = tiny_model(vocab_size=len(tokenizer), max_seq_len=64)
    lines = iter(["hello there", "params max_tokens=40", "and again with more words", "reset", "quit"])
    out = _Capture()
    session = ChatSession(MoeLlamaGenerator(model, tokenizer), GenerationParams(max_new_tokens=8), out=out,
                          read=lambda prompt: next(lines))
    seen = []
    real_stream = session.generator.stream
    session.generator.stream = lambda prompt, params: (seen.append((prompt, params)), real_stream(prompt, params))[1]
    session.loop()
    assert seen[0][0] == "user: hello there\nassistant:" and "\nuser:" in seen[0][1].stop
    # the second prompt plus 40 new tokens would overflow 64 positions: the first turn was dropped
    assert seen[1][0] == "user: and again with more words\nassistant:"
    assert "(conversation cleared)" in out.text and session.history == []


def test_params_parsing_rejects_unknown_keys_and_invalid_values():
    p = parse_assignments("temperature=0.2 max_tokens=9 seed=none", GenerationParams(seed=3))
    assert (p.temperature, p.max_new_tokens, p.seed) == (0.2, 9, None)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_assignments("colour=red", p)
    with pytest.raises(ValueError, match="top_p"):
        parse_assignments("top_p=0", p)


class _Capture:
    def __init__(self):
        self.text = ""

    def write(self, text):
        self.text += re.sub(r"\s+", " ", text)

    def flush(self):
        pass
