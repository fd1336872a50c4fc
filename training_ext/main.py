"""open_clip_train's own ``main`` with this package's configs registered.

``python -m open_clip_train.main`` runs in a fresh interpreter that never imported open_clip_ext, so it does not
know ``tiny-clip`` or ``ViT-B-16-rope-512``. This entry point imports the plugin first and then hands every flag to
open_clip_train unchanged: use it to train a stock-style CLIP (such as the demo's 77-token teacher) from scratch.

    python -m training_ext.main --model tiny-clip --train-data train.csv --dataset-type csv ...

The flags are parsed (open_clip_train's parser, which imports neither torch nor open_clip) before open_clip_train
and torch load, so ``--help`` and a misspelt flag answer at once; an unknown ``--model`` is refused with its close
matches before open_clip_train sets anything up.
"""
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
    from training_ext.engine.open_clip_train_patches import use_project_csv_reader
    use_project_csv_reader(csv_image_root)  # CSVs read by the project's reader and rules, as the stages read them
    from open_clip_train.main import main as open_clip_train_main
    return open_clip_train_main(argv)


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
