"""mot.chat.ChatSession, the one terminal chat of every model kind, and the one chat formatter it uses."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

from mot.chat import TURN_STOP, ChatSession, ReplyStats, describe, parse_assignments
from mot.generation import GenerationParams, Piece
from mot.generation.hf import format_chat


class Echo:
    """Replies ``r1 r2 ...`` (one Piece per word, exact token counts); records what it was given."""

    name = "echo"

    def __init__(self, context_length=None, words=3):
        self.prompts, self.params, self.words = [], [], words
        if context_length:
            self.context_length = context_length
            self.count_tokens = lambda prompt: sum(len(m["content"].split()) + 2 for m in prompt) \
                if not isinstance(prompt, str) else len(prompt.split())

    def stream(self, prompt, params):
        self.prompts.append(prompt)
        self.params.append(params)
        for i in range(min(self.words, params.max_new_tokens)):
            yield Piece(f" r{i}", tokens=1)


def _run(session, lines):
    feed = iter(lines)
    session.read = lambda prompt: next(feed)
    session.loop()


def test_messages_mode_sends_the_system_prompt_and_the_raw_history_and_reports_stats():
    gen, out, seen = Echo(), io.StringIO(), []
    session = ChatSession(gen, GenerationParams(max_new_tokens=8), "be brief", True, out=out, transcript=False,
                          on_stats=seen.append)
    _run(session, ["hi", "params stop=END,## max_tokens=2", "more", "reset", "exit"])
    assert gen.prompts[0] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert gen.prompts[1][-2:] == [{"role": "assistant", "content": " r0 r1 r2"}, {"role": "user", "content": "more"}]
    assert gen.params[0].stop == [] and gen.params[1].stop == ["END", "##"] and gen.params[1].max_new_tokens == 2
    assert [s.tokens for s in seen] == [3, 2] and all(isinstance(s, ReplyStats) for s in seen)
    assert "stop=['END', '##']" in out.getvalue() and "(conversation cleared)" in out.getvalue()
    assert session.history == []


def test_transcript_mode_formats_role_lines_stops_at_the_next_user_turn_and_takes_a_server_entry():
    from mot.serve.registry import ModelEntry

    gen, out = Echo(), io.StringIO()
    session = ChatSession(ModelEntry("e", gen), GenerationParams(max_new_tokens=8), out=out, label="bot> ")
    assert session.generator is gen
    _run(session, ["hello", "again", "quit"])
    assert gen.prompts == ["user: hello\nassistant:", "user: hello\nassistant: r0 r1 r2\nuser: again\nassistant:"]
    assert gen.params[0].stop == [TURN_STOP]
    assert "bot>  r0 r1 r2\n" in out.getvalue()


def test_old_turns_are_dropped_to_leave_room_for_the_reply():
    gen = Echo(context_length=12)
    session = ChatSession(gen, GenerationParams(max_new_tokens=4), out=io.StringIO(), transcript=False)
    _run(session, ["one two three", "four five six", "exit"])
    # the second prompt (3 messages: 5 + 5 + 5 counted tokens) + 4 new ones would exceed 12: the first turn goes
    assert gen.prompts[1] == [{"role": "user", "content": "four five six"}]


def test_params_are_parsed_validated_and_described():
    p = parse_assignments("temperature=0 top_k=5 seed=none stop=a,b", GenerationParams(max_new_tokens=9, seed=1))
    assert (p.temperature, p.top_k, p.seed, p.stop) == (0.0, 5, None, ["a", "b"])
    assert describe(p) == "temperature=0.0 max_tokens=9 top_k=5 top_p=1.0 seed=None stop=['a', 'b']"
    with pytest.raises(ValueError, match="is not a number"):
        parse_assignments("top_k=x", p)
    assert ReplyStats(4, 2.0, 0.25).line() == "[4 tokens in 2.00s, first token 250 ms, 2.0 tokens/s]"


def test_the_one_formatter_uses_a_chat_template_else_role_lines():
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert format_chat(None, messages) == "system: s\nuser: u\nassistant:"
    templated = SimpleNamespace(chat_template="x", apply_chat_template=lambda m, tokenize, add_generation_prompt:
                                f"<{len(m)}|{tokenize}|{add_generation_prompt}>")
    assert format_chat(templated, messages) == "<2|False|True>"


def test_multitoken_chat_prompts_keep_their_roles_without_a_template():
    from mot.multitoken import MultiTokenGenerator

    encoded = []
    model = SimpleNamespace(tokenizer=SimpleNamespace(chat_template=None), encode=lambda text: encoded.append(text))
    generator = MultiTokenGenerator.__new__(MultiTokenGenerator)
    generator.model = model
    generator._prompt_ids([{"role": "user", "content": "hi"}])
    assert encoded == ["user: hi\nassistant:"]
