"""moellama's KV-cached, batched (left padding) decoding loop and its ``TextGenerator``; sampling and stop
strings are ``mot.generation``'s (``filter_logits`` is re-exported here for older imports)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from mot.generation import (
    GenerationParams,
    Message,
    cut_at_stop,
    filter_logits,
    sample_next,
    token_stream,
)
from mot.generation.hf import format_chat
from mot.moellama.model import KVCache, MoeLlama

__all__ = ["MoeLlamaGenerator", "filter_logits", "sample_tokens"]


@torch.no_grad()
def sample_tokens(
    model: MoeLlama,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    attention_mask: torch.Tensor | None = None,
    eos_token_id: int | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token [B] of every row, one step at a time (KV-cached).

    ``input_ids`` [B, T] left-padded where ``attention_mask`` is 0.  Rows that produced
    ``eos_token_id`` keep yielding it.  Stops early at the model's ``max_seq_len``.  Sampling is
    ``mot.generation.sample_next`` (greedy when ``GenerationParams.greedy``: temperatures below
    ``GREEDY_BELOW``).
    """
    model = getattr(model, "model", model)  # MoeLlamaForCausalLM -> MoeLlama
    params = GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
    B, T = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    positions = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    cache = KVCache()
    done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    tokens = input_ids
    for _ in range(min(max_new_tokens, model.cfg.max_seq_len - T)):
        logits = model(tokens, attention_mask=attention_mask, positions=positions, cache=cache).logits[:, -1].float()
        next_token = sample_next(logits, params, generator)
        if eos_token_id is not None:
            next_token = torch.where(done, torch.full_like(next_token, eos_token_id), next_token)
            done |= next_token == eos_token_id
        yield next_token
        if eos_token_id is not None and bool(done.all()):
            return
        tokens = next_token[:, None]
        positions = positions[:, -1:] + 1
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, 1)], dim=-1)



class MoeLlamaGenerator:
    """``TextGenerator`` over a moellama model and its tokenizer.

    ``stream`` yields each piece of text as soon as its token is sampled; bytes of a character split
    over several tokens are held back until the character is complete (incremental decoding).
    """

    def __init__(self, model, tokenizer, name: str = "moellama"):
        self.model = getattr(model, "model", model)
        self.tokenizer = tokenizer
        self.name = name

    def _encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        limit = self.model.cfg.max_seq_len - 1
        rows = [self.tokenizer.encode(p, add_special_tokens=False)[-limit:] or [self._bos()] for p in prompts]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        device = next(self.model.parameters()).device
        return ids.to(device), mask.to(device)

    def _bos(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else 0

    def _tokens(self, prompts: Sequence[str], params: GenerationParams) -> Iterator[torch.Tensor]:
        ids, mask = self._encode(prompts)
        gen = None
        if params.seed is not None:
            gen = torch.Generator(device=ids.device).manual_seed(params.seed)
        was_training = self.model.training
        self.model.eval()
        try:
            yield from sample_tokens(
                self.model, ids, params.max_new_tokens, params.temperature, params.top_k, params.top_p,
                attention_mask=mask, eos_token_id=self.tokenizer.eos_token_id, generator=gen,
            )
        finally:
            self.model.train(was_training)

    def stream(self, prompt: str | Sequence[Message], params: GenerationParams) -> Iterator[str]:
        """Yields ``Piece`` s (``str`` with a ``tokens`` count) as tokens are sampled."""
        eos = self.tokenizer.eos_token_id
        tokens = self._tokens([format_chat(self.tokenizer, prompt)], params)
        try:
            yield from token_stream(([int(step[0])] for step in tokens),
                                    lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True), params.stop,
                                    end=() if eos is None else (eos,))
        finally:
            tokens.close()  # a stop string or a closed stream: sampling ends and the model's mode is restored now

    def generate(self, prompts: Sequence[str | Sequence[Message]], params: GenerationParams) -> list[str]:
        if not prompts:
            return []
        steps = list(self._tokens([format_chat(self.tokenizer, p) for p in prompts], params))
        eos = self.tokenizer.eos_token_id
        replies = []
        for row in (torch.stack(steps, 1).tolist() if steps else [[] for _ in prompts]):
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            replies.append(cut_at_stop(self.tokenizer.decode(row, skip_special_tokens=True), params.stop))
        return replies
