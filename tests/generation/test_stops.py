"""The one stop-string cutter (``mot.generation.StopCutter``) and every stream that cuts through it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mot.generation import (
    GenerationParams,
    StopCutter,
    cut_at_stop,
    first_stop,
    partial_stop,
    template_stops,
    token_stream,
)


class CharTokenizer:
    """One token per character (id = code point), EOS 0."""

    eos_token_id = 0
    bos_token_id = None
    pad_token_id = None
    all_special_ids = [0]
    chat_template = None

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=True, **kwargs):
        return "".join(chr(i) for i in ids if i != 0)


def _feed_chars(cutter: StopCutter, text: str) -> list[str]:
    return [cutter.feed(text[:n]) for n in range(1, len(text) + 1)]


def test_partial_stop_is_the_longest_suffix_that_begins_a_stop_string():
    assert partial_stop("abc", ["###"]) == 0
    assert partial_stop("abc#", ["###"]) == 1
    assert partial_stop("abc##", ["###", "#!"]) == 2
    assert partial_stop("ab#", ["#!", "###"]) == 1
    assert partial_stop("xEN", ["END", "N"]) == 2  # "N" is a whole stop string, not a prefix of one: "EN" is
    assert partial_stop("##", ["###"]) == 2 and partial_stop("", ["###"]) == 0


def test_cutter_holds_back_exactly_a_partial_stop_prefix():
    cutter = StopCutter(["###", "END"])
    assert _feed_chars(cutter, "ab#c##dE") == ["a", "b", "", "#c", "", "", "##d", ""]
    assert cutter.emitted == len("ab#c##d") and not cutter.stopped
    assert cutter.feed("ab#c##dE", final=True) == "E"  # the end of the text releases what was held


def test_cutter_stops_before_the_first_stop_string_and_then_emits_nothing():
    cutter = StopCutter(["###", "", "END"])
    assert _feed_chars(cutter, "x#y##END more") == ["x", "", "#y", "", "", "##", "", "", "", "", "", "", ""]
    assert cutter.stopped and cutter.emitted == len("x#y##")
    assert cutter.feed("x#y##END more", final=True) == ""
    assert StopCutter([]).feed("a#", final=False) == "a#"
    assert StopCutter(["#"]).feed("ab#cd", final=True) == "ab"


@pytest.mark.parametrize("text", ["plain", "a ### b", "a ##", "END", "x" * 5 + "EN"])
def test_joined_pieces_equal_the_cut_text(text):
    stops = ["###", "END"]
    cutter = StopCutter(stops)
    pieces = _feed_chars(cutter, text) + [cutter.feed(text, final=True)]
    assert "".join(pieces) == cut_at_stop(text, stops)
    assert first_stop(text, stops) == (None if cut_at_stop(text, stops) == text else len(cut_at_stop(text, stops)))


def test_template_stops_moved_to_generation_and_still_importable_from_thoughts():
    from mot.thoughts.generation import StopCutter as ThoughtsStopCutter
    from mot.thoughts.generation import template_stops as thoughts_template_stops

    template = "### Translate C++ to CUDA:\n{source}\n### CUDA:\n// end\n"
    assert template_stops(template) == ["###", "//"]
    assert thoughts_template_stops is template_stops and ThoughtsStopCutter is StopCutter


def test_token_stream_counts_tokens_skips_specials_ends_at_end_tokens_and_waits_for_whole_characters():
    tok = CharTokenizer()
    snowman = list("\u2603".encode())  # three byte tokens, decoded as one character only once all are in

    def decode(ids):
        return bytes(ids).decode("utf-8", errors="replace") if ids and ids[0] > 127 else tok.decode(ids)

    pieces = list(token_stream([snowman[:1], snowman[1:2], [snowman[2], 7], [0]], decode, [], skip={0, 7}))
    assert pieces == ["\u2603", ""] and [p.tokens for p in pieces] == [4, 1]  # skipped tokens still count
    steps = [[ord("a")], [ord("b"), 0, ord("c")], [ord("d")]]
    pieces = list(token_stream(steps, tok.decode, [], end={0}))
    assert pieces == ["a", "b"] and [p.tokens for p in pieces] == [1, 1]  # the end token is not counted
    pieces = list(token_stream([[ord(c)] for c in "xy#"], tok.decode, ["#!"]))
    assert pieces == ["x", "y", "#"] and [p.tokens for p in pieces] == [1, 1, 1]


# -- the streams of each kind cut the same way ---------------------------------------------------
SCRIPT = "ab#c##d###e"
STOP = GenerationParams(max_new_tokens=50, stop=["###"])


def test_moellama_stream_holds_back_only_a_partial_stop(monkeypatch):
    from mot.moellama.generate import MoeLlamaGenerator

    gen = MoeLlamaGenerator(None, CharTokenizer())
    gen._tokens = lambda prompts, params: (torch.tensor([ord(c)]) for c in SCRIPT)
    pieces = list(gen.stream("x", STOP))
    assert pieces == ["a", "b", "#c", "##d", ""]
    assert [p.tokens for p in pieces] == [1, 1, 2, 3, 3]  # every sampled token is reported, the stop's too
    gen._tokens = lambda prompts, params: (torch.tensor([ord(c)]) for c in "ab##")
    assert list(gen.stream("x", STOP)) == ["a", "b", "##"]  # the end of generation releases the held "##"


def test_multitoken_stream_holds_back_only_a_partial_stop(monkeypatch):
    import mot.multitoken.decoding as decoding

    model = SimpleNamespace(tokenizer=CharTokenizer(), backbone_spec="chars", encode=lambda s: torch.tensor([[1]]))
    gen = decoding.MultiTokenGenerator(model)
    monkeypatch.setattr(decoding, "decode_tokens", lambda *a, **k: iter(ord(c) for c in SCRIPT))
    pieces = list(gen.stream("x", STOP))
    assert pieces == ["a", "b", "#c", "##d", ""] and [p.tokens for p in pieces] == [1, 1, 2, 3, 3]
    monkeypatch.setattr(decoding, "decode_tokens", lambda *a, **k: iter(ord(c) for c in "ab##"))
    assert list(gen.stream("x", STOP)) == ["a", "b", "##"]


def test_hf_model_and_server_generator_share_one_stream(load_tiny):
    from mot.evaluation.hf_model import HFModel
    from mot.generation.hf import HFTextGenerator
    from mot.serve.hf_generator import HFGenerator

    model, tokenizer = load_tiny("gpt2")
    evaluator, server = HFModel(model, tokenizer, "gpt2"), HFGenerator(model, tokenizer, "gpt2")
    assert isinstance(evaluator, HFTextGenerator) and isinstance(server.base, HFTextGenerator)
    params = GenerationParams(max_new_tokens=12)
    full = server.generate(["def add(a, b):"], params)[0]
    assert len(full) > 4
    stop = full[3:5]
    cut = GenerationParams(max_new_tokens=12, stop=[stop])
    for gen in (evaluator, server):
        pieces = list(gen.stream("def add(a, b):", params))
        assert "".join(pieces) == full and sum(p.tokens for p in pieces) == 12
        pieces = list(gen.stream("def add(a, b):", cut))
        assert "".join(pieces) == cut_at_stop(full, [stop]) == gen.generate(["def add(a, b):"], cut)[0]
        assert not any(stop in p for p in pieces)
    assert server.stats["streams"] == 2 and server.stats["cancelled"] == 0
