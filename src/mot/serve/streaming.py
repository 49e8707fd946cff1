"""Generation in worker threads, bounded admission, and Server-Sent Events in the OpenAI chunk format.

``Admission`` bounds the work: at most ``max_concurrency`` generations run, at most ``max_queue``
wait; a request beyond that is refused at once (the app answers 429).  A request takes its place
(``reserve()`` -> :class:`Reservation`) before its response starts, so a streamed reply is refused
with a 429 too, never with an error inside a stream that already said 200.  A slot is released when the
generation thread has really finished, so a cancelled request never lets more generations run than
allowed.

``GenerationRun`` iterates ``generator.stream(prompt, params)`` in its own thread and hands every piece
to the event loop as it is produced.  ``cancel()`` (a client that went away) makes the thread stop
pulling pieces and ``close()`` the stream, which stops generation inside the generator (the HF
generator checks an event between tokens).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

from mot.generation import GenerationParams, Message, TextGenerator


class Admission:
    """Bounded concurrency with a bounded queue (not thread-safe: used from the event loop only)."""

    def __init__(self, max_concurrency: int, max_queue: int) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.active = 0
        self.queued = 0
        self._waiters: list[asyncio.Future] = []

    def has_room(self) -> bool:
        return self.active + self.queued < self.max_concurrency + self.max_queue

    def try_reserve(self) -> bool:
        """Take a place (running or queued); False when all are taken."""
        if not self.has_room():
            return False
        self.queued += 1
        return True

    def reserve(self) -> Reservation | None:
        """Take a place as a :class:`Reservation`; None when all are taken."""
        return Reservation(self) if self.try_reserve() else None

    async def acquire(self) -> None:
        """Turn a reserved place into a running slot, waiting in FIFO order.  On cancellation the
        place is given back."""
        try:
            while self.active >= self.max_concurrency:
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                try:
                    await waiter
                finally:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
        except BaseException:
            self.queued -= 1
            self._wake()
            raise
        self.queued -= 1
        self.active += 1

    def release(self) -> None:
        self.active -= 1
        self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
                return


class Reservation:
    """A place taken in an :class:`Admission` for one request.  ``acquire()`` turns it into a running slot
    (waiting in line; a cancelled wait gives the place back); ``abandon()`` gives it back when the request
    ends without acquiring (a client gone before its stream began).  ``abandon()`` after ``acquire()`` does
    nothing: the slot is the generation's to release."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self._open = True

    async def acquire(self) -> None:
        if not self._open:
            raise RuntimeError("this place was already used or given back")
        self._open = False
        await self.admission.acquire()

    def abandon(self) -> None:
        if self._open:
            self._open = False
            self.admission.queued -= 1


class GenerationRun:
    """One generation in a worker thread; iterate it asynchronously for its pieces."""

    _END = object()

    def __init__(self, generator: TextGenerator, prompt: str | Sequence[Message], params: GenerationParams,
                 on_finished: Any = None) -> None:
        self.generator = generator
        self.prompt = prompt
        self.params = params
        self.pieces: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.error: BaseException | None = None
        self.finished = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._on_finished = on_finished
        self._thread = threading.Thread(target=self._work, name="mot-serve-generation", daemon=True)

    def start(self) -> GenerationRun:
        self._thread.start()
        return self

    def cancel(self) -> None:
        self.cancelled.set()

    def _post(self, item: Any, *, last: bool = False) -> None:
        try:
            self._loop.call_soon_threadsafe(self._deliver, item, last)
        except RuntimeError:  # the loop is gone (server shutting down): nobody is listening
            self.cancelled.set()

    def _deliver(self, item: Any, last: bool) -> None:
        """On the loop: hand ``item`` to the consumer.  With the ``last`` item the run finishes (its slot is
        given back) in the same callback, before the consumer can see the end: a reply never completes, and
        its loop never closes, with the release still in flight."""
        if last:
            self._done()
        self.pieces.put_nowait(item)

    def _work(self) -> None:
        stream = None
        try:
            stream = iter(self.generator.stream(self.prompt, self.params))
            for piece in stream:
                if self.cancelled.is_set():
                    break
                self._post(piece)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self.error = exc
        finally:
            close = getattr(stream, "close", None)
            if callable(close):
                try:
                    close()  # runs the generator's own clean-up: it stops generating
                except Exception as exc:  # noqa: BLE001
                    self.error = self.error or exc
            self._post(self._END, last=True)

    def _done(self) -> None:
        self.finished.set()
        if self._on_finished is not None:
            self._on_finished()

    async def __aiter__(self) -> AsyncIterator[str]:
        while True:
            item = await self.pieces.get()
            if item is self._END:
                if self.error is not None:
                    raise self.error
                return
            yield item


def sse(data: dict | str) -> str:
    """One Server-Sent Event ``data:`` line."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n"


SSE_DONE = sse("[DONE]")
