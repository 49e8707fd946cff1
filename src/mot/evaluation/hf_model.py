"""A plain Hugging Face causal LM as a baseline: both a ``TextGenerator`` and a ``LogLikelihoodScorer``."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from mot.evaluation.scoring import LogLikelihood
from mot.generation import CancelOnEvent, GenerationParams, Message, first_stop


class HFModel:
    """Wrap ``(model, tokenizer)`` for evaluation, serving and chat.

    Log-likelihoods: trailing whitespace of the context moves to the continuation (``"Answer: "`` +
    ``"A"`` is scored as ``"Answer:"`` + ``" A"``), then the joined text is tokenised once and split
    where the context's own tokenisation ends, so the model sees the natural tokenisation of the full
    text even when a token spans the boundary.  An empty context becomes the BOS (or EOS) token.
    Inputs longer than the model's context keep their last ``max_length`` tokens.  Batches are
    left-padded with explicit position ids, so a batch gives the same numbers as one request at a time.

    ``add_bos`` prepends the BOS token to every context and prompt (for models trained with one).
    ``use_chat_template`` wraps string prompts as one user message; message lists always use the
    tokenizer's chat template (or a plain ``role: content`` layout when it has none).
    """

    def __init__(self, model, tokenizer, name: str | None = None, *, batch_size: int = 8,
                 max_length: int | None = None, add_bos: bool = False, use_chat_template: bool = False):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name or getattr(model.config, "_name_or_path", None) or type(model).__name__
        self.batch_size = batch_size
        self.add_bos = add_bos
        self.use_chat_template = use_chat_template
        cfg = model.config
        self.max_length = max_length or getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048)
        eos = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)
        self.bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
        self._supports_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.share_context = True  # one forward per context for single-token continuations

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---------------------------------------------------------------- tokenisation

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prefix(self) -> list[int]:
        return [self.bos_id] if self.add_bos and self.bos_id is not None else []

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of ``(context, continuation)`` as scored (see the class docstring)."""
        n_space = len(context) - len(context.rstrip())
        if n_space:
            context, continuation = context[:-n_space], context[-n_space:] + continuation
        whole = self._encode(context + continuation)
        n_ctx = len(self._encode(context)) if context else 0
        ctx, cont = self._prefix() + whole[:n_ctx], whole[n_ctx:]
        if not ctx:
            if self.bos_id is None:
                raise ValueError(f"{self.name}: an empty context needs a BOS or EOS token to condition on")
            ctx = [self.bos_id]
        return ctx, cont

    # ---------------------------------------------------------------- log-likelihood

    @torch.no_grad()
    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[LogLikelihood]:
        """``log P(continuation | context)`` per request.  Requests whose continuation is one token and
        whose context tokens are equal (the choices of one multiple-choice question) share one forward
        over the context: the numbers equal one forward per request (``share_context = False``)."""
        encoded = [self.encode_pair(c, x) for c, x in requests]
        return score_encoded(encoded, self._logprobs, self.max_length, self.batch_size, self.share_context)

    def _logprobs(self, inputs: list[list[int]], keep: int) -> torch.Tensor:
        """Log-softmax over the vocabulary at the last ``keep`` positions of left-padded ``inputs``:
        ``[B, keep, V]`` in fp32 (models that support ``logits_to_keep`` never build the full logits)."""
        ids, mask = self._left_pad(inputs)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        kwargs = {"logits_to_keep": keep} if self._supports_logits_to_keep else {}
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids, **kwargs).logits
        return F.log_softmax(logits[:, -keep:].float(), dim=-1)

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            if r:
                ids[b, width - len(r):] = torch.tensor(r)
                mask[b, width - len(r):] = 1
        return ids.to(self.device), mask.to(self.device)

    # ---------------------------------------------------------------- generation

    def prompt_text(self, prompt: str | Sequence[Message]) -> str:
        if isinstance(prompt, str) and not self.use_chat_template:
            return prompt
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"

    def _generate_kwargs(self, params: GenerationParams) -> dict:
        kwargs: dict = {"max_new_tokens": params.max_new_tokens, "pad_token_id": self.pad_id}
        if params.greedy:
            kwargs["do_sample"] = False
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_k=params.top_k or None,
                          top_p=params.top_p)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        return kwargs

    def _prompt_ids(self, prompt: str | Sequence[Message], max_new_tokens: int) -> list[int]:
        """Prompt ids, keeping the last ones so that prompt + new tokens fit the model's context."""
        ids = self._prefix() + self._encode(self.prompt_text(prompt))
        if not ids and self.bos_id is not None:
            ids = [self.bos_id]
        keep = max(self.max_length - max_new_tokens, 1)
        return ids[-keep:]

    @torch.no_grad()
    def generate(self, prompts: Sequence[str | Sequence[Message]], params: GenerationParams) -> list[str]:
        replies: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = [self._prompt_ids(p, params.max_new_tokens) for p in prompts[start:start + self.batch_size]]
            ids, mask = self._left_pad(chunk)
            if params.max_new_tokens == 0:
                replies.extend("" for _ in chunk)
                continue
            criteria = _StopStrings(self.tokenizer, params.stop, ids.shape[1])
            out = self.model.generate(input_ids=ids, attention_mask=mask, stopping_criteria=[criteria],
                                      **self._generate_kwargs(params))
            for row in out[:, ids.shape[1]:]:
                text = self.tokenizer.decode(row, skip_special_tokens=True)
                replies.append(_cut_at_stop(text, params.stop))
        return replies

    def stream(self, prompt: str | Sequence[Message], params: GenerationParams) -> Iterator[str]:
        """Yield text pieces as tokens are produced; a stop string ends the reply (and generation)."""
        from transformers import TextIteratorStreamer

        ids, mask = self._left_pad([self._prompt_ids(prompt, params.max_new_tokens)])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancel = threading.Event()
        failure: list[BaseException] = []

        def work() -> None:
            try:
                with torch.no_grad():
                    self.model.generate(input_ids=ids, attention_mask=mask, streamer=streamer,
                                        stopping_criteria=[CancelOnEvent(cancel)], **self._generate_kwargs(params))
            except BaseException as e:  # re-raised in the caller's thread below
                failure.append(e)
                streamer.end()

        if params.max_new_tokens == 0:
            return
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        hold = max((len(s) for s in params.stop), default=1) - 1
        buffer = ""
        try:
            for piece in streamer:
                buffer += piece
                cut = first_stop(buffer, params.stop)
                if cut is not None:
                    if buffer[:cut]:
                        yield buffer[:cut]
                    buffer = ""
                    break
                if len(buffer) > hold:
                    yield buffer[:len(buffer) - hold]
                    buffer = buffer[len(buffer) - hold:]
            if buffer:
                yield buffer
        finally:
            cancel.set()
            thread.join()
        if failure:
            raise failure[0]


def score_encoded(encoded: Sequence[tuple[list[int], list[int]]],
                  logprobs_fn: Callable[[list[list[int]], int], torch.Tensor], max_length: int, batch_size: int,
                  share_context: bool = True) -> list[LogLikelihood]:
    """Log-likelihoods of encoded ``(context ids, continuation ids)`` pairs with ``logprobs_fn(inputs, keep)``
    (log-softmax ``[B, keep, V]`` at the last ``keep`` positions of left-padded ``inputs``).

    A sequence longer than ``max_length + 1`` keeps its last tokens.  With ``share_context``, pairs whose
    continuation is a single token and whose contexts are equal run as one input (the context, cut to
    its last ``max_length`` tokens: exactly the input the pair would have on its own) and each reads its
    token from the last position."""
    results: list[LogLikelihood | None] = [None] * len(encoded)
    jobs: list[tuple[list[int], list[tuple[int, list[int]]]]] = []  # (input ids, [(request, scored ids)])
    shared: dict[tuple[int, ...], int] = {}
    for i, (ctx, cont) in enumerate(encoded):
        if not cont:
            results[i] = LogLikelihood(0.0, 0, True)
            continue
        if share_context and len(cont) == 1:
            key = tuple(ctx[-max_length:])
            if key in shared:
                jobs[shared[key]][1].append((i, cont))
                continue
            shared[key] = len(jobs)
            jobs.append((list(key), [(i, cont)]))
            continue
        seq = (ctx + cont)[-(max_length + 1):]
        jobs.append((seq[:-1], [(i, seq[len(seq) - min(len(cont), len(seq) - 1):])]))
    order = sorted(range(len(jobs)), key=lambda j: -(len(jobs[j][0]) + max(len(c) for _, c in jobs[j][1])))
    for start in range(0, len(order), batch_size):
        batch = [jobs[j] for j in order[start:start + batch_size]]
        logprobs = logprobs_fn([inputs for inputs, _ in batch], max(len(c) for _, scored in batch for _, c in scored))
        width = logprobs.shape[1]
        for b, (_, scored) in enumerate(batch):
            for i, cont in scored:
                lp = logprobs[b, width - len(cont):]  # positions that predict the continuation tokens
                target = torch.tensor(cont, device=lp.device)
                picked = lp.gather(-1, target[:, None])[:, 0]
                greedy = bool((lp.argmax(-1) == target).all())
                results[i] = LogLikelihood(float(picked.sum()), len(cont), greedy)
    return results  # type: ignore[return-value]


def _cut_at_stop(text: str, stops: Sequence[str]) -> str:
    cut = first_stop(text, stops)
    return text if cut is None else text[:cut]


class _StopStrings:
    """Per-row stopping criterion: a row is done once its generated text contains a stop string."""

    def __init__(self, tokenizer, stops: Sequence[str], prompt_width: int):
        self.tokenizer, self.stops, self.prompt_width = tokenizer, [s for s in stops if s], prompt_width

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if self.stops:
            for b, row in enumerate(input_ids[:, self.prompt_width:]):
                text = self.tokenizer.decode(row, skip_special_tokens=True)
                done[b] = any(s in text for s in self.stops)
        return done
