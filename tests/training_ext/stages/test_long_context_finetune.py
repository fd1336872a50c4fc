"""Stage 2 at 512 tokens from a 248-token stage-1 RoPE student: this project's form (`--force-context-length 512`,
or a `-rope-512` model) and TULIP's (`--extended-context-length 512`) train on tiny data, the saved model_cfg
records the context and the position scaling (none: plain theta; TULIP's: its dynamic-NTK factor over 248), and
the checkpoint loads back computing what was trained."""
import open_clip
import pytest
import torch

from open_clip_ext.rope import rope_frequencies, scaled_frequencies
from support.training_helpers import STUDENT, TEACHER, base_args, checkpoint_state, save_stock_teacher, write_csv
from training_ext import main_context_finetune_rope


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("long_finetune")
    torch.manual_seed(7)
    stage1 = str(tmp / "stage1.pt")
    torch.save({"epoch": 1, "state_dict": open_clip.create_model(STUDENT).state_dict(),
                "model_cfg": open_clip.get_model_config(STUDENT)}, stage1)
    return {"teacher": save_stock_teacher(str(tmp / "teacher.pt")), "stage1": stage1,
            "train": write_csv(str(tmp / "train"), rows=4, short_column=True), "logs": str(tmp / "logs")}


def _train(files, name, model_flags):
    args = main_context_finetune_rope.parse_args(
        model_flags + ["--pretrained", files["teacher"]] + base_args(files["logs"], name, files["train"]))
    state = main_context_finetune_rope.run(args)
    return args, state, checkpoint_state(state.last_checkpoint)["model_cfg"]["text_cfg"]


def _same_features(loaded, trained, name):
    ids = open_clip.get_tokenizer(name, context_length=512)(["a long caption " * 200])
    with torch.no_grad():
        assert torch.equal(loaded.eval().encode_text(ids), trained.eval().encode_text(ids))


@pytest.mark.parametrize("model_flags", [["--model", STUDENT, "--force-context-length", "512"],
                                         ["--model", "tiny-clip-rope-512"]])
def test_our_form_trains_at_512_from_a_248_student(files, model_flags):
    name = model_flags[1].replace("-", "")
    args, state, text_cfg = _train(files, name, model_flags + ["--student-checkpoint", files["stage1"]])
    assert (text_cfg["context_length"], text_cfg["pos_embed_type"], text_cfg["rope_ntk_factor"]) == (512, "rope", None)
    rotary = state.model.text.transformer.rotary
    assert rotary.max_positions == 512  # scaling none: the stage-1 frequencies, positions up to 512
    torch.testing.assert_close(rotary.cos[300], (300 * rope_frequencies(rotary.head_dim, 10000.0)).cos().to(rotary.cos.dtype))
    loaded = open_clip.create_model(args.model, pretrained=state.last_checkpoint, force_context_length=512)
    _same_features(loaded, state.model, args.model)


def test_tulip_form_trains_at_512_with_its_ntk_base_recorded(files):
    tulip = ["--model", TEACHER, "--student-model", files["stage1"], "--extended-context-length", "512",
             "--scaling-factor", "1"]
    args, state, text_cfg = _train(files, "tulip", tulip)
    assert args.model == "tiny-clip-rope-512-ntk1-from248"
    ntk = (text_cfg["context_length"], text_cfg["rope_ntk_factor"], text_cfg["rope_ntk_trained_length"])
    assert ntk == (512, 1.0, 248)
    # TULIP's dynamic NTK with factor 1 is the NTK-aware scaling the eval's --position-scaling ntk applies
    rotary = state.model.text.transformer.rotary
    frequencies, _ = scaled_frequencies(rotary.head_dim, 10000.0, "ntk", 248, 512)
    torch.testing.assert_close(rotary.cos[300], (300 * frequencies).cos().to(rotary.cos.dtype))
    _same_features(open_clip.create_model(args.model, pretrained=state.last_checkpoint), state.model, args.model)


def test_a_shorter_context_than_the_student_is_still_refused(files, capsys):
    with pytest.raises(SystemExit):
        main_context_finetune_rope.parse_args(["--model", STUDENT, "--force-context-length", "200",
                                               "--student-checkpoint", files["stage1"], "--pretrained",
                                               files["teacher"]] + base_args(files["logs"], "short", files["train"]))
    assert "context_length 248 vs 200" in capsys.readouterr().err
