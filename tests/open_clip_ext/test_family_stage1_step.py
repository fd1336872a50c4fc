"""One real stage-1 step (training_ext.main_distill_rope, in-process) per supported family and stage-1 kind: the
teacher is the family's shrunk representative (tests/support/family_configs.py), the student its
``<base>-<kind>-248`` variant started from it. Stage 1 runs text only, so families whose shrunk configs differ only
in the image tower (which shrinking replaces by tiny-clip's) are one case: one step per distinct shrunk config
without its image tower, and the test says which families each case stands for."""
import json

import open_clip
import pytest
import torch

from open_clip_ext import support
from open_clip_ext.configs import register_model_config
from open_clip_ext.state_dicts import is_image_side_key
from support.family_configs import representatives, shrunk_config
from support.model_registry import restored_registry  # noqa: F401  (fixture)
from support.naive_towers import randomize_
from support.training_helpers import base_args, long_caption, write_csv
from training_ext import main_distill_rope
from training_ext.stages import distill_stage

pytestmark = pytest.mark.usefixtures("restored_registry")

ROWS = 2
STAGE1 = {family: s for family, s in representatives(s for s in support.classify_all() if not s.variant).items()
          if set(s.kinds) & set(support.STAGE1_KINDS)}


def _signature(name: str) -> str:
    """What stage 1 sees of a shrunk config: all of it but the image tower."""
    cfg = shrunk_config(open_clip.get_model_config(name), folder=None)
    return json.dumps({k: v for k, v in cfg.items() if k != "vision_cfg"}, sort_keys=True)


CASES = {}  # signature -> families it stands for
for _family, _s in sorted(STAGE1.items()):
    CASES.setdefault(_signature(_s.name), []).append(_family)
PARAMS = [pytest.param(families, kind, id=f"{families[0]}-{kind}")
          for families in CASES.values()
          for kind in STAGE1[families[0]].kinds if kind in support.STAGE1_KINDS]


def test_every_family_with_a_stage1_kind_is_a_case_with_its_kinds():
    assert {"SigLIP2", "CLIPA", "MetaCLIP 2 (worldwide)", "ResNet (OpenAI)"} <= set(STAGE1)
    assert not {"NLLB-CLIP", "Hugging Face text (mT5, RoBERTa, XLM-R)"} & set(STAGE1)  # context only
    assert sorted(f for families in CASES.values() for f in families) == sorted(STAGE1)
    for families in CASES.values():  # same kinds: the case's steps are every member's
        assert len({STAGE1[f].kinds for f in families}) == 1, families


@pytest.mark.parametrize("families, kind", PARAMS)
def test_one_stage1_step_trains_the_student_text_tower_from_the_shrunk_base(families, kind, tmp_path, monkeypatch):
    s = STAGE1[families[0]]
    base = f"stage1-step-{s.name}"
    texts = [long_caption(i) for i in range(ROWS)]
    register_model_config(base, shrunk_config(open_clip.get_model_config(s.name), tmp_path / "hf", texts))
    torch.manual_seed(0)
    teacher = randomize_(open_clip.create_model(base), scale=0.3)
    torch.save({"state_dict": teacher.state_dict()}, tmp_path / "teacher.pt")
    losses = []

    def recording(*args, **kwargs):
        step = make_step(*args, **kwargs)
        return lambda batches: losses.append(step(batches)) or losses[-1]

    make_step = distill_stage.make_distill_step
    monkeypatch.setattr(distill_stage, "make_distill_step", recording)
    # what lets one case stand for families that differ in their image towers: stage 1 never runs one
    monkeypatch.setattr(open_clip.transformer.VisionTransformer, "forward",
                        lambda *args, **kwargs: pytest.fail("stage 1 ran an image tower"))
    student = f"{base}-{kind}-248"
    argv = ["--model", student, "--teacher-model", base, "--teacher-pretrained", str(tmp_path / "teacher.pt")] + \
        base_args(str(tmp_path / "logs"), "s1", write_csv(str(tmp_path), ROWS, images=False), batch_size=ROWS)
    state = main_distill_rope.run(main_distill_rope.parse_args(argv))

    assert state.step == 1 and len(losses) == 1 and torch.isfinite(torch.tensor(losses[0]["loss"]))
    assert losses[0]["loss"] > 0  # a student with the base's weights but other positions differs from it
    start = open_clip.create_model(student)
    distill_stage.init_student_from_teacher(start, teacher, base)
    before, after = start.state_dict(), state.model.state_dict()
    text = [k for k in after if not is_image_side_key(k)]
    changed = [k for k in text if not torch.equal(after[k], before[k])]
    assert len(changed) > len(text) // 2, (families, kind, sorted(set(text) - set(changed)))
    assert all(torch.equal(after[k], before[k]) for k in after if is_image_side_key(k))
