"""Recall by a named CSV column (`--bucket-by-column NAME`): e.g. R@k by where in a long caption the detail a
held-out split tests sits (`detail_position`), beside the bucketing by caption length.

The column is read from each CSV benchmark's own file (`--csv NAME=PATH`, `--long-dci`), one value per data row,
in row order, which is the order of the benchmark's captions. A CSV benchmark without the column is evaluated
without column buckets (the run says so); the run stops only when no CSV benchmark has it. Buckets, per benchmark:
- `--bucket-column-edges E1,E2,...` given: numeric, a value v falls in "<=E1", "(E1, E2]", ..., ">EN" (kind
  "numeric");
- otherwise, a numeric column with more than QUANTILE_BUCKETS distinct values: QUANTILE_BUCKETS buckets of about
  equal size, cut at the quantiles of the benchmark's own values and labelled by the range of the values in each,
  e.g. "43-90" (kind "quantile"; results.json keeps the edges, which `--bucket-column-edges` reproduces);
- otherwise one bucket per distinct value, in numeric order when every value is a number, else in text order
  (kind "categorical").
Text->image results are bucketed by each caption's own row; image->text results by the row of the image's first
caption (a --csv file may name an image in several rows).
"""
import math
from bisect import bisect_left
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from training_ext.eval.datasets import BenchmarkError

FLAG = "--bucket-by-column"
KS = (1, 5, 10)
QUANTILE_BUCKETS = 4


@dataclass
class ColumnBuckets:
    """One benchmark's buckets: ``labels[indices[c]]`` is caption c's bucket; ``kind`` is "numeric" (edges given),
    "quantile" (edges from the values) or "categorical" (one bucket per value, ``edges`` None)."""
    labels: List[str]
    indices: List[int]
    kind: str
    edges: Optional[List[float]] = None


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


def range_label(low: float, high: float) -> str:
    """'43-90' for the values 43 to 90 ('-5 to -1' when negative; '7' for a single value)."""
    if low == high:
        return _format(low)
    return f"{_format(low)}{'-' if low >= 0 else ' to '}{_format(high)}"


def _as_number(value: str) -> Optional[float]:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def quantile_edges(numbers: Sequence[float], buckets: int = QUANTILE_BUCKETS) -> List[float]:
    """Upper edges that split ``numbers`` into at most ``buckets`` non-empty groups of about equal size: the k/buckets
    quantiles for k = 1 .. buckets-1, each the smallest value with at least that share of the values at or below it
    (Hyndman and Fan's type 1, numpy's method="inverted_cdf"). An edge repeated by ties, or equal to the largest
    value (it would leave the last group empty), is dropped, so heavy ties give fewer groups."""
    ordered = sorted(numbers)
    edges: List[float] = []
    for k in range(1, buckets):
        edge = ordered[math.ceil(k * len(ordered) / buckets) - 1]
        if edge < ordered[-1] and (not edges or edge > edges[-1]):
            edges.append(edge)
    return edges


def assign_buckets(values: Sequence[str], edges: Optional[Sequence[float]], where) -> ColumnBuckets:
    """The buckets of one benchmark's column ``values`` (one string per caption), by the rules of the module
    docstring; where(i) names value i's row for error messages.

    Raises:
        BenchmarkError: with ``edges``, a value that is not a number (names the row).
    """
    numbers = [_as_number(value) for value in values]
    if edges is not None:
        for row, number in enumerate(numbers):
            if number is None:
                raise BenchmarkError(f"{where(row)}: {FLAG} value {values[row]!r} is not a number "
                                     f"(numeric edges were given with --bucket-column-edges)")
        edges = list(edges)
        return ColumnBuckets(numeric_labels(edges), [bisect_left(edges, n) for n in numbers], "numeric", edges)
    numeric = all(number is not None for number in numbers)
    if numeric and len(set(numbers)) > QUANTILE_BUCKETS:
        cuts = quantile_edges(numbers)
        indices = [bisect_left(cuts, n) for n in numbers]  # v <= cuts[i] -> i
        members = [[n for n, i in zip(numbers, indices) if i == b] for b in range(len(cuts) + 1)]
        return ColumnBuckets([range_label(min(m), max(m)) for m in members], indices, "quantile", cuts)
    distinct = set(values)
    if numeric:
        labels = sorted(distinct, key=lambda value: (float(value), value))
    else:
        labels = sorted(distinct)
    position = {label: index for index, label in enumerate(labels)}
    return ColumnBuckets(labels, [position[value] for value in values], "categorical")


def read_bucket_column(csv_path: str, column: str, expected_rows: int,
                       separator: str = "\t") -> Tuple[Optional[List[str]], object]:
    """(the column's values, one per data row, or None when the file has no such column; the table, for row names
    and its header).

    Raises:
        BenchmarkError: an unreadable file, or a row count other than the benchmark's caption count.
    """
    from training_ext.common.csv_table import CsvColumnError, read_csv_table
    try:
        table = read_csv_table(csv_path, {FLAG: column}, separator=separator)
    except CsvColumnError:
        return None, read_csv_table(csv_path, {}, separator=separator)
    except (KeyError, ValueError, FileNotFoundError) as error:
        raise BenchmarkError(str(error.args[0]) if isinstance(error, KeyError) else str(error)) from error
    values = table.columns[column]
    if len(values) != expected_rows:
        raise BenchmarkError(f"{csv_path}: {len(values)} data rows but the benchmark read {expected_rows} captions: "
                             f"{FLAG} needs one value per caption")
    return values, table


def bucket_by_column(image_ranks, text_ranks, caption_image, buckets: ColumnBuckets, column: str) -> Dict:
    """results.json's recall_by_column: R@1/5/10 in both directions per bucket of the column, with the column's
    name, the kind of buckets and their upper edges (None for one bucket per value)."""
    import torch
    from training_ext.eval.length_buckets import metrics_by_bucket
    caption_bucket = torch.as_tensor(list(buckets.indices), dtype=torch.long)
    image_bucket = torch.full((image_ranks.shape[0],), -1, dtype=torch.long)
    for caption in reversed(range(len(buckets.indices))):  # the image's first caption wins
        image_bucket[int(caption_image[caption])] = caption_bucket[caption]
    return {"column": column, "kind": buckets.kind, "edges": buckets.edges,
            "buckets": metrics_by_bucket(image_ranks, text_ranks, caption_bucket, image_bucket, buckets.labels, KS)}
