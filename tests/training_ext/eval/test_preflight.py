"""Every model spec, checkpoint and benchmark is checked before the first model runs; each finished model's results
are on disk before the next one starts; every result prints its protocol card."""
import json
import zipfile

import pytest
import torch

from training_ext.eval.runner import main

from support.benchmark_fixtures import make_docci, make_urban1k

COMMON = ["--workers", "0", "--no-progress", "--device", "cpu"]


def test_missing_checkpoint_stops_before_any_model_runs(tmp_path, capsys, loads):
    root, _ = make_urban1k(str(tmp_path / "urban"), count=4)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "tiny-clip", "--model", "tiny-clip-rope-248", "--model", "tiny-clip:missing.pt",
              "--urban1k", root, "--output-dir", str(out), *COMMON])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: --model tiny-clip:missing.pt: checkpoint file not found" in err and "missing.pt" in err
    assert loads == [] and not out.exists()


def test_a_truncated_checkpoint_stops_before_any_model_runs(tmp_path, capsys, loads):
    root, _ = make_urban1k(str(tmp_path / "urban"), count=4)
    whole, cut = tmp_path / "whole.pt", tmp_path / "cut.pt"
    torch.save({"w": torch.zeros(64)}, whole)
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", f"tiny-clip-rope-248:{cut}", "--urban1k", root, "--output-dir", str(tmp_path / "out"),
              *COMMON])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --model tiny-clip-rope-248:{cut}: ") and "truncated or not a weights file" in err
    assert "Traceback" not in err and loads == []


def test_unknown_model_and_bad_benchmark_stop_with_an_error_line(tmp_path, capsys, loads):
    root, _ = make_urban1k(str(tmp_path / "urban"), count=4)
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "tiny-clip", "--model", "tiny-clp-rope-284", "--urban1k", root,
              "--output-dir", str(tmp_path / "out"), *COMMON])
    assert exit_info.value.code == 2
    assert "error: --model tiny-clp-rope-284: Unknown model config 'tiny-clp-rope-284': no base config 'tiny-clp' " \
           "for a rope variant. Close matches: tiny-clip" in capsys.readouterr().err
    docci, _, _ = make_docci(str(tmp_path / "d"))
    with open(f"{docci}/docci_descriptions.jsonlines", "a") as f:
        f.write("{broken\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "tiny-clip", "--urban1k", root, "--docci", docci, "--output-dir", str(tmp_path / "o"),
              *COMMON])
    assert exit_info.value.code == 2
    assert "docci_descriptions.jsonlines line 9" in capsys.readouterr().err
    assert loads == []


def test_a_crash_in_model_three_keeps_models_one_and_two_on_disk(tmp_path, capsys, loads):
    root, _ = make_urban1k(str(tmp_path / "urban"), count=4)
    broken = tmp_path / "broken.pt"
    with zipfile.ZipFile(broken, "w") as archive:  # a whole zip, so it passes the up-front check; loading fails
        archive.writestr("x", "not a checkpoint")
    out = tmp_path / "out"
    specs = ["tiny-clip", "tiny-clip-rope-248", f"tiny-clip:{broken}"]
    with pytest.raises(Exception):
        main(["--models", *specs, "--urban1k", root, "--output-dir", str(out), *COMMON])
    assert loads == specs
    saved = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in saved["results"]] == specs[:2]
    assert saved["complete"] is False and saved["models_pending"] == specs[2:]
    assert "Incomplete" in (out / "results.md").read_text()
    printed = capsys.readouterr().out
    # each finished result printed its protocol card, counts included
    assert printed.count("protocol card: urban1k") == 2
    assert "4 images, 4 captions (the full release has 1000 images" in printed
    assert "tie rule:       against" in printed and "precision:      fp32" in printed


def test_a_finished_run_is_marked_complete(tmp_path):
    root, _ = make_urban1k(str(tmp_path / "urban"), count=4)
    main(["--model", "tiny-clip", "--urban1k", root, "--output-dir", str(tmp_path / "out"), *COMMON])
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["complete"] is True and saved["models_pending"] == []
    card = saved["results"][0]["protocol_card"]
    assert (card["num_images"], card["num_captions"], card["tie_rule"]) == (4, 4, "against")
    assert saved["results"][0]["tie_rule"] == "against"
    assert "## Protocol cards" in (tmp_path / "out" / "results.md").read_text()
