"""--bucket-by-column: any metric bucketed by a named CSV column (numeric with edges, or categorical), checked
against a naive per-bucket recomputation."""
import json

import pytest

from training_ext.eval.column_buckets import ColumnBuckets, assign_buckets, parse_edges
from training_ext.eval.datasets import BenchmarkError
from training_ext.eval.runner import main

from support.benchmark_fixtures import make_long_dci
from support.naive_retrieval import build_model, naive_image_features, naive_metrics, naive_text_features

POSITIONS = ["0.1", "0.3", "0.35", "0.9", "0.6", "0.05"]
KINDS = ["colour", "count", "colour", "position", "count", "colour"]


def test_numeric_and_categorical_buckets():
    assert assign_buckets(["0.1", "0.25", "0.3", "0.9"], [0.25, 0.5], str) == ColumnBuckets(
        ["<=0.25", "(0.25, 0.5]", ">0.5"], [0, 0, 1, 2], "numeric", [0.25, 0.5])
    assert assign_buckets(["b", "a", "b", "c"], None, str) == ColumnBuckets(["a", "b", "c"], [1, 0, 1, 2],
                                                                             "categorical")
    # numbers sort as numbers; a numeric column with at most 4 distinct values keeps one bucket per value
    assert assign_buckets(["10", "9", "10"], None, str) == ColumnBuckets(["9", "10"], [1, 0, 1], "categorical")
    with pytest.raises(BenchmarkError, match="row 1: --bucket-by-column value 'near' is not a number"):
        assign_buckets(["0.1", "near"], [0.5], lambda row: f"row {row}")
    with pytest.raises(ValueError, match="strictly increasing"):
        parse_edges("0.5,0.2")


def naive_buckets(ranks_i2t, ranks_t2i, bucket_of, labels):
    """One caption per image (row c is image c): bucket membership straight from the column."""
    rows = []
    for label in labels:
        members = [c for c in range(len(bucket_of)) if bucket_of[c] == label]
        row = {"bucket": label, "num_captions": len(members), "num_images": len(members)}
        for k in (1, 5, 10):
            for name, ranks in (("image_to_text", ranks_i2t), ("text_to_image", ranks_t2i)):
                row[f"{name}_R@{k}"] = 100.0 * sum(ranks[c] < k for c in members) / len(members) if members else None
        rows.append(row)
    return rows


def assert_rows_equal(rows, expected):
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected):
        assert row == pytest.approx(want), want["bucket"]


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("columns")
    csv_path, data = make_long_dci(str(tmp / "dci"), extra_columns={"detail_position": POSITIONS, "kind": KINDS})
    model, preprocess, tokenizer = build_model("tiny-clip-rope-248")
    similarity = (naive_image_features(model, preprocess, data["image_paths"])
                  @ naive_text_features(model, tokenizer, data["captions"]).t())
    _, ranks_i2t, ranks_t2i = naive_metrics(similarity, data["caption_image"])
    return {"tmp": tmp, "csv": csv_path, "ranks": (ranks_i2t, ranks_t2i)}


def run(csv_run, out, *extra):
    main(["--model", "tiny-clip-rope-248", "--csv", f"held-out={csv_run['csv']}", "--output-dir", str(out),
          "--workers", "0", "--no-progress", *extra])
    return json.loads((out / "results.json").read_text())


def test_numeric_column_buckets_match_naive(csv_run):
    out = csv_run["tmp"] / "numeric"
    saved = run(csv_run, out, "--bucket-by-column", "detail_position", "--bucket-column-edges", "0.3,0.6")
    by_column = saved["results"][0]["recall_by_column"]
    assert (by_column["column"], by_column["kind"], by_column["edges"]) == ("detail_position", "numeric", [0.3, 0.6])
    labels = ["<=0.3", "(0.3, 0.6]", ">0.6"]
    bucket_of = [labels[0] if float(v) <= 0.3 else labels[1] if float(v) <= 0.6 else labels[2] for v in POSITIONS]
    assert_rows_equal(by_column["buckets"], naive_buckets(*csv_run["ranks"], bucket_of, labels))
    assert saved["bucket_by_column"] == "detail_position" and saved["bucket_column_edges"] == [0.3, 0.6]
    with open(out / "recall_by_column.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_categorical_column_buckets_match_naive(csv_run):
    saved = run(csv_run, csv_run["tmp"] / "categorical", "--bucket-by-column", "kind")
    by_column = saved["results"][0]["recall_by_column"]
    assert by_column["kind"] == "categorical"
    assert_rows_equal(by_column["buckets"], naive_buckets(*csv_run["ranks"], KINDS, ["colour", "count", "position"]))


def test_a_missing_column_stops_before_any_model_runs(csv_run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(csv_run, csv_run["tmp"] / "missing", "--bucket-by-column", "no_such_column")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "'no_such_column'" in err and "--bucket-by-column" in err
