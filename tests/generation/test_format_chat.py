"""The one chat formatter every model kind uses (``mot.generation.hf.format_chat``)."""

from mot.generation.hf import format_chat
from mot.thoughts.generation import MoTTextGenerator

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


def test_a_plain_prompt_passes_through():
    assert format_chat(None, "just text") == "just text"


def test_without_a_template_messages_become_role_lines_ending_in_the_cue():
    assert format_chat(None, MESSAGES) == "system: be brief\nuser: hi\nassistant:"
    assert format_chat(None, MESSAGES, cue="assistant: ") == "system: be brief\nuser: hi\nassistant: "
    assert format_chat(None, []) == "assistant:"
    assert format_chat(None, [{"content": "x"}, {"role": "assistant"}]) == "user: x\nassistant: \nassistant:"


def test_mot_formats_through_it_with_its_trailing_space():
    assert MoTTextGenerator._prompt(MESSAGES) == "system: be brief\nuser: hi\nassistant: "
    assert MoTTextGenerator._prompt("raw") == "raw"
