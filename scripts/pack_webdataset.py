#!/usr/bin/env python
"""Pack image/caption pairs into webdataset shards for open_clip_train (resumable).

Sources:
  csv     an open_clip CSV (columns chosen by name, like open_clip_train's --csv-* options)
  folder  train-CLIP style: a/b/x.jpg pairs with an x.txt anywhere under the root, one caption a line
  coco    a COCO-style caption annotation file plus its image folder

Each sample becomes <key>.jpg|png|webp, <key>.txt (long caption), <key>.short.txt (short caption: the CSV's
short caption column, else the caption's first sentence) and <key>.json (metadata). Shards are
<prefix>-000000.tar, ...; sizes.json beside them gives open_clip_train the sample count, so
  --train-data '<output-dir>/<prefix>-{000000..NNNNNN}.tar'
needs no --train-num-samples. Re-running the same command resumes an interrupted pack.

Examples:
  python scripts/pack_webdataset.py csv --csv train.csv --output-dir shards --prefix train
  python scripts/pack_webdataset.py folder --root my_images --output-dir shards --prefix mine
  python scripts/pack_webdataset.py coco --annotations captions_train2017.json --image-root train2017 \\
      --output-dir shards --prefix coco --caption-policy each
"""
import argparse
import os

from training_ext.prep.cli import add_progress_argument, add_shard_arguments, pack_from_args, report_list, run_main
from training_ext.common.file_io import write_lines
from training_ext.common.folder_pairs import pair_folder
from training_ext.prep.sources import CAPTION_POLICIES, samples_from_coco, samples_from_csv, samples_from_folder


def add_caption_policy_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--caption-policy", choices=CAPTION_POLICIES, default="first",
                        help="for an image with several captions: the first only, each as its own sample "
                             "(image repeated), or all joined into one caption; the .json keeps all "
                             "(default first)")


def parse_args(argv=None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--output-dir", required=True, help="folder of the shards")
    common.add_argument("--prefix", required=True, help="shard name prefix: <prefix>-000000.tar, ...")
    add_shard_arguments(common)
    add_progress_argument(common)

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sources = parser.add_subparsers(dest="source", required=True, metavar="{csv,folder,coco}")

    csv = sources.add_parser("csv", parents=[common], help="an open_clip CSV")
    csv.add_argument("--csv", required=True, help="the CSV file")
    csv.add_argument("--csv-separator", default="\t", help="field separator (default: tab)")
    csv.add_argument("--csv-img-key", default="filepath", help="image path column (default filepath)")
    csv.add_argument("--csv-caption-key", default="title", help="caption column (default title)")
    csv.add_argument("--csv-short-caption-key",
                     help="short caption column (default: none, the caption's first sentence is used)")
    csv.add_argument("--image-root", help="folder relative image paths start from (default: the CSV's folder, "
                                          "as training's --csv-image-root)")

    folder = sources.add_parser("folder", parents=[common], help="train-CLIP style x.jpg + x.txt folder")
    folder.add_argument("--root", required=True, help="the dataset folder")
    add_caption_policy_argument(folder)

    coco = sources.add_parser("coco", parents=[common], help="COCO-style caption annotations")
    coco.add_argument("--annotations", required=True, help="e.g. annotations/captions_train2017.json")
    coco.add_argument("--image-root", required=True, help="folder the 'file_name's are in")
    add_caption_policy_argument(coco)
    return parser.parse_args(argv)


def list_beside_shards(args, what: str, paths) -> None:
    """Write a report list next to the shards and say how many it holds."""
    list_path = os.path.join(args.output_dir, f"{args.prefix}_{what.replace(' ', '_')}.txt")
    write_lines(list_path, paths)
    report_list(len(paths), what, list_path)


def read_samples(args):
    if args.source == "csv":
        return samples_from_csv(args.csv, args.csv_img_key, args.csv_caption_key, args.csv_short_caption_key,
                                args.csv_separator, args.image_root)
    if args.source == "folder":
        pairs = pair_folder(args.root, progress=not args.no_progress)
        samples, empty_texts = samples_from_folder(pairs, args.caption_policy)
        list_beside_shards(args, "orphan images", pairs.orphan_images)
        list_beside_shards(args, "orphan texts", pairs.orphan_texts)
        list_beside_shards(args, "empty caption files", empty_texts)
        return samples
    samples, uncaptioned = samples_from_coco(args.annotations, args.image_root, args.caption_policy)
    list_beside_shards(args, "uncaptioned images", uncaptioned)
    return samples


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    return pack_from_args(read_samples(args), args.output_dir, args.prefix, args)


if __name__ == "__main__":
    run_main(main)
