"""--dataset-type folder in both stages, and stage 1 from a teacher cache of a folder."""
import pytest
import os

import open_clip
import torch

from support.data_prep_fixtures import load_script
from open_clip_ext import truncate_tokens
from training_ext import main_context_finetune_rope, main_distill_rope
from training_ext.data.loaders import get_text_data
from training_ext.data.teacher_cache import TeacherCache
from support.training_helpers import STUDENT, TEACHER, base_args, long_caption, save_stock_teacher, write_image

precompute = load_script("precompute_teacher_embeddings")


def make_folder(root, count=8, lines=3):
    """Images in nested folders, caption files in another folder (train-CLIP pairs by stem), plus an orphan."""
    for index in range(count):
        image_dir = os.path.join(root, "images", f"part{index % 2}")
        os.makedirs(image_dir, exist_ok=True)
        write_image(os.path.join(image_dir, f"img{index}.png"), index)
        os.makedirs(os.path.join(root, "texts"), exist_ok=True)
        with open(os.path.join(root, "texts", f"img{index}.txt"), "w") as stream:
            stream.write("\n".join(long_caption(100 * index + n) for n in range(lines)) + "\n")
    write_image(os.path.join(root, "images", "orphan.png"), 99)
    return root


@pytest.mark.slow
def test_stage1_and_stage2_train_from_a_folder(tmp_path, caplog):
    teacher = save_stock_teacher(str(tmp_path / "teacher.pt"))
    root = make_folder(str(tmp_path / "data"))
    argv = ["--model", STUDENT, "--pretrained", teacher, "--teacher-model", TEACHER, "--teacher-pretrained", teacher,
            "--val-data", root] + base_args(str(tmp_path / "logs"), "s1", epochs=2) + ["--train-data", root]
    args = main_distill_rope.parse_args(argv)
    assert args.dataset_type == "auto"  # a directory resolves to folder
    stage1 = main_distill_rope.run(args)
    assert stage1.step == 4 and "1 images without a caption file" in caplog.text

    argv = ["--model", STUDENT, "--pretrained", teacher, "--student-checkpoint", stage1.last_checkpoint,
            "--dataset-type", "folder", "--folder-caption-line", "first", "--folder-short-line", "2"]
    stage2 = main_context_finetune_rope.run(main_context_finetune_rope.parse_args(argv + base_args(str(tmp_path / "logs"), "s2") +
                                                       ["--train-data", root]))
    assert stage2.step == 2
    loaded = open_clip.create_model(STUDENT, pretrained=stage2.last_checkpoint)
    assert torch.equal(loaded.state_dict()["text.text_projection"], stage2.model.state_dict()["text.text_projection"])


def test_cached_folder_batches_follow_the_line_drawn_each_epoch(tmp_path):
    teacher = save_stock_teacher(str(tmp_path / "teacher.pt"))
    root = make_folder(str(tmp_path / "data"), count=4)
    cache_dir = str(tmp_path / "cache")
    precompute.main(["--teacher-model", TEACHER, "--teacher-pretrained", teacher, "--data", root,
                     "--output", cache_dir, "--no-progress"])
    cache = TeacherCache(cache_dir)
    args = main_distill_rope.parse_args(["--model", STUDENT, "--teacher-cache", cache_dir, "--train-data", root, "--batch-size", "4",
                       "--workers", "0", "--seed", "3", "--device", "cpu"])
    args.world_size, args.rank = 1, 0
    tokenizer = open_clip.get_tokenizer(STUDENT)
    teacher_model = open_clip.create_model(TEACHER, pretrained=teacher).eval()
    data = get_text_data(args, tokenizer, teacher_cache=cache)
    drawn = []
    for epoch in (0, 1):
        data.set_epoch(epoch)
        ids, targets = next(iter(data.dataloader))
        with torch.no_grad():  # each target is the teacher's embedding of exactly the caption in the batch
            live = teacher_model.encode_text(truncate_tokens(ids, 77, tokenizer.eot_token_id))
        torch.testing.assert_close(targets, live, atol=1e-4, rtol=1e-4)
        drawn.append({tuple(row.tolist()) for row in ids})
    assert drawn[0] != drawn[1]  # other caption lines in the next epoch
