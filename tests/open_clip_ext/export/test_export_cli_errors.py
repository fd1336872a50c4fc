"""`python -m open_clip_ext.export`: a missing checkpoint, an unreadable card file, no Hub token and no network are
one `error:` line naming the flag and the fix, found before the model is built; every flag has help text."""
import argparse
import json

import huggingface_hub
import open_clip
import pytest
import torch
from huggingface_hub.errors import HTTPError, LocalTokenNotFoundError

from open_clip_ext.export import __main__ as cli
from support.export_fixtures import ROPE


@pytest.fixture
def built(monkeypatch):
    """The model names open_clip.create_model was called with."""
    calls, real = [], open_clip.create_model

    def recording(name, *args, **kwargs):
        calls.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(open_clip, "create_model", recording)
    return calls


def _error_line(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err.strip()


def test_a_missing_checkpoint_is_named_before_the_model_is_built(tmp_path, capsys, built):
    missing = tmp_path / "stage2.pt"
    line = _error_line(capsys, ["transformers", "--model", ROPE, "--pretrained", str(missing),
                                "--output", str(tmp_path / "out")])
    assert line.startswith(f"error: --pretrained {missing}: checkpoint file not found: {missing}")
    assert built == [] and not (tmp_path / "out").exists()


def test_an_unknown_model_stops_with_its_close_names(tmp_path, built, capsys):
    line = _error_line(capsys, ["open-clip", "--model", "tiny-clip-ropee-248", "--output", str(tmp_path)])
    assert line.startswith("error: --model ") and "Did you mean: tiny-clip-rope-248" in line
    assert built == []


def test_a_truncated_checkpoint_is_one_line_before_the_model_is_built(tmp_path, built, capsys):
    whole = tmp_path / "whole.pt"
    torch.save({"w": torch.zeros(64)}, whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    line = _error_line(capsys, ["transformers", "--model", ROPE, "--pretrained", str(cut),
                                "--output", str(tmp_path / "out")])
    assert line.startswith(f"error: --pretrained {cut}: {cut}: truncated or not a weights file (a zip archive")
    assert built == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, content, expected", [
    ("--recipe-file", None, "error: --recipe-file {path}: cannot read it ("),
    ("--results", None, "error: --results {path}: cannot read evaluation results ("),
    ("--results", {"results": [{"model": "x"}]}, "error: --results {path}: results[0] lacks"),
])
def test_card_files_are_read_before_the_model_is_built(tmp_path, capsys, built, flag, content, expected):
    path = tmp_path / "card_input"
    if content is not None:
        path.write_text(json.dumps(content))
    line = _error_line(capsys, ["open-clip", "--model", ROPE, "--output", str(tmp_path / "out"), flag, str(path)])
    assert line.startswith(expected.format(path=path))
    assert built == []


def _raising(error):
    def whoami(*args, **kwargs):
        raise error
    return whoami


@pytest.mark.parametrize("error, expected", [
    (HTTPError("[Errno -2] Name or service not known"), "error: push: cannot reach the Hugging Face Hub ("),
    (LocalTokenNotFoundError("no token"), "error: push: no Hugging Face token: run `hf auth login`"),
])
def test_push_without_network_or_token_stops_before_the_model_is_built(capsys, monkeypatch, built, error, expected):
    monkeypatch.setattr(huggingface_hub, "whoami", _raising(error))
    line = _error_line(capsys, ["push", "--model", ROPE, "--repo-id", "me/tiny-rope"])
    assert line.startswith(expected)
    assert built == []


def test_an_upload_that_fails_midway_is_one_line(capsys, monkeypatch, built):
    monkeypatch.setattr(huggingface_hub, "whoami", lambda **kwargs: {"name": "me"})
    monkeypatch.setattr(huggingface_hub, "create_repo", _raising(HTTPError("connection reset")))
    line = _error_line(capsys, ["push", "--model", ROPE, "--repo-id", "me/tiny-rope"])
    assert line.startswith("error: push to me/tiny-rope failed (HTTPError: connection reset); run the same command")
    assert built == [ROPE]


def test_every_flag_has_help_text(monkeypatch):
    parsers, original = [], argparse.ArgumentParser.parse_args
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args",
                        lambda self, *args, **kwargs: parsers.append(self) or original(self, *args, **kwargs))
    cli.parse_args(["push", "--model", ROPE, "--repo-id", "me/x"])
    subparsers = next(a for a in parsers[0]._actions if isinstance(a, argparse._SubParsersAction))
    undocumented = [(name, action.option_strings[0]) for name, command in subparsers.choices.items()
                    for action in command._actions if action.option_strings and not action.help]
    assert undocumented == []
