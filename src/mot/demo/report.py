"""The demo's results as a rich table, ``report.md`` and PNG plots (matplotlib's Agg canvas)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

UNIT = "nats per target byte"


def method_rows(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(label, metrics)`` in table order: experts alone, routing alone, oracle, MoT, its capacity control."""
    rows = [(m["label"], m) for m in results["methods"]]
    if results.get("control"):
        rows.append((results["control"]["label"], results["control"]))
    return rows


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def table_cells(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    domains = results["domains"]
    header = ["method", *domains, "overall", "token ppl", "primary"]
    rows = []
    for label, m in method_rows(results):
        cells = [label]
        cells += [_fmt(m["per_domain"][d]["nats_per_byte"]) for d in domains]
        cells.append(_fmt(m["overall"]["nats_per_byte"]))
        cells.append(_fmt(m["overall"]["token_ppl"], 2))
        cells.append(m.get("primary", ""))
        rows.append(cells)
    return header, rows


def print_summary(results: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    header, rows = table_cells(results)
    table = Table(title=f"held-out test split: target loss ({UNIT}; lower is better)")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i in (0, len(header) - 1) else "right")
    best = min(results["methods"], key=lambda m: m["overall"]["nats_per_byte"])["label"]
    for cells in rows:
        style = "bold green" if cells[0] == best else ("bold" if cells[0] == "MoT" else None)
        table.add_row(*cells, style=style)
    console.print(table)
    routing = results["routing"]
    console.print(f"routing accuracy (primary = the domain's best expert on train): {routing['accuracy']:.1%}; "
                  f"agreement with the per-sample oracle {routing['oracle_agreement']:.1%}")
    for line in results["verdict"]:
        console.print(line)
    console.print(f"wrote {results['output_dir']}/report.md, results.json and plots")


# -- plots ----------------------------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_confusion(results: dict[str, Any], path: Path) -> Path:
    routing = results["routing"]
    matrix = routing["confusion"]
    domains, experts = results["domains"], results["expert_names"]
    fig = _figure(1.8 + 1.6 * len(experts), 1.2 + 0.8 * len(domains))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues", vmin=0)
    ax.set_xticks(range(len(experts)), experts, rotation=20, ha="right")
    ax.set_yticks(range(len(domains)), domains)
    ax.set_xlabel("primary expert chosen by the router")
    ax.set_ylabel("domain of the test sample")
    top = max((max(r) for r in matrix), default=1) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            best = routing["domain_best"][domains[i]] == j
            ax.text(j, i, f"{value}{' *' if best else ''}", ha="center", va="center",
                    color="white" if value > top / 2 else "black")
    ax.set_title(f"routing on the test split (accuracy {routing['accuracy']:.0%}; * = domain's best expert)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_domain_bars(results: dict[str, Any], path: Path) -> Path:
    domains = [*results["domains"], "overall"]
    methods = results["methods"]
    fig = _figure(8.0, 4.2)
    ax = fig.subplots()
    width = 0.8 / len(methods)
    for k, m in enumerate(methods):
        values = [m["per_domain"][d]["nats_per_byte"] for d in results["domains"]] + [m["overall"]["nats_per_byte"]]
        xs = [i + (k - (len(methods) - 1) / 2) * width for i in range(len(domains))]
        ax.bar(xs, values, width, label=m["label"], hatch="//" if m["kind"] == "oracle" else None)
    ax.set_xticks(range(len(domains)), domains)
    ax.set_ylabel(UNIT)
    ax.set_title("held-out target loss per domain (lower is better)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_loss_curve(train_dir: Path, path: Path) -> Path | None:
    from mot.training.plots import plot_losses
    from mot.training.tracking import read_metrics

    if not (train_dir / "metrics.jsonl").is_file():
        return None
    return plot_losses(read_metrics(train_dir), path)


# -- markdown -------------------------------------------------------------------------------------
def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def _one_line(text: str, limit: int = 90) -> str:
    flat = text.replace("\n", "\\n")
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


def write_markdown(results: dict[str, Any], path: Path, plots: dict[str, str | None]) -> Path:
    s = results["settings"]
    r = results["routing"]
    t = results["training"]
    lines = ["# mot demo: Mixture of Thoughts over real heterogeneous experts", ""]
    args = results["command_args"]
    lines += [f"Command: `mot demo{' ' + args if args else ''}`", ""]
    lines += ["## Set-up", ""]
    lines += [f"- experts: {', '.join(f'`{n}`' for n in results['expert_names'])}"]
    lines += [f"- task: mixed-domain (code / prose / math), {results['sizes']['train']} train and "
              f"{results['sizes']['test']} test samples, split by source file or template (no overlap); "
              "saved in `task.jsonl`"]
    lines += [f"- MoT: top_k={s['top_k']}, num_stacks={s['num_stacks']}, shared_dim={s['shared_dim']}, "
              f"{s['interaction_heads']} interaction heads, router features `{s['encoder']}`"]
    lines += [f"- budget: {s['budget_minutes']} min after the expert pool is ready; seed {s['seed']}", ""]
    lines += ["## Held-out test results", ""]
    lines += [f"Target loss in {UNIT} (the total negative log-likelihood of the target and the expert's "
              "end-of-sequence token, divided by the target's UTF-8 bytes: experts tokenise differently, so "
              "per-token losses do not compare; `token ppl` is the perplexity over each method's own tokens). "
              "Lower is better.", ""]
    header, rows = table_cells(results)
    lines += _md_table(header, rows) + [""]
    lines += [f"- {v}" for v in results["verdict"]] + [""]
    if plots.get("bars"):
        lines += [f"![per-domain loss]({plots['bars']})", ""]
    lines += ["Rows: each expert alone; *learned routing alone* = the trained router's top-1 expert with no "
              "interaction; *oracle routing* = the best expert per test sample (chosen with the answer, an "
              "upper bound for any router); *MoT* = the trained router, its top-k experts and the interaction "
              "layers; *capacity control* = the same MoT (same router, interaction layers, trainable size, "
              "steps and data) whose peers are copies of the primary: MoT minus the control is what "
              "collaboration adds, MoT minus the experts also counts what training the interaction layers "
              "adapts.", ""]
    lines += ["## Routing", ""]
    lines += ["Routing accuracy = share of test samples whose primary expert is their domain's best expert, "
              "where a domain's best expert is the one with the lowest mean training loss on that domain.", ""]
    best = ", ".join(f"{d} → `{results['expert_names'][e]}`" for d, e in r["domain_best"].items())
    lines += [f"- domain's best expert (train): {best}",
              f"- routing accuracy: **{r['accuracy']:.1%}** (oracle agreement, i.e. primary = the test "
              f"sample's own best expert: {r['oracle_agreement']:.1%})", ""]
    if plots.get("confusion"):
        lines += [f"![routing confusion matrix]({plots['confusion']})", ""]
    lines += ["## Training", ""]
    lines += [f"- {t['steps']} optimizer steps (batch {s['batch_size']}, lr {s['learning_rate']}) in "
              f"{t['seconds']:.0f} s; stopped by {t['stopped']}",
              *([f"- capacity control: {results['control_training']['steps']} steps in "
                 f"{results['control_training']['seconds']:.0f} s (as many as MoT; never capped)"]
                if results.get("control_training") else []),
              f"- train loss (token CE + router terms): first {_fmt(t.get('first_loss'))}, last "
              f"{_fmt(t.get('last_loss'))}",
              f"- router warm start: cross-entropy towards each training sample's best expert "
              f"(final {_fmt(t.get('router_fit_loss'))}), kept as an extra loss (weight {s['route_weight']}) "
              "during MoT training", ""]
    if plots.get("loss"):
        lines += [f"![loss curve]({plots['loss']})", ""]
    lines += ["## Generations (greedy)", ""]
    gen_rows = [[g["domain"], g["mode"], g["primary"], f"{g['tokens']}", f"{g['tokens_per_s']:.1f}",
                 "`" + _one_line(g["text"]).replace("`", "'") + "`"] for g in results["generations"]]
    lines += _md_table(["domain", "mode", "primary (peers)", "tokens", "tokens/s", "text"], gen_rows) + [""]
    lines += ["## Timing", ""]
    cpu = results.get("cpu_timing", {})
    lines += [f"- {name}: {sec:.1f} s wall" + (f", {cpu[name]:.1f} s CPU" if name in cpu else "")
              for name, sec in results["timing"].items()]
    lines += [f"- total wall {results['wall_seconds']:.0f} s, CPU (user+sys) {results['cpu_seconds']:.0f} s "
              f"on {results['cpu_count']} cores", ""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
