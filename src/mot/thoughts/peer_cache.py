"""Precomputed peer states for training: one pass over the data, memory-mapped on disk.

Peers are frozen and receive nothing back from the primary, so an expert's per-stack hidden
states on a sample depend on the sample's text and the expert alone.  ``PeerStateCache.build``
runs every expert once over every training sample and stores the states; a training step then
reads the active peers' states instead of running the peers (and reads the router features
instead of running the sentence encoder), so it runs only the primary and the interaction layers.

Layout of ``<directory>/``::

    expert-<fingerprint16>-<layout16>/     one per expert and stack layout (and storage dtype)
        index.json     expert spec, fingerprint, stacks, hidden size, dtype, token count, and per
                       sample key (sha256 of prompt + target): [offset, length, num_prompt_tokens, prompt_chars]
        hidden.bin     np.memmap [num_tokens, num_stacks, hidden_size]
        tokens.bin     np.memmap int64 [num_tokens, 3]: input id, char start, char end
    features-<encoder16>/                  router features per prompt (sha256 of the prompt)
        index.json, features.bin [num_prompts, dim] float32

Writers append to the ``.bin`` files and then replace ``index.json`` atomically; readers map only
the rows the index names, so a crash mid-build leaves a valid (smaller) cache that the next build
extends.  One process builds (rank 0 under DDP); the others open it afterwards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mot.errors import CheckpointError
from mot.io import write_json
from mot.thoughts.alignment import TokenSpans, peer_ends
from mot.thoughts.data import sample_key
from mot.thoughts.model import MixtureOfThoughts, PeerStates

logger = logging.getLogger("mot.thoughts")

FORMAT = "mot-peer-cache"
FORMAT_VERSION = 1
_STORAGE = {"float32": (np.float32, torch.float32), "float16": (np.float16, torch.float16),
            "bfloat16": (np.int16, torch.bfloat16)}  # bf16 stored as its raw 16 bits


def _short_hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_json_atomic(path: Path, obj: Any) -> None:
    write_json(path, obj, indent=None, separators=(",", ":"), newline=False)


def _append(path: Path, valid_bytes: int, array: np.ndarray) -> None:
    """Append ``array`` after the first ``valid_bytes`` of ``path`` (dropping bytes a crash left behind)."""
    with open(path, "ab") as f:
        if f.tell() != valid_bytes:
            f.truncate(valid_bytes)
            f.seek(valid_bytes)
        f.write(np.ascontiguousarray(array).tobytes())
        f.flush()
        os.fsync(f.fileno())


class _ExpertStore:
    """The states of one expert (one stack layout, one storage dtype)."""

    def __init__(self, directory: Path, header: dict[str, Any]):
        self.directory = directory
        self.header = header
        self.np_dtype, self.torch_dtype = _STORAGE[header["dtype"]]
        index = directory / "index.json"
        self.index: dict[str, Any] = json.loads(index.read_text()) if index.is_file() else {**header, "num_tokens": 0,
                                                                                               "samples": {}}
        for key in ("fingerprint", "stacks", "hidden_size", "dtype"):
            if self.index.get(key) != header[key]:
                raise CheckpointError(f"{index}: peer cache made for other settings ({key} differs); "
                                      "delete the directory or point peer_cache.directory elsewhere")
        self._hidden: np.memmap | None = None
        self._tokens: np.memmap | None = None

    @property
    def num_stacks(self) -> int:
        return len(self.header["stacks"])

    def __contains__(self, key: str) -> bool:
        return key in self.index["samples"]

    def _maps(self) -> tuple[np.memmap, np.memmap]:
        n = self.index["num_tokens"]
        if self._hidden is None or self._hidden.shape[0] != n:
            shape = (n, self.num_stacks, self.header["hidden_size"])
            self._hidden = np.memmap(self.directory / "hidden.bin", self.np_dtype, "r", shape=shape)
            self._tokens = np.memmap(self.directory / "tokens.bin", np.int64, "r", shape=(n, 3))
        return self._hidden, self._tokens  # type: ignore[return-value]

    def get(self, expert: int, key: str) -> PeerStates | None:
        entry = self.index["samples"].get(key)
        if entry is None:
            return None
        offset, length, num_prompt, prompt_chars = entry
        hidden_map, token_map = self._maps()
        rows = torch.from_numpy(np.array(hidden_map[offset:offset + length]))
        if self.header["dtype"] == "bfloat16":
            rows = rows.view(torch.bfloat16)
        toks = torch.from_numpy(np.array(token_map[offset:offset + length]))
        spans = TokenSpans(toks[:, 0].contiguous(), toks[:, 1].contiguous(), toks[:, 2].contiguous(),
                           int(num_prompt), int(prompt_chars))
        hidden = [rows[:, q].float() if rows.dtype != torch.float32 else rows[:, q] for q in range(self.num_stacks)]
        return PeerStates(expert, spans, peer_ends(spans), hidden)

    def add(self, items: Sequence[tuple[str, PeerStates]]) -> None:
        """Append states (already computed) and publish them in the index."""
        if not items:
            return
        hidden_rows, token_rows, entries = [], [], {}
        offset = self.index["num_tokens"]
        for key, states in items:
            stacked = torch.stack([h.detach().to("cpu") for h in states.hidden], dim=1)  # [T, Q, H]
            stored = stacked.to(self.torch_dtype)
            array = stored.view(torch.int16).numpy() if self.header["dtype"] == "bfloat16" else stored.numpy()
            tok = states.tokens
            hidden_rows.append(array)
            token_rows.append(torch.stack([tok.input_ids, tok.char_start, tok.char_end], dim=1).to(torch.int64).numpy())
            entries[key] = [offset, len(tok), tok.num_prompt_tokens, tok.prompt_chars]
            offset += len(tok)
        row_bytes = self.num_stacks * self.header["hidden_size"] * np.dtype(self.np_dtype).itemsize
        n = self.index["num_tokens"]
        _append(self.directory / "hidden.bin", n * row_bytes, np.concatenate(hidden_rows))
        _append(self.directory / "tokens.bin", n * 3 * 8, np.concatenate(token_rows))
        self.index["samples"].update(entries)
        self.index["num_tokens"] = offset
        _write_json_atomic(self.directory / "index.json", self.index)
        self._hidden = self._tokens = None


class _FeatureStore:
    """Router features per prompt for one encoder."""

    def __init__(self, directory: Path, header: dict[str, Any]):
        self.directory, self.header = directory, header
        index = directory / "index.json"
        self.index: dict[str, Any] = json.loads(index.read_text()) if index.is_file() else {**header, "rows": {}}
        self._map: np.memmap | None = None

    def get(self, key: str) -> torch.Tensor | None:
        row = self.index["rows"].get(key)
        if row is None:
            return None
        n = len(self.index["rows"])
        if self._map is None or self._map.shape[0] != n:
            self._map = np.memmap(self.directory / "features.bin", np.float32, "r", shape=(n, self.header["dim"]))
        return torch.from_numpy(np.array(self._map[row]))

    def add(self, keys: Sequence[str], features: torch.Tensor) -> None:
        rows = self.index["rows"]
        n = len(rows)
        _append(self.directory / "features.bin", n * self.header["dim"] * 4, features.float().cpu().numpy())
        for i, key in enumerate(keys):
            rows[key] = n + i
        _write_json_atomic(self.directory / "index.json", self.index)
        self._map = None


class PeerStateCache:
    """Peer states and router features of a ``MixtureOfThoughts`` for a set of samples, on disk.

    ``states(expert, prompt, target)`` gives the cached ``PeerStates`` or None; ``features(prompts)``
    the cached router features (None if any is missing).  ``build`` fills what is missing.
    """

    def __init__(self, directory: str | os.PathLike, model: MixtureOfThoughts, dtype: str = "float32"):
        if dtype not in _STORAGE:
            raise ValueError(f"peer cache dtype must be one of {sorted(_STORAGE)}, got {dtype!r}")
        from mot.experts.fingerprint import model_fingerprint

        self.directory = Path(directory)
        self.model = model
        self.dtype = dtype
        self.hits = 0
        self.misses = 0
        self.experts: list[_ExpertStore] = []
        for i, expert in enumerate(model.experts):
            header = {"format": FORMAT, "format_version": FORMAT_VERSION, "expert": model.expert_specs[i],
                      "fingerprint": model_fingerprint(expert), "stacks": [list(s) for s in model.stacks[i]],
                      "hidden_size": model.hidden_sizes[i], "dtype": dtype}
            name = f"expert-{header['fingerprint'][:16]}-{_short_hash(header['stacks'], dtype)}"
            path = self.directory / name
            path.mkdir(parents=True, exist_ok=True)
            self.experts.append(_ExpertStore(path, header))
        encoder_name = getattr(model.encoder, "name", type(model.encoder).__name__)
        feature_header = {"format": FORMAT, "encoder": encoder_name, "dim": int(model.encoder.dim),
                          "max_prompt_chars": model.config.max_prompt_chars}
        path = self.directory / f"features-{_short_hash(feature_header)}"
        path.mkdir(parents=True, exist_ok=True)
        self.feature_store = _FeatureStore(path, feature_header)

    def _prompt_key(self, prompt: str) -> str:
        return hashlib.sha256(prompt[:self.model.config.max_prompt_chars].encode("utf-8")).hexdigest()

    # -- reading -----------------------------------------------------------------------------------
    def states(self, expert: int, prompt: str, target: str) -> PeerStates | None:
        found = self.experts[expert].get(expert, sample_key(prompt, target))
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def features(self, prompts: Sequence[str]) -> torch.Tensor | None:
        """``[B, D]`` cached router features, or None when any prompt is not cached."""
        rows = [self.feature_store.get(self._prompt_key(p)) for p in prompts]
        if any(r is None for r in rows):
            return None
        return torch.stack(rows)  # type: ignore[arg-type]

    def missing(self, pairs: Sequence[Any]) -> int:
        """How many (sample, expert) states of ``pairs`` are not cached yet."""
        return sum(1 for p in pairs for store in self.experts if sample_key(p.prompt, p.target) not in store)

    # -- writing -----------------------------------------------------------------------------------
    def build(self, pairs: Sequence[Any], batch_size: int = 8,
              progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
        """Compute and store every expert's states (and the router features) for ``pairs`` (objects
        with ``prompt`` and ``target``) that are not cached yet; returns counts of what was added."""
        added = {"states": 0, "features": 0}
        seen: set[str] = set()
        unique = []
        for pair in pairs:
            key = sample_key(pair.prompt, pair.target)
            if key not in seen:
                seen.add(key)
                unique.append((key, pair))
        todo_total = sum(1 for key, _ in unique for store in self.experts if key not in store)
        done = 0
        for expert, store in enumerate(self.experts):
            todo = [(key, pair) for key, pair in unique if key not in store]
            # similar lengths together: less padding per batch
            todo.sort(key=lambda item: len(item[1].prompt) + len(item[1].target))
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                computed = self.model.compute_peer_states(expert, [p.prompt for _, p in chunk],
                                                          [p.target for _, p in chunk])
                store.add([(key, states) for (key, _), states in zip(chunk, computed, strict=True)])
                added["states"] += len(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, todo_total)
        prompts = sorted({pair.prompt for _, pair in unique})
        new_prompts = [p for p in prompts if self.feature_store.get(self._prompt_key(p)) is None]
        for start in range(0, len(new_prompts), 64):
            chunk = new_prompts[start:start + 64]
            limit = self.model.config.max_prompt_chars
            feats = self.model.encoder.encode([p[:limit] for p in chunk])
            self.feature_store.add([self._prompt_key(p) for p in chunk], feats)
            added["features"] += len(chunk)
        return added

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.directory.rglob("*") if f.is_file())
