"""HF ``generate()`` in a worker thread: its new token ids handed over step by step, cancellable."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any


class TokenQueueStreamer:
    """An HF ``generate(streamer=...)`` that forwards each step's new token ids (not the prompt) to
    ``queue`` as a list, and ``END`` when generation finishes.  For streaming from a worker thread."""

    END = None

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue()
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() first puts the prompt
            self._prompt_seen = True
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.queue.put(self.END)


class CancelOnEvent:
    """An HF stopping criterion that stops every row once ``event`` is set (checked after each token):
    how a closed stream or a disconnected client cancels a generation running in another thread."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def generate_in_thread(generate: Callable[..., Any], *, seed: int | None = None, name: str = "generate",
                       **generate_kwargs: Any) -> Iterator[list[int]]:
    """Run an HF ``generate(**generate_kwargs)`` in a worker thread and yield each step's new token ids
    as they are produced.

    Closing this iterator before the end (a consumer that went away, a stop string) cancels generation
    through a stopping criterion (at most one more token) and waits for the thread.  An exception raised
    inside ``generate`` is re-raised here after the tokens produced before it.  ``seed`` seeds sampling
    in the worker without touching the caller's RNG.  Callers that stop reading early should close it
    (``contextlib.closing``) so the thread stops at once rather than when the iterator is collected.
    """
    import torch

    tokens, cancel = TokenQueueStreamer(), threading.Event()
    failure: list[BaseException] = []
    criteria = [*generate_kwargs.pop("stopping_criteria", []), CancelOnEvent(cancel)]

    def work() -> None:
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                if seed is not None:
                    torch.manual_seed(seed)
                generate(streamer=tokens, stopping_criteria=criteria, **generate_kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(exc)
        finally:
            tokens.end()

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    finished = False
    try:
        while (step := tokens.queue.get()) is not TokenQueueStreamer.END:
            yield step
        finished = True
        if failure:
            raise failure[0]
    finally:
        if not finished:
            cancel.set()
        thread.join()
