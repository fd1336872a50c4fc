"""The demo's output: per-model numbers out of eval's results.json, their mean and spread over seeds, the table,
the plot of R@1 against the detail's token position, and the step times."""
from typing import Dict, List, Optional, Sequence

from training_ext.demo.colour_grids import LAST_TEACHER_POSITION, detail_position_range

ORDINARY, DETAIL = "ordinary", "detail"
EARLY = f"detail <={LAST_TEACHER_POSITION}"   # details a 77-token model can read
LATE = f"detail >{LAST_TEACHER_POSITION}"     # details past its context
DIRECTIONS = ("image_to_text_R@1", "text_to_image_R@1")
SHORT_DIRECTIONS = {"image_to_text_R@1": "I2T", "text_to_image_R@1": "T2I"}
# eval's --bucket-column-edges for detail_position: the first bucket is what a 77-token model sees, then 25-token
# steps out to the longest captions
DETAIL_EDGES = (LAST_TEACHER_POSITION, 100, 125, 150, 175, 200, 225)
# eval's --length-buckets: the demo's captions run from 134 to 244 tokens
LENGTH_EDGES = "154,176,198,220,248"
TABLE_SPLITS = (ORDINARY, EARLY, LATE)


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def _row(results: dict, spec: str) -> dict:
    for row in results["results"]:
        if row["model"] == spec:
            return row
    raise KeyError(f"eval's results.json has no row for {spec}")


def column_bucket_labels() -> List[str]:
    """eval's names of the detail_position buckets for DETAIL_EDGES, in order."""
    from training_ext.eval.column_buckets import numeric_labels
    return numeric_labels(DETAIL_EDGES)


def _pooled(buckets: Sequence[dict], direction: str) -> Optional[float]:
    """R@1 over several buckets together: each bucket's R@1 weighted by its item count (images for
    image->text, captions for text->image), i.e. the hit rate over all their items."""
    count_key = "num_images" if direction.startswith("image") else "num_captions"
    total = sum(b[count_key] for b in buckets)
    if not total:
        return None
    return sum(b[direction] * b[count_key] for b in buckets if b[count_key]) / total


def metrics_by_model(results: Dict[str, dict], models: Dict[str, str]) -> Dict[str, dict]:
    """{label: {ORDINARY/EARLY/LATE: {direction: R@1}, "ctx": ..., "by_position": buckets, "by_length": ...}}."""
    metrics = {}
    for label, spec in models.items():
        ordinary, detail = _row(results[ORDINARY], spec), _row(results[DETAIL], spec)
        buckets = detail["recall_by_column"]["buckets"]
        if [b["bucket"] for b in buckets] != column_bucket_labels():
            raise ValueError(f"eval's detail_position buckets {[b['bucket'] for b in buckets]} are not the demo's "
                             f"{column_bucket_labels()}")
        early, late = buckets[:1], buckets[1:]  # the first bucket ends at LAST_TEACHER_POSITION
        metrics[label] = {
            "ctx": ordinary["context_length"],
            ORDINARY: {d: ordinary["metrics"][d] for d in DIRECTIONS},
            EARLY: {d: _pooled(early, d) for d in DIRECTIONS},
            LATE: {d: _pooled(late, d) for d in DIRECTIONS},
            DETAIL: {d: detail["metrics"][d] for d in DIRECTIONS},
            "by_position": [{key: b[key] for key in ("bucket", "num_images", "num_captions", *DIRECTIONS)}
                            for b in buckets],
            "by_length": ordinary.get("recall_by_length"),
        }
    return metrics


def _spread(values: List[float]) -> dict:
    mean = sum(values) / len(values)
    return {"mean": mean, "half_range": (max(values) - min(values)) / 2, "values": values}


def summarise(per_seed: List[dict], labels: Sequence[str]) -> Dict[str, dict]:
    """Mean and half the range over seeds of every table cell."""
    summary = {}
    for label in labels:
        summary[label] = {"ctx": per_seed[0]["metrics"][label]["ctx"]}
        for split in TABLE_SPLITS:
            summary[label][split] = {d: _spread([run["metrics"][label][split][d] for run in per_seed])
                                     for d in DIRECTIONS}
    return summary


def _cell(stats: dict, n_seeds: int) -> str:
    if n_seeds == 1:
        return f"{stats['mean']:.2f}"
    return f"{stats['mean']:.1f} ± {stats['half_range']:.1f}"


def table(summary: Dict[str, dict], labels: Sequence[str], n_seeds: int) -> str:
    """Markdown table, padded to read on a terminal: a row per model, R@1 (%) per split and direction."""
    header = ["model", "ctx"] + [f"{split} {SHORT_DIRECTIONS[d]}" for split in TABLE_SPLITS for d in DIRECTIONS]
    rows = [[label, str(summary[label]["ctx"])]
            + [_cell(summary[label][split][d], n_seeds) for split in TABLE_SPLITS for d in DIRECTIONS]
            for label in labels]
    widths = [max(len(line[i]) for line in [header] + rows) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    note = ("R@1 in %, ties count against the model" + ("" if n_seeds == 1 else
            f"; mean ± half the range over {n_seeds} seeds") + f". {EARLY} / {LATE}: the detail split's groups "
            f"whose one differing token a 77-token model reads / cannot read.")
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in rows] + ["", note])


def _bucket_centres(labels: Sequence[str]) -> List[float]:
    low, high = detail_position_range()
    edges = [low - 0.5] + [e + 0.5 for e in DETAIL_EDGES] + [high + 0.5]
    return [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])][:len(labels)]


def plot_detail_position(per_seed: List[dict], labels: Sequence[str], path) -> Optional[str]:
    """R@1 against the detail's token position, both directions; a line per model (mean over seeds, the band
    spans the seeds' min to max). Returns the path."""
    import matplotlib
    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    buckets = per_seed[0]["metrics"][labels[0]]["by_position"]
    x = _bucket_centres([b["bucket"] for b in buckets])
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    for axis, direction in zip(axes, DIRECTIONS):
        for label in labels:
            series = [[float("nan") if b[direction] is None else b[direction]
                       for b in run["metrics"][label]["by_position"]] for run in per_seed]
            mean = [sum(v) / len(v) for v in zip(*series)]
            style = {"linestyle": "--", "color": "black"} if label.startswith("teacher") else {}
            line, = axis.plot(x, mean, marker="o", label=label, **style)
            if len(per_seed) > 1:
                axis.fill_between(x, [min(v) for v in zip(*series)], [max(v) for v in zip(*series)],
                                  color=line.get_color(), alpha=0.15, linewidth=0)
        axis.axvline(LAST_TEACHER_POSITION + 0.5, color="grey", linewidth=1)
        axis.text(LAST_TEACHER_POSITION - 2, 30, "a 77-token context ends here", color="grey", fontsize="small",
                  rotation=90, ha="right", va="bottom")
        axis.set_xlabel("token position of the distinguishing detail")
        axis.set_title(f"{'image->text' if direction.startswith('image') else 'text->image'} R@1, detail split")
        axis.set_ylim(-2, 102)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("R@1 (%)")
    seeds = ", ".join(str(run["seed"]) for run in per_seed)
    low, high = detail_position_range()
    figure.suptitle(f"colour grids: groups of captions that differ in one token, placed anywhere from token {low} "
                    f"to {high}; seed{'s' if len(per_seed) > 1 else ''} {seeds}"
                    + (" (line: mean, band: min to max)" if len(per_seed) > 1 else ""), fontsize="medium")
    handles, names = axes[0].get_legend_handles_labels()
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    figure.legend(handles, names, loc="lower center", ncol=min(4, len(names)), fontsize="small", frameon=False)
    figure.savefig(str(path), format="png", dpi=100)
    plt.close(figure)
    return str(path)


def timing_table(times) -> str:
    """Wall-clock and CPU seconds per step, summed over seeds; reused steps are left out."""
    totals: Dict[str, List[float]] = {}
    for t in times:
        if not t.reused:
            wall_cpu = totals.setdefault(t.step, [0.0, 0.0])
            wall_cpu[0] += t.wall_s
            wall_cpu[1] += t.cpu_s
    if not totals:
        return "\nevery step was reused (no times)"
    width = max(len(step) for step in totals)
    lines = ["", "step times (summed over seeds):", f"  {'step'.ljust(width)}  wall s   CPU s"]
    lines += [f"  {step.ljust(width)}  {wall:6.0f}  {cpu:6.0f}" for step, (wall, cpu) in totals.items()]
    wall, cpu = (sum(v[i] for v in totals.values()) for i in (0, 1))
    return "\n".join(lines + [f"  {'total'.ljust(width)}  {wall:6.0f}  {cpu:6.0f}"])
