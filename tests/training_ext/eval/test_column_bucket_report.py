"""--bucket-by-column as a user meets it: default quantile buckets (checked against numpy's quantiles), benchmarks
without the column evaluated and named, the per-bucket table on the terminal and in results.md, and a closing line
that lists every file the run wrote."""
import json
import re

import numpy as np
import pytest

from training_ext.eval.column_buckets import ColumnBuckets, assign_buckets
from training_ext.eval.runner import main

from support.benchmark_fixtures import make_long_dci

# 10 captions, 8 distinct positions (ties at 60 and 200): more than 4 values, so quantile buckets by default
POSITIONS = [43, 200, 75, 60, 120, 237, 60, 90, 200, 150]
QUARTERS = [0.25, 0.5, 0.75]


def expected_quantiles(values):
    """Quartiles as numpy computes them (Hyndman and Fan type 1), without repeats and short of the maximum."""
    cuts = np.quantile(np.asarray(values, dtype=float), QUARTERS, method="inverted_cdf")
    return [float(c) for c in dict.fromkeys(cuts) if c < max(values)]


@pytest.mark.parametrize("values", [POSITIONS, list(range(1, 65)), [0.5, 0.1, 0.9, 0.3, 0.7, 0.2],
                                    [1] * 10 + [2, 2, 3, 4, 5], [-5, -1, -3, -2, -4, 0, 2]])
def test_default_buckets_of_a_numeric_column_are_its_quantiles(values):
    buckets = assign_buckets([str(v) for v in values], None, str)
    assert buckets.kind == "quantile"
    assert buckets.edges == expected_quantiles(values)
    assert buckets.indices == np.searchsorted(buckets.edges, values, side="left").tolist()  # v <= edge i -> i
    assert 2 <= len(buckets.labels) <= 4
    for index, label in enumerate(buckets.labels):
        members = [v for v, i in zip(values, buckets.indices) if i == index]
        low, high = min(members), max(members)
        assert label == (f"{low:g}" if low == high else f"{low:g}-{high:g}" if low >= 0 else f"{low:g} to {high:g}")
    if len(set(values)) == len(values):  # no ties: sizes differ by at most one bucket's rounding
        sizes = np.bincount(buckets.indices)
        assert sizes.max() - sizes.min() <= 1


def test_few_values_or_text_keep_one_bucket_per_value():
    assert assign_buckets(["3", "1", "3", "2", "4"], None, str) == ColumnBuckets(
        ["1", "2", "3", "4"], [2, 0, 2, 1, 3], "categorical")
    assert assign_buckets(["b", "a", "na", "b"], None, str) == ColumnBuckets(["a", "b", "na"], [1, 0, 2, 1],
                                                                             "categorical")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("column_report")
    with_column, _ = make_long_dci(str(tmp / "detail"), count=len(POSITIONS), extra_columns={
        "detail_position": POSITIONS})
    without_column, _ = make_long_dci(str(tmp / "ordinary"), count=4, seed=5)
    return {"tmp": tmp, "detail": with_column, "ordinary": without_column}


def run(out, csvs, *extra):
    main(["--model", "tiny-clip-rope-248", *[a for name, path in csvs for a in ("--csv", f"{name}={path}")],
          "--output-dir", str(out), "--workers", "0", "--no-progress", *extra])
    return json.loads((out / "results.json").read_text())


def metrics_only(buckets):
    return [{k: v for k, v in b.items() if k != "bucket"} for b in buckets]


def test_a_benchmark_without_the_column_is_evaluated_and_named(data, capsys):
    out = data["tmp"] / "default"
    saved = run(out, [("detail", data["detail"]), ("ordinary", data["ordinary"])],
                "--bucket-by-column", "detail_position")
    captured = capsys.readouterr()
    by_benchmark = {r["benchmark"]: r for r in saved["results"]}
    assert set(by_benchmark) == {"detail", "ordinary"} and "recall_by_column" not in by_benchmark["ordinary"]
    notes = [line for line in captured.err.splitlines() if "evaluated without --bucket-by-column" in line]
    assert notes == [f"note: ordinary: evaluated without --bucket-by-column buckets ({data['ordinary']} has no "
                     f"column 'detail_position')"]

    by_column = by_benchmark["detail"]["recall_by_column"]
    edges = expected_quantiles(POSITIONS)
    assert (by_column["kind"], by_column["edges"]) == ("quantile", edges)
    expected_counts = np.bincount(np.searchsorted(edges, POSITIONS, side="left")).tolist()
    assert [b["num_captions"] for b in by_column["buckets"]] == expected_counts
    assert [b["num_images"] for b in by_column["buckets"]] == expected_counts  # one caption per image

    # the same buckets as the explicit edges give (whose numbers test_column_buckets checks against a naive count)
    explicit = run(data["tmp"] / "explicit", [("detail", data["detail"])], "--bucket-by-column", "detail_position",
                   "--bucket-column-edges", ",".join(f"{e:g}" for e in edges))["results"][0]["recall_by_column"]
    assert metrics_only(explicit["buckets"]) == metrics_only(by_column["buckets"])

    # the table: terminal and results.md, a row per bucket with its counts and R@k to two decimals
    markdown = (out / "results.md").read_text()
    for bucket in by_column["buckets"]:
        cells = ["detail", "tiny-clip-rope-248", bucket["bucket"], str(bucket["num_captions"]),
                 str(bucket["num_images"])] + [f"{bucket[f'{d}_R@{k}']:.2f}" for d in ("image_to_text",
                                                                                      "text_to_image")
                                               for k in (1, 5, 10)]
        row = re.compile(r"^\| " + r" +\| ".join(map(re.escape, cells)) + r" +\|$", re.M)
        assert row.search(captured.out) and row.search(markdown), cells
    assert "- not bucketed (no column 'detail_position', or not a CSV benchmark): ordinary" in markdown
    assert f"--bucket-column-edges {','.join(f'{e:g}' for e in edges)}" in markdown


def test_the_closing_line_lists_every_file_written(data, capsys):
    out = data["tmp"] / "closing"
    run(out, [("detail", data["detail"])], "--bucket-by-column", "detail_position", "--perturb", "cut-77")
    closing = capsys.readouterr().err.strip().splitlines()[-1]
    match = re.fullmatch(r"wrote (.+) to (.+)", closing)
    assert match and match.group(2) == str(out)
    assert sorted(match.group(1).split(", ")) == sorted(p.name for p in out.iterdir())
    assert {"recall_by_column.png", "caption_perturbations.png", "recall_by_length.png"} <= set(
        match.group(1).split(", "))


def test_no_benchmark_with_the_column_stops_with_every_files_columns(data, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(data["tmp"] / "none", [("ordinary", data["ordinary"]), ("detail", data["detail"])],
            "--bucket-by-column", "detail_postion")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no CSV benchmark has a column 'detail_postion'" in err
    assert f"ordinary ({data['ordinary']}): filepath, title" in err
    assert f"detail ({data['detail']}): filepath, title, detail_position" in err
    assert "leave --bucket-by-column out" in err and "set the column with" not in err
