#!/usr/bin/env python
"""ShareGPT4V json -> training and validation CSVs (open_clip format) and, optionally, webdataset shards.

Validation is the first --num-val entries of the json (ShareGPT4V-1k); training is the rest, and a training
entry whose image is also a validation image is left out too (unless --keep-shared-images), so no
validation image is ever trained on. Missing images, files that are not images (their first bytes are read: an
HTML page saved as .jpg) and malformed entries are counted and listed in files. Image data past the header is
checked only when packing shards (--shards-dir; --verify-images decodes every pixel).

Example:
  python scripts/prepare_sharegpt4v.py --json ShareGPT4V/share-captioner_coco_lcs_sam_1246k_1107.json \\
      --image-root ShareGPT4V/data --output-dir data/sharegpt4v --shards-dir data/sharegpt4v/shards
"""
import argparse
import os
import sys

from tqdm import tqdm

from training_ext.prep.cli import (add_missing_argument, add_progress_argument, add_shard_arguments,
                                   pack_from_args, report_list, run_main)
from training_ext.common.file_io import write_json, write_tsv
from training_ext.common.image_files import MISSING
from training_ext.prep.sharegpt4v import load_json_list, parse_entries, split_validation
from training_ext.prep.sources import check_images_exist, make_sample, resolve_path, write_samples_csv


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, help="the ShareGPT4V caption json")
    parser.add_argument("--image-root", required=True,
                        help="folder the json's 'image' paths are relative to (ShareGPT4V's data/ folder)")
    parser.add_argument("--output-dir", required=True, help="where the CSVs and the reports are written")
    parser.add_argument("--name", default="sharegpt4v",
                        help="file name prefix of every output: <name>_train.csv, <name>_val.csv, ... "
                             "(default sharegpt4v)")
    parser.add_argument("--num-val", type=int, default=1000,
                        help="the first N json entries are validation, never training (default 1000)")
    parser.add_argument("--relative-paths", action="store_true",
                        help="write filepath relative to --image-root (then train and evaluate with "
                             "--csv-image-root set to it); default: absolute paths")
    parser.add_argument("--keep-shared-images", action="store_true",
                        help="keep training entries whose image is also a validation entry's image")
    parser.add_argument("--strict", action="store_true", help="stop on the first malformed entry")
    parser.add_argument("--shards-dir", help="also pack <name>-train-*.tar and <name>-val-*.tar shards here")
    add_missing_argument(parser)
    add_shard_arguments(parser)
    add_progress_argument(parser)
    return parser.parse_args(argv)


def output_path(args, suffix: str) -> str:
    return os.path.join(args.output_dir, f"{args.name}_{suffix}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    progress = not args.no_progress
    image_root = os.path.abspath(args.image_root)

    data = load_json_list(args.json)
    entries, malformed = parse_entries(tqdm(data, desc="parsing entries", unit=" entries", disable=not progress))
    malformed_path = output_path(args, "malformed.tsv")
    write_tsv(malformed_path, ("index", "id", "reason"), ([str(m.index), m.id, m.reason] for m in malformed),
              collapse_whitespace=True)
    report_list(len(malformed), "malformed json entries (left out)", malformed_path)
    if malformed and args.strict:
        first = malformed[0]
        sys.exit(f"{args.json}: entry {first.index} (id {first.id!r}) is malformed: {first.reason}")

    def to_sample(entry):
        return make_sample(resolve_path(entry.image, image_root), entry.caption, entry.id,
                           extra={"sharegpt4v_index": entry.index, "image": entry.image})

    val_entries, train_entries = split_validation(entries, args.num_val)
    val = [to_sample(e) for e in val_entries]
    train = [to_sample(e) for e in train_entries]
    val_images = {s.image_path for s in val}  # before any drop: a validation image is never trained on

    missing_path, unreadable_path = output_path(args, "missing_images.txt"), output_path(args, "unreadable_images.tsv")
    bad = check_images_exist([s.image_path for s in val + train], missing_path, args.missing, progress,
                             unreadable_path)
    missing = [path for path, why in bad.items() if why == MISSING]
    report_list(len(missing), "images missing under " + image_root, missing_path)
    report_list(len(bad) - len(missing), "image files that are not images", unreadable_path)
    if args.missing == "drop":
        val = [s for s in val if s.image_path not in bad]
        train = [s for s in train if s.image_path not in bad]

    shared = [s for s in train if s.image_path in val_images]
    if shared and not args.keep_shared_images:
        train = [s for s in train if s.image_path not in val_images]
        print(f"{len(shared)} training entries share an image with validation and are left out")

    relative_to = image_root if args.relative_paths else None
    train_csv, val_csv = output_path(args, "train.csv"), output_path(args, "val.csv")
    write_samples_csv(train_csv, train, relative_to)
    write_samples_csv(val_csv, val, relative_to)
    print(f"{len(train)} training rows -> {train_csv}\n{len(val)} validation rows -> {val_csv}")

    report = {
        "json": os.path.abspath(args.json), "image_root": image_root, "json_entries": len(data),
        "malformed_entries": len(malformed), "missing_images": len(missing),
        "unreadable_images": len(bad) - len(missing), "missing_policy": args.missing,
        "train_entries_sharing_val_images": len(shared), "train_rows": len(train), "val_rows": len(val),
        "num_val": args.num_val, "train_csv": train_csv, "val_csv": val_csv,
    }
    if args.shards_dir:
        for split, samples in (("val", val), ("train", train)):
            if samples:
                result = pack_from_args(samples, args.shards_dir, f"{args.name}-{split}", args)
                report[f"{split}_shards"] = os.path.join(os.path.abspath(args.shards_dir), result.pattern)
                report[f"{split}_shard_samples"] = result.total_samples
    write_json(output_path(args, "report.json"), report)
    return report


if __name__ == "__main__":
    run_main(main)
