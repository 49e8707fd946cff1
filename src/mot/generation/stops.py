"""Stop strings: where a text ends, and the one cutter every stream uses to hold back a stop string
that may still be forming."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence

from mot.generation.params import Piece


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest occurrence in ``text`` of any non-empty stop string, or None."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to (not including) its first stop string."""
    cut = first_stop(text, stops)
    return text if cut is None else text[:cut]


def partial_stop(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of some stop string: the part of
    a stream that must wait, since the next text may complete a stop string there."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


class StopCutter:
    """Turns a growing text into stream pieces, never emitting a stop string or anything after it.

    ``feed(text)`` takes the whole text so far (each call extends the previous one) and returns the new
    piece that is safe to emit: up to the first stop string (then ``stopped`` is set and every later
    call returns ``""``), else all but a suffix that is a proper prefix of a stop string (held back
    until the text shows whether it grows into one).  ``final=True`` (the text is complete) releases
    the held-back suffix.  ``emitted`` counts the characters emitted so far.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.emitted = 0
        self.stopped = False

    def feed(self, text: str, final: bool = False) -> str:
        if self.stopped:
            return ""
        cut = first_stop(text, self.stops)
        if cut is not None:
            self.stopped = True
            piece, self.emitted = text[self.emitted:cut], max(self.emitted, cut)
            return piece
        safe = len(text) if final else len(text) - partial_stop(text, self.stops)
        piece = text[self.emitted:safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return piece


def token_stream(steps: Iterable[Sequence[int]], decode: Callable[[list[int]], str], stops: Sequence[str], *,
                 skip: Collection[int] = (), end: Collection[int] = ()) -> Iterator[Piece]:
    """Turn generation ``steps`` (each step's new token ids) into stream :class:`Piece` s.

    The text is ``decode`` d from all tokens so far after each step (tokens in ``skip`` are counted but
    not decoded; a token in ``end`` ends the stream and is not counted).  A text ending in an incomplete
    UTF-8 sequence (``"\ufffd"``) waits for the next bytes unless a stop string already ends it; the rest
    goes through :class:`StopCutter`.  Each piece carries the tokens produced since the previous one; the
    tokens that led up to a stop string are reported in a last (possibly empty) piece.  Returning on a stop
    string does not close ``steps``: the caller does (``try``/``finally``)."""
    cutter = StopCutter(stops)
    produced: list[int] = []
    text, pending = "", 0  # decoded text, tokens not yet reported
    for step in steps:
        ended = False
        for token in step:
            if token in end:
                ended = True
                break
            pending += 1
            if token not in skip:
                produced.append(token)
        if pending:
            text = decode(produced)
            if not text.endswith("\ufffd") or first_stop(text, cutter.stops) is not None:
                piece = cutter.feed(text)
                if piece or (cutter.stopped and pending):
                    yield Piece(piece, pending)
                    pending = 0
                if cutter.stopped:
                    return
        if ended:
            break
    piece = cutter.feed(text, final=True)
    if piece or pending:
        yield Piece(piece, pending)


def template_stops(template: str) -> list[str]:
    """Stop markers of a prompt template: the leading marker of its lines (``"###"`` in the default)."""
    markers: list[str] = []
    for line in template.splitlines():
        match = re.match(r"\s*([^\w\s{]+)", line)
        if match and match.group(1) not in markers:
            markers.append(match.group(1))
    return markers
