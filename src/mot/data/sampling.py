"""Seeded item selection shared by every benchmark: a ``--limit`` that samples the benchmark, and a
fixed train/held-out partition of a split that has no separate training data.

``sample_items(items, limit, seed)``
    ``limit`` items spread over subjects: subjects are visited in a seeded order, one item from each
    in turn (each subject's items in a seeded order), until ``limit`` items are taken; the result
    keeps the benchmark's own order.  Items without a ``subject`` (GSM8K, HumanEval, ...) form one
    group, so they are a seeded uniform sample.  The same ``(items, limit, seed)`` always gives the
    same selection, and a larger ``limit`` contains every item of a smaller one.

``partition(items, part, benchmark)``
    ``"train"`` or ``"eval"``: a fixed split of ``items`` by a hash of ``(PARTITION_SEED, benchmark,
    item id)``; ``TRAIN_FRACTION`` of the items go to ``train``.  Membership depends on the item's
    id alone (not on which other items were loaded), so a training run and an evaluation that load
    the two parts never share an item.  MMLU and CMMLU have only small dev splits here; their test
    split is divided this way (``--split test[train]`` / ``test[eval]``).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from typing import TypeVar

from mot.errors import UsageError

T = TypeVar("T")

PARTITION_SEED = 0
TRAIN_FRACTION = 0.3
DEFAULT_SAMPLE_SEED = 1234
PARTITIONED_SPLIT = re.compile(r"^(?P<base>[\w.-]+)\[(?P<part>train|eval)\]$")


def sample_items(items: Sequence[T], limit: int | None, seed: int = DEFAULT_SAMPLE_SEED) -> list[T]:
    """``limit`` items spread over subjects, seeded (see the module docstring); all when ``limit`` is None
    or not smaller than the number of items."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 0:
        raise UsageError(f"--limit must be >= 0, got {limit}")
    rng = random.Random(seed)
    groups: dict[str | None, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(getattr(item, "subject", None), []).append(i)
    subjects = sorted(groups, key=lambda s: "" if s is None else s)
    rng.shuffle(subjects)
    queues = []
    for subject in subjects:
        order = list(groups[subject])
        rng.shuffle(order)
        queues.append(order)
    chosen: list[int] = []
    depth = 0
    while len(chosen) < limit:
        for queue in queues:
            if depth < len(queue):
                chosen.append(queue[depth])
                if len(chosen) == limit:
                    break
        depth += 1
    return [items[i] for i in sorted(chosen)]


def in_train_part(benchmark: str, item_id: str, seed: int = PARTITION_SEED,
                  fraction: float = TRAIN_FRACTION) -> bool:
    digest = hashlib.sha256(f"{seed}\x00{benchmark}\x00{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < fraction


def partition(items: Sequence[T], part: str, benchmark: str) -> list[T]:
    """The ``train`` or ``eval`` part of ``items`` (see the module docstring)."""
    if part not in ("train", "eval"):
        raise UsageError(f"partition part must be 'train' or 'eval', got {part!r}")
    want = part == "train"
    return [it for it in items if in_train_part(benchmark, str(it.id)) == want]


def parse_partitioned_split(split: str) -> tuple[str, str | None]:
    """``"test[train]" -> ("test", "train")``; a plain split -> ``(split, None)``."""
    m = PARTITIONED_SPLIT.match(split)
    return (m.group("base"), m.group("part")) if m else (split, None)
