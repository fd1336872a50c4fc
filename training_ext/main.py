"""open_clip_train's own ``main`` with this package's configs registered.

``python -m open_clip_train.main`` runs in a fresh interpreter that never imported open_clip_ext, so it does not
know ``tiny-clip`` or ``ViT-B-16-rope-512``. This entry point imports the plugin first and then hands every flag to
open_clip_train unchanged: use it to train a stock-style CLIP (such as the demo's 77-token teacher) from scratch.

    python -m training_ext.main --model tiny-clip --train-data train.csv --dataset-type csv ...

The flags are parsed (open_clip_train's parser, which imports neither torch nor open_clip) before open_clip_train
and torch load, so ``--help`` and a misspelt flag answer at once; an unknown ``--model`` is refused with its close
matches before open_clip_train sets anything up, and so is a contrastive loss over fewer than two pairs per step
(``check_contrastive_pairs``; open_clip_train's loop cannot skip such a step).
"""
import logging
import os
import sys

from open_clip_train.params import parse_args

PROG = "python -m training_ext.main"
DESCRIPTION = ("open_clip_train's main with open_clip_ext's configs registered (tiny-clip, <base>-rope-248, "
               "<base>-cope-248, <base>-longclip-248, ...); every flag is open_clip_train's, with its meaning. "
               "CSVs are read by this project's reader (standard CSV quoting as pandas reads it; relative image "
               "paths from --csv-image-root DIR, else from the CSV's folder).")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print(f"{PROG}: {DESCRIPTION}\n")
        sys.argv[0] = PROG  # the usage line names this command, not open_clip_train's file
    argv, csv_image_root = _take_csv_image_root(argv)
    args = parse_args(argv)  # exits here on --help or a flag argparse refuses
    from training_ext.engine import params, preflight  # imports open_clip and registers open_clip_ext's configs
    preflight.require_model(args.model, "--model", lambda message: params.fail(PROG, message))
    check_contrastive_pairs(args, params.world_size_from_env(), lambda message: params.fail(PROG, message))
    check_csvs(args, lambda message: params.fail(PROG, message))
    check_shards(args, lambda message: params.fail(PROG, message))
    from training_ext.engine.open_clip_train_patches import use_project_csv_reader
    use_project_csv_reader(csv_image_root)  # CSVs read by the project's reader and rules, as the stages read them
    from open_clip_train.main import main as open_clip_train_main
    return open_clip_train_main(argv)


def check_contrastive_pairs(args, processes: int, error) -> None:
    """Refuse (``error(message)``, which exits) a run whose every step computes a purely contrastive loss over fewer
    than 2 image-caption pairs; warn when the loss has another term that still trains (CoCa's caption loss).

    The pairs of a step are --batch-size x --accum-freq x ``processes``: open_clip_train gathers features across
    processes and computes the loss over the accumulated batch, and its data loaders always give full batches
    (drop_last, webdataset's full batches), so the flags alone decide. Which loss runs follows
    ``open_clip.create_loss``: --distill-model/--distill-pretrained (CLIP + distillation), a CoCa model, --siglip,
    else the CLIP loss."""
    pairs = args.batch_size * args.accum_freq * processes
    if pairs >= 2:
        return
    distill = args.distill_model is not None and args.distill_pretrained is not None  # open_clip_train's rule
    layout = (f"--batch-size {args.batch_size} x --accum-freq {args.accum_freq} x {processes} process(es) gives "
              f"{pairs} image-caption pair per step")
    if "coca" in args.model.lower() and not distill:
        if args.coca_contrastive_loss_weight:
            logging.warning(f"{layout}: CoCa's contrastive term over one pair is exactly 0, only its caption loss "
                            f"trains. Raise --batch-size or --accum-freq, or set --coca-contrastive-loss-weight 0")
        return
    if args.siglip and not distill:
        why = "the sigmoid loss has no negative pair: it only pushes that pair's logit up, whatever the model"
    else:
        loss = "CLIP loss with --distill-model" if distill else "CLIP loss"
        why = (f"the {loss} over one pair is a 1x1 logit matrix, a loss of exactly 0: every optimizer step would "
               f"change the weights by weight decay alone")
    error(f"{layout}: {why}. open_clip_train's loop cannot skip such a step; raise --batch-size or --accum-freq "
          f"to at least 2 pairs")


def check_csvs(args, error) -> None:
    """Read and check the CSVs open_clip_train will read, as its (patched) CsvDataset reads them, before it builds
    any model; the tables are kept for the dataset, so no file is parsed twice. A malformed record, a missing column
    or a file that is not UTF-8 is ``error(message)`` (which exits)."""
    from training_ext.data.csv_datasets import image_table
    for path in (args.train_data, args.val_data):
        is_csv = args.dataset_type == "csv" or (args.dataset_type == "auto" and str(path).endswith((".csv", ".tsv")))
        if path and is_csv and os.path.isfile(path):
            try:
                image_table(path, args.csv_img_key, args.csv_caption_key, None, args.csv_separator, keep=True)
            except (ValueError, KeyError) as problem:  # CsvFormatError, CsvColumnError, TextDecodeError
                error(str(problem))


def check_shards(args, error) -> None:
    """Every local shard a webdataset pattern names must exist (``error(message)``, which exits, names the missing
    ones), as the stages check them: open_clip_train's reader would log and skip a missing shard and fill the epoch
    with repeats of the others. A shard cut short is not checked here: open_clip_train's own reader reads it."""
    from training_ext.data.loaders import dataset_type
    from training_ext.data.shard_checks import ShardsMissingError, shard_listing
    for flag, pattern in (("--train-data", args.train_data), ("--val-data", args.val_data)):
        try:
            is_shards = bool(pattern) and dataset_type(args, pattern) == "webdataset"
        except ValueError:  # no type to tell: open_clip_train's own error follows
            is_shards = False
        if is_shards:
            try:
                shard_listing(pattern).check(flag)
            except ShardsMissingError as problem:
                error(str(problem))


def _take_csv_image_root(argv):
    """(argv without it, value) of --csv-image-root, the one flag of ours: open_clip_train's parser does not know
    it. Relative CSV image paths start from it, else from the CSV's folder (training_ext.common.csv_table)."""
    import argparse
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--csv-image-root", default=None)
    known, rest = parser.parse_known_args(argv)
    return rest, known.csv_image_root


if __name__ == "__main__":
    main()
