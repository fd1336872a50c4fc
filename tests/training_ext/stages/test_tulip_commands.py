"""TULIP's command lines train what this project's own command lines train (tiny configs: tiny-clip plays
ViT-L-14's role), the student starts from the teacher, TULIP's original stage-2 recipe saves its NTK setting in
the checkpoint's model_cfg, and --torchcompile compiles the trained module."""
import open_clip
import pytest
import torch

from open_clip_ext.configs import with_tower_activations
from open_clip_ext.rope import dynamic_ntk_theta
from support.training_helpers import STUDENT, TEACHER, base_args, checkpoint_state, save_stock_teacher, write_csv
from training_ext import main_context_finetune_rope, main_distill_rope
from training_ext.engine.builders import trained_model_config
from training_ext.stages.distill_stage import DistillStage
from training_ext.stages.finetune_stage import FinetuneStage


@pytest.fixture
def files(tmp_path):
    return {"teacher": save_stock_teacher(str(tmp_path / "teacher.pt")),
            "train": write_csv(str(tmp_path / "train"), rows=8, short_column=True),
            "logs": str(tmp_path / "logs"), "tmp": tmp_path}


def _observe(monkeypatch, stage_class):
    """Record, per run, the trained model's initial weights, its config and the first step's losses."""
    runs = []
    original = stage_class.make_step

    def make_step(self, args, device, trained, models, scaler):
        run = {"initial": {k: v.clone() for k, v in models.model.state_dict().items()},
               "config": trained_model_config(args, models.model), "losses": []}
        runs.append(run)
        step = original(self, args, device, trained, models, scaler)

        def recorded(micro_batches):
            losses = step(micro_batches)
            run["losses"].append(losses)
            return losses
        return recorded

    monkeypatch.setattr(stage_class, "make_step", make_step)
    return runs


def _same_runs(first, second, final_first, final_second):
    assert first["config"] == second["config"]
    assert first["initial"].keys() == second["initial"].keys()
    for key in first["initial"]:
        assert torch.equal(first["initial"][key], second["initial"][key]), key
    assert first["losses"][0] == second["losses"][0]
    for key, value in final_first.items():
        assert torch.equal(value, final_second[key]), key


def test_tulip_stage1_command_trains_what_this_projects_command_trains(monkeypatch, files):
    runs = _observe(monkeypatch, DistillStage)
    tulip = ["--model", TEACHER, "--pretrained", files["teacher"], "--context-length", "77",
             "--student-context-length", "248", "--loss-type", "cosine", "--wandb-project-name", "dense-cap-distill"]
    ours = ["--model", STUDENT, "--teacher-model", TEACHER, "--teacher-pretrained", files["teacher"],
            "--distill-loss", "cosine"]
    states = [main_distill_rope.run(main_distill_rope.parse_args(form + base_args(files["logs"], name, files["train"])))
              for form, name in ((tulip, "tulip"), (ours, "ours"))]
    _same_runs(*runs, states[0].model.state_dict(), states[1].model.state_dict())
    # RoPE student at 248 with the teacher's GELU, each tower naming its activation
    assert runs[0]["config"] == with_tower_activations(open_clip.get_model_config(STUDENT), False, False)
    # the student started from the teacher: every text tensor but the positions, the vision tower, the scale
    teacher = open_clip.create_model(TEACHER, pretrained=files["teacher"]).state_dict()
    initial = runs[0]["initial"]
    for key in ("text.token_embedding.weight", "text.text_projection", "text.ln_final.weight", "logit_scale",
                "text.transformer.resblocks.0.attn.in_proj_weight", "visual.conv1.weight"):
        assert torch.equal(initial[key], teacher[key.replace("text.", "", 1)]), key
    assert "text.positional_embedding" not in initial
    log = open(f"{files['logs']}/tulip/out.log").read()
    assert "TULIP form: teacher --teacher-model tiny-clip" in log and "starts from the teacher" in log


def test_tulip_stage2_command_trains_what_this_projects_command_trains(monkeypatch, files):
    torch.manual_seed(7)
    student = open_clip.create_model(STUDENT)
    stage1 = str(files["tmp"] / "stage1.pt")
    torch.save({"epoch": 1, "state_dict": student.state_dict(), "model_cfg": open_clip.get_model_config(STUDENT)},
               stage1)
    runs = _observe(monkeypatch, FinetuneStage)
    tulip = ["--model", TEACHER, "--pretrained", files["teacher"], "--context-length", "77",
             "--student-context-length", "248", "--loss-type", "clip_loss", "--student-model", stage1]
    ours = ["--model", STUDENT, "--pretrained", files["teacher"], "--student-checkpoint", stage1]
    states = [main_context_finetune_rope.run(main_context_finetune_rope.parse_args(
        form + base_args(files["logs"], name, files["train"]))) for form, name in ((tulip, "tulip"), (ours, "ours"))]
    _same_runs(*runs, states[0].model.state_dict(), states[1].model.state_dict())
    assert torch.equal(runs[0]["initial"]["text.text_projection"], student.state_dict()["text.text_projection"])


def test_tulip_original_recipe_saves_its_ntk_base_and_keeps_the_original_projection(monkeypatch, files):
    torch.manual_seed(7)
    student = open_clip.create_model(STUDENT).state_dict()
    stage1 = str(files["tmp"] / "stage1.pt")
    torch.save({"epoch": 1, "state_dict": student, "model_cfg": open_clip.get_model_config(STUDENT)}, stage1)
    runs = _observe(monkeypatch, FinetuneStage)
    argv = ["--model", TEACHER, "--pretrained", files["teacher"], "--student-model", stage1,
            "--extended-context-length", "300", "--scaling-factor", "2"]
    argv += base_args(files["logs"], "orig", files["train"])
    args = main_context_finetune_rope.parse_args(argv)
    assert args.model == "tiny-clip-rope-300-ntk2-from248" and args.recipe == "tulip-original"
    state = main_context_finetune_rope.run(args)
    text_cfg = checkpoint_state(state.last_checkpoint)["model_cfg"]["text_cfg"]
    ntk = (text_cfg["context_length"], text_cfg["rope_ntk_factor"], text_cfg["rope_ntk_trained_length"])
    assert ntk == (300, 2.0, 248)
    head_dim = text_cfg["width"] // text_cfg["heads"]
    assert state.model.text.rope_theta == pytest.approx(dynamic_ntk_theta(10000.0, head_dim, 2.0, 248, 300))
    initial = runs[0]["initial"]
    teacher = open_clip.create_model(TEACHER, pretrained=files["teacher"]).state_dict()
    assert torch.equal(initial["text.text_projection"], teacher["text_projection"])  # the original projection
    assert torch.equal(initial["text.token_embedding.weight"], student["text.token_embedding.weight"])
    # the checkpoint loads under the registered config and computes what the trained model computes
    loaded = open_clip.create_model(args.model, pretrained=state.last_checkpoint)
    ids = open_clip.get_tokenizer(args.model)(["a long caption " * 80])
    assert ids.shape[1] == 300
    with torch.no_grad():
        assert torch.equal(loaded.eval().encode_text(ids), state.model.eval().encode_text(ids))


def test_torchcompile_compiles_the_trained_module(monkeypatch, files):
    compiled = []

    def fake_compile(module, *args, **kwargs):  # torch.compile's contract: a callable module, same parameters
        compiled.append(type(module).__name__)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    argv = ["--model", STUDENT, "--teacher-model", TEACHER, "--torchcompile"]
    argv += base_args(files["logs"], "c", files["train"])
    main_distill_rope.run(main_distill_rope.parse_args(argv))
    assert compiled == ["StudentTextFeatures"]
