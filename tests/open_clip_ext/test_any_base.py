"""`--model <base>-<kind>-<N>` for any registered base, from every command: the config is derived on first lookup
(patches.py wraps open_clip's get_model_config); an unknown base or kind, or a base that cannot take the kind,
is one error line naming the part at fault and the close names."""
import open_clip
import pytest

from open_clip_ext.configs import EXT_TEXT_KEYS, POSITION_DEFAULTS, model_name_problem
from open_clip_ext.export.__main__ import UsageError, ensure_registered
from support.data_prep_fixtures import load_script
from support.model_registry import restored_registry  # noqa: F401  (fixture)
from support.training_helpers import write_csv
from training_ext import main_context_finetune_rope, main_distill_rope
from training_ext.data.teacher_cache import TeacherCacheError
from training_ext.engine import preflight as engine_preflight
from training_ext.eval.preflight import PreflightError, check_model_spec
from training_ext.eval.runner import parse_model_spec


pytestmark = pytest.mark.usefixtures("restored_registry")


@pytest.mark.parametrize("base,kind,length", [("RN50", "rope", 248), ("EVA02-B-16", "cope", 300),
                                              ("PE-Core-L-14-336", "rope", 248), ("MobileCLIP-B", "longclip", 512),
                                              ("ViT-B-16-plus", "uniform", 248)])
def test_a_variant_of_a_base_without_shipped_configs_is_its_base_with_the_new_tower(base, kind, length):
    name = f"{base}-{kind}-{length}"
    assert name not in open_clip.list_models()
    cfg, stock = open_clip.get_model_config(name), open_clip.get_model_config(base)
    assert name in open_clip.list_models()
    text, stock_text = cfg.pop("text_cfg"), stock.pop("text_cfg")
    assert {k: v for k, v in text.items() if k not in EXT_TEXT_KEYS and k != "context_length"} == \
           {k: v for k, v in stock_text.items() if k != "context_length"}
    assert text["context_length"] == length and text["pos_embed_type"] == kind
    assert {k: text[k] for k in POSITION_DEFAULTS[kind]} == POSITION_DEFAULTS[kind]
    assert cfg.pop("custom_text", False) == (kind != "uniform" or stock.pop("custom_text", False))
    stock.pop("custom_text", None)
    assert cfg == stock  # vision tower, embed_dim, quick_gelu: the base's
    assert open_clip.list_pretrained_tags_by_model(name) == open_clip.list_pretrained_tags_by_model(base)
    assert open_clip.get_tokenizer(name)(["a caption"]).shape == (1, length)


def test_stage_flags_eval_and_export_take_a_variant_named_by_its_base(tmp_path):
    train, logs = write_csv(str(tmp_path / "train"), rows=4, images=False), str(tmp_path / "logs")
    stage1 = main_distill_rope.parse_args(["--model", "RN50-rope-248", "--teacher-model", "RN50", "--train-data",
                                           train, "--logs", logs, "--name", "run"])
    assert stage1.model == "RN50-rope-248"
    stage2 = main_context_finetune_rope.parse_args(["--model", "EVA02-B-16-rope-248", "--train-data", train,
                                                    "--logs", logs, "--name", "run2"])
    assert stage2.model == "EVA02-B-16-rope-248"
    check_model_spec(parse_model_spec("PE-Core-L-14-336-rope-248"))
    check_model_spec(parse_model_spec("RN50-cope-300:openai"))  # the base's tag, aliased when derived
    ensure_registered("ViT-B-16-plus-longclip-300")
    assert open_clip.get_model_config("ViT-B-16-plus-longclip-300")["text_cfg"]["context_length"] == 300


UNKNOWN = [
    # (name, what the message must say)
    ("ViT-B-99-rope-248", "no base config 'ViT-B-99' for a rope variant. Close matches: ViT-B-32, ViT-B-16"),
    ("RN50-rop-248",
     "'rop' is not a variant kind (kinds: rope, cope, longclip, uniform, context). Did you mean: RN50-rope-248?"),
    ("ViT-B-16-SigLIP-cope-248", "Cannot derive 'ViT-B-16-SigLIP-cope-248': ViT-B-16-SigLIP cannot take cope "
                                 "positions: CoPE is causal only"),
    ("RN50-rope-64", "context_length 64 is shorter than RN50's 77"),
    ("ViT-B-16-rope-248-cope-300", "ViT-B-16-rope-248 is already a rope variant; derive from its base"),
    ("EVA02-B-61", "Unknown model config 'EVA02-B-61'. Close matches: EVA02-B-16"),
]


@pytest.mark.parametrize("name,message", UNKNOWN)
def test_a_name_no_config_answers_names_the_part_at_fault_in_every_command(name, message, tmp_path, capsys):
    assert message in model_name_problem(name)
    with pytest.raises(PreflightError, match="^--model " + name):
        check_model_spec(parse_model_spec(name))
    errors = []
    engine_preflight.require_model(name, "--model", errors.append)  # stages' and training_ext.main's check
    assert len(errors) == 1 and errors[0].startswith(f"--model {name}: ") and message in errors[0]
    with pytest.raises(UsageError, match="^--model "):
        ensure_registered(name)
    with pytest.raises(RuntimeError) as created:
        open_clip.create_model(name)
    assert message in str(created.value)
    assert name not in open_clip.list_models()


def test_teacher_cache_script_names_close_teachers(tmp_path):
    precompute = load_script("precompute_teacher_embeddings")
    with pytest.raises(TeacherCacheError, match="^--teacher-model Unknown model config 'ViT-L-41'. Close matches: "
                                                "ViT-L-16, ViT-L-14"):
        precompute.main(["--teacher-model", "ViT-L-41", "--teacher-pretrained", "openai", "--data", str(tmp_path),
                         "--output", str(tmp_path / "cache")])
