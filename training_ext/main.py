"""open_clip_train's own ``main`` with this package's configs registered.

``python -m open_clip_train.main`` runs in a fresh interpreter that never imported open_clip_ext, so it does not
know ``tiny-clip`` or ``ViT-B-16-rope-512``. This entry point imports the plugin first and then hands every flag to
open_clip_train unchanged: use it to train a stock-style CLIP (such as the demo's 77-token teacher) from scratch.

    python -m training_ext.main --model tiny-clip --train-data train.csv --dataset-type csv ...
"""
import sys

import open_clip_ext  # noqa: F401  (registers configs and loaders before open_clip_train parses --model)
from open_clip_train.main import main as open_clip_train_main


def main(argv=None):
    return open_clip_train_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
