"""docs/export.md's code blocks, run as written on tiny stand-in models, in a scratch folder as working directory.

Substitutions (nothing else in a block is changed):
- model names: ``LongCLIP-ViT-L-14`` -> ``tiny-clip-longclip-248``, ``ViT-L-14-rope-248`` -> ``tiny-clip-rope-248``;
  the checkpoint files the commands name (``longclip-L.pt``, ``stage2.pt``) are those tiny models' state dicts,
  written into the scratch folder under those names;
- ``hf-hub:me/ViT-L-14-rope-248`` -> ``local-dir:rope-L-openclip`` (the folder the ``open-clip`` command of the same
  section writes: the Hub layout without the Hub);
- ``captions`` (used, not defined, by the snippets) is set to a short caption and one cut at 248 tokens;
- ``python -m open_clip_ext.export ARGS`` runs as ``open_clip_ext.export.__main__.main(ARGS)`` in this process.
Skipped, each by name: ``pip install`` (the network), ``push`` (the network and a Hub account), the SDXL example
(several GB of released weights and a GPU). The Hub CLI commands of the prose are checked against the installed
``hf``. The numbers the snippets compute are compared with open_clip's own on the same weights.
"""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch

from open_clip_ext.export.__main__ import main as export_main, parse_args
from support.export_fixtures import LONGCLIP, ROPE, make_model, max_diff, words

DOC = Path(__file__).resolve().parents[3] / "docs" / "export.md"
NAMES = {"LongCLIP-ViT-L-14": LONGCLIP, "ViT-L-14-rope-248": ROPE,
         "hf-hub:me/ViT-L-14-rope-248": "local-dir:rope-L-openclip"}
CAPTIONS = ["a red cat on a wooden table", words(300)]
# each block by a phrase only it contains -> how the tests treat it
BLOCKS = {
    "pip install 'open_clip_ext[hf]'": "skip: installs from the package index (needs the network)",
    "export transformers --model LongCLIP-ViT-L-14": "run: test_transformers_section",
    'CLIPModel.from_pretrained("longclip-L-hf")': "run: test_transformers_section",
    'AutoModel.from_pretrained("rope-L-hf"': "run: test_transformers_section",
    "open_clip_ext.export push": "run: test_hub_section, all but the push command (in SKIPPED_STEPS)",
    'create_model_from_pretrained("hf-hub:': "run: test_hub_section",
    "StableDiffusionXLPipeline.from_pretrained": "skip: needs SDXL base, ViT-bigG and Long-CLIP's released weights "
                                                 "(several GB from the Hub) and a GPU",
}
# the Hub CLI commands the prose gives -> the subcommand of the installed `hf` that runs them
HF_COMMANDS = {"hf auth login": ["auth", "login"], "hf upload me/rope-L-hf rope-L-hf": ["upload"]}
# steps inside run blocks or the prose that are not run
SKIPPED_STEPS = {
    "python -m open_clip_ext.export push": "needs the network and a Hub account (push_to_hub's Hub calls are "
                                           "tested against a folder in test_hub.py)",
    "hf auth login": "needs a Hub account (the subcommand is checked against the installed hf)",
    "hf upload me/rope-L-hf rope-L-hf": "needs the network and a Hub account (the subcommand is checked against "
                                        "the installed hf)",
}


def code_blocks():
    """[(language, code)] of docs/export.md's fenced blocks, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```", DOC.read_text(encoding="utf-8"), flags=re.S | re.M)


def block(phrase: str) -> str:
    found = [code for _, code in code_blocks() if phrase in code]
    assert len(found) == 1, f"docs/export.md: {len(found)} code blocks contain {phrase!r}"
    return found[0]


def substituted(code: str) -> str:
    for name in sorted(NAMES, key=len, reverse=True):  # the longer hf-hub name before the model name it contains
        code = code.replace(name, NAMES[name])
    return code


def commands(code: str):
    """The shell commands of a bash block (backslash continuations joined), split into words."""
    return [shlex.split(line) for line in code.replace("\\\n", " ").splitlines() if line.strip()]


def run_export_commands(code: str, skip=()) -> int:
    ran = 0
    for words_ in commands(substituted(code)):
        assert words_[:3] == ["python", "-m", "open_clip_ext.export"], words_
        if words_[3] in skip:
            continue
        export_main(words_[3:])
        ran += 1
    return ran


def run_python(code: str, namespace: dict) -> dict:
    exec(compile(substituted(code), str(DOC), "exec"), namespace)
    return namespace


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """The scratch folder as working directory, with the checkpoints the commands name; returns the models."""
    monkeypatch.chdir(tmp_path)
    models = {"longclip": make_model(LONGCLIP, seed=11), "rope": make_model(ROPE, seed=12)}
    torch.save(models["longclip"].state_dict(), tmp_path / "longclip-L.pt")
    torch.save(models["rope"].state_dict(), tmp_path / "stage2.pt")
    return models


def open_clip_features(model, name):
    with torch.no_grad():
        return model.encode_text(open_clip.get_tokenizer(name)(CAPTIONS))


def test_every_code_block_is_run_or_skipped_by_name():
    for language, code in code_blocks():
        assert sum(phrase in code for phrase in BLOCKS) == 1, f"a {language} block no test covers:\n{code}"


def test_transformers_section(workdir):
    assert run_export_commands(block("export transformers --model LongCLIP-ViT-L-14")) == 2
    assert (Path("longclip-L-hf") / "config.json").is_file() and (Path("rope-L-hf") / "vision").is_dir()

    # with the installed transformers (4.x returns a tensor, 5.x an output object) the snippet gives the features
    features = run_python(block('CLIPModel.from_pretrained("longclip-L-hf")'), {"captions": CAPTIONS})["text_features"]
    assert isinstance(features, torch.Tensor) and features.shape == (2, 64)
    assert max_diff(features, open_clip_features(workdir["longclip"], LONGCLIP)) < 1e-5

    namespace = run_python(block('AutoModel.from_pretrained("rope-L-hf"'), {"captions": CAPTIONS})
    out = namespace["out"]
    assert max_diff(out.text_embeds, open_clip_features(workdir["rope"], ROPE)) < 1e-5
    assert out.last_hidden_state.shape == (2, 248, 64) and len(out.hidden_states) == 3  # embeddings + 2 blocks
    assert namespace["encoder"](input_ids=namespace["ids"]).last_hidden_state.shape == (2, 248, 64)


def test_hub_section(workdir):
    assert run_export_commands(block("open_clip_ext.export push"), skip={"push"}) == 1
    namespace = run_python(block('create_model_from_pretrained("hf-hub:'), {})
    model, tokenizer = namespace["model"].eval(), namespace["tokenizer"]
    ids = tokenizer(CAPTIONS)
    assert ids.shape == (2, 248)
    with torch.no_grad():
        assert max_diff(model.encode_text(ids), open_clip_features(workdir["rope"], ROPE)) < 1e-6


@pytest.mark.parametrize("phrase", [p for p, how in BLOCKS.items() if how.startswith("skip")])
def test_block_that_needs_downloads(phrase):
    block(phrase)  # still in the docs
    pytest.skip(f"docs/export.md block with {phrase!r}: {BLOCKS[phrase][len('skip: '):]}")


@pytest.mark.parametrize("step", list(SKIPPED_STEPS))
def test_step_that_needs_the_network(step):
    assert step in " ".join(DOC.read_text(encoding="utf-8").split())  # still in the docs
    pytest.skip(f"docs/export.md step {step!r}: {SKIPPED_STEPS[step]}")


def test_hub_cli_commands_are_those_of_the_installed_hf(capsys):
    text = DOC.read_text(encoding="utf-8")
    assert sorted(set(re.findall(r"`(hf [^`]+)`", text))) == sorted(HF_COMMANDS)
    assert "huggingface-cli upload" not in text and "huggingface-cli login" not in text
    hf = Path(sys.executable).with_name("hf")
    for command, subcommand in HF_COMMANDS.items():
        result = subprocess.run([str(hf), *subcommand, "--help"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{command}: {result.stderr}"
    with pytest.raises(SystemExit):
        parse_args(["push", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "`hf auth login`" in help_text and "huggingface-cli" not in help_text
