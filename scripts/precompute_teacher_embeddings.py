#!/usr/bin/env python
"""Precompute a teacher's text embeddings (long and short captions) for a training set, once.

Stage 1 then reads them with --teacher-cache OUTPUT instead of running the teacher every step. The output folder
holds header.json (teacher name, checkpoint sha256, tokenizer context length, width, caption field),
long.f32 / short.f32 (float32 memory-mappable arrays, one row per sample) and index.tsv (sample keys). Running the
same command again resumes an interrupted run; a folder made with other settings is refused.

Examples:
  python scripts/precompute_teacher_embeddings.py --teacher-model ViT-L-14-quickgelu --teacher-pretrained openai \\
      --data train.csv --csv-caption-key title --output cache/vitl14
  python scripts/precompute_teacher_embeddings.py --teacher-model ViT-L-14-quickgelu --teacher-pretrained openai \\
      --data 'shards/train-{000000..000099}.tar' --wds-short-caption-key short.txt --output cache/vitl14
  python scripts/precompute_teacher_embeddings.py ... --dataset-type folder --data my_images --output cache/mine
"""
import argparse
import os
import sys
from contextlib import nullcontext
from typing import Iterable, Iterator, List

import open_clip
import torch
from tqdm import tqdm

import open_clip_ext  # noqa: F401  (registers this project's configs)
from open_clip_ext.configs import model_name_problem
from open_clip_ext.convert import pretrained_uses_quick_gelu
from training_ext.data.keyed_captions import (KeyedCaption, caption_digest, caption_field_for, csv_captions,
                                        folder_captions, tokenized_batches, webdataset_captions)
from training_ext.data.shard_checks import ShardsMissingError, shard_listing
from training_ext.data.skips import TextCheck
from training_ext.data.teacher_cache import (CacheHeader, TeacherCacheError, TeacherCacheWriter, file_sha256,
                                        teacher_checkpoint_file)

DATASET_TYPES = ("auto", "csv", "webdataset", "folder")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher-model", required=True, help="open_clip model name of the teacher")
    parser.add_argument("--teacher-pretrained", required=True,
                        help="its weights: an open_clip pretrained tag or a checkpoint path (hashed into the header)")
    parser.add_argument("--data", required=True, help="CSV file, webdataset shard pattern, or folder")
    parser.add_argument("--dataset-type", choices=DATASET_TYPES, default="auto",
                        help="default: csv for .csv/.tsv, webdataset for .tar, folder for a directory")
    parser.add_argument("--csv-caption-key", default="title", help="CSV caption column (default title)")
    parser.add_argument("--csv-short-caption-key", default=None,
                        help="CSV short caption column (default: the caption's first sentence)")
    parser.add_argument("--csv-separator", default="\t", help="CSV field separator (default: tab)")
    parser.add_argument("--wds-short-caption-key", default=None,
                        help="webdataset field of the short caption, e.g. short.txt (default: first sentence)")
    parser.add_argument("--output", required=True, help="cache folder (created; resumed if it exists)")
    parser.add_argument("--batch-size", type=int, default=256, help="captions per teacher forward (default 256)")
    parser.add_argument("--workers", type=int, default=0,
                        help="tokenizer processes running ahead of the teacher (default 0: tokenize in-process; "
                             "tokenizing takes about 0.5 ms per long caption)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp32", "amp", "amp_bf16"), default=None,
                        help="autocast for the teacher (default: amp on GPU, fp32 on CPU)")
    parser.add_argument("--cache-dir", default=None, help="open_clip download cache for pretrained tags")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    if args.precision is None:
        args.precision = "amp" if torch.device(args.device).type == "cuda" else "fp32"
    args.dataset_type = resolve_dataset_type(args.dataset_type, args.data, parser)
    return args


def resolve_dataset_type(kind: str, data: str, parser) -> str:
    if kind != "auto":
        return kind
    if os.path.isdir(data):
        return "folder"
    extension = data.rsplit(".", 1)[-1].lower()
    if extension in ("csv", "tsv"):
        return "csv"
    if extension == "tar":
        return "webdataset"
    parser.error(f"cannot tell the dataset type of {data!r}; pass --dataset-type")


def caption_records(args, text_check: TextCheck) -> Iterable[KeyedCaption]:
    """The samples training reads, by its caption rules: a caption that is empty or holds no text once tokenized
    by the teacher's tokenizer (``text_check``) is skipped, as training skips it."""
    if args.dataset_type == "csv":
        return csv_captions(args.data, args.csv_caption_key, args.csv_short_caption_key, args.csv_separator,
                            text_check=text_check)
    if args.dataset_type == "webdataset":
        return webdataset_captions(args.data, args.wds_short_caption_key, text_check)
    return folder_captions(args.data, progress=not args.no_progress, text_check=text_check)


def caption_fields(args):
    """(caption field, short caption field) as recorded in the header."""
    short = {"csv": args.csv_short_caption_key, "webdataset": args.wds_short_caption_key}.get(args.dataset_type)
    return caption_field_for(args.dataset_type, args.csv_caption_key), short


def skip_done(records: Iterable[KeyedCaption], keys_done: List[str], where: str) -> Iterator[KeyedCaption]:
    """Resume: pass over the records already cached, checking they are the same samples in the same order."""
    records = iter(records)
    for row, expected in enumerate(keys_done):
        record = next(records, None)
        if record is None or record.key != expected:
            found = record.key if record else "the end of the data"
            raise TeacherCacheError(f"{where}: row {row} was cached for sample {expected!r} but the data now gives "
                                    f"{found!r}; the data changed since the cache was started")
    return records


def autocast_for(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext
    dtype = torch.bfloat16 if precision == "amp_bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dataset_type == "webdataset":  # a missing shard stops before the teacher loads (listing kept for reading)
        shard_listing(args.data, keep=True).check("--data")
    if model_name_problem(args.teacher_model):  # before the download: an unknown name stops with its close names
        raise TeacherCacheError(f"--teacher-model {model_name_problem(args.teacher_model)}")
    device = torch.device(args.device)
    checkpoint = teacher_checkpoint_file(args.teacher_model, args.teacher_pretrained, args.cache_dir)
    print(f"hashing {checkpoint}", file=sys.stderr)
    sha = file_sha256(checkpoint)
    # The activation the weights were trained with, as stage 1 builds its live teacher (engine.builders.create_clip):
    # a cache of ViT-L-14 + openai must hold QuickGELU features, or it would not match the live teacher.
    teacher = open_clip.create_model(
        args.teacher_model, pretrained=args.teacher_pretrained, device=device, cache_dir=args.cache_dir,
        force_quick_gelu=pretrained_uses_quick_gelu(args.teacher_model, args.teacher_pretrained)).eval()
    tokenizer = open_clip.get_tokenizer(args.teacher_model, cache_dir=args.cache_dir)
    autocast = autocast_for(args.precision, device)
    with torch.no_grad():
        width = teacher.encode_text(tokenizer(["a"]).to(device)).shape[-1]
    caption_field, short_field = caption_fields(args)
    data = args.data if args.dataset_type == "webdataset" else os.path.abspath(args.data)
    header = CacheHeader(teacher=args.teacher_model, teacher_pretrained=args.teacher_pretrained,
                         checkpoint_sha256=sha, tokenizer_context_length=int(teacher.context_length),
                         embedding_width=int(width), dataset_type=args.dataset_type, dataset=data,
                         caption_field=caption_field, short_caption_field=short_field)
    writer = TeacherCacheWriter(args.output, header)
    records = caption_records(args, TextCheck.of(tokenizer))
    total = len(records) if isinstance(records, list) else None
    remaining = skip_done(records, writer.keys_done, args.output)
    with tqdm(total=total, initial=writer.rows, unit=" captions", desc="teacher embeddings",
              disable=args.no_progress) as progress:
        for batch, long_ids, short_ids in tokenized_batches(remaining, args.teacher_model, args.batch_size,
                                                            args.workers, args.cache_dir):
            with torch.no_grad(), autocast():
                long = teacher.encode_text(long_ids.to(device))
                short = teacher.encode_text(short_ids.to(device))
            writer.append([r.key for r in batch], [caption_digest(r.caption) for r in batch], long.float(),
                          short.float(), [r.caption for r in batch])  # captions name a refused NaN/inf row
            progress.update(len(batch))
    writer.finish()
    print(f"{writer.rows} samples cached in {args.output} (width {width}, teacher {args.teacher_model})",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (TeacherCacheError, ShardsMissingError) as error:
        raise SystemExit(f"error: {error}")
