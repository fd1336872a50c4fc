"""`--csv NAME=PATH`: any open_clip caption CSV as a named benchmark (the demo's test splits use it)."""
import json

import pytest

from training_ext.eval.runner import main

from support.benchmark_fixtures import make_long_dci


def test_caption_csv_benchmark_equals_the_same_file_read_as_long_dci(tmp_path):
    csv_path, _ = make_long_dci(str(tmp_path / "dci"))
    common = ["--model", "tiny-clip-rope-248", "--workers", "0", "--no-progress", "--device", "cpu"]
    main([*common, "--long-dci", csv_path, "--output-dir", str(tmp_path / "a")])
    main([*common, "--csv", f"held-out={csv_path}", "--output-dir", str(tmp_path / "b")])
    as_dci = json.loads((tmp_path / "a" / "results.json").read_text())["results"][0]
    as_csv = json.loads((tmp_path / "b" / "results.json").read_text())["results"][0]
    assert as_csv["benchmark"] == "held-out" and "open_clip caption CSV" in as_csv["protocol"]
    assert as_csv["metrics"] == as_dci["metrics"] and as_csv["num_images"] == as_dci["num_images"]


@pytest.mark.parametrize("entry", ["no-equals-sign", "=path.csv", "urban1k=x.csv"])
def test_bad_csv_benchmark_entries_are_refused(entry, capsys):
    with pytest.raises(SystemExit):
        main(["--model", "tiny-clip", "--csv", entry])
    assert "--csv" in capsys.readouterr().err
