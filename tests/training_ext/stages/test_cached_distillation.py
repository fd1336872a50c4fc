"""Stage 1 from a teacher cache (--teacher-cache): same training as the live teacher, refusals, other widths."""
import open_clip
import pytest
import torch
from open_clip.transformer import TextTransformer

from support.data_prep_fixtures import load_script
from training_ext import main_distill_rope
from training_ext.data.keyed_captions import caption_digest, csv_captions
from training_ext.data.teacher_cache import CacheHeader, TeacherCacheError, TeacherCacheWriter
from support.training_helpers import (STUDENT, TEACHER, assert_state_dicts_close, base_args, checkpoint_state,
                              save_stock_teacher, write_csv)

precompute = load_script("precompute_teacher_embeddings")


@pytest.fixture
def setup(tmp_path):
    teacher = save_stock_teacher(str(tmp_path / "teacher.pt"))
    train = write_csv(str(tmp_path / "train"), rows=12, images=False)
    cache = str(tmp_path / "cache")
    precompute.main(["--teacher-model", TEACHER, "--teacher-pretrained", teacher, "--data", train, "--output", cache,
                     "--batch-size", "5", "--no-progress"])
    return tmp_path, teacher, train, cache


def _stage1(tmp_path, name, train, extra, epochs=1):
    argv = ["--model", STUDENT] + base_args(str(tmp_path / "logs"), name, train, epochs=epochs, extra=extra)
    return main_distill_rope.run(main_distill_rope.parse_args(argv))


def test_cached_run_trains_like_the_live_teacher_without_running_it(setup, monkeypatch):
    tmp_path, teacher, train, cache = setup
    live = _stage1(tmp_path, "live", train, ["--pretrained", teacher, "--teacher-model", TEACHER,
                                             "--teacher-pretrained", teacher])
    teacher_text_calls = []
    original = TextTransformer.forward
    monkeypatch.setattr(TextTransformer, "forward", lambda self, x: teacher_text_calls.append(1) or original(self, x))
    cached = _stage1(tmp_path, "cached", train, ["--pretrained", teacher, "--teacher-model", TEACHER,
                                                 "--teacher-pretrained", teacher, "--teacher-cache", cache])
    assert teacher_text_calls == []  # the stock (teacher) text tower never ran
    assert cached.step == live.step == 3
    assert not torch.equal(cached.model.state_dict()["text.text_projection"],
                           open_clip.create_model(STUDENT, pretrained=teacher).state_dict()["text.text_projection"])
    assert_state_dicts_close(cached.model.state_dict(), live.model.state_dict(), atol=1e-5, rtol=1e-4)


def test_a_cache_of_another_teacher_or_column_is_refused(setup):
    tmp_path, teacher, train, cache = setup
    torch.manual_seed(5)
    other = str(tmp_path / "other.pt")
    torch.save(open_clip.create_model(TEACHER).state_dict(), other)
    with pytest.raises(TeacherCacheError, match="checkpoint_sha256: cache has '[0-9a-f]+', this run '[0-9a-f]+'"):
        _stage1(tmp_path, "x", train, ["--teacher-model", TEACHER, "--teacher-pretrained", other,
                                       "--teacher-cache", cache])
    with pytest.raises(TeacherCacheError, match="teacher: cache has 'tiny-clip', this run 'tiny-clip-uniform-248'.*"
                                                "tokenizer_context_length: cache has 77, this run 248"):
        _stage1(tmp_path, "y", train, ["--teacher-model", "tiny-clip-uniform-248", "--teacher-pretrained", teacher,
                                       "--teacher-cache", cache])
    with pytest.raises(TeacherCacheError, match="caption_field: cache has 'title', this run 'filepath'"):
        _stage1(tmp_path, "z", train, ["--teacher-cache", cache, "--csv-caption-key", "filepath"])
    with pytest.raises(SystemExit, match="needs a teacher"):
        main_distill_rope.parse_args(["--model", STUDENT])


def _external_cache(path, train, width):
    """What an LLM text encoder would leave: any width, keyed like the precompute command."""
    records = csv_captions(train)
    header = CacheHeader(teacher="some-llm-encoder", checkpoint_sha256="0" * 64, tokenizer_context_length=512,
                         embedding_width=width, dataset_type="csv", dataset=train, caption_field="title")
    writer = TeacherCacheWriter(path, header)
    torch.manual_seed(3)
    writer.append([r.key for r in records], [caption_digest(r.caption) for r in records],
                  torch.randn(len(records), width), torch.randn(len(records), width))
    writer.finish()


def test_embeddings_of_another_width_train_through_a_linear_map(setup):
    tmp_path, teacher, train, _ = setup
    _external_cache(str(tmp_path / "llm"), train, width=24)
    first = _stage1(tmp_path, "llm", train, ["--pretrained", teacher, "--teacher-cache", str(tmp_path / "llm"),
                                             "--lr", "1e-2"])
    target_map = first.model.distill_target_map
    assert tuple(target_map.weight.shape) == (24, 64)
    saved = checkpoint_state(first.last_checkpoint)
    assert "distill_target_map.weight" in saved["state_dict"]
    # A stage-1 checkpoint still loads as a CLIP (the map is dropped) ...
    loaded = open_clip.create_model(STUDENT, pretrained=first.last_checkpoint)
    assert not hasattr(loaded, "distill_target_map")
    # ... and resuming restores the map with the rest, then trains it further.
    resumed = _stage1(tmp_path, "llm", train, ["--pretrained", teacher, "--teacher-cache", str(tmp_path / "llm"),
                                               "--lr", "1e-2", "--resume", "latest"], epochs=2)
    assert resumed.step == 6
    assert not torch.equal(resumed.model.distill_target_map.weight, saved["state_dict"]["distill_target_map.weight"])


def test_webdataset_batches_carry_the_cached_target_of_their_sample(tmp_path):
    import io
    import tarfile

    from open_clip_ext import truncate_tokens
    from training_ext.data.loaders import get_text_data
    from training_ext.data.teacher_cache import TeacherCache
    from support.training_helpers import long_caption

    teacher = save_stock_teacher(str(tmp_path / "teacher.pt"))
    shard = str(tmp_path / "train-000000.tar")
    with tarfile.open(shard, "w") as tar:
        for index in range(6):
            for extension, data in (("png", b"image bytes never read"), ("txt", long_caption(index).encode())):
                info = tarfile.TarInfo(f"{index:06d}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    cache_dir = str(tmp_path / "cache")
    precompute.main(["--teacher-model", TEACHER, "--teacher-pretrained", teacher, "--data", shard,
                     "--output", cache_dir, "--no-progress"])
    args = main_distill_rope.parse_args(["--model", STUDENT, "--teacher-cache", cache_dir, "--train-data", shard, "--batch-size", "3",
                       "--train-num-samples", "6", "--workers", "0", "--device", "cpu"])
    args.world_size, args.rank = 1, 0
    data = get_text_data(args, open_clip.get_tokenizer(STUDENT), teacher_cache=TeacherCache(cache_dir))
    teacher_model = open_clip.create_model(TEACHER, pretrained=teacher).eval()
    end_id = open_clip.get_tokenizer(TEACHER).eot_token_id
    batches = list(data.dataloader)
    assert sum(len(ids) for ids, _ in batches) == 6
    for ids, targets in batches:
        with torch.no_grad():
            torch.testing.assert_close(targets, teacher_model.encode_text(truncate_tokens(ids, 77, end_id)),
                                       atol=1e-4, rtol=1e-4)
