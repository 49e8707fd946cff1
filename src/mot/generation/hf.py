"""Generation over a loaded Hugging Face causal LM and its tokenizer: prompt formatting, batched
``generate`` and token streaming.

:class:`HFTextGenerator` is the ``TextGenerator`` both the evaluators (``mot.evaluation.hf_model.HFModel``
adds log-likelihood scoring to it) and the server (``mot.serve.hf_generator.HFGenerator``) use.

- Prompts: a string passes through (unless ``use_chat_template``, which wraps it as one user message);
  chat messages go through the tokenizer's chat template, or become ``role: content`` lines ending in
  ``assistant:`` when it has none.  ``add_bos`` prepends the BOS token.
- ``generate``: left-padded batches of ``batch_size``; a row stops once its text holds a stop string and
  the reply ends before it.  Prompts keep their last tokens so that prompt and new tokens fit ``max_length``.
- ``stream``: HF ``generate()`` in a worker thread (``mot.generation.generate_in_thread``) hands over each
  token id as it is produced; the text is decoded incrementally, so each :class:`Piece` is one token's text
  (bytes of a character split over several tokens wait for the character to complete), stop strings are
  cut by ``mot.generation.token_stream``, and closing the iterator stops generation after at most one
  more token.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from mot.generation.params import GenerationParams, Message, Piece
from mot.generation.stops import cut_at_stop, token_stream
from mot.generation.threaded import generate_in_thread

__all__ = ["HFTextGenerator", "StopStringsCriterion", "format_chat"]


def format_chat(tokenizer, messages: str | Sequence[Message], *, cue: str = "assistant:") -> str:
    """The prompt text for chat ``messages``: every model kind formats chat through this one function.

    Through ``tokenizer``'s chat template (with the generation prompt) when it has one; otherwise (or with
    ``tokenizer=None``) as ``role: content`` lines followed by ``cue``, the text that asks for the reply (a
    missing role reads ``user``, missing content empty).  A plain string is a prompt already and comes back
    as it is.  ``cue``: MoT passes ``"assistant: "`` (a trailing space): its prompts have always ended so,
    and its routing decisions and tokenisation depend on the exact text."""
    if isinstance(messages, str):
        return messages
    messages = list(messages)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m.get('role', 'user')}: {m.get('content', '')}\n" for m in messages) + cue


class StopStringsCriterion:
    """Per-row HF stopping criterion: a row is done once its generated text contains a stop string."""

    def __init__(self, tokenizer, stops: Sequence[str], prompt_width: int):
        self.tokenizer, self.stops, self.prompt_width = tokenizer, [s for s in stops if s], prompt_width

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if self.stops:
            for b, row in enumerate(input_ids[:, self.prompt_width:]):
                text = self.tokenizer.decode(row, skip_special_tokens=True)
                done[b] = any(s in text for s in self.stops)
        return done


class HFTextGenerator:
    """``TextGenerator`` over ``(model, tokenizer)`` (see the module docstring)."""

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

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---------------------------------------------------------------- tokenisation

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prefix(self) -> list[int]:
        return [self.bos_id] if self.add_bos and self.bos_id is not None else []

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            if r:
                ids[b, width - len(r):] = torch.tensor(r)
                mask[b, width - len(r):] = 1
        return ids.to(self.device), mask.to(self.device)

    # ---------------------------------------------------------------- the prompt

    def prompt_text(self, prompt: str | Sequence[Message]) -> str:
        if isinstance(prompt, str) and not self.use_chat_template:
            return prompt
        return format_chat(self.tokenizer, [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt)

    def prompt_ids(self, prompt: str | Sequence[Message]) -> list[int]:
        """Every token of the formatted prompt (never truncated); the BOS (or EOS) token when it has none."""
        ids = self._prefix() + self._encode(self.prompt_text(prompt))
        if not ids and self.bos_id is not None:
            ids = [self.bos_id]
        return ids

    def _prompt_ids(self, prompt: str | Sequence[Message], max_new_tokens: int) -> list[int]:
        """Prompt ids, keeping the last ones so that prompt + new tokens fit the model's context."""
        keep = max(self.max_length - max_new_tokens, 1)
        return self.prompt_ids(prompt)[-keep:]

    # ---------------------------------------------------------------- generation

    def _generate_kwargs(self, params: GenerationParams) -> dict:
        kwargs: dict = {"max_new_tokens": params.max_new_tokens, "pad_token_id": self.pad_id}
        # GenerationParams.greedy covers tiny temperatures too (they overflow to NaN when sampling).
        if params.greedy:
            kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_k=params.top_k or None,
                          top_p=params.top_p)
        return kwargs

    @torch.no_grad()
    def generate(self, prompts: Sequence[str | Sequence[Message]], params: GenerationParams) -> list[str]:
        replies: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = [self._prompt_ids(p, params.max_new_tokens) for p in prompts[start:start + self.batch_size]]
            ids, mask = self._left_pad(chunk)
            if params.max_new_tokens == 0:
                replies.extend("" for _ in chunk)
                continue
            criteria = StopStringsCriterion(self.tokenizer, params.stop, ids.shape[1])
            with torch.random.fork_rng(devices=[]):
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                out = self.model.generate(input_ids=ids, attention_mask=mask, stopping_criteria=[criteria],
                                          **self._generate_kwargs(params))
            for row in out[:, ids.shape[1]:]:
                replies.append(cut_at_stop(self.tokenizer.decode(row, skip_special_tokens=True), params.stop))
        return replies

    def stream(self, prompt: str | Sequence[Message], params: GenerationParams) -> Iterator[Piece]:
        """Yield one :class:`Piece` per produced token; a stop string ends the reply (and generation)."""
        return self.stream_ids(self._prompt_ids(prompt, params.max_new_tokens), params)

    def stream_ids(self, prompt_ids: Sequence[int], params: GenerationParams) -> Iterator[Piece]:
        """:meth:`stream` from prompt token ids, used as they are."""
        if params.max_new_tokens == 0:
            return
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=self.device)
        steps = generate_in_thread(self.model.generate, seed=params.seed, name=f"generate-{self.name}",
                                   input_ids=ids, attention_mask=torch.ones_like(ids), **self._generate_kwargs(params))
        special = set(self.tokenizer.all_special_ids)
        try:
            yield from token_stream(steps, lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True),
                                    params.stop, skip=special)
        finally:
            steps.close()  # a stop string, a closed stream or an error: stop generate() now
