"""Training data: JSONL ``{"question": ..., "response": ...}`` -> token sequences with a response mask.

A sequence is the question's tokens (as the tokenizer encodes a prompt, special tokens included) followed by
the response's tokens and EOS.  Only response tokens are targets.  Stage 2 adds, per example, the backbone's
own greedy continuation of the question (``greedy_ids``): the tokens verified decoding accepts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from mot.errors import DataError

__all__ = ["Example", "SequenceDataset", "chain_targets", "collate_sequences", "read_jsonl", "read_tokens",
           "step_targets", "tokenize_example"]

MAX_REPORTED_ERRORS = 5


@dataclass(frozen=True)
class Example:
    question: str
    response: str
    line: int  # 1-based line in the source file


def read_jsonl(path: str | Path) -> list[Example]:
    """Read ``{"question", "response"}`` lines.  Blank lines are skipped; every bad line is collected and
    reported (up to five, with line numbers) in one ``DataError``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file (expected JSONL with 'question' and 'response' per line)")
    examples: list[Example] = []
    errors: list[str] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                errors.append(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(record, dict):
                errors.append(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
                continue
            problems = [key for key in ("question", "response") if not isinstance(record.get(key), str)]
            if problems:
                errors.append(f"{path}:{number}: missing or non-string {', '.join(repr(p) for p in problems)}")
                continue
            if not record["response"]:
                errors.append(f"{path}:{number}: empty 'response'")
                continue
            examples.append(Example(record["question"], record["response"], number))
    if errors:
        more = f" (and {len(errors) - MAX_REPORTED_ERRORS} more)" if len(errors) > MAX_REPORTED_ERRORS else ""
        raise DataError("; ".join(errors[:MAX_REPORTED_ERRORS]) + more
                        + ": fix these lines (each needs string 'question' and 'response')")
    if not examples:
        raise DataError(f"{path}: no examples (expected JSONL lines with 'question' and 'response')")
    return examples


def tokenize_example(tokenizer, question: str, response: str, max_length: int, eos_id: int | None):
    """``(ids [L], prompt_length)``; long prompts lose their start, long responses their end."""
    prompt = list(tokenizer(question).input_ids)
    answer = list(tokenizer(response, add_special_tokens=False).input_ids)
    if eos_id is not None:
        answer.append(eos_id)
    keep_prompt = max(1, min(len(prompt), max_length - 2))
    prompt = prompt[-keep_prompt:]
    ids = (prompt + answer)[:max_length]
    return torch.tensor(ids, dtype=torch.long), len(prompt)


class SequenceDataset(Dataset):
    """Tokenized examples: ``{"input_ids", "prompt_length"}`` and, once set, ``"greedy_ids"``."""

    def __init__(self, examples: list[Example], tokenizer, max_length: int = 512, eos_id: int | None = None):
        self.examples = examples
        self.items: list[dict[str, Any]] = []
        for example in examples:
            ids, prompt_length = tokenize_example(tokenizer, example.question, example.response, max_length, eos_id)
            self.items.append({"input_ids": ids, "prompt_length": prompt_length})
        self.max_length = max_length

    def set_greedy(self, continuations: list[torch.Tensor]) -> None:
        """Attach each example's greedy continuation (new tokens only) as ``prompt + continuation``."""
        if len(continuations) != len(self.items):
            raise ValueError(f"{len(continuations)} continuations for {len(self.items)} examples")
        for item, continuation in zip(self.items, continuations, strict=True):
            prompt = item["input_ids"][: item["prompt_length"]]
            item["greedy_ids"] = torch.cat([prompt, continuation.to(torch.long)])[: self.max_length]

    @property
    def has_greedy(self) -> bool:
        return bool(self.items) and "greedy_ids" in self.items[0]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]


def _pad(rows: list[torch.Tensor], prompt_lengths: list[int], length: int, pad_id: int):
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.bool)
    response = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, (row, prompt_length) in enumerate(zip(rows, prompt_lengths, strict=True)):
        ids[i, : len(row)] = row
        attention[i, : len(row)] = True
        response[i, prompt_length: len(row)] = True
    return ids, attention, response


def collate_sequences(items: list[dict[str, Any]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask``, ``response_mask`` (and ``greedy_*`` when present),
    all padded to one length so stage 2 can pick rows from either."""
    prompt_lengths = [int(item["prompt_length"]) for item in items]
    has_greedy = all("greedy_ids" in item for item in items)
    length = max(len(item["input_ids"]) for item in items)
    if has_greedy:
        length = max(length, max(len(item["greedy_ids"]) for item in items))
    batch: dict[str, torch.Tensor] = {}
    batch["input_ids"], batch["attention_mask"], batch["response_mask"] = _pad(
        [item["input_ids"] for item in items], prompt_lengths, length, pad_id)
    if has_greedy:
        batch["greedy_ids"], batch["greedy_attention_mask"], batch["greedy_response_mask"] = _pad(
            [item["greedy_ids"] for item in items], prompt_lengths, length, pad_id)
    return batch


def step_targets(ids: torch.Tensor, response: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoding steps and what each head should say there.

    A step is a position ``t`` whose next token is a response token (decoding starts at the last prompt
    token).  Returns ``step_mask [B, T]`` and ``labels [B, T, H]``: ``labels[b, t, h]`` is the token at
    ``t + 1 + h`` when it is a response token, else ``-100``.
    """
    batch, length = ids.shape
    labels = torch.full((batch, length, num_heads), -100, dtype=torch.long, device=ids.device)
    for head in range(num_heads):
        shift = 1 + head
        if shift >= length:
            break
        target = ids[:, shift:]
        labels[:, : length - shift, head] = torch.where(response[:, shift:], target, torch.full_like(target, -100))
    step_mask = labels[..., 0] >= 0
    return step_mask, labels


def chain_targets(ids: torch.Tensor, greedy_next: torch.Tensor, response: torch.Tensor, num_heads: int,
                  eos: set[int] | frozenset[int] = frozenset()) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-distillation targets from one teacher-forced pass: the backbone's greedy chain wherever the
    sequence pins it down.

    ``greedy_next [B, T]`` is the backbone's argmax at each position (its guess for the token after it).
    From a step ``t`` the backbone's own greedy continuation is ``greedy_next[t]``, and it goes on as
    ``greedy_next[t + 1]``, ``greedy_next[t + 2]``, ... for as long as each guess equals the sequence's next
    token (the backbone then reads exactly the prefix the sequence gives it).  So ``labels[b, t, h]`` is
    ``greedy_next[t + h]`` when the guesses at ``t .. t + h - 1`` all match the sequence (and none is EOS),
    else ``-100``; ``labels[b, t, 0]`` is ``greedy_next[t]``.  Steps are those of :func:`step_targets`.  On
    the backbone's own greedy text every guess matches, so every target is set; on other text the targets
    are exactly what verification would accept, wherever they are known, at the cost of one forward pass.
    """
    batch, length = ids.shape
    greedy_next = greedy_next.to(ids.device)
    response = response.to(ids.device)
    match = torch.zeros((batch, length), dtype=torch.bool, device=ids.device)
    if length > 1:
        match[:, :-1] = (greedy_next[:, :-1] == ids[:, 1:]) & response[:, 1:]
    for token in eos:
        match &= greedy_next != token
    labels = torch.full((batch, length, num_heads), -100, dtype=torch.long, device=ids.device)
    step_mask = torch.zeros((batch, length), dtype=torch.bool, device=ids.device)
    step_mask[:, :-1] = response[:, 1:]
    labels[..., 0] = torch.where(step_mask, greedy_next, torch.full_like(greedy_next, -100))
    run = step_mask.clone()  # the chain from t still follows the sequence up to t + head - 1
    for head in range(1, num_heads):
        if head >= length:
            break
        shifted_match = torch.zeros_like(match)
        shifted_match[:, : length - head + 1] = match[:, head - 1:]
        run &= shifted_match
        target = torch.full_like(greedy_next, -100)
        target[:, : length - head] = greedy_next[:, head:]
        labels[..., head] = torch.where(run & (target >= 0), target, torch.full_like(target, -100))
    return step_mask, labels


def read_tokens(labels: torch.Tensor) -> torch.Tensor:
    """The tokens ``t + 1 ..`` that token-conditioned heads read at each step, from its labels ``[N, H]``
    (``H >= 2``): the labels before the last head's, ``-100`` clamped to 0 where no head uses it."""
    return labels[:, :-1].clamp_min(0)
