"""``mot multitoken``: train heads + router on a frozen causal LM (``train``) and decode with them (``infer``).

The lead registers ``app`` as the ``mot multitoken`` group.  Heavy imports stay inside the commands.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from mot.cli import options as opts
from mot.cli.options import MotCommand
from mot.errors import UsageError

app = typer.Typer(no_args_is_help=True, help="Multi-token MoE heads on a frozen causal LM.")

_QUANT = ("none", "8bit", "4bit")
RUN_CONFIG = "run_config.json"  # the resolved settings of the last ``train`` in its output directory


def _quant(value: str) -> str | None:
    if value not in _QUANT:
        raise UsageError(f"--quant must be one of {', '.join(_QUANT)}, got {value!r}")
    return None if value == "none" else value


@app.command("train", cls=MotCommand)
def train(
    ctx: typer.Context,
    config: Path | None = typer.Option(None, "--config", "-c", help="Run config (.json/.hocon/.conf), e.g. "
                                       "configs/multitoken_smollm2.json; the flags below override it."),
    overrides: list[str] = typer.Option([], "--set", help="Override a key: --set training.ppo_steps=10 (repeatable)."),
    model: str | None = typer.Option(None, "--model", help="Backbone: hub id, local dir, .gguf, or asset alias "
                                     "(backbone.model)."),
    data: Path | None = typer.Option(None, "--data", help='JSONL with {"question": ..., "response": ...} per line.'),
    out: Path | None = typer.Option(None, "--out", help="Output directory: s1/, s2/, ppo_final/ and run state."),
    heads: int = typer.Option(4, "--heads", help="Heads H (head 0 is the backbone's own LM head)."),
    k_max: int = typer.Option(3, "--k-max", help="Most active heads per step (tokens per backbone pass)."),
    stage1_epochs: float = typer.Option(1.0, "--stage1-epochs"),
    stage2_epochs: float = typer.Option(1.0, "--stage2-epochs"),
    ppo_steps: int = typer.Option(0, "--ppo-steps", help="Stage 3 PPO rollouts (0: skip)."),
    batch: int = typer.Option(8, "--batch"),
    lr: float = typer.Option(1e-3, "--lr"),
    quant: str = typer.Option("none", "--quant", help="Backbone quantization: none|8bit|4bit (CUDA)."),
    save_backbone: bool = typer.Option(False, "--save-backbone/--no-save-backbone",
                                       help="Copy the backbone weights into each checkpoint."),
    backbone_device: str = typer.Option("cpu", "--backbone-device", help="e.g. cpu, cuda:0."),
    heads_device: str | None = typer.Option(None, "--heads-device", help="Default: the backbone's device."),
    val_fraction: float = typer.Option(0.05, "--val-fraction", help="Held-out share of the data for validation."),
    max_length: int = typer.Option(512, "--max-length", help="Tokens per training sequence."),
    save_every: int = typer.Option(5000, "--save-every", help="Step checkpoints (resume points)."),
    untie_heads: bool = typer.Option(False, "--untie-heads/--tie-heads",
                                     help="Give each head its own trainable copy of the LM head."),
    token_conditioning: bool = typer.Option(True, "--token-conditioning/--no-token-conditioning",
                                            help="Heads also read the next token's embedding (known when drafting)."),
    chain_conditioning: bool = typer.Option(True, "--chain-conditioning/--no-chain-conditioning",
                                            help="Head h also reads the drafts of heads 1..h-1 (Hydra-style)."),
    self_distill: str = typer.Option("generate", "--self-distill",
                                     help="Stage-2 greedy targets: generate (the backbone's continuation of "
                                          "every question) or chain (read off the data's forward pass: no "
                                          "generation, easier steps only)."),
    draft_vocab: int = typer.Option(0, "--draft-vocab",
                                    help="Heads score only this many frequent target tokens (0: whole vocabulary)."),
    head_type: str = typer.Option("residual", "--head-type",
                                  help="residual: one residual block per head on the last state (Medusa/Hydra); "
                                       "layer: the heads are the steps of one draft layer that attends over the "
                                       "whole sequence of backbone states (EAGLE-style)."),
    dtype: str = typer.Option("float32", "--dtype", help="Backbone dtype: float32|bfloat16|float16."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train stage 1, stage 2 and (with --ppo-steps) PPO; rerunning the command resumes.

    Settings come from -c CONFIG (see configs/multitoken_*.json), then --set, then the flags given here."""
    import logging

    import torch

    from mot.config import save_config
    from mot.experts.resolve import resolve_expert
    from mot.multitoken.curriculum import train_curriculum
    from mot.multitoken.data import read_jsonl
    from mot.multitoken.model import MultiTokenModel
    from mot.multitoken.run_config import FLAG_KEYS, load_multitoken_run_config

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if draft_vocab < 0:
        raise UsageError(f"--draft-vocab must be >= 0 (0: whole vocabulary), got {draft_vocab}")
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    given = {name: ctx.params[name] for name in FLAG_KEYS
             if ctx.get_parameter_source(name).name in ("COMMANDLINE", "ENVIRONMENT")}
    if "draft_vocab" in given:
        given["draft_vocab"] = given["draft_vocab"] or None
    cfg = load_multitoken_run_config(config, overrides, given)
    mt_config = cfg.multitoken_config()
    curriculum = cfg.curriculum_config()
    b, t = cfg.backbone, cfg.training
    quantization = _quant(b.quant)
    examples = read_jsonl(cfg.data)
    n_val = int(len(examples) * t.val_fraction)
    if t.val_fraction > 0 and len(examples) >= 20:
        n_val = max(n_val, 1)
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(t.seed)).tolist()
    val = [examples[i] for i in order[:n_val]]
    train_set = [examples[i] for i in order[n_val:]]
    backbone, tokenizer = resolve_expert(b.model, dtype=b.dtype, device=b.device, quantization=quantization)
    torch.manual_seed(t.seed)
    mt = MultiTokenModel(backbone, tokenizer, mt_config, heads_device=b.heads_device or b.device,
                         backbone_spec=b.model)
    mt.quantization = quantization
    save_config(cfg, Path(cfg.out) / RUN_CONFIG)
    exported = train_curriculum(mt, train_set, cfg.out, curriculum, val_examples=val or None)
    for name, path in exported.items():
        typer.echo(f"{name}: {path}")


@app.command("infer", cls=MotCommand)
def infer(
    ckpt: Path = typer.Option(..., "--ckpt", help="A checkpoint directory: s1/, s2/ or ppo_final/."),
    prompt: str = typer.Option(..., "--prompt"),
    max_new_tokens: int = opts.max_new_tokens_option(128),
    quant: str = typer.Option("none", "--quant", help="Backbone quantization: none|8bit|4bit (CUDA)."),
    verify: bool = typer.Option(True, "--verify/--no-verify",
                                help="--no-verify emits drafts unchecked: faster, lossy (labelled)."),
    temperature: float = opts.temperature_option(0.0, "0: greedy (exactly the backbone's output)."),
    top_p: float = opts.top_p_option(1.0),
    top_k: int = opts.top_k_option(0),
    seed: int | None = opts.seed_option(),
    stop: list[str] = opts.stop_option(),
    k: int | None = typer.Option(None, "--k", help="Active heads (<= the checkpoint's k_max)."),
    lookup: int = typer.Option(0, "--lookup", help="Also draft up to N tokens copied from an earlier occurrence "
                                                   "of the last tokens (prompt lookup; verified only; 0: off)."),
    tree: int = typer.Option(3, "--tree", help="Greedy verified decoding drafts a tree of up to N candidate "
                                               "tokens, checked in one pass (0: the heads' single chain)."),
    backbone_device: str = typer.Option("cpu", "--backbone-device"),
    heads_device: str | None = typer.Option(None, "--heads-device"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (text + statistics)."),
) -> None:
    """Decode a prompt, streaming the text; statistics go to stderr."""
    from mot.multitoken.decoding import MultiTokenGenerator
    from mot.multitoken.io import load_multitoken

    params = opts.generation_params(max_new_tokens, temperature, top_k, top_p, seed, stop)
    model = load_multitoken(ckpt, quantization=_quant(quant), backbone_device=backbone_device,
                            heads_device=heads_device)
    if lookup < 0:
        raise UsageError(f"--lookup must be >= 0 (0: off), got {lookup}")
    if tree < 0:
        raise UsageError(f"--tree must be >= 0 (0: the heads' chain), got {tree}")
    generator = MultiTokenGenerator(model, verify=verify, k=k, lookup=lookup, tree=tree)
    if not verify:
        typer.echo("# lossy: --no-verify emits the heads' drafts unchecked; this is not the backbone's output",
                   err=True)
    if as_json:
        text = "".join(generator.stream(prompt, params))
        typer.echo(json.dumps({"text": text, "lossy": not verify, "stats": generator.stats.as_dict(),
                               "generator": generator.name}))
        return
    for piece in generator.stream(prompt, params):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    stats = generator.stats
    acceptance = ", ".join(f"head {h}: {a:.2f}" for h, a in stats.head_acceptance.items()) or "no drafts"
    if stats.lookup_passes:
        acceptance += f"; lookup: {stats.lookup_accepted}/{stats.lookup_drafted} drafts kept"
    typer.echo(f"# {'LOSSY (unverified) ' if not verify else 'verified '}{stats.new_tokens} tokens in "
               f"{stats.backbone_passes} backbone passes ({stats.tokens_per_pass:.2f} tokens/pass); "
               f"acceptance {acceptance}", err=True)
