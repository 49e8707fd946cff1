"""Multi-token decoding: the heads draft, the backbone verifies in one pass.

``verify=True`` (default) is self-speculative decoding with the backbone's KV cache.  Each step feeds the
backbone's own next token plus the active heads' drafts in one pass, keeps the longest prefix of drafts the
backbone agrees with, takes the backbone's token after it (the correction, or a bonus token when every draft
held), and crops the cache back to what was kept.  Greedy, the output is token for token the backbone's
greedy ``generate()``.  With a temperature it is speculative sampling with point-mass drafts: draft ``d`` is
kept with probability ``p(d)`` and a rejection samples from ``p`` with ``d`` removed, which leaves the output
distributed exactly as the backbone's own sampling.

Draft-layer heads (``head_type="layer"``) read the sequence, not one state: after the prefill and after
every pass, the backbone's states at the positions the pass settled go to ``HeadStack.observe``.

``verify=False`` emits the drafts unchecked: more tokens per pass, but the text is no longer the
backbone's.  Every such result carries ``lossy=True``.

``lookup=N`` (verified decoding only) adds a second draft source that needs no training: when the last 3
(else 2) tokens occurred earlier in the prompt or the output, the up to ``N`` tokens that followed them
there are drafted instead of the heads' chain (prompt-lookup decoding).  Code and structured text repeat
themselves, and a verified draft costs nothing in exactness.  The statistics count these drafts apart
from the heads'.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from mot.experts import skinny
from mot.generation import GenerationParams, Message, sample_token, token_stream, warp_probs
from mot.generation.hf import format_chat
from mot.multitoken.model import CPU_MIN_GEMM_ROWS, MultiTokenModel

__all__ = ["ContextLookup", "DecodeResult", "DecodeStats", "MultiTokenGenerator", "decode", "decode_tokens",
           "warp_probs"]

LOOKUP_NGRAMS = (3, 2)  # longest match first
TREE_WIDTH = 2  # draft trees keep this many best paths per depth (fastest on the README benchmark)


@dataclass
class DecodeStats:
    """What one or more decodes cost: backbone passes (the prefill included), tokens, drafts per head."""

    backbone_passes: int = 0
    new_tokens: int = 0
    drafted: dict[int, int] = field(default_factory=dict)  # head -> drafts offered
    accepted: dict[int, int] = field(default_factory=dict)  # head -> drafts kept
    lookup_passes: int = 0  # passes whose drafts came from the context (``lookup``), not the heads
    lookup_drafted: int = 0
    lookup_accepted: int = 0
    lossy: bool = False

    @property
    def tokens_per_pass(self) -> float:
        return self.new_tokens / self.backbone_passes if self.backbone_passes else 0.0

    @property
    def head_acceptance(self) -> dict[int, float]:
        """Per head: the share of the passes it drafted in whose output its draft ended up (a draft counts as
        kept only when every draft before it was kept too, so head 2's rate is at most head 1's)."""
        return {h: self.accepted.get(h, 0) / n for h, n in sorted(self.drafted.items()) if n}

    def merge(self, other: DecodeStats) -> None:
        self.backbone_passes += other.backbone_passes
        self.new_tokens += other.new_tokens
        for h, n in other.drafted.items():
            self.drafted[h] = self.drafted.get(h, 0) + n
        for h, n in other.accepted.items():
            self.accepted[h] = self.accepted.get(h, 0) + n
        self.lookup_passes += other.lookup_passes
        self.lookup_drafted += other.lookup_drafted
        self.lookup_accepted += other.lookup_accepted
        self.lossy = self.lossy or other.lossy

    def as_dict(self) -> dict:
        return {"backbone_passes": self.backbone_passes, "new_tokens": self.new_tokens,
                "tokens_per_pass": self.tokens_per_pass,
                "head_acceptance": {str(h): a for h, a in self.head_acceptance.items()},
                "lookup": {"passes": self.lookup_passes, "drafted": self.lookup_drafted,
                           "accepted": self.lookup_accepted},
                "lossy": self.lossy}


@dataclass
class DecodeResult:
    token_ids: list[int]
    text: str
    stats: DecodeStats

    @property
    def lossy(self) -> bool:
        return self.stats.lossy


class _Picker:
    def __init__(self, params: GenerationParams, device: torch.device):
        self.params = params
        self.generator = None
        if not params.greedy:
            self.generator = torch.Generator(device="cpu")
            if params.seed is not None:
                self.generator.manual_seed(params.seed)
            else:
                self.generator.seed()

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        p = self.params
        return warp_probs(logits, p.temperature, p.top_k, p.top_p).cpu()

    def sample(self, probs: torch.Tensor) -> int:
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def pick(self, logits: torch.Tensor) -> int:
        return sample_token(logits, self.params, self.generator)

    def uniform(self) -> float:
        return float(torch.rand((), generator=self.generator))


class ContextLookup:
    """Prompt-lookup drafts: the tokens that followed the latest earlier occurrence of the context's last
    ``n`` tokens (``n`` in :data:`LOOKUP_NGRAMS`, longest first).  An index maps each n-gram to where its
    latest occurrence with a known continuation ends, updated as tokens arrive."""

    def __init__(self, tokens: list[int]):
        self.tokens: list[int] = []
        self.index: dict[tuple[int, ...], int] = {}
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            end = len(self.tokens)  # the n-grams ending here now have a continuation: ``token``
            for n in LOOKUP_NGRAMS:
                if end >= n:
                    self.index[tuple(self.tokens[end - n:end])] = end
            self.tokens.append(token)

    def drafts(self, count: int) -> list[int]:
        for n in LOOKUP_NGRAMS:
            if len(self.tokens) >= n:
                start = self.index.get(tuple(self.tokens[-n:]))
                if start is not None:
                    return self.tokens[start:start + count]
        return []


def decode_tokens(
    model: MultiTokenModel,
    input_ids: torch.Tensor,
    params: GenerationParams,
    *,
    verify: bool = True,
    k: int | None = None,
    stats: DecodeStats | None = None,
    min_feed: int | None = None,
    lookup: int = 0,
    skinny_rows: bool | None = None,
    tree: int = 0,
    tree_width: int = TREE_WIDTH,
) -> Iterator[int]:
    """Yield new token ids one by one as they are produced (several may come from one backbone pass).

    ``input_ids`` is ``[1, P]`` (one prompt).  Stops after an EOS token or ``params.max_new_tokens``.
    ``k`` lowers the number of active heads below the checkpoint's ``k_max``.  ``skinny_rows`` (default: on
    for a CPU backbone): the backbone's linear layers take :mod:`mot.experts.skinny`'s path, on which a pass
    over a few tokens costs about what a 1-token pass does.  ``min_feed``: a verification pass feeds at least
    this many tokens (default: 4 on CPU without ``skinny_rows``, where 2-3 row GEMMs are slow; 1 otherwise);
    the fillers never reach the output.  ``tree``: greedy verified decoding drafts a tree of up to this many
    nodes (:meth:`~mot.multitoken.model.HeadStack.draft_tree`, the ``tree_width`` best paths per depth)
    instead of the heads' single chain, all checked in the same one pass through a tree attention mask; 0
    (default) drafts the chain.  Sampling, and backbones whose cache cannot drop arbitrary positions
    (sliding-window layers), keep the chain.
    ``lookup``: with ``verify``, draft up to this many tokens from an earlier occurrence of the context's last
    tokens when there is one (:class:`ContextLookup`), the heads' chain otherwise; 0 turns it off.
    """
    stats = stats if stats is not None else DecodeStats()
    stats.lossy = stats.lossy or not verify
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"decode_tokens expects one prompt as [1, P] ids, got shape {tuple(input_ids.shape)}")
    if params.max_new_tokens == 0:
        return
    heads, eos = model.heads, model.eos_token_ids
    on_cpu = model.backbone_device.type == "cpu"
    skinny_rows = on_cpu if skinny_rows is None else skinny_rows
    if min_feed is None:
        min_feed = CPU_MIN_GEMM_ROWS if on_cpu and not skinny_rows else 1
    if lookup < 0:
        raise ValueError(f"lookup must be >= 0 (0: off), got {lookup}")
    if tree < 0 or tree_width < 1:
        raise ValueError(f"tree must be >= 0 (0: the chain) and tree_width >= 1, got {tree} and {tree_width}")
    picker = _Picker(params, model.heads_device)
    context = ContextLookup(input_ids[0].tolist()) if lookup and verify else None
    state = heads.new_draft_state()  # a draft layer reads every verified position (None: residual heads)
    hidden, logits, cache = model.backbone_step(input_ids, _new_cache(model), skinny_rows=skinny_rows,
                                                last_only=True, all_hidden=state is not None)
    cache.crop(0)  # sliding-window layers drop what the window no longer needs
    stats.backbone_passes += 1
    last_hidden, next_token = hidden[0, -1], picker.pick(logits[0, -1])
    with skinny.skinny_rows(skinny_rows):
        heads.observe(state, hidden[0], [*input_ids[0, 1:].tolist(), next_token])
    use_tree = tree > 0 and verify and params.greedy and _tree_cache(cache)
    produced = 0
    pending = [next_token]  # tokens settled by the last pass: accepted drafts, then the backbone's own
    while True:
        for token in pending:
            yield token
            produced += 1
            stats.new_tokens += 1
            if token in eos or produced >= params.max_new_tokens:
                return
        drafts: list[int] = []
        nodes: list[tuple[int, int]] = []
        if context is not None:
            context.extend(pending)
            drafts = context.drafts(min(lookup, params.max_new_tokens - produced))
        if drafts:
            chain = []
            stats.lookup_passes += 1
            stats.lookup_drafted += len(drafts)
        else:
            chain = heads.draft_chain(last_hidden, k, limit=params.max_new_tokens - produced)
            with skinny.skinny_rows(skinny_rows):
                if use_tree:
                    nodes = heads.draft_tree(last_hidden, chain, next_token, width=tree_width, budget=tree,
                                             state=state)
                else:
                    drafts = heads.draft_tokens(last_hidden, chain, next_token,
                                                None if params.greedy else picker.pick, state=state)
        if nodes:
            out, next_token, kept = _tree_step(model, cache, next_token, nodes, chain, stats, skinny_rows)
        else:
            # Filler rows (copies of the last token, cropped with the rejected drafts) bring a short feed up to
            # ``min_feed``: see CPU_MIN_GEMM_ROWS, the padded pass is the cheaper one.
            feed_tokens = [next_token, *drafts]
            filler = max(0, min_feed - len(feed_tokens)) if drafts else 0
            feed = torch.tensor([feed_tokens + feed_tokens[-1:] * filler], dtype=torch.long)
            hidden, logits, cache = model.backbone_step(feed, cache, skinny_rows=skinny_rows)
            stats.backbone_passes += 1
            for head in chain:
                stats.drafted[head] = stats.drafted.get(head, 0) + 1
            if verify:
                accepted, correction = _verify(drafts, logits[0], picker)
                if chain:
                    for j in range(accepted):
                        stats.accepted[chain[j]] = stats.accepted.get(chain[j], 0) + 1
                else:
                    stats.lookup_accepted += accepted
                out = drafts[:accepted]
                # keep the fed token and the accepted drafts; one crop: sliding-window layers allow one per pass
                cache.crop(-(len(drafts) - accepted + filler))
                kept, next_token = hidden[0, :accepted + 1], correction
            else:  # lossy: every draft is emitted, the backbone's token after the last one comes next
                out = drafts
                cache.crop(-filler)  # crop(0) keeps all: sliding windows settle
                last = len(feed_tokens) - 1
                kept, next_token = hidden[0, :last + 1], picker.pick(logits[0, last])
        # ``kept``: the backbone's states at the positions this pass settled, one per token of ``pending``
        pending = [*out, next_token]
        last_hidden = kept[-1]
        with skinny.skinny_rows(skinny_rows):
            heads.observe(state, kept, pending)


def _new_cache(model: MultiTokenModel):
    """A KV cache that can be rolled back: sliding-window layers keep what a rejected draft would otherwise
    push out of the window until ``crop`` says how much was kept."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.backbone.config)
    cache.activate_past_recording()
    return cache


def _tree_cache(cache) -> bool:
    """Whether every layer of ``cache`` keeps all positions (so a tree's rejected branches can be dropped)."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def _tree_step(model: MultiTokenModel, cache, root: int, nodes: list[tuple[int, int]], chain: list[int],
               stats: DecodeStats, skinny_rows: bool) -> tuple[list[int], int, torch.Tensor]:
    """One greedy verification pass over a draft tree: ``(accepted path tokens, the backbone's token after
    them, the hidden states ``[1 + len(path), D]`` of the root and the path)``.  Leaves in ``cache`` only the
    root and the accepted path.

    Row 0 is ``root`` (already the backbone's token), row ``i`` is ``nodes[i - 1]``; each row attends to the
    cache and to its own ancestors, at position ``cache length + depth``.  The backbone's argmax at a row is
    the token after it, so walking from the root down the children that equal it finds the longest accepted
    path, exactly as a chain would.
    """
    past = cache.get_seq_length()
    rows = len(nodes) + 1
    parents = [-1] + [parent for parent, _ in nodes]
    depth = [0] * rows
    allowed = torch.zeros(rows, rows, dtype=torch.bool)
    for row in range(rows):
        if row:
            depth[row] = depth[parents[row]] + 1
            allowed[row] = allowed[parents[row]]
        allowed[row, row] = True
    dtype = next(model.backbone.parameters()).dtype
    mask = torch.zeros(1, 1, rows, past + rows, dtype=dtype)
    mask[0, 0, :, past:] = torch.zeros(rows, rows, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    feed = torch.tensor([[root] + [token for _, token in nodes]])
    positions = torch.tensor([[past + d for d in depth]])
    hidden, logits, _ = model.backbone_step(feed, cache, attention_mask=mask, position_ids=positions,
                                            skinny_rows=skinny_rows)
    stats.backbone_passes += 1
    targets = logits[0].argmax(-1).tolist()
    children: dict[int, list[int]] = {}
    for row in range(1, rows):
        children.setdefault(parents[row], []).append(row)
    for head in chain[:max(depth)]:  # as for a chain: every depth the tree reaches counts as drafted
        stats.drafted[head] = stats.drafted.get(head, 0) + 1
    path: list[int] = []
    current = 0
    while children.get(current):
        head = chain[depth[current]]
        match = next((row for row in children[current] if nodes[row - 1][1] == targets[current]), None)
        if match is None:
            break
        stats.accepted[head] = stats.accepted.get(head, 0) + 1
        path.append(match)
        current = match
    if path != list(range(1, len(path) + 1)):  # off the leading rows: move them up behind the root first
        source = past + torch.tensor(path, dtype=torch.long)
        for layer in cache.layers:
            for name in ("keys", "values"):
                tensor = getattr(layer, name)
                tensor[..., past + 1:past + 1 + len(path), :] = tensor.index_select(-2, source.to(tensor.device))
    cache.crop(-(rows - 1 - len(path)))  # then drop every row after the root and the accepted path
    return [nodes[row - 1][1] for row in path], targets[current], hidden[0, [0, *path]]


def _verify(drafts: list[int], logits: torch.Tensor, picker: _Picker) -> tuple[int, int]:
    """``(number of drafts kept, the backbone's token after them)``; ``logits [1 + len(drafts), V]``."""
    if picker.params.greedy:
        targets = logits.argmax(-1).tolist()
        accepted = 0
        while accepted < len(drafts) and drafts[accepted] == targets[accepted]:
            accepted += 1
        return accepted, targets[accepted]
    for j, draft in enumerate(drafts):
        probs = picker.probs(logits[j])
        if picker.uniform() < probs[draft].item():
            continue
        residual = probs.clone()
        residual[draft] = 0.0
        if residual.sum() <= 0:  # p(draft) was 1 up to rounding: the draft is the only choice
            continue
        return j, picker.sample(residual / residual.sum())
    return len(drafts), picker.pick(logits[len(drafts)])


def decode(
    model: MultiTokenModel,
    prompt: str | torch.Tensor,
    params: GenerationParams | None = None,
    *,
    verify: bool = True,
    k: int | None = None,
    lookup: int = 0,
    tree: int = 0,
) -> DecodeResult:
    """Decode one prompt (text or ``[1, P]`` ids) to the end; returns ids, text and statistics."""
    params = params or GenerationParams()
    ids = model.encode(prompt) if isinstance(prompt, str) else prompt
    stats = DecodeStats()
    tokens = list(decode_tokens(model, ids, params, verify=verify, k=k, stats=stats, lookup=lookup, tree=tree))
    return DecodeResult(tokens, model.tokenizer.decode(tokens, skip_special_tokens=True), stats)


class MultiTokenGenerator:
    """``TextGenerator`` over a :class:`MultiTokenModel`.  With ``verify=False`` the name says it is lossy."""

    def __init__(self, model: MultiTokenModel, *, verify: bool = True, k: int | None = None, name: str | None = None,
                 lookup: int = 0, tree: int = 0):
        self.model, self.verify, self.k, self.lookup, self.tree = model, verify, k, lookup, tree
        base = name or f"multitoken:{model.backbone_spec or type(model.backbone).__name__}"
        self.name = base if verify else f"{base} [lossy: unverified multi-token]"
        self.stats = DecodeStats(lossy=not verify)

    def _prompt_ids(self, prompt: str | Sequence[Message]) -> torch.Tensor:
        tok = self.model.tokenizer
        if isinstance(prompt, str):
            return self.model.encode(prompt)
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(list(prompt), add_generation_prompt=True, return_tensors="pt",
                                          return_dict=True)
            return ids["input_ids"]
        return self.model.encode(format_chat(tok, prompt))  # no template: role-tagged lines, as every kind

    def stream(self, prompt: str | Sequence[Message], params: GenerationParams) -> Iterator[str]:
        tok = self.model.tokenizer
        tokens = decode_tokens(self.model, self._prompt_ids(prompt), params, verify=self.verify, k=self.k,
                               stats=self.stats, lookup=self.lookup, tree=self.tree)
        try:
            yield from token_stream(([t] for t in tokens), lambda ids: tok.decode(ids, skip_special_tokens=True),
                                    params.stop)
        finally:
            tokens.close()

    def generate(self, prompts: Sequence[str | Sequence[Message]], params: GenerationParams) -> list[str]:
        return ["".join(self.stream(p, params)) for p in prompts]
