"""Stage 1 from a teacher cache (--teacher-cache): batches carry the cached target instead of running the teacher.

With a cache, stage-1 batches are ``(long_ids, target)``: ``target`` is the cached teacher embedding of the
sample's long caption, looked up by the sample's key (see keyed_captions) and checked against the caption's
digest. The cache is refused before training when it was made by another teacher (name, checkpoint sha256,
tokenizer length) or from another data kind or caption field. Cached targets of another width than the
student's embeddings (an LLM text encoder, say) are reached through a learned linear map on the student side,
kept on the student model under ``open_clip_ext.convert.DISTILL_TARGET_MAP`` so that the optimizer, DDP,
checkpoints and resume carry it; open_clip_ext's loader drops it when the checkpoint is loaded as a CLIP.
"""
import logging
from typing import List, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from open_clip_ext.convert import DISTILL_TARGET_MAP
from training_ext.common.captions import clean_caption
from training_ext.data.keyed_captions import caption_field_for, folder_line_key
from training_ext.data.teacher_cache import (TeacherCache, TeacherCacheError, check_cache_matches, file_sha256,
                                        teacher_checkpoint_file)

CACHEABLE_DATASET_TYPES = ("csv", "webdataset", "folder")


def open_run_cache(args, kind: str, teacher: Optional[nn.Module]) -> TeacherCache:
    """The --teacher-cache of this run, after checking it against the teacher flags and the data."""
    if kind not in CACHEABLE_DATASET_TYPES:
        raise TeacherCacheError(f"--teacher-cache needs --dataset-type {', '.join(CACHEABLE_DATASET_TYPES)} "
                                f"(the cache is keyed by sample), not {kind!r}")
    cache = TeacherCache(args.teacher_cache)
    checkpoint_sha256 = None
    if args.teacher_model and args.teacher_pretrained:
        checkpoint = teacher_checkpoint_file(args.teacher_model, args.teacher_pretrained, args.cache_dir)
        checkpoint_sha256 = file_sha256(checkpoint)
    check_cache_matches(
        cache.header, f"--teacher-cache {args.teacher_cache}", teacher=args.teacher_model or None,
        checkpoint_sha256=checkpoint_sha256,
        tokenizer_context_length=int(teacher.context_length) if teacher is not None else None,
        dataset_type=kind, caption_field=caption_field_for(kind, args.csv_caption_key))
    if not args.teacher_model:
        logging.info(f"--teacher-cache {args.teacher_cache}: embeddings of {cache.header.teacher} "
                     f"(sha256 {cache.header.checkpoint_sha256[:12]}); no --teacher-model to check them against")
    return cache


def cache_tokenizer(args, cache: TeacherCache) -> List:
    """[the tokenizer the cache's teacher read the captions with], or [] when open_clip has no config of that name
    (embeddings written by another model through TeacherCacheWriter; logged)."""
    import open_clip
    name = args.teacher_model or cache.header.teacher
    if open_clip.get_model_config(name) is None and not name.startswith("hf-hub:"):
        logging.info(f"--teacher-cache {args.teacher_cache}: teacher {name!r} is not an open_clip model, so captions "
                     f"are checked for text with the student's tokenizer only")
        return []
    return [open_clip.get_tokenizer(name, context_length=cache.header.tokenizer_context_length,
                                    cache_dir=args.cache_dir)]


def student_embedding_width(model: nn.Module) -> int:
    with torch.no_grad():
        return int(model.encode_text(torch.zeros(1, 2, dtype=torch.long)).shape[-1])


def attach_target_map(student: nn.Module, target_width: int) -> Optional[nn.Linear]:
    """A bias-free linear map from the student's embedding width to the cached one, when they differ."""
    width = student_embedding_width(student)
    if width == target_width:
        return None
    target_map = nn.Linear(width, target_width, bias=False)
    nn.init.normal_(target_map.weight, std=width ** -0.5)
    parameter = next(student.parameters())
    setattr(student, DISTILL_TARGET_MAP, target_map.to(device=parameter.device, dtype=parameter.dtype))
    logging.info(f"cached targets are {target_width}-wide, the student's embeddings {width}-wide: training a "
                 f"linear map ({DISTILL_TARGET_MAP}) between them")
    return target_map


def distillation_output(student: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The student's features in the targets' space (through the learned map where there is one)."""
    target_map = getattr(student, DISTILL_TARGET_MAP, None)
    return features if target_map is None else target_map(features)


class _CachedTargets(Dataset):
    """``dataset[i]`` followed by the cached target of sample i."""

    def __init__(self, dataset: Dataset, cache: TeacherCache):
        self.dataset = dataset
        self.cache = cache

    def __len__(self):
        return len(self.dataset)

    def row(self, index: int) -> int:
        raise NotImplementedError

    def __getitem__(self, index):
        return (*self.dataset[index], self.cache.embeddings([self.row(index)])[0])


class CsvCachedTargets(_CachedTargets):
    """CSV rows (``row<N>``); every row is looked up and its caption checked before training starts."""

    def __init__(self, dataset, cache: TeacherCache):
        super().__init__(dataset, cache)
        # the CSV's data rows, not the dataset's indices: rows with an empty caption are left out of the dataset
        keys = np.char.add(b"row", np.asarray(dataset.row_numbers).astype("S"))  # csv_row_key, vectorised
        self.rows = cache.checked_rows(keys, dataset.captions)

    def row(self, index: int) -> int:
        return int(self.rows[index])


class FolderCachedTargets(_CachedTargets):
    """Folder samples (``<relpath>#<line>``, the line drawn this epoch); every line a sample can read (those that
    hold text) is checked up front."""

    def __init__(self, dataset, cache: TeacherCache):
        super().__init__(dataset, cache)
        for item in dataset.items:
            for line in item.lines:
                cache.row(folder_line_key(dataset.root, item.image, line), item.captions[line])

    def row(self, index: int) -> int:
        return self.cache.row(self.dataset.key(index))


class CachedTextSample:
    """Webdataset: ``text_sample(sample)`` followed by the cached target of the sample's ``__key__``."""

    def __init__(self, text_sample, cache: TeacherCache):
        self.text_sample = text_sample
        self.cache = cache

    def __call__(self, sample):
        caption = sample["txt"]
        caption = clean_caption(caption.decode("utf-8") if isinstance(caption, bytes) else caption)
        row = self.cache.row(sample["__key__"], caption)
        return (*self.text_sample(sample), self.cache.embeddings([row])[0])
