"""Recall by a named CSV column (`--bucket-by-column NAME`): e.g. R@k by where in a long caption the detail a
held-out split tests sits (`detail_position`), beside the bucketing by caption length.

The column is read from each CSV benchmark's own file (`--csv NAME=PATH`, `--long-dci`), one value per data row,
in row order, which is the order of the benchmark's captions. Numeric buckets when `--bucket-column-edges` gives
upper edges (a value v falls in "<=e0", "(e0, e1]", ..., ">eN"); categorical otherwise (one bucket per distinct
value, in numeric order when every value is a number, else in text order). A caption's image is bucketed by the
value of the image's first caption (a CSV benchmark has one caption per image).
"""
from bisect import bisect_left
from typing import Dict, List, Optional, Sequence, Tuple

from training_ext.eval.datasets import BenchmarkError

FLAG = "--bucket-by-column"
KS = (1, 5, 10)


def parse_edges(text: Optional[str]) -> Optional[List[float]]:
    """'0.25,0.5' -> [0.25, 0.5]; ValueError unless strictly increasing numbers."""
    if text is None:
        return None
    try:
        edges = [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None
    if any(b <= a for a, b in zip(edges[:-1], edges[1:])):
        raise ValueError(f"edges must be strictly increasing, got {edges}")
    return edges


def _format(value: float) -> str:
    return f"{value:g}"


def numeric_labels(edges: Sequence[float]) -> List[str]:
    labels = [f"<={_format(edges[0])}"]
    labels += [f"({_format(a)}, {_format(b)}]" for a, b in zip(edges[:-1], edges[1:])]
    return labels + [f">{_format(edges[-1])}"]


def _as_number(value: str) -> Optional[float]:
    try:
        return float(value)
    except ValueError:
        return None


def assign_buckets(values: Sequence[str], edges: Optional[Sequence[float]], where) -> Tuple[List[str], List[int]]:
    """(bucket labels, bucket index of every value). where(i) names value i's row for error messages."""
    if edges is not None:
        indices = []
        for row, value in enumerate(values):
            number = _as_number(value)
            if number is None:
                raise BenchmarkError(f"{where(row)}: {FLAG} value {value!r} is not a number "
                                     f"(numeric edges were given with --bucket-column-edges)")
            indices.append(bisect_left(list(edges), number))  # v <= edges[i] -> i
        return numeric_labels(edges), indices
    distinct = set(values)
    numbers = {value: _as_number(value) for value in distinct}
    if all(number is not None for number in numbers.values()):
        labels = sorted(distinct, key=lambda value: (numbers[value], value))
    else:
        labels = sorted(distinct)
    position = {label: index for index, label in enumerate(labels)}
    return labels, [position[value] for value in values]


def read_bucket_column(csv_path: str, column: str, expected_rows: int, separator: str = "\t") -> Tuple[List[str], object]:
    """The column's values (one per data row) and the table (for row names); stops when the column is missing
    or the row count is not the benchmark's caption count."""
    from training_ext.common.csv_table import read_csv_table
    try:
        table = read_csv_table(csv_path, {FLAG: column}, separator=separator)
    except (KeyError, ValueError, FileNotFoundError) as error:
        raise BenchmarkError(str(error.args[0]) if isinstance(error, KeyError) else str(error)) from error
    values = table.columns[column]
    if len(values) != expected_rows:
        raise BenchmarkError(f"{csv_path}: {len(values)} data rows but the benchmark read {expected_rows} captions: "
                             f"{FLAG} needs one value per caption")
    return values, table


def bucket_by_column(image_ranks, text_ranks, caption_image, labels: Sequence[str], indices: Sequence[int],
                     column: str, edges: Optional[Sequence[float]]) -> Dict:
    """results.json's recall_by_column: R@1/5/10 in both directions per bucket of the column."""
    import torch
    from training_ext.eval.length_buckets import metrics_by_bucket
    caption_bucket = torch.as_tensor(list(indices), dtype=torch.long)
    image_bucket = torch.full((image_ranks.shape[0],), -1, dtype=torch.long)
    for caption in reversed(range(len(indices))):  # the image's first caption wins
        image_bucket[int(caption_image[caption])] = caption_bucket[caption]
    return {"column": column, "kind": "numeric" if edges is not None else "categorical",
            "edges": list(edges) if edges is not None else None,
            "buckets": metrics_by_bucket(image_ranks, text_ranks, caption_bucket, image_bucket, labels, KS)}
