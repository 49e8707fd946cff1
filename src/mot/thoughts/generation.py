"""Text generation with a Mixture of Thoughts.

* ``fast``: route once, then the primary expert's own HF ``generate()`` -- no interaction.
* ``full``: interaction at every token.  Every active expert keeps its own KV cache; the peers
  also keep the keys/values their states give in each stack's interaction.  The primary (and its
  vocabulary) is fixed for the whole sequence.  After each new primary token the newly completed
  text is handed to every peer: the peer re-tokenises only its unstable tail (the text after its
  last pre-token boundary), keeps the tokens that are already in its cache, and rolls its cache
  back (``crop``) where the tail's tokenisation changed before feeding the new tokens.  If a rolled
  back peer token had already been visible to some primary token, the primary is rolled back to
  that token and re-fed too, so the result always equals a recompute from scratch
  (``recompute_next_logits``), token for token.  Under ``peer_visibility="stable"`` peers only
  ever receive final tokens and neither rollback occurs; under ``"span"`` both do.

Full mode decodes one sample at a time (each sample's peers re-tokenise differently); batches are
run sample by sample.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mot.errors import UsageError
from mot.generation import (
    GenerationParams,
    Message,
    Piece,
    StopCutter,
    generate_in_thread,
    sample_token,
    template_stops,
)
from mot.generation.hf import format_chat
from mot.thoughts.alignment import (
    VisibilityRule,
    common_prefix,
    complete_text,
    cut_token_ids,
    encode_pair,
    known_ends,
    last_pretoken_start,
    peer_distance,
    tokenise_segment,
    visibility_mask,
)
from mot.thoughts.states import FullDecodeStats, PeerStates, eos_ids, left_pad, pad_id

# The decoder takes the model and never imports ``mot.thoughts.model`` (whose thin ``generate``,
# ``stream``, ``translate`` and ``get_routing_info`` call ``MoTDecoder``): ``Model`` is a ``MixtureOfThoughts``.
Model = Any

MODES = ("fast", "full")


def expert_context_length(model: Any) -> int | None:
    """Most positions an HF causal LM takes (``max_position_embeddings``, ``n_positions``, ...); None
    when its config names none."""
    configs = [getattr(model, "config", None)]
    text_config = getattr(configs[0], "get_text_config", None)
    if callable(text_config):
        configs.append(text_config())
    for cfg in configs:
        for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx"):
            value = getattr(cfg, key, None) if cfg is not None else None
            if isinstance(value, int) and value > 0:
                return value
    return None


# -- full mode ------------------------------------------------------------------------------------
@dataclass
class _Peer:
    expert: int
    weight: torch.Tensor  # scalar
    rule: VisibilityRule  # visibility limits (the configured rule)
    state: object = None
    ids: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    keys: list[torch.Tensor] = field(default_factory=list)  # per stack [1, heads, T, d]
    values: list[torch.Tensor] = field(default_factory=list)
    anchor: int = 0  # character position: every token ending at or before it is final
    synced: int = -1  # "stable": the cut whose tokenisation ``ids`` is (the peer's cache holds exactly it)


class FullDecoder:
    """Incremental full-mode decoding of one prompt (see the module docstring)."""

    def __init__(self, model: Model, prompt: str, experts: Sequence[int],
                 weights: torch.Tensor) -> None:
        self.model = model
        self.prompt = prompt
        self.primary = int(experts[0])
        self.primary_weight = weights[0].reshape(1)
        self.adapter = model.adapters[self.primary]
        self.tokenizer = self.adapter.tokenizer
        mode = model.config.peer_visibility
        self.peers = [_Peer(int(e), weights[k], VisibilityRule(model.adapters[int(e)].tokenizer, prompt, mode))
                      for k, e in enumerate(experts) if k > 0]
        self.prompt_tokens = encode_pair(self.tokenizer, prompt)
        if len(self.prompt_tokens) == 0:
            raise UsageError(f"expert {model.expert_specs[self.primary]!r} tokenises the prompt to no tokens")
        self.ids: list[int] = self.prompt_tokens.input_ids.tolist()
        self.known: list[int] = known_ends(self.prompt_tokens).tolist()
        self.limits: list[list[int]] = [[] for _ in self.peers]
        self.generated: list[int] = []
        self.text = ""  # completed characters of the generation
        self.fed = 0  # primary tokens in the primary's cache
        self.state = self.adapter.new_state()
        self.stats = FullDecodeStats()
        self._context = self.ids[-1:]

    # peers --------------------------------------------------------------------------------------
    def _feed_peer(self, peer: _Peer, ids: list[int]) -> list[torch.Tensor]:
        """Feed ``ids`` to the peer's cache, append their interaction keys/values; per-stack states."""
        adapter = self.model.adapters[peer.expert]
        chunk = torch.tensor([ids], dtype=torch.long, device=adapter.device)
        hidden = adapter.embed(chunk, None, peer.state)
        per_stack = []
        for start, stop in self.model.stacks[peer.expert]:
            hidden = adapter.run_layers(hidden, start, stop, peer.state)
            per_stack.append(hidden[0])
        for q in range(len(per_stack)):
            exposed = self.model.peer_input(q, peer.expert, per_stack, adapter.device)
            k, v = self.model.interactions[q].peer_keys_values(peer.expert, exposed, peer.weight.reshape(1))
            if len(peer.keys) <= q:
                peer.keys.append(k)
                peer.values.append(v)
            else:
                peer.keys[q] = torch.cat([peer.keys[q], k], dim=2)
                peer.values[q] = torch.cat([peer.values[q], v], dim=2)
        return per_stack

    def _crop_peer(self, peer: _Peer, length: int) -> None:
        self.model.adapters[peer.expert].crop(peer.state, length)
        del peer.ids[length:], peer.ends[length:]
        peer.keys = [k[:, :, :length] for k in peer.keys]
        peer.values = [v[:, :, :length] for v in peer.values]

    def _advance_peer(self, index: int, full_text: str, needed_end: int) -> int | None:
        """Bring peer ``index`` to its tokens of ``full_text`` that end by ``needed_end``.  Returns the
        character end from which its visible tokens changed (None: only appended past every limit)."""
        peer = self.peers[index]
        tokenizer = self.model.adapters[peer.expert].tokenizer
        if needed_end <= peer.anchor:
            return None
        first = sum(1 for e in peer.ends if e <= peer.anchor)  # final tokens kept as they are
        self.stats.tail_retokenisations += 1
        tail_ids, tail_ends = tokenise_segment(tokenizer, full_text[peer.anchor:needed_end], peer.anchor)
        running = peer.ends[first - 1] if first else 0
        for j, e in enumerate(tail_ends):  # a token's state reaches as far as any token before it
            running = max(running, e)
            tail_ends[j] = running
        keep = first
        while (keep < len(peer.ids) and keep - first < len(tail_ids)
               and peer.ids[keep] == tail_ids[keep - first] and peer.ends[keep] == tail_ends[keep - first]):
            keep += 1
        changed: int | None = None
        if keep < len(peer.ids):
            changed = peer.ends[keep]
            self.stats.peer_rollbacks += 1
            self._crop_peer(peer, keep)
        new_ids, new_ends = tail_ids[keep - first:], tail_ends[keep - first:]
        if new_ids:
            changed = new_ends[0] if changed is None else min(changed, new_ends[0])
            self._feed_peer(peer, new_ids)
            peer.ids += new_ids
            peer.ends += new_ends
        # everything before the text's last pre-token boundary is final for this tokenizer
        stable = peer.anchor + last_pretoken_start(tokenizer, full_text[peer.anchor:needed_end])
        peer.anchor = max(peer.anchor, min(stable, needed_end))
        return changed

    # primary ------------------------------------------------------------------------------------
    def _feed_primary(self, start: int, masks: list[torch.Tensor] | None = None,
                      bank: list[tuple[list[torch.Tensor], list[torch.Tensor]]] | None = None) -> torch.Tensor:
        """(Re)feed primary tokens ``start..`` and return the next-token logits ``[V]``.  ``masks[i]``
        ``[T, Tk_i]``: which of peer ``i``'s keys each fed token reads (default: the ``span`` rule over
        the peer's cache); ``bank[i]``: per-stack keys and values to read instead of the cache's."""
        model, adapter = self.model, self.adapter
        if start < self.fed:
            adapter.crop(self.state, start)
            self.stats.primary_refeeds += 1
        chunk = torch.tensor([self.ids[start:]], dtype=torch.long, device=adapter.device)
        if masks is None:
            masks = [visibility_mask(torch.tensor(self.limits[i][start:]), torch.tensor(peer.ends, dtype=torch.long))
                     for i, peer in enumerate(self.peers)]
        allowed = (torch.cat(masks, dim=-1) if masks else torch.zeros(chunk.shape[1], 0, dtype=torch.bool))
        allowed = allowed.unsqueeze(0).to(adapter.device)
        banks = bank if bank is not None else [(p.keys, p.values) for p in self.peers]

        def peer_kv(q: int) -> tuple[torch.Tensor, torch.Tensor]:
            return (torch.cat([keys[q] for keys, _ in banks], dim=2),
                    torch.cat([values[q] for _, values in banks], dim=2))

        distance = None
        if model.config.interaction_position != "none":
            # each peer's columns are in text order, as in the forward's views: the same distances
            distance = (torch.cat([peer_distance(m) for m in masks], dim=-1) if masks
                        else torch.zeros(chunk.shape[1], 0, dtype=torch.long)).unsqueeze(0).to(adapter.device)
        hidden = model._walk_primary(self.primary, self.state, chunk, None, peer_kv, allowed, None, distance,
                                     self.primary_weight.to(adapter.device))
        self.fed = len(self.ids)
        return adapter.logits(hidden[:, -1:])[0, -1]

    def _limits_for(self, ends: list[int]) -> None:
        for i, peer in enumerate(self.peers):
            values = self.limits[i]
            for e in ends:
                value = peer.rule.limit(e, self.text)
                values.append(max(value, values[-1]) if values else value)

    @property
    def exact(self) -> bool:
        """``"stable"`` visibility: each primary token reads the peer's tokenisation of its cut text."""
        return self.model.config.peer_visibility != "span"

    @torch.no_grad()
    def prefill(self) -> torch.Tensor:
        masks, bank = [], []
        for peer in self.peers:
            adapter = self.model.adapters[peer.expert]
            tokens = encode_pair(adapter.tokenizer, self.prompt)
            peer.state = adapter.new_state()
            peer.ids = tokens.input_ids.tolist()
            peer.ends = torch.cummax(tokens.char_end, 0).values.tolist() if len(tokens) else []
            peer.anchor = len(self.prompt)  # the prompt is tokenised on its own: all of it is final
            peer.synced = len(self.prompt)
            per_stack = self._feed_peer(peer, peer.ids) if peer.ids else []
            if self.exact and peer.ids:
                # the prompt's tokens read the peer's tokenisations of their cut prompts, as in the forward
                states = PeerStates(peer.expert, tokens, torch.tensor(peer.ends, dtype=torch.long), per_stack)
                view = self.model.peer_views(self.prompt, "", torch.tensor(self.known, dtype=torch.long),
                                             [(peer.expert, peer.weight, states)])[0]
                keys, values = [], []
                for q in range(len(per_stack)):
                    exposed = self.model.peer_input(q, peer.expert, view.hidden, adapter.device)
                    k, v = self.model.interactions[q].peer_keys_values(peer.expert, exposed, peer.weight.reshape(1))
                    keys.append(k)
                    values.append(v)
                masks.append(view.visible)
                bank.append((keys, values))
            elif not peer.ids:
                raise UsageError(f"expert {self.model.expert_specs[peer.expert]!r} tokenises the prompt to no "
                                 "tokens (empty prompt?); give a non-empty prompt")
        self._limits_for(self.known)
        return self._feed_primary(0, masks, bank) if self.exact else self._feed_primary(0)

    def _sync_peer(self, peer: _Peer, cut: int) -> None:
        """``"stable"``: make the peer's cache hold its tokenisation of ``(prompt + text)[:cut]`` (crop
        back to the common prefix, feed the rest)."""
        if cut == peer.synced:
            return
        tokenizer = self.model.adapters[peer.expert].tokenizer
        ids = cut_token_ids(tokenizer, self.prompt, self.text, [cut])[0]
        self.stats.tail_retokenisations += 1
        keep = common_prefix(peer.ids, ids)
        if keep < len(peer.ids):
            self.stats.peer_rollbacks += 1
            self._crop_peer(peer, keep)
        if len(ids) > keep:
            self._feed_peer(peer, ids[keep:])
        peer.ids = list(ids)
        peer.synced = cut

    def accept(self, token: int) -> None:
        """Append a sampled primary token (updates the completed text); no forward yet."""
        self.generated.append(token)
        self.ids.append(token)
        self.text = complete_text(self.tokenizer, self.generated, self._context)
        self.known.append(max(len(self.prompt) + len(self.text), self.known[-1]))
        self._limits_for(self.known[-1:])

    @torch.no_grad()
    def advance(self) -> torch.Tensor:
        """Advance the peers over the new text, then the primary; next-token logits ``[V]``."""
        if self.exact:
            # the new primary token reads each peer's tokenisation of the text up to its limit, all of
            # it; tokens fed before keep what they read (no primary re-feed is ever needed)
            for i, peer in enumerate(self.peers):
                self._sync_peer(peer, self.limits[i][-1])
            new = len(self.ids) - self.fed
            masks = [torch.ones(new, len(peer.ids), dtype=torch.bool) for peer in self.peers]
            return self._feed_primary(self.fed, masks)
        full_text = self.prompt + self.text
        start = self.fed
        for i in range(len(self.peers)):
            changed = self._advance_peer(i, full_text, self.limits[i][-1])
            if changed is None:
                continue
            # the first already-fed primary token that could see a changed peer token
            hit = next((t for t in range(self.fed) if self.limits[i][t] >= changed), None)
            if hit is not None:
                start = min(start, hit)
        return self._feed_primary(start)


def recompute_next_logits(model: Model, prompt: str, generated: Sequence[int],
                          experts: Sequence[int], weights: torch.Tensor) -> torch.Tensor:
    """Next-token logits after ``prompt`` + the primary tokens ``generated``, recomputed from scratch
    (every expert re-tokenises and re-walks the whole text, no cache): the reference for full mode."""
    primary = int(experts[0])
    tokenizer = model.adapters[primary].tokenizer
    prompt_tokens = encode_pair(tokenizer, prompt)
    context = prompt_tokens.input_ids.tolist()[-1:]
    ends = known_ends(prompt_tokens).tolist()
    for n in range(1, len(generated) + 1):
        ends.append(max(len(prompt) + len(complete_text(tokenizer, list(generated[:n]), context)), ends[-1]))
    text = complete_text(tokenizer, list(generated), context)
    ids = torch.cat([prompt_tokens.input_ids, torch.tensor(list(generated), dtype=torch.long)])
    peers = []
    for k, e in enumerate(experts):
        if k == 0:
            continue
        states = model.compute_peer_states(int(e), [prompt], [text])[0]
        peers.append((int(e), weights[k], states))
    with torch.no_grad():
        views = model.peer_views(prompt, text, torch.tensor(ends, dtype=torch.long), peers)
        return model._primary_pass(primary, [ids], [views], primary_weights=[weights[0]])[0][-1]


def stream_full(model: Model, prompt: str, params: GenerationParams, experts: Sequence[int],
                weights: torch.Tensor, stats: FullDecodeStats | None = None) -> Iterator[Piece]:
    """Yield :class:`Piece` s as the primary's tokens are decoded.  Decoding happens between pieces, in
    the consumer's thread: closing the iterator stops it at once."""
    decoder = FullDecoder(model, prompt, experts, weights)
    eos = _eos(model, decoder.primary)
    generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
    cutter = StopCutter(params.stop)
    pending = 0  # tokens accepted since the last piece
    try:
        logits = decoder.prefill() if params.max_new_tokens > 0 else None
        for step in range(params.max_new_tokens):
            token = sample_token(logits, params, generator)
            if token in eos:
                break
            decoder.accept(token)
            pending += 1
            piece = cutter.feed(decoder.text)
            if piece or (cutter.stopped and pending):
                yield Piece(piece, pending)
                pending = 0
            if cutter.stopped:
                break
            if step + 1 < params.max_new_tokens:
                logits = decoder.advance()
        if not cutter.stopped:
            final = decoder.tokenizer.decode(decoder._context + decoder.generated, skip_special_tokens=True,
                                             clean_up_tokenization_spaces=False)
            final = final[len(decoder.tokenizer.decode(decoder._context, skip_special_tokens=True,
                                                        clean_up_tokenization_spaces=False)):]
            piece = cutter.feed(final if final.startswith(decoder.text) else decoder.text, final=True)
            if piece or pending:
                yield Piece(piece, pending)
    finally:
        if stats is not None:
            stats.peer_rollbacks += decoder.stats.peer_rollbacks
            stats.primary_refeeds += decoder.stats.primary_refeeds
            stats.tail_retokenisations += decoder.stats.tail_retokenisations


# -- fast mode ------------------------------------------------------------------------------------
def _eos(model: Model, expert: int) -> set[int]:
    return eos_ids(model.adapters[expert])


def _hf_kwargs(model: Model, expert: int, params: GenerationParams) -> dict:
    adapter = model.adapters[expert]
    tokenizer = adapter.tokenizer
    kwargs = {"max_new_tokens": params.max_new_tokens, "do_sample": not params.greedy,
              "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id}
    eos = sorted(_eos(model, expert))
    if eos:
        kwargs["eos_token_id"] = eos
    if params.greedy:
        kwargs.update(temperature=None, top_k=None, top_p=None)
    else:
        kwargs.update(temperature=params.temperature, top_k=params.top_k or None, top_p=params.top_p)
    if params.stop:
        kwargs.update(stop_strings=list(params.stop), tokenizer=tokenizer)
    return kwargs


def generate_fast(model: Model, prompts: Sequence[str], params: GenerationParams,
                  primaries: Sequence[int]) -> list[str]:
    """Each group of prompts sharing a primary expert goes through that expert's HF ``generate()``."""
    results = [""] * len(prompts)
    groups: dict[int, list[int]] = {}
    for b, p in enumerate(primaries):
        groups.setdefault(int(p), []).append(b)
    for expert, rows in groups.items():
        adapter = model.adapters[expert]
        tokenizer = adapter.tokenizer
        ids, mask = left_pad([encode_pair(tokenizer, prompts[b]).input_ids for b in rows], pad_id(tokenizer))
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            if params.seed is not None:
                torch.manual_seed(params.seed)
            out = adapter.model.generate(input_ids=ids.to(adapter.device), attention_mask=mask.to(adapter.device),
                                         **_hf_kwargs(model, expert, params))
        for row, b in enumerate(rows):
            text = tokenizer.decode(out[row, ids.shape[1]:], skip_special_tokens=True,
                                    clean_up_tokenization_spaces=False)
            cutter = StopCutter(params.stop)
            results[b] = cutter.feed(text, final=True)
    return results




def _decoded(tokenizer: Any, ids: list[int], context: list[int]) -> str:
    """Text of ``ids`` after ``context`` without a trailing incomplete character (prefix-stable)."""
    try:
        return complete_text(tokenizer, ids, context)
    except RuntimeError:  # a tokenizer whose decoding is not prefix-stable: decode alone
        return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False).rstrip("\ufffd")


def stream_fast(model: Model, prompt: str, params: GenerationParams, expert: int) -> Iterator[Piece]:
    """The primary's own HF ``generate()`` in a worker thread, one :class:`Piece` per decoded token.
    Closing the iterator (or a stop string) sets an event that a stopping criterion checks after every
    token, and waits for the thread: generation ends at most one token later."""
    if params.max_new_tokens == 0:
        return
    adapter = model.adapters[expert]
    tokenizer = adapter.tokenizer
    prompt_ids = encode_pair(tokenizer, prompt).input_ids
    ids = prompt_ids.unsqueeze(0).to(adapter.device)
    context = prompt_ids.tolist()[-1:]
    steps = generate_in_thread(adapter.model.generate, seed=params.seed, name="mot-fast-generate",
                               input_ids=ids, attention_mask=torch.ones_like(ids), **_hf_kwargs(model, expert, params))
    eos = _eos(model, expert)
    special = set(tokenizer.all_special_ids)
    cutter, produced, pending = StopCutter(params.stop), [], 0
    try:
        for step in steps:
            new = [t for t in step if t not in eos]
            produced += new
            pending += len(new)
            piece = cutter.feed(_decoded(tokenizer, [t for t in produced if t not in special], context))
            if piece or (cutter.stopped and pending):
                yield Piece(piece, pending)
                pending = 0
            if cutter.stopped:
                return
        # the same text as generate_fast: the generated ids decoded on their own
        final = tokenizer.decode(produced, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        streamed = _decoded(tokenizer, [t for t in produced if t not in special], context)
        piece = cutter.feed(final if final.startswith(streamed[:cutter.emitted]) else streamed, final=True)
        if piece or pending:
            yield Piece(piece, pending)
    finally:
        steps.close()  # closed by the consumer, a stop string or an error: stop generate() now


# -- the decoder: what MixtureOfThoughts.generate / stream / translate / get_routing_info call -------
class _EvalMode:
    """Run the router and the interaction layers in eval mode (no dropout, no routing noise)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise UsageError(f"generation mode must be 'fast' or 'full', got {mode!r}")


class MoTDecoder:
    """Generation, translation and routing info over a ``MixtureOfThoughts`` (composition: the model's
    own ``generate``, ``stream``, ``translate`` and ``get_routing_info`` are thin calls into this)."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def get_routing_info(self, text: str) -> dict[str, Any]:
        """Deterministic routing of ``text`` (eval mode, no noise): names, weights and scores."""
        with _EvalMode(self.model), torch.no_grad():
            decision = self.model.route([text])
        names = self.model.expert_specs
        active = decision.indices[0].tolist()
        return {
            "primary_expert": names[active[0]],
            "active_experts": [names[i] for i in active],
            "expert_weights": {names[i]: float(w) for i, w in zip(active, decision.weights[0].tolist(), strict=True)},
            "all_expert_probs": {n: float(p) for n, p in zip(names, decision.probs[0].tolist(), strict=True)},
            "router_scores": {n: float(s) for n, s in zip(names, decision.logits[0].tolist(), strict=True)},
        }

    def generate(self, prompts: Sequence[str], params: GenerationParams | None = None,
                 mode: str = "fast", stats: FullDecodeStats | None = None) -> list[str]:
        """Continue each prompt.  ``mode="fast"``: route once, then the primary's own HF
        ``generate()``; ``"full"``: interaction at every token with KV caches (one sample at a time;
        ``stats`` collects rollback counters)."""
        params = GenerationParams() if params is None else params
        _check_mode(mode)
        prompts = list(prompts)
        if not prompts:
            return []
        with _EvalMode(self.model), torch.no_grad():
            decision = self.model.route(prompts)
            if mode == "fast":
                return generate_fast(self.model, prompts, params, decision.primary.tolist())
            return ["".join(stream_full(self.model, p, params, self.model.slot_experts(decision.indices[b].tolist()),
                                        decision.weights[b], stats))
                    for b, p in enumerate(prompts)]

    def stream(self, prompt: str, params: GenerationParams | None = None, mode: str = "fast") -> Iterator[str]:
        """Yield the pieces of one continuation as they are produced: :class:`Piece` s (``str`` with a
        ``tokens`` count).  Closing the iterator stops decoding (full mode: at once; fast mode: the
        primary's ``generate()`` stops after at most one more token, and ``close()`` waits for it)."""
        params = GenerationParams() if params is None else params
        _check_mode(mode)
        with _EvalMode(self.model), torch.no_grad():
            decision = self.model.route([prompt])
            if mode == "fast":
                yield from stream_fast(self.model, prompt, params, int(decision.primary[0]))
            else:
                yield from stream_full(self.model, prompt, params, self.model.slot_experts(decision.indices[0].tolist()),
                                       decision.weights[0])

    def translate(self, source_text: str, prompt_template: str = "### Translate C++ to CUDA:\n{source}\n### CUDA:\n",
                  max_new_tokens: int = 512, temperature: float = 0.0, top_p: float = 1.0,
                  mode: str = "fast", seed: int | None = None) -> tuple[str, str]:
        """Translate with ``prompt_template``; the output stops at the template's markers (``###``).
        Returns ``(text, primary_expert_name)``."""
        prompt = prompt_template.format(source=source_text)
        params = GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                  stop=template_stops(prompt_template), seed=seed)
        primary = self.model.get_routing_info(prompt)["primary_expert"]
        return self.model.generate([prompt], params, mode=mode)[0].strip(), primary

    def as_text_generator(self, mode: str = "fast", name: str = "mot") -> MoTTextGenerator:
        return MoTTextGenerator(self.model, mode, name)


class MoTTextGenerator:
    """A ``mot.generation.TextGenerator`` over a ``MixtureOfThoughts`` in one mode, with the server's
    optional members (``docs/serving.md``).  Chat messages become ``role: content`` lines (experts
    differ in chat templates; the primary is not known before routing).

    - ``context_length``: the smallest position limit of all experts.  Any expert can be routed to as
      the primary (fast mode uses it alone), and in full mode every active expert walks the whole
      text, so the smallest limit is the one that is always safe.  It counts the primary's tokens; a
      peer whose tokenizer splits the same text more finely reaches its own limit sooner (full mode
      only; rotary experts extrapolate, absolute-position ones such as gpt2 fail).
    - ``count_tokens(prompt)``: the prompt's tokens under the primary it routes to, as generation
      encodes them (with the primary's special tokens).
    - ``routing_info(prompt)``: ``MixtureOfThoughts.get_routing_info`` of the formatted prompt.
    - ``stream`` yields :class:`Piece` s (``tokens``: generated tokens covered, EOS excluded) and stops
      decoding when the iterator is closed.
    """

    def __init__(self, model: Any, mode: str = "fast", name: str = "mot") -> None:
        _check_mode(mode)
        self.model = model
        self.mode = mode
        self.name = name
        limits = [expert_context_length(a.model) for a in model.adapters]
        known = [n for n in limits if n is not None]
        self.context_length: int | None = min(known) if known else None

    @staticmethod
    def _prompt(prompt: str | Sequence[Message]) -> str:
        # the plain transcript (the experts' chat templates differ), ending in "assistant: " as MoT always has
        return format_chat(None, prompt, cue="assistant: ")

    def prompt_text(self, prompt: str | Sequence[Message]) -> str:
        """The text the experts see for ``prompt`` (chat messages formatted)."""
        return self._prompt(prompt)

    def primary(self, prompt: str | Sequence[Message]) -> int:
        """Index of the expert ``prompt`` routes to as primary (deterministic: eval mode)."""
        with _EvalMode(self.model), torch.no_grad():
            return int(self.model.route([self._prompt(prompt)]).primary[0])

    def count_tokens(self, prompt: str | Sequence[Message]) -> int:
        text = self._prompt(prompt)
        tokenizer = self.model.adapters[self.primary(text)].tokenizer
        return len(encode_pair(tokenizer, text))

    def routing_info(self, prompt: str | Sequence[Message]) -> dict[str, Any]:
        return self.model.get_routing_info(self._prompt(prompt))

    def stream(self, prompt: str | Sequence[Message], params: GenerationParams) -> Iterator[str]:
        return self.model.stream(self._prompt(prompt), params, mode=self.mode)

    def generate(self, prompts: Sequence[str | Sequence[Message]], params: GenerationParams) -> list[str]:
        return self.model.generate([self._prompt(p) for p in prompts], params, mode=self.mode)
