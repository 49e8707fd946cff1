"""Save and load a trained router: ``router.json`` (how to rebuild it) + ``router.safetensors`` (its state).

``router.json``: ``{"format": "mot-router", "router": NAME, "input_dim", "num_experts", "top_k",
"options": {...}, ...}`` plus whatever the trainer records (the experts, the feature encoder, the
training items).  Loading rebuilds only *registered* routers (``mot.routing.ROUTERS``): a checkpoint
never imports code by itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from mot.errors import UsageError
from mot.io import atomic_directory
from mot.routing.registry import ROUTERS, build_router, router_spec

FORMAT = "mot-router"


def is_router_checkpoint(path: str | os.PathLike) -> bool:
    config = Path(path).expanduser() / "router.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("format") == FORMAT
    except (json.JSONDecodeError, OSError, AttributeError):
        return False


def save_router(router: nn.Module, directory: str | os.PathLike, options: dict[str, Any], **meta: Any) -> Path:
    """Write ``router`` (built with ``options``) and ``meta`` into ``directory`` atomically."""
    from safetensors.torch import save_file

    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT, "router": router_spec(router), "input_dim": int(router.input_dim),
              "num_experts": int(router.num_experts), "top_k": int(router.top_k), "options": options, **meta}
    with atomic_directory(target, temp_prefix=f".{target.name}.", old_name=f".{target.name}.old") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in router.state_dict().items()},
                  str(tmp / "router.safetensors"))
        (tmp / "router.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return target


def load_router(directory: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """``(router in eval mode, its router.json)``."""
    from safetensors.torch import load_file

    path = Path(directory).expanduser()
    if not is_router_checkpoint(path):
        raise UsageError(f"{path}: not a router checkpoint (no router.json with format {FORMAT!r})")
    config = json.loads((path / "router.json").read_text(encoding="utf-8"))
    name = config.get("router")
    if name not in ROUTERS:
        raise UsageError(f"{path}/router.json: router {name!r} is not a registered router; a checkpoint only "
                         f"rebuilds registered ones ({', '.join(sorted(ROUTERS))})")
    router = build_router(name, config["input_dim"], config["num_experts"], config["top_k"], **config["options"])
    router.load_state_dict(load_file(str(path / "router.safetensors")))
    return router.eval(), config
