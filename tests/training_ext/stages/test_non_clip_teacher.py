"""Stage 1 with MetaCLIP-2-like towers, whose tokenizers end a caption with ``</s>`` (XLM-V layout: id 2; mT5
layout: id 1) and know 49407 as nothing special: every target stage 1 trains on, from a live teacher or from a
teacher cache, is the teacher's own encoding of the caption (its own tokenizer at its own 77 tokens), long
captions included."""
import itertools

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.tokenizer import HFTokenizer

from support.data_prep_fixtures import load_script
from support.naive_towers import randomize_
from support.non_clip_tokenizers import (LAYOUTS, METACLIP2_LAYOUTS, register_metaclip2, save_tokenizer, unregister,
                                         vocab_size)
from support.training_helpers import base_args, long_caption
from training_ext import main_distill_rope
from training_ext.stages import distill
from training_ext.stages.text_inputs import TeacherInputs

precompute = load_script("precompute_teacher_embeddings")

CAPTIONS = [long_caption(i, sentences=12) for i in range(4)] + ["A red car.", "A picture of item 9 with a dog."]


@pytest.fixture
def towers(tmp_path):
    """(folder of each layout's tokenizer, {layout: (teacher, student) config names}); every config has the same
    vocabulary size, so a student of one layout can start from a teacher of the other."""
    folders = {layout: save_tokenizer(str(tmp_path / layout), layout, CAPTIONS) for layout in METACLIP2_LAYOUTS}
    vocab = max(vocab_size(folder) for folder in folders.values())
    names = {layout: register_metaclip2(f"metaclip2-{layout}-{tmp_path.name}", folders[layout], layout, vocab)
             for layout in METACLIP2_LAYOUTS}
    yield folders, names
    unregister(*itertools.chain(*names.values()))


def _teacher_tokenizer(folder, layout):
    """The teacher's tokenizer built by hand (not through the config), as the worldwide configs ask for it."""
    kwargs = open_clip.get_model_config(LAYOUTS[layout][-1])["text_cfg"].get("tokenizer_kwargs", {})
    return HFTokenizer(folder, context_length=77, **kwargs)


def _write_csv(path):
    with open(path, "w") as handle:
        handle.write("filepath\ttitle\n")
        handle.writelines(f"missing/{i}.png\t{caption}\n" for i, caption in enumerate(CAPTIONS))
    return str(path)


def _save_teacher(name, path):
    torch.manual_seed(7)
    torch.save({"state_dict": randomize_(open_clip.create_model(name), scale=0.3).state_dict()}, path)
    return str(path)


def _stage1_targets(monkeypatch, tmp_path, run, student, extra):
    """Run stage 1 for one epoch and return {caption index: the target its loss used}, each sample found by the ids
    the student read."""
    student_rows = {tuple(row.tolist()): i for i, row in enumerate(open_clip.get_tokenizer(student)(CAPTIONS))}
    read, targets = [], {}
    forward, losses = distill.StudentTextFeatures.forward, distill.distillation_losses

    def recording_forward(module, ids):
        read.append(ids)
        return forward(module, ids)

    def recording_losses(features, target, weights):
        for row, value in zip(read.pop(0), target):
            targets[student_rows[tuple(row.tolist())]] = value.detach().clone()
        return losses(features, target, weights)

    monkeypatch.setattr(distill.StudentTextFeatures, "forward", recording_forward)
    monkeypatch.setattr(distill, "distillation_losses", recording_losses)
    argv = ["--model", student] + base_args(str(tmp_path / "logs"), run, _write_csv(tmp_path / "train.csv"),
                                            batch_size=3, extra=extra)
    main_distill_rope.run(main_distill_rope.parse_args(argv))
    assert len(targets) == len(CAPTIONS)
    return targets


def _assert_the_teachers_own_encoding(targets, teacher_name, teacher_file, tokenizer):
    ids = tokenizer(CAPTIONS)
    assert ids.shape[1] == 77 and all(len(tokenizer.tokenizer(c)["input_ids"]) > 77
                                      for c in CAPTIONS[:4])  # the long captions are cut
    teacher = open_clip.create_model(teacher_name, pretrained=teacher_file).eval()
    with torch.no_grad():
        expected = teacher.encode_text(ids)
    for index, target in targets.items():
        torch.testing.assert_close(target, expected[index], atol=1e-5, rtol=1e-5, msg=f"caption {index}")
    # every long caption keeps a target of its own (pooled at one shared row they would all be equal)
    long = F.normalize(torch.stack([targets[i] for i in range(4)]), dim=-1)
    assert torch.cdist(long, long)[~torch.eye(4, dtype=torch.bool)].min() > 0.05


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(METACLIP2_LAYOUTS))
def test_live_and_cached_targets_are_the_teachers_own_encoding(towers, layout, tmp_path, monkeypatch):
    folders, names = towers
    teacher_name, student = names[layout]
    teacher_file = _save_teacher(teacher_name, tmp_path / "teacher.pt")
    teacher_flags = ["--teacher-model", teacher_name, "--teacher-pretrained", teacher_file]
    live = _stage1_targets(monkeypatch, tmp_path, "live", student, teacher_flags)
    _assert_the_teachers_own_encoding(live, teacher_name, teacher_file, _teacher_tokenizer(folders[layout], layout))

    cache = str(tmp_path / "cache")
    precompute.main(teacher_flags + ["--data", str(tmp_path / "train.csv"), "--output", cache, "--no-progress"])
    cached = _stage1_targets(monkeypatch, tmp_path, "cached", student, teacher_flags + ["--teacher-cache", cache])
    _assert_the_teachers_own_encoding(cached, teacher_name, teacher_file, _teacher_tokenizer(folders[layout], layout))


@pytest.mark.slow
def test_a_student_of_another_tokenizer_gets_the_teachers_own_ids(towers, tmp_path, monkeypatch):
    folders, names = towers
    teacher_name, student = names["xlmv"][0], names["mt5"][1]
    teacher_file = _save_teacher(teacher_name, tmp_path / "teacher.pt")
    live = _stage1_targets(monkeypatch, tmp_path, "paired", student,
                           ["--teacher-model", teacher_name, "--teacher-pretrained", teacher_file])
    _assert_the_teachers_own_encoding(live, teacher_name, teacher_file, _teacher_tokenizer(folders["xlmv"], "xlmv"))


def test_teacher_inputs_cut_one_tokenizer_and_pair_two(towers):
    folders, names = towers
    captions = CAPTIONS + ["a caption with words the vocabulary lacks"]
    for layout, end_id in (("xlmv", 2), ("mt5", 1)):
        student_tokenizer = open_clip.get_tokenizer(names[layout][1])
        teacher_tokenizer = _teacher_tokenizer(folders[layout], layout)
        inputs = TeacherInputs(student_tokenizer, teacher_tokenizer)
        assert inputs.derived and inputs.end_id == end_id == teacher_tokenizer.tokenizer.eos_token_id
        student_ids, teacher_ids = inputs.split(student_tokenizer(captions))
        assert torch.equal(teacher_ids, teacher_tokenizer(captions))
        assert (teacher_ids[:4, -1] == end_id).all()  # the long captions end on the layout's own end id
    # a teacher with another tokenizer (or a longer context) cannot be cut from the student's ids: tokenized twice
    xlmv, mt5 = _teacher_tokenizer(folders["xlmv"], "xlmv"), open_clip.get_tokenizer(names["mt5"][1])
    for student_tokenizer, teacher_tokenizer in ((mt5, xlmv), (open_clip.get_tokenizer(names["xlmv"][0]),
                                                               HFTokenizer(folders["xlmv"], context_length=248))):
        inputs = TeacherInputs(student_tokenizer, teacher_tokenizer)
        assert not inputs.derived
        student_ids, teacher_ids = inputs.split(inputs.data_tokenizer(captions))
        assert torch.equal(student_ids, student_tokenizer(captions))
        assert torch.equal(teacher_ids, teacher_tokenizer(captions))


def test_both_stages_trim_a_batch_at_the_towers_own_end_id(towers):
    from training_ext.stages.finetune import ClipFeatures

    _, names = towers
    student = names["xlmv"][1]
    model = randomize_(open_clip.create_model(student), scale=0.3).eval()
    ids = open_clip.get_tokenizer(student)(CAPTIONS[4:])  # two short captions: </s> (id 2) early, then <pad> (1)
    end = max(row.tolist().index(2) for row in ids) + 1
    widths = []
    model.text.register_forward_pre_hook(lambda module, inputs: widths.append(inputs[0].shape[-1]))
    with torch.no_grad():
        padded = model.encode_text(ids)
        stage1 = distill.StudentTextFeatures(model)(ids)
        _, stage2, short, *_ = ClipFeatures(model)(torch.randn(2, 3, 32, 32), ids, ids)
    assert widths == [248, end, end, end] and end < 20
    for features in (stage1, stage2, short):  # stage 2's features come normalised
        torch.testing.assert_close(F.normalize(features, dim=-1), F.normalize(padded, dim=-1), atol=1e-5, rtol=1e-5)
