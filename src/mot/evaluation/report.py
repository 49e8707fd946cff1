"""Results table, markdown report and bar chart for a ``run_evaluation`` results dict."""

from __future__ import annotations

from pathlib import Path

ORACLE_LABEL = "oracle (best model per item)"


def _metric_order(results: dict) -> list[str]:
    primary = results["primary_metric"]
    names = {k for m in results["models"].values() for k in m["metrics"]}
    if results.get("oracle"):
        names |= set(results["oracle"]["metrics"])
    return [primary] * (primary in names) + sorted(names - {primary})


def table_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)``: one row per model, then the oracle row; metrics as percentages."""
    metrics = _metric_order(results)
    header = ["model", "items", *metrics]
    rows = []
    entries = list(results["models"].items())
    if results.get("oracle"):
        entries.append((ORACLE_LABEL, results["oracle"]))
    for name, entry in entries:
        cells = [f"{100 * entry['metrics'][k]:.1f}" if k in entry["metrics"] else "-" for k in metrics]
        rows.append([name, str(entry["num_items"]), *cells])
    return header, rows


def markdown_table(results: dict) -> str:
    header, rows = table_rows(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def plot_bar_chart(results: dict, path: str | Path) -> Path:
    """Bar chart of the primary metric per model (the oracle hatched), saved as PNG (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    primary = results["primary_metric"]
    names = list(results["models"])
    values = [100 * results["models"][n]["metrics"].get(primary, 0.0) for n in names]
    hatches = [""] * len(names)
    if results.get("oracle"):
        names.append("oracle")
        values.append(100 * results["oracle"]["metrics"].get(primary, 0.0))
        hatches.append("//")
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(names) + 1.5), 3.5))
    bars = ax.bar(range(len(names)), values, color="#4C72B0")
    for bar, hatch, value in zip(bars, hatches, values, strict=True):
        bar.set_hatch(hatch)
        ax.annotate(f"{value:.1f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)), [n if len(n) <= 24 else "…" + n[-23:] for n in names], rotation=20, ha="right")
    ax.set_ylabel(f"{primary} (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"{results['benchmark']} ({results['num_items']} items)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(results: dict, output_dir: str | Path) -> dict[str, Path]:
    """Write ``report.md`` and ``results.png`` into ``output_dir``; returns their paths."""
    out = Path(output_dir)
    chart = plot_bar_chart(results, out / "results.png")
    s = results["settings"]
    gen = s["generation"]
    lines = [
        f"# {results['benchmark']}: {len(results['models'])} model(s), {results['num_items']} items",
        "",
        markdown_table(results),
        "",
        f"![{results['primary_metric']} per model]({chart.name})",
        "",
        "## Settings",
        "",
        f"- task: {results['task']}; primary metric: {results['primary_metric']}",
    ]
    selection = results.get("selection") or {}
    if selection.get("limit") is not None:
        how = (f"the first {selection['limit']}" if selection.get("seed") is None
               else f"{selection['limit']} sampled across subjects with seed {selection['seed']}")
        lines.append(f"- items: {how} (`--limit`)")
    if results.get("subjects"):
        counts = ", ".join(f"{name} ({n})" for name, n in results["subjects"].items())
        lines.append(f"- subjects ({len(results['subjects'])}): {counts}")
    if results["task"] == "multiple_choice":
        lines.append(f"- prompt style: {s['mc_style']}; acc_norm divides each choice's log-likelihood by its "
                     "length in characters")
    else:
        lines.append(f"- decoding: max_new_tokens={gen['max_new_tokens']}, temperature={gen['temperature']}, "
                     f"top_p={gen['top_p']}, top_k={gen['top_k']}, seed={gen['seed']}")
    if results["task"] == "code":
        lines.append(f"- samples per task: {s['num_samples']}; pass@k for k in {s['ks']} (unbiased estimator)")
    if results.get("oracle"):
        picks = ", ".join(f"{m}: {n}" for m, n in results["oracle"]["picks"].items())
        lines += ["", "The oracle row scores each item with whichever model did best on it: an upper bound for "
                      f"routing. Best model per item ({results['primary_metric']}): {picks}."]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"markdown": report, "chart": chart}


def print_table(results: dict, console=None) -> None:
    """Print the results table with rich."""
    from rich.console import Console
    from rich.table import Table

    header, rows = table_rows(results)
    table = Table(title=f"{results['benchmark']} ({results['num_items']} items)")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    (console or Console()).print(table)
