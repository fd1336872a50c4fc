"""Evaluation output: the comparison table (terminal and markdown), the caption-perturbation table, the table of
recall by a CSV column's buckets, the protocol cards in results.md, and the plots (recall by caption length, by a
CSV column, perturbation deltas).

Every file is written atomically (a temp file in the same folder, then os.replace), so an
interrupted run never leaves a half-written result behind.
"""
from typing import Callable, Dict, List, Optional, Sequence

from training_ext.common.file_io import atomic_open
from training_ext.eval.protocol_card import format_card

RETRIEVAL_COLUMNS = [
    ("I2T R@1", "image_to_text_R@1"), ("I2T R@5", "image_to_text_R@5"), ("I2T R@10", "image_to_text_R@10"),
    ("T2I R@1", "text_to_image_R@1"), ("T2I R@5", "text_to_image_R@5"), ("T2I R@10", "text_to_image_R@10"),
]
ZERO_SHOT_COLUMNS = [("ZS top-1", "top1"), ("ZS top-5", "top5")]


def write_text(path: str, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def _cell(value) -> str:
    return "" if value is None else f"{value:.2f}"


def _benchmark_major(results: List[Dict]) -> List[Dict]:
    """Rows of one benchmark together, in first-appearance order (the sort is stable: model order kept)."""
    benchmark_order = {name: i for i, name in reversed(list(enumerate(r["benchmark"] for r in results)))}
    return sorted(results, key=lambda r: benchmark_order[r["benchmark"]])


def _padded_table(header: List[str], rows: List[List[str]]) -> str:
    """A markdown table padded so it also reads on a terminal."""
    widths = [max(len(line[i]) for line in [header] + rows) for i in range(len(header))]

    def format_row(cells):
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + " |"

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([format_row(header), separator] + [format_row(row) for row in rows])


def _tied_at_1(result: Dict) -> str:
    """Queries whose R@1 a tie decides, per direction ('2/0': image->text / text->image); '' when not reported."""
    ties = result.get("ties") or {}
    return "/".join(str(report["R@1"]["decided_by_ties"]) for report in ties.values())


def comparison_table(results: List[Dict]) -> str:
    """One markdown table, a row per (benchmark, model); Tied@1 counts the queries whose R@1 a tie decides."""
    columns = RETRIEVAL_COLUMNS + ZERO_SHOT_COLUMNS
    header = ["Benchmark", "Model", "Ctx", "Tied@1"] + [title for title, _ in columns]
    rows = [[r["benchmark"], r["model"], str(r["context_length"]), _tied_at_1(r)]
            + [_cell(r["metrics"].get(key)) for _, key in columns] for r in _benchmark_major(results)]
    return _padded_table(header, rows)


def _signed(value) -> str:
    return "" if value is None else f"{value:+.2f}"


def perturbation_table(results: List[Dict]) -> str:
    """Change in R@1 (perturbed minus intact captions, percentage points) per perturbation and direction."""
    perturbed = [r for r in _benchmark_major(results) if r.get("perturbations")]
    names = list(dict.fromkeys(p["perturbation"] for r in perturbed for p in r["perturbations"]))
    header = ["Benchmark", "Model", "I2T R@1", "T2I R@1"]
    header += [f"{direction} {name}" for name in names for direction in ("dI2T", "dT2I")]
    rows = []
    for r in perturbed:
        by_name = {p["perturbation"]: p for p in r["perturbations"]}
        row = [r["benchmark"], r["model"], _cell(r["metrics"]["image_to_text_R@1"]),
               _cell(r["metrics"]["text_to_image_R@1"])]
        for name in names:
            p = by_name.get(name, {})
            row += [_signed(p.get("delta_image_to_text_R@1")), _signed(p.get("delta_text_to_image_R@1"))]
        rows.append(row)
    return ("Caption perturbations: change in R@1 against the intact captions (percentage points)\n\n"
            + _padded_table(header, rows))


def _bucket_kind(by_column: Dict) -> str:
    """How a benchmark's column buckets were made, in words."""
    edges = ",".join(f"{edge:g}" for edge in by_column["edges"] or [])
    count = len(by_column["buckets"])
    if by_column["kind"] == "quantile":
        return f"{count} buckets cut at the quartiles of its values (= --bucket-column-edges {edges})"
    if by_column["kind"] == "numeric":
        return f"--bucket-column-edges {edges}"
    return f"one bucket per value ({count})"


def column_bucket_table(results: List[Dict]) -> Optional[str]:
    """Recall by --bucket-by-column bucket: a row per (benchmark, model, bucket) with its caption and image counts
    and R@1/5/10 in both directions, then how each benchmark was bucketed and which were not. None when no result
    has column buckets."""
    bucketed = [r for r in _benchmark_major(results) if r.get("recall_by_column")]
    if not bucketed:
        return None
    column = bucketed[0]["recall_by_column"]["column"]
    header = ["Benchmark", "Model", column, "Captions", "Images"] + [title for title, _ in RETRIEVAL_COLUMNS]
    rows = [[r["benchmark"], r["model"], bucket["bucket"], str(bucket["num_captions"]), str(bucket["num_images"])]
            + [_cell(bucket[key]) for _, key in RETRIEVAL_COLUMNS]
            for r in bucketed for bucket in r["recall_by_column"]["buckets"]]
    kinds = {r["benchmark"]: _bucket_kind(r["recall_by_column"]) for r in bucketed}
    lines = [f"Recall by {column} (R@k in %, empty cell: empty bucket; an image counts in its first caption's bucket)",
             "", _padded_table(header, rows), ""]
    lines += [f"- {name}: {kind}" for name, kind in kinds.items()]
    skipped = list(dict.fromkeys(r["benchmark"] for r in results if r["benchmark"] not in kinds))
    if skipped:
        lines.append(f"- not bucketed (no column {column!r}, or not a CSV benchmark): {', '.join(skipped)}")
    return "\n".join(lines)


def markdown_report(results: List[Dict], pending: Sequence[str] = ()) -> str:
    """results.md: the table, the perturbation table, the column-bucket table, the protocols, then every result's
    protocol card."""
    protocols = {r["benchmark"]: r["protocol"] for r in results}
    lines = ["# Evaluation results", ""]
    if pending:
        lines += [f"**Incomplete**: models still to run: {', '.join(pending)}", ""]
    lines += [comparison_table(results), ""]
    if any(r.get("perturbations") for r in results):
        lines += [perturbation_table(results), ""]
    by_column = column_bucket_table(results)
    if by_column:
        lines += [by_column, ""]
    lines += ["Protocols:", ""]
    lines += [f"- `{name}`: {protocol}" for name, protocol in protocols.items()]
    lines += ["", "Recall in percent; ties count against the model. Tied@1 = queries (image->text / text->image) "
              "whose R@1 a tie at the decisive rank decides: with them counted as hits R@1 would be the card's "
              "upper value, and any sort the peers use gives a value between the two. Ctx = the model's text "
              "context in tokens (longer captions are truncated by its tokenizer).", "", "## Protocol cards", ""]
    for r in _benchmark_major(results):
        if "protocol_card" in r:
            lines += ["```", format_card(r["protocol_card"], r["model"]), "```", ""]
    return "\n".join(lines) + "\n"


def _legend_label(result: dict) -> str:
    """Model name, the checkpoint's last two path parts (enough to tell runs apart), context length."""
    checkpoint = result.get("checkpoint") or ""
    short = "/".join(checkpoint.replace("\\", "/").split("/")[-3:]) if "/" in checkpoint else checkpoint
    name = f'{result["model_name"]}:{short}' if short else result["model_name"]
    return f'{name} (ctx {result["context_length"]})'


def _plot_bucket_rows(results: List[Dict], rows_of: Callable[[Dict], Optional[List[Dict]]], path: str,
                      xlabel: Callable[[Dict], str], metric: str = "R@1") -> Optional[str]:
    """PNG of recall per bucket: a row per benchmark, image->text and text->image side by side, a line per
    model. rows_of(result) gives a result's bucket rows (None: not plotted). Returns the path, or None."""
    plotted = [r for r in results if rows_of(r)]
    if not plotted:
        return None
    plt, benchmarks, figure, axes = _figure_per_benchmark(plotted)
    for row, benchmark in enumerate(benchmarks):
        for col, (direction, count_key, title) in enumerate([
                (f"image_to_text_{metric}", "num_images", f"image->text {metric}"),
                (f"text_to_image_{metric}", "num_captions", f"text->image {metric}")]):
            axis = axes[row][col]
            buckets, label = None, ""
            for r in (r for r in plotted if r["benchmark"] == benchmark):
                buckets, label = rows_of(r), xlabel(r)
                values = [float("nan") if b[direction] is None else b[direction] for b in buckets]
                axis.plot(range(len(buckets)), values, marker="o", label=_legend_label(r))
            axis.set_xticks(range(len(buckets)))
            axis.set_xlim(-0.3, len(buckets) - 0.7)
            axis.set_xticklabels([f'{b["bucket"]}\nn={b[count_key]}' for b in buckets])
            axis.set_xlabel(label)
            axis.set_ylabel(f"{metric} (%)")
            axis.set_ylim(-2, 102)
            axis.set_title(f"{benchmark}: {title}")
            axis.grid(alpha=0.3)
    _save_with_legend(plt, figure, axes, len(benchmarks), path)
    return path


def _figure_per_benchmark(results: List[Dict]):
    """(pyplot, benchmark names, figure, axes): a row of two axes per benchmark (image->text, text->image)."""
    import matplotlib
    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt
    benchmarks = list(dict.fromkeys(r["benchmark"] for r in results))
    figure, axes = plt.subplots(len(benchmarks), 2, figsize=(11, 3.6 * len(benchmarks)), squeeze=False)
    return plt, benchmarks, figure, axes


def _save_with_legend(plt, figure, axes, num_rows: int, path: str) -> None:
    # One legend for the figure, below the plots: per-axes legends of long checkpoint paths cover the data.
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.tight_layout(rect=(0, 0.04 + 0.035 * len(labels) / num_rows, 1, 1))
    figure.legend(handles, labels, loc="lower center", fontsize="small", frameon=False)
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=100)
    plt.close(figure)


def plot_recall_by_length(results: List[Dict], path: str) -> Optional[str]:
    """R@1 against caption length bucket (tokens of each model's own tokenizer)."""
    return _plot_bucket_rows(results, lambda r: r.get("recall_by_length"), path,
                             lambda r: "caption length (tokens)")


def plot_recall_by_column(results: List[Dict], path: str) -> Optional[str]:
    """R@1 against the --bucket-by-column buckets of every CSV benchmark."""
    return _plot_bucket_rows(results, lambda r: (r.get("recall_by_column") or {}).get("buckets"), path,
                             lambda r: f'{r["recall_by_column"]["column"]} ({r["recall_by_column"]["kind"]})')


def plot_perturbations(results: List[Dict], path: str) -> Optional[str]:
    """Bars of the change in R@1 per caption perturbation: a row per benchmark, image->text and text->image
    side by side, a bar per model. Returns the path, or None when nothing was perturbed."""
    perturbed = [r for r in results if r.get("perturbations")]
    if not perturbed:
        return None
    plt, benchmarks, figure, axes = _figure_per_benchmark(perturbed)
    for row, benchmark in enumerate(benchmarks):
        models = [r for r in perturbed if r["benchmark"] == benchmark]
        names = list(dict.fromkeys(p["perturbation"] for r in models for p in r["perturbations"]))
        width = 0.8 / len(models)
        for col, (key, title) in enumerate([("delta_image_to_text_R@1", "image->text"),
                                            ("delta_text_to_image_R@1", "text->image")]):
            axis = axes[row][col]
            for m, r in enumerate(models):
                by_name = {p["perturbation"]: p[key] for p in r["perturbations"]}
                axis.bar([n + (m - (len(models) - 1) / 2) * width for n in range(len(names))],
                         [by_name.get(name, float("nan")) for name in names], width, label=_legend_label(r))
            axis.axhline(0, color="black", linewidth=0.8)
            axis.set_xticks(range(len(names)))
            axis.set_xticklabels(names)
            axis.set_ylabel("change in R@1 (points)")
            axis.set_title(f"{benchmark}: {title}, perturbed minus intact")
            axis.grid(alpha=0.3, axis="y")
    _save_with_legend(plt, figure, axes, len(benchmarks), path)
    return path
