#!/usr/bin/env python
"""DCI annotation JSONs -> dci_long.csv, the Long-DCI retrieval benchmark (tab-separated; filepath, title).

Rule (TULIP's dci_long.csv): one row per annotation file, in file-name order, whose `extra_caption` is not
empty (white space only counts as empty): filepath = <photos dir>/<"image">, title = extra_caption with
white space normalised. Annotation files with an empty extra_caption, images that do not exist and files that
are not images (their first bytes are read: an HTML page saved as .jpg) are counted and listed in files next to
the CSV; image data past the header is not checked.

Example:
  python scripts/prepare_dci.py --annotations-dir DCI/data/densely_captioned_images/annotations \\
      --output data/dci_long.csv
"""
import argparse
import os

from tqdm import tqdm

from training_ext.prep.cli import add_missing_argument, add_progress_argument, report_list, run_main
from training_ext.prep.dci import annotation_files, long_dci_pairs
from training_ext.common.file_io import write_lines, write_tsv
from training_ext.common.image_files import MISSING
from training_ext.prep.sources import check_images_exist, resolve_path

DCI_LONG_COLUMNS = ("filepath", "title")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations-dir", required=True,
                        help="DCI's densely_captioned_images/annotations folder (one JSON per image)")
    parser.add_argument("--photos-dir",
                        help="folder the annotations' 'image' names are in (default: photos/ beside the "
                             "annotations folder)")
    parser.add_argument("--output", required=True, help="the CSV to write, e.g. dci_long.csv")
    parser.add_argument("--relative-paths", action="store_true",
                        help="write the image names as the annotations give them (relative to the photos "
                             "folder, as TULIP's file does); default: absolute paths")
    add_missing_argument(parser)
    add_progress_argument(parser)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    annotations_dir = os.path.abspath(args.annotations_dir)
    photos_dir = os.path.abspath(args.photos_dir or os.path.join(os.path.dirname(annotations_dir), "photos"))
    stem = os.path.splitext(args.output)[0]

    paths = annotation_files(annotations_dir)
    pairs, empty = long_dci_pairs(tqdm(paths, desc="reading annotations", unit=" files",
                                       disable=args.no_progress))
    empty_path = f"{stem}_empty_extra_caption.txt"
    write_lines(empty_path, empty)
    report_list(len(empty), "annotations with an empty extra_caption (left out, as the benchmark does)",
                empty_path)

    missing_path, unreadable_path = f"{stem}_missing_images.txt", f"{stem}_unreadable_images.tsv"
    bad = check_images_exist([resolve_path(p.image, photos_dir) for p in pairs], missing_path,
                             args.missing, not args.no_progress, unreadable_path)
    missing = [path for path, why in bad.items() if why == MISSING]
    report_list(len(missing), f"images missing under {photos_dir}", missing_path)
    report_list(len(bad) - len(missing), "image files that are not images", unreadable_path)
    if args.missing == "drop":
        pairs = [p for p in pairs if resolve_path(p.image, photos_dir) not in bad]

    rows = ([p.image if args.relative_paths else resolve_path(p.image, photos_dir), p.caption] for p in pairs)
    count = write_tsv(args.output, DCI_LONG_COLUMNS, rows)
    print(f"{count} Long-DCI pairs from {len(paths)} annotation files -> {args.output}")
    return {"annotation_files": len(paths), "pairs": count, "empty_extra_caption": len(empty),
            "missing_images": len(missing), "unreadable_images": len(bad) - len(missing), "photos_dir": photos_dir}


if __name__ == "__main__":
    run_main(main)
