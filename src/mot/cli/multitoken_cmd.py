"""``mot multitoken``: train heads + router on a frozen causal LM (``train``) and decode with them (``infer``).

The lead registers ``app`` as the ``mot multitoken`` group.  Heavy imports stay inside the commands.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from mot.errors import UsageError

app = typer.Typer(no_args_is_help=True, help="Multi-token MoE heads on a frozen causal LM.")

_QUANT = ("none", "8bit", "4bit")


def _quant(value: str) -> str | None:
    if value not in _QUANT:
        raise UsageError(f"--quant must be one of {', '.join(_QUANT)}, got {value!r}")
    return None if value == "none" else value


@app.command("train")
def train(
    model: str = typer.Option(..., "--model", help="Backbone: hub id, local dir, .gguf, or asset alias."),
    data: Path = typer.Option(..., "--data", help='JSONL with {"question": ..., "response": ...} per line.'),
    out: Path = typer.Option(..., "--out", help="Output directory: s1/, s2/, ppo_final/ and run state."),
    heads: int = typer.Option(4, "--heads", help="Heads H (head 0 is the backbone's own LM head)."),
    k_max: int = typer.Option(3, "--k_max", help="Most active heads per step (tokens per backbone pass)."),
    stage1_epochs: float = typer.Option(1.0, "--stage1_epochs"),
    stage2_epochs: float = typer.Option(1.0, "--stage2_epochs"),
    ppo_steps: int = typer.Option(0, "--ppo_steps", help="Stage 3 PPO rollouts (0: skip)."),
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
    """Train stage 1, stage 2 and (with --ppo_steps) PPO; rerunning the command resumes."""
    import logging

    import torch

    from mot.experts.resolve import resolve_expert
    from mot.multitoken.config import MultiTokenConfig
    from mot.multitoken.curriculum import CurriculumConfig, train_curriculum
    from mot.multitoken.data import read_jsonl
    from mot.multitoken.model import MultiTokenModel

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if draft_vocab < 0:
        raise UsageError(f"--draft-vocab must be >= 0 (0: whole vocabulary), got {draft_vocab}")
    config = MultiTokenConfig(num_heads=heads, k_max=k_max, untie_heads=untie_heads,
                              token_conditioning=token_conditioning, chain_conditioning=chain_conditioning,
                              draft_vocab_size=draft_vocab or None, head_type=head_type)
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    examples = read_jsonl(data)
    n_val = int(len(examples) * val_fraction)
    if val_fraction > 0 and len(examples) >= 20:
        n_val = max(n_val, 1)
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    val = [examples[i] for i in order[:n_val]]
    train_set = [examples[i] for i in order[n_val:]]
    backbone, tokenizer = resolve_expert(model, dtype=dtype, device=backbone_device, quantization=_quant(quant))
    torch.manual_seed(seed)
    mt = MultiTokenModel(backbone, tokenizer, config, heads_device=heads_device or backbone_device,
                         backbone_spec=model)
    mt.quantization = _quant(quant)
    curriculum = CurriculumConfig(
        stage1_epochs=stage1_epochs, stage2_epochs=stage2_epochs, ppo_steps=ppo_steps, batch_size=batch,
        learning_rate=lr, max_length=max_length, save_every=save_every, seed=seed,
        device=heads_device or backbone_device, save_backbone=save_backbone, self_distill=self_distill,
    )
    exported = train_curriculum(mt, train_set, out, curriculum, val_examples=val or None)
    for name, path in exported.items():
        typer.echo(f"{name}: {path}")


@app.command("infer")
def infer(
    ckpt: Path = typer.Option(..., "--ckpt", help="A checkpoint directory: s1/, s2/ or ppo_final/."),
    prompt: str = typer.Option(..., "--prompt"),
    max_tokens: int = typer.Option(128, "--max_tokens"),
    quant: str = typer.Option("none", "--quant", help="Backbone quantization: none|8bit|4bit (CUDA)."),
    verify: bool = typer.Option(True, "--verify/--no-verify",
                                help="--no-verify emits drafts unchecked: faster, lossy (labelled)."),
    temperature: float = typer.Option(0.0, "--temperature", help="0: greedy (exactly the backbone's output)."),
    top_p: float = typer.Option(1.0, "--top-p"),
    top_k: int = typer.Option(0, "--top-k"),
    seed: int | None = typer.Option(None, "--seed"),
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
    from mot.generation import GenerationParams
    from mot.multitoken.decoding import MultiTokenGenerator
    from mot.multitoken.io import load_multitoken

    model = load_multitoken(ckpt, quantization=_quant(quant), backbone_device=backbone_device,
                            heads_device=heads_device)
    params = GenerationParams(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                              seed=seed)
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
