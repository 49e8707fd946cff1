"""The shared generation layer every model kind may import (it imports no model kind).

- :mod:`~mot.generation.params`: ``GenerationParams``, the ``TextGenerator`` protocol, ``Piece``.
- :mod:`~mot.generation.sampling`: the one sampler (temperature, top-k, top-p, greedy).
- :mod:`~mot.generation.stops`: stop strings, the one ``StopCutter`` and ``token_stream`` (token ids to
  text pieces) every stream uses.
- :mod:`~mot.generation.threaded`: HF ``generate()`` in a cancellable worker thread.
- :mod:`~mot.generation.hf`: prompt formatting and batch/stream generation over a loaded HF model.
"""

from mot.generation.params import GREEDY_BELOW, GenerationParams, Message, Piece, TextGenerator
from mot.generation.sampling import filter_logits, sample_next, sample_token, warp_probs
from mot.generation.stops import (
    StopCutter,
    cut_at_stop,
    first_stop,
    partial_stop,
    template_stops,
    token_stream,
)
from mot.generation.threaded import CancelOnEvent, TokenQueueStreamer, generate_in_thread

__all__ = [
    "GREEDY_BELOW",
    "CancelOnEvent",
    "GenerationParams",
    "Message",
    "Piece",
    "StopCutter",
    "TextGenerator",
    "TokenQueueStreamer",
    "cut_at_stop",
    "filter_logits",
    "first_stop",
    "generate_in_thread",
    "partial_stop",
    "sample_next",
    "sample_token",
    "template_stops",
    "token_stream",
    "warp_probs",
]
