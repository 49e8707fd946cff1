"""Character-offset alignment between experts that tokenise the same text differently.

Every expert tokenises the raw text itself.  A sample is a ``prompt`` and an optional
``completion``; both are tokenised separately (the prompt with the tokenizer's special tokens,
the completion without) and concatenated, so training sees the same token boundary at the end of
the prompt that generation does.  Character offsets are absolute positions in ``prompt + completion``.

Which peer states may a primary token read?  A primary token ``i`` has *seen* the text up to its
**known end** ``e_i`` (the end of the last character its tokens complete; see ``known_ends``).  Each
rule gives it a **visibility limit** ``limit_i <= e_i``:

* ``"stable"`` (default): ``limit_i`` = the start of the peer's last pre-token in ``text[:e_i]`` (the
  pre-tokenizer run on the raw text; about one word behind).  Primary token ``i`` reads exactly the
  peer's states on **the peer's own tokenisation of** ``text[:limit_i]`` (``cut_token_ids``) -- whatever
  its normaliser, pre-tokenizer and merges do.  Those are a function of ``text[:e_i]`` alone, so no
  later character can reach the primary (no leakage, by construction), and they are what full decoding
  computes when it feeds the peer the text seen so far.  Almost always that tokenisation is a prefix of
  the peer's tokenisation of the whole text, whose states one pass computes; where a merge, a
  normaliser (NFC) or a ``▁`` replacement crosses the cut, it is not, and the peer's states for the cut
  text's differing tail are computed separately (a *branch*; ``plan_cuts``).
* ``"exact"``: as ``"stable"`` with ``limit_i = e_i``: no lag, but more cut texts tokenise differently
  from the whole text (a word cut in its middle), so more branch states to compute.
* ``"span"``: the literal character rule: every peer token of the whole text's tokenisation that ends
  at or before ``e_i``.  A peer's merges inside the unfinished last word may depend on later
  characters (``"ab|c"`` -> ``a + bc`` but ``"ab|d"`` -> ``ab + d``): it leaks, and full decoding (which
  cannot know later text) then differs from the teacher-forced forward.  Kept for comparison.

Both limits are functions of ``text[:e_i]`` and of the primary's earlier known ends, queried in token
order identically by training, generation and the from-scratch reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

REPLACEMENT_CHAR = "\ufffd"


@dataclass
class TokenSpans:
    """One sample tokenised by one expert (no padding)."""

    input_ids: torch.Tensor  # [T] long
    char_start: torch.Tensor  # [T] long, absolute in prompt + completion
    char_end: torch.Tensor  # [T] long
    num_prompt_tokens: int
    prompt_chars: int

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def _tokenise(tokenizer: Any, text: str, add_special_tokens: bool, offset: int) -> tuple[list[int], list[tuple[int, int]]]:
    if not text and not add_special_tokens:
        return [], []
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    spans = [(s + offset, e + offset) if e > s else (offset + s, offset + s) for s, e in enc["offset_mapping"]]
    return list(enc["input_ids"]), spans


def encode_pair(tokenizer: Any, prompt: str, completion: str = "") -> TokenSpans:
    """Tokenise ``prompt`` (with special tokens) and ``completion`` (without) and concatenate."""
    ids, spans = _tokenise(tokenizer, prompt, True, 0)
    num_prompt = len(ids)
    more_ids, more_spans = _tokenise(tokenizer, completion, False, len(prompt))
    ids += more_ids
    spans += more_spans
    span_t = torch.tensor(spans, dtype=torch.long).view(-1, 2)
    return TokenSpans(torch.tensor(ids, dtype=torch.long), span_t[:, 0].contiguous(), span_t[:, 1].contiguous(),
                      num_prompt, len(prompt))


def tokenise_segment(tokenizer: Any, text: str, offset: int) -> tuple[list[int], list[int]]:
    """Ids and absolute end offsets of ``text`` (a slice starting at ``offset``), no special tokens."""
    ids, spans = _tokenise(tokenizer, text, False, offset)
    return ids, [e for _, e in spans]


def known_ends(tokens: TokenSpans) -> torch.Tensor:
    """``[T]`` end of the text each token has completed: the running max of span ends, lowered to
    the start of the next token when that token continues the same character (a byte-level BPE
    splitting one multi-byte character across tokens).  Special tokens inherit the previous end."""
    end = torch.cummax(tokens.char_end, dim=0).values if len(tokens) else tokens.char_end
    if len(tokens) < 2:
        return end
    start = tokens.char_start.clone()
    empty = tokens.char_end <= tokens.char_start
    start[empty] = torch.iinfo(torch.long).max
    # suffix minimum of the following tokens' starts
    following = torch.flip(torch.cummin(torch.flip(start, [0]), dim=0).values, [0])
    nxt = torch.cat([following[1:], following.new_tensor([torch.iinfo(torch.long).max])])
    return torch.minimum(end, nxt)


def peer_ends(tokens: TokenSpans) -> torch.Tensor:
    """``[T]`` how far into the text each peer token's hidden state reaches (running max of ends)."""
    return torch.cummax(tokens.char_end, dim=0).values if len(tokens) else tokens.char_end


def complete_text(tokenizer: Any, ids: list[int], context_ids: list[int] = ()) -> str:
    """The text of ``ids`` decoded after ``context_ids``, without a trailing incomplete character."""
    context = tokenizer.decode(list(context_ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)
    full = tokenizer.decode(list(context_ids) + list(ids), skip_special_tokens=False,
                            clean_up_tokenization_spaces=False)
    if not full.startswith(context):
        raise RuntimeError("decoding is not prefix-stable for this tokenizer; cannot align generated text")
    text = full[len(context):]
    return text.rstrip(REPLACEMENT_CHAR)


def last_pretoken_start(tokenizer: Any, text: str) -> int:
    """Start of the last pre-token of ``text`` under ``tokenizer``'s own pre-tokenizer.

    Tokenizers without one (SentencePiece-style) fall back to whitespace-delimited words: the last
    position where whitespace follows a non-space character."""
    if not text:
        return 0
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre = getattr(backend, "pre_tokenizer", None) if backend is not None else None
    if pre is not None:
        pieces = pre.pre_tokenize_str(text)
        return int(pieces[-1][1][0]) if pieces else 0
    for pos in range(len(text) - 1, 0, -1):
        if text[pos].isspace() and not text[pos - 1].isspace():
            return pos
    return 0


class VisibilityRule:
    """Visibility limits of primary tokens for one peer tokenizer over one sample's text.

    Query ``limit`` with non-decreasing known ends (the primary's tokens in order): each query
    pre-tokenises only the text after the previous limit (a pre-token boundary), so a sequence of
    ``T`` queries costs ``O(T x word length)``, not ``O(T x text length)``.  Training, generation and
    the from-scratch reference all query in token order and so get identical limits.
    """

    def __init__(self, tokenizer: Any, prompt: str, mode: str = "stable") -> None:
        if mode not in ("stable", "exact", "span"):
            raise ValueError(f"peer visibility must be 'stable', 'exact' or 'span', got {mode!r}")
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.mode = mode
        self._region = ""
        self._anchor = 0  # pre-token boundary in the current region; everything before it is final
        self._last = -1

    def limit(self, known_end: int, completion: str) -> int:
        """Limit for a primary token that has seen ``(prompt + completion)[:known_end]``."""
        if self.mode in ("span", "exact"):  # "exact": the cut text's own tokenisation, no lag
            return known_end
        prompt_len = len(self.prompt)
        if known_end < prompt_len:
            region, text, seen, base = "prompt", self.prompt, known_end, 0
        else:
            seen = known_end - prompt_len
            if seen == 0:  # the prompt is complete and tokenised on its own: all of it is final
                return prompt_len
            region, text, base = "completion", completion, prompt_len
        if region != self._region or seen < self._last:
            self._region, self._anchor = region, 0
        self._last = seen
        self._anchor += last_pretoken_start(self.tokenizer, text[self._anchor:seen])
        return base + self._anchor

    def limits(self, ends: torch.Tensor, completion: str) -> torch.Tensor:
        values = [self.limit(int(e), completion) for e in ends.tolist()]
        out = torch.tensor(values, dtype=torch.long)
        return torch.cummax(out, dim=0).values if len(values) else out


def cut_token_ids(tokenizer: Any, prompt: str, completion: str, cuts: Sequence[int]) -> list[list[int]]:
    """The peer's token ids of ``(prompt + completion)[:cut]`` for each cut, tokenised as ``encode_pair``
    tokenises a sample: a cut inside the prompt is a shorter prompt (with special tokens); a cut at or
    after its end is the whole prompt followed by the completion's first ``cut - len(prompt)``
    characters.  One batched tokenizer call per region."""
    prompt_len = len(prompt)
    out: list[list[int] | None] = [None] * len(cuts)
    inside = [(n, c) for n, c in enumerate(cuts) if c < prompt_len]
    after = [(n, c) for n, c in enumerate(cuts) if c >= prompt_len]
    if inside:
        rows = tokenizer([prompt[:c] for _, c in inside], add_special_tokens=True)["input_ids"]
        for (n, _), row in zip(inside, rows, strict=True):
            out[n] = list(row)
    if after:
        head = encode_pair(tokenizer, prompt).input_ids.tolist()
        tails = [completion[:c - prompt_len] for _, c in after]
        nonempty = [t for t in tails if t]
        rows = iter(tokenizer(nonempty, add_special_tokens=False)["input_ids"] if nonempty else [])
        for (n, _), tail in zip(after, tails, strict=True):
            out[n] = head + (list(next(rows)) if tail else [])
    return out  # type: ignore[return-value]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = min(len(a), len(b))
    k = 0
    while k < n and a[k] == b[k]:
        k += 1
    return k


@dataclass
class CutPlan:
    """Which peer states each primary token reads, relative to the peer's tokenisation ``F`` of the
    whole text.  Token ``i`` reads ``F[:prefix[i]]`` and, when ``branch[i] >= 0``, the tail
    ``branches[branch[i]][1]`` that the peer's tokenisation of its cut text puts after that prefix."""

    prefix: list[int]
    branch: list[int]
    branches: list[tuple[int, tuple[int, ...]]]  # (prefix length in F, tail ids), each once


def plan_cuts(full_ids: Sequence[int], tokenised: Sequence[Sequence[int]]) -> CutPlan:
    """Compare each cut's tokenisation with ``full_ids``: a prefix of it, or a branch off it."""
    prefix, branch, index = [], [], {}
    for ids in tokenised:
        k = common_prefix(full_ids, ids)
        prefix.append(k)
        if k == len(ids):
            branch.append(-1)
            continue
        key = (k, tuple(int(t) for t in ids[k:]))
        branch.append(index.setdefault(key, len(index)))
    return CutPlan(prefix, branch, list(index))


def visibility_mask(limits: torch.Tensor, ends: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``allowed[..., i, j] = ends[..., j] <= limits[..., i]`` (and ``valid[..., j]``): bool ``[..., Tp, Tk]``."""
    allowed = ends.unsqueeze(-2) <= limits.unsqueeze(-1)
    if valid is not None:
        allowed = allowed & valid.unsqueeze(-2).bool()
    return allowed


def peer_distance(visible: torch.Tensor) -> torch.Tensor:
    """``[Tp, Tk]`` how many of the peer tokens a primary token reads come after each one (0: the latest it
    reads), from its visibility ``visible [Tp, Tk]`` whose columns are in text order for every row: the
    interaction's ``recency`` position (a function of what the row may read, so it leaks nothing)."""
    seen = visible.long()
    return seen.flip(-1).cumsum(-1).flip(-1) - seen
