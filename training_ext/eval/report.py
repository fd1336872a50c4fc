"""Evaluation output: the comparison table (terminal and markdown), results.json, the length plot.

Every file is written atomically (a temp file in the same folder, then os.replace), so an
interrupted run never leaves a half-written result behind.
"""
from typing import Dict, List, Optional

from training_ext.common.file_io import atomic_open

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


def comparison_table(results: List[Dict]) -> str:
    """One markdown table, padded so it also reads on a terminal: a row per (benchmark, model)."""
    columns = RETRIEVAL_COLUMNS + ZERO_SHOT_COLUMNS
    # benchmark-major so the models' rows for one benchmark sit together (sort is stable: model order kept)
    benchmark_order = {name: i for i, name in reversed(list(enumerate(r["benchmark"] for r in results)))}
    results = sorted(results, key=lambda r: benchmark_order[r["benchmark"]])
    header = ["Benchmark", "Model", "Ctx"] + [title for title, _ in columns]
    rows = [[r["benchmark"], r["model"], str(r["context_length"])]
            + [_cell(r["metrics"].get(key)) for _, key in columns] for r in results]
    widths = [max(len(line[i]) for line in [header] + rows) for i in range(len(header))]

    def format_row(cells):
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + " |"

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([format_row(header), separator] + [format_row(row) for row in rows])


def markdown_report(results: List[Dict]) -> str:
    """results.md: the table, then the protocol each benchmark name stands for."""
    protocols = {r["benchmark"]: r["protocol"] for r in results}
    lines = ["# Evaluation results", "", comparison_table(results), "", "Protocols:", ""]
    lines += [f"- `{name}`: {protocol}" for name, protocol in protocols.items()]
    lines += ["", "Recall in percent; ties count against the model. Ctx = the model's text context in tokens "
              "(longer captions are truncated by its tokenizer)."]
    return "\n".join(lines) + "\n"


def _legend_label(result: dict) -> str:
    """Model name, the checkpoint's last two path parts (enough to tell runs apart), context length."""
    checkpoint = result.get("checkpoint") or ""
    short = "/".join(checkpoint.replace("\\", "/").split("/")[-3:]) if "/" in checkpoint else checkpoint
    name = f'{result["model_name"]}:{short}' if short else result["model_name"]
    return f'{name} (ctx {result["context_length"]})'


def plot_recall_by_length(results: List[Dict], path: str) -> Optional[str]:
    """PNG of R@1 against caption length bucket: a row per retrieval benchmark, image->text and
    text->image side by side, a line per model. Returns the path, or None without retrieval results."""
    retrieval = [r for r in results if "recall_by_length" in r]
    if not retrieval:
        return None
    import matplotlib
    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    benchmarks = list(dict.fromkeys(r["benchmark"] for r in retrieval))
    figure, axes = plt.subplots(len(benchmarks), 2, figsize=(11, 3.6 * len(benchmarks)), squeeze=False)
    for row, benchmark in enumerate(benchmarks):
        for col, (direction, count_key, title) in enumerate([
                ("image_to_text_R@1", "num_images", "image->text R@1"),
                ("text_to_image_R@1", "num_captions", "text->image R@1")]):
            axis = axes[row][col]
            buckets = None
            for r in (r for r in retrieval if r["benchmark"] == benchmark):
                buckets = r["recall_by_length"]
                values = [float("nan") if b[direction] is None else b[direction] for b in buckets]
                axis.plot(range(len(buckets)), values, marker="o", label=_legend_label(r))
            axis.set_xticks(range(len(buckets)))
            axis.set_xlim(-0.3, len(buckets) - 0.7)
            axis.set_xticklabels([f'{b["bucket"]}\nn={b[count_key]}' for b in buckets])
            axis.set_xlabel("caption length (tokens)")
            axis.set_ylabel("R@1 (%)")
            axis.set_ylim(-2, 102)
            axis.set_title(f"{benchmark}: {title}")
            axis.grid(alpha=0.3)
    # One legend for the figure, below the plots: per-axes legends of long checkpoint paths cover the data.
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.tight_layout(rect=(0, 0.04 + 0.035 * len(labels) / len(benchmarks), 1, 1))
    figure.legend(handles, labels, loc="lower center", fontsize="small", frameon=False)
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=100)
    plt.close(figure)
    return path
