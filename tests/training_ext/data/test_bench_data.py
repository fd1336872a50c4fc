"""scripts/bench_data.py: its table's ratios and met/MISSED verdicts follow from the measured numbers, and a small
run measures every side in a fresh process."""
import json

import pytest

from support.data_prep_fixtures import load_script

bench = load_script("bench_data")


def _row(table, kind):
    line = next(line for line in table.splitlines() if line.startswith(f"| {kind} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_table_judges_each_side_against_the_targets():
    results = [
        {"kind": "CsvDataset", "rows": 10, "seconds": 3.0, "added_mb": 400.0, "worker_growth_mb": 90.0},
        {"kind": "stage 1", "rows": 10, "seconds": 0.9, "added_mb": 100.0, "worker_growth_mb": 0.5},
        {"kind": "stage 2", "rows": 10, "seconds": 1.5, "added_mb": 250.0, "worker_growth_mb": 12.0},
        {"kind": "teacher cache", "rows": 10, "seconds": 0.1, "added_mb": 5.0, "worker_growth_mb": 0.1},
    ]
    table = bench.table(results, touch=20000)
    assert _row(table, "stage 1")[3:7] == ["0.30 (met <= 0.33)", "100", "0.25 (met <= 0.50)", "0.5 (met <= 10)"]
    assert _row(table, "stage 2")[3:7] == ["0.50 (MISSED <= 0.33)", "250", "0.62 (MISSED <= 0.50)",
                                           "12.0 (MISSED <= 10)"]
    assert "after 20000 rows" in table.splitlines()[0]


@pytest.mark.slow  # measures in subprocesses
def test_small_run_writes_the_table_and_the_numbers(tmp_path, capsys):
    assert bench.main(["--rows", "3000", "--touch", "500", "--distinct-images", "10", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "bench_data.json").read_text())
    assert [r["kind"] for r in results] == ["CsvDataset", "stage 1", "stage 2", "teacher cache"]
    assert all(r["rows"] == 3000 and r["seconds"] > 0 for r in results)  # every side holds every row
    table = (tmp_path / "bench_data.md").read_text().strip()
    assert table == bench.table(results, 500) and table in capsys.readouterr().out
