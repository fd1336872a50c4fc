"""The flags of ``python -m training_ext.eval``, importable without torch or open_clip: ``__main__`` parses them
(``--help``, a misspelt flag) before the evaluation code and its imports load. Defaults that need torch or the
metric modules (device, length buckets, similarity chunk) are None here and filled in by ``runner.parse_args``.
"""
import argparse

from training_ext.eval.datasets import BENCHMARKS, IMAGE_ROOT_HELP

DESCRIPTION = ("compare open_clip models (stock CLIP, RoPE/CoPE/Long-CLIP models, any checkpoint) on long- and "
               "short-caption benchmarks: one comparison table, results.json, a protocol card per result and "
               "recall_by_length.png.")

EXAMPLE = """example:
  python -m training_ext.eval \\
      --model ViT-L-14:openai --model ViT-L-14-rope-248:/ckpt/stage2/epoch_1.pt \\
      --urban1k /data/Urban1k --coco-5k /data/coco \\
      --flickr30k-full-31k /data/flickr30k/results_20130124.token --flickr30k-images /data/flickr30k/flickr30k-images \\
      --output-dir eval_out
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training_ext.eval", description=DESCRIPTION, epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], metavar="NAME[:PRETRAINED_OR_PATH]",
                        help="an open_clip model, optionally with a pretrained tag or checkpoint path "
                             "(e.g. ViT-L-14:openai, tiny-clip-rope-248:/x/epoch_2.pt, tiny-clip for random "
                             "init); repeat for several models")
    parser.add_argument("--models", nargs="+", default=[], metavar="SPEC", help="several model specs at once")
    group = parser.add_argument_group("benchmarks (give the path of each benchmark to run)")
    for benchmark in BENCHMARKS.values():
        group.add_argument(f"--{benchmark.name}", metavar="PATH", help=f"{benchmark.path_help}. {benchmark.protocol}")
    group.add_argument("--csv", action="append", default=[], metavar="NAME=PATH",
                       help="any open_clip caption CSV (one caption per row, rows naming the same image file are one image; "
                            "read as training reads it: standard CSV quoting) as a benchmark named NAME; repeatable "
                            "(e.g. your own held-out split)")
    group.add_argument("--csv-separator", default="\t", help="--csv files' field separator, as in training "
                       "(default: tab)")
    group.add_argument("--csv-img-key", default="filepath", help="--csv files' image path column (default filepath)")
    group.add_argument("--csv-caption-key", default="title", help="--csv files' caption column (default title)")
    group.add_argument("--csv-image-root", metavar="DIR", help="folder the --csv files' relative image paths start "
                       "from, as in training (default: each CSV's own folder)")
    group.add_argument("--sharegpt4v-root", metavar="DIR", help="folder the ShareGPT4V json's 'image' paths are relative to")
    group.add_argument("--long-dci-root", metavar="DIR", help="folder dci_long.csv's relative filepaths resolve "
                       "against (default: the CSV's folder; the photos folder for a CSV written by "
                       "scripts/prepare_dci.py --relative-paths)")
    group.add_argument("--flickr30k-images", metavar="DIR", help="the flickr30k-images folder")
    for option in ("dci_images", "docci_images", "iiw_images", "coco_karpathy_images"):
        group.add_argument("--" + option.replace("_", "-"), metavar="DIR", help=IMAGE_ROOT_HELP[option])
    group.add_argument("--coco-karpathy-captions", metavar="JSON",
                       help="COCO's captions_val2014.json: --coco-karpathy-5k then takes each test image's captions "
                            "from it, the text clip_benchmark evaluates, and counts those Karpathy's raw sentences "
                            "do not repeat (default: Karpathy's raw sentences, not compared)")
    protocol = parser.add_argument_group("protocol and diagnostics")
    protocol.add_argument("--tie-rule", default="against", metavar="{against}",
                          help="against (the only rule): ties count against the model. No rule can reproduce the "
                               "peers' sorts among equal scores, so every result also reports how many queries a "
                               "tie decides and the R@k that ties in the model's favour would give")
    protocol.add_argument("--perturb", default="", metavar="NAMES",
                          help="caption-perturbation diagnostics on the long-caption benchmarks, comma-separated: "
                               "first-sentence-removed, shuffled-sentences, cut-N (e.g. cut-77: the first 77 tokens of "
                               "the model's own tokenizer); each is reported as the change in R@1 against the intact "
                               "captions")
    protocol.add_argument("--perturb-seed", type=int, default=0, help="seed of shuffled-sentences")
    protocol.add_argument("--bucket-by-column", metavar="COLUMN",
                          help="also report R@1/5/10 per bucket of this column of the CSV benchmarks (--csv, "
                               "--long-dci) that have it, e.g. detail_position (the others are evaluated without "
                               "buckets); a table on the terminal and in results.md, results.json, "
                               "recall_by_column.png. Default buckets: 4 quantile buckets of a numeric column's "
                               "values (labelled by their ranges), one per value for text or at most 4 values")
    protocol.add_argument("--bucket-column-edges", metavar="E1,E2,...",
                          help="upper bucket edges for a numeric --bucket-by-column (v <= E1, E1 < v <= E2, ..., "
                               "v > last) instead of the quantile buckets")
    longer = parser.add_argument_group("reading past the trained context (RoPE towers)")
    longer.add_argument("--context-length", type=int, default=None, metavar="N",
                        help="evaluate every model at N tokens: its tokenizer at N, and a RoPE tower read at N with "
                             "--position-scaling over the context it was built with (a runtime override: the "
                             "checkpoint is loaded, and checked, as trained). CoPE and absolute-position towers "
                             "(stock CLIP, Long-CLIP, uniform) have no positions past their table and are refused "
                             "unless N is their own context")
    longer.add_argument("--position-scaling", choices=["none", "ntk", "yarn"], default=None,
                        help="how a RoPE tower reads past its trained length L, s = N / L (default none): none = "
                             "the trained frequencies, positions past L rotate further; ntk = NTK-aware base "
                             "theta * s^(d/(d-2)); yarn = YaRN (arXiv 2309.00071: per-frequency interpolation, "
                             "alpha 1, beta 32, attention temperature sqrt(1/t) = 0.1 ln s + 1). Needs --context-length")
    parser.add_argument("--output-dir", default="eval_results", help="where results.json, results.md and "
                                                                     "recall_by_length.png go")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per batch (default: 128 on GPU, 32 on CPU, where small batches stay in cache)")
    parser.add_argument("--text-batch-size", type=int, default=None,
                        help="captions per batch (default: 256 on GPU, 32 on CPU)")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers (image decoding, tokenizing)")
    parser.add_argument("--device", default=None,
                        help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--precision", choices=["amp", "amp_bf16", "fp32"], default=None,
                        help="autocast precision (default: amp on GPU, fp32 on CPU)")
    parser.add_argument("--length-buckets", default=None,
                        help="upper edges of the caption length buckets in tokens of each model's own tokenizer "
                             "(default 77,154,248 gives "
                             "<=77, 78-154, 155-248, >248)")
    parser.add_argument("--chunk-elements", type=int, default=None,
                        help="similarity scores computed at once (memory bound of the ranking; default: a 256 MB "
                             "budget of float32 scores)")
    parser.add_argument("--seed", type=int, default=0, help="seed for models evaluated without weights")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser
