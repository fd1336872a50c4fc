"""python -m training_ext.eval: compare open_clip models on long- and short-caption benchmarks.

Each model (a stock open_clip model at 77 tokens, this project's RoPE/CoPE models, any checkpoint)
is run on every benchmark given; the output is one comparison table (terminal and results.md),
results.json with every number, and recall_by_length.png (R@1 against caption length in tokens).
"""
import argparse
import datetime
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

import open_clip
import open_clip_ext  # noqa: F401  (registers this project's model configs with open_clip)
from open_clip import OPENAI_IMAGENET_TEMPLATES, build_zero_shot_classifier
from open_clip_train.precision import get_autocast

from training_ext.eval.datasets import (BENCHMARKS, Benchmark, BenchmarkError, ClassificationSet, RetrievalSet,
                         caption_csv_benchmark)
from training_ext.eval.report import comparison_table, markdown_report, plot_recall_by_length, write_text
from training_ext.common.file_io import write_json
from training_ext.eval.features import encode_captions, encode_images
from training_ext.eval.length_buckets import DEFAULT_BUCKET_EDGES, check_bucket_edges, recall_at_1_by_length
from training_ext.common.retrieval import DEFAULT_CHUNK_ELEMENTS, recall_at_k, retrieval_metrics, target_ranks

# open_clip model names that carry a schema of their own before the name proper
_NAME_SCHEMAS = ("hf-hub:", "local-dir:")

EXAMPLE = """example:
  python -m training_ext.eval \\
      --model ViT-L-14:openai --model ViT-L-14-rope-248:/ckpt/stage2/epoch_1.pt \\
      --urban1k /data/Urban1k --coco-5k /data/coco \\
      --flickr30k-full-31k /data/flickr30k/results_20130124.token --flickr30k-images /data/flickr30k/flickr30k-images \\
      --output-dir eval_out
"""


@dataclass
class ModelSpec:
    spec: str                  # as given on the command line
    name: str                  # open_clip model name
    pretrained: Optional[str]  # pretrained tag, checkpoint path, or None (random init)


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable
    context_length: int


@dataclass
class SelectedBenchmark:
    benchmark: Benchmark
    source: str
    image_root: Optional[str]
    data: object               # RetrievalSet or ClassificationSet


def parse_model_spec(text: str) -> ModelSpec:
    """'NAME' or 'NAME:PRETRAINED_OR_PATH'; the split is at the first ':' after any hf-hub:/local-dir: schema."""
    schema = next((s for s in _NAME_SCHEMAS if text.startswith(s)), "")
    name, _, pretrained = text[len(schema):].partition(":")
    if not name:
        raise ValueError(f"model spec {text!r} has no model name")
    return ModelSpec(text, schema + name, pretrained or None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training_ext.eval", description=__doc__, epilog=EXAMPLE,
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
                       help="any open_clip caption CSV (tab-separated filepath/title, one caption per image) as a "
                            "benchmark named NAME; repeatable (e.g. your own held-out split)")
    group.add_argument("--sharegpt4v-root", metavar="DIR", help="folder the ShareGPT4V json's 'image' paths are relative to")
    group.add_argument("--long-dci-root", metavar="DIR", help="folder dci_long.csv's relative filepaths resolve "
                       "against (default: the CSV's folder; the photos folder for a CSV written by "
                       "scripts/prepare_dci.py --relative-paths)")
    group.add_argument("--flickr30k-images", metavar="DIR", help="the flickr30k-images folder")
    parser.add_argument("--output-dir", default="eval_results", help="where results.json, results.md and "
                                                                     "recall_by_length.png go")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per batch (default: 128 on GPU, 32 on CPU, where small batches stay in cache)")
    parser.add_argument("--text-batch-size", type=int, default=None,
                        help="captions per batch (default: 256 on GPU, 32 on CPU)")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers (image decoding, tokenizing)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--precision", choices=["amp", "amp_bf16", "fp32"], default=None,
                        help="autocast precision (default: amp on GPU, fp32 on CPU)")
    parser.add_argument("--length-buckets", default=",".join(map(str, DEFAULT_BUCKET_EDGES)),
                        help="upper edges of the caption length buckets in tokens (default %(default)s gives "
                             "<=77, 78-154, 155-248, >248)")
    parser.add_argument("--chunk-elements", type=int, default=DEFAULT_CHUNK_ELEMENTS,
                        help="similarity scores computed at once (memory bound of the ranking)")
    parser.add_argument("--seed", type=int, default=0, help="seed for models evaluated without weights")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.model_specs = args.model + args.models
    if not args.model_specs:
        parser.error("give at least one --model")
    if not any(getattr(args, b.name.replace("-", "_")) for b in BENCHMARKS.values()) and not args.csv:
        parser.error("give the path of at least one benchmark (--urban1k, --coco-5k, --csv NAME=PATH, ...)")
    for entry in args.csv:
        name, _, path = entry.partition("=")
        if not name or not path or name in BENCHMARKS:
            parser.error(f"--csv {entry!r}: expected NAME=PATH with a NAME that is not a built-in benchmark")
    try:
        args.bucket_edges = [int(x) for x in args.length_buckets.split(",")]
        check_bucket_edges(args.bucket_edges)
    except ValueError as e:
        parser.error(f"--length-buckets: {e}")
    on_gpu = torch.device(args.device).type == "cuda"
    if args.precision is None:
        args.precision = "amp" if on_gpu else "fp32"
    if args.batch_size is None:
        args.batch_size = 128 if on_gpu else 32
    if args.text_batch_size is None:
        args.text_batch_size = 256 if on_gpu else 32
    return args


def load_benchmarks(args) -> List[SelectedBenchmark]:
    """Read every benchmark given (before any model is loaded, so a bad path fails fast)."""
    selected = []
    for benchmark in BENCHMARKS.values():
        source = getattr(args, benchmark.name.replace("-", "_"))
        if not source:
            continue
        image_root = getattr(args, benchmark.image_root_option) if benchmark.image_root_option else None
        print(f"reading {benchmark.name} from {source}", file=sys.stderr)
        selected.append(SelectedBenchmark(benchmark, source, image_root, benchmark.reader(source, image_root)))
    for entry in args.csv:
        name, _, source = entry.partition("=")
        benchmark = caption_csv_benchmark(name)
        print(f"reading {name} from {source}", file=sys.stderr)
        selected.append(SelectedBenchmark(benchmark, source, None, benchmark.reader(source, None)))
    return selected


def load_model(spec: ModelSpec, device: str, seed: int) -> LoadedModel:
    torch.manual_seed(seed)  # a model without weights is then the same random model on every run
    model, _, preprocess = open_clip.create_model_and_transforms(spec.name, pretrained=spec.pretrained, device=device)
    model.eval()
    tokenizer = open_clip.get_tokenizer(spec.name)
    context_length = getattr(tokenizer, "context_length", None) or model.context_length
    return LoadedModel(spec, model, preprocess, tokenizer, int(context_length))


def _encoding_options(args) -> dict:
    return dict(workers=args.workers, device=args.device, precision=args.precision,
                show_progress=not args.no_progress)


def evaluate_retrieval(loaded: LoadedModel, selected: SelectedBenchmark, args) -> dict:
    data: RetrievalSet = selected.data
    options = _encoding_options(args)
    image_features = encode_images(loaded.model, loaded.preprocess, data.image_paths,
                                   batch_size=args.batch_size, **options)
    text_features, token_counts = encode_captions(loaded.model, loaded.tokenizer, data.captions,
                                                  batch_size=args.text_batch_size, **options)
    caption_image = torch.tensor(data.caption_image, dtype=torch.long)
    metrics, image_ranks, text_ranks = retrieval_metrics(image_features, text_features, caption_image,
                                                         chunk_elements=args.chunk_elements)
    return {
        "num_images": len(data.image_paths),
        "num_captions": len(data.captions),
        "captions_over_context": sum(n > loaded.context_length for n in token_counts),
        "metrics": metrics,
        "recall_by_length": recall_at_1_by_length(image_ranks, text_ranks, caption_image,
                                                  token_counts, args.bucket_edges),
    }


def evaluate_zero_shot(loaded: LoadedModel, selected: SelectedBenchmark, args) -> dict:
    data: ClassificationSet = selected.data
    autocast = get_autocast(args.precision, device_type=torch.device(args.device).type)
    with torch.inference_mode(), autocast():
        classifier = build_zero_shot_classifier(
            loaded.model, loaded.tokenizer, data.classnames, OPENAI_IMAGENET_TEMPLATES,
            num_classes_per_batch=10, device=args.device, use_tqdm=not args.no_progress)
    image_features = encode_images(loaded.model, loaded.preprocess, data.image_paths,
                                   batch_size=args.batch_size, **_encoding_options(args))
    ranks = target_ranks(image_features, classifier.t().float(), torch.tensor(data.labels, dtype=torch.long),
                         chunk_elements=args.chunk_elements)
    accuracy = recall_at_k(ranks, (1, 5))
    return {"num_images": len(data.image_paths), "num_classes": len(data.classnames),
            "metrics": {"top1": accuracy[1], "top5": accuracy[5]}}


def _checkpoint_of(spec: ModelSpec) -> Optional[str]:
    if spec.pretrained and os.path.isfile(spec.pretrained):
        return os.path.abspath(spec.pretrained)
    return spec.pretrained


def evaluate_model(loaded: LoadedModel, selected: SelectedBenchmark, args) -> dict:
    start = time.perf_counter()
    evaluate = evaluate_retrieval if isinstance(selected.data, RetrievalSet) else evaluate_zero_shot
    numbers = evaluate(loaded, selected, args)
    return {
        "model": loaded.spec.spec, "model_name": loaded.spec.name, "checkpoint": _checkpoint_of(loaded.spec),
        "context_length": loaded.context_length,
        "benchmark": selected.benchmark.name, "protocol": selected.benchmark.protocol,
        "source": os.path.abspath(selected.source),
        **numbers,
        "seconds": round(time.perf_counter() - start, 3),
    }


def write_outputs(args, models: List[dict], results: List[dict]) -> None:
    os.makedirs(args.output_dir, exist_ok=True)
    write_json(os.path.join(args.output_dir, "results.json"), {
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv if args.invoked_from_cli else None,
        "device": args.device, "precision": args.precision,
        "tie_rule": "ties count against the model (rank = negatives scoring >= the best positive)",
        "caption_length": "open_clip SimpleTokenizer tokens, untruncated, start and end tokens included",
        "length_bucket_edges": args.bucket_edges,
        "models": models,
        "results": results,
    })
    write_text(os.path.join(args.output_dir, "results.md"), markdown_report(results))
    plot_path = plot_recall_by_length(results, os.path.join(args.output_dir, "recall_by_length.png"))
    if plot_path is None:
        print("no retrieval benchmark: recall_by_length.png not written", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    args = parse_args(argv)
    args.invoked_from_cli = argv is None
    specs = [parse_model_spec(s) for s in args.model_specs]
    selected_benchmarks = load_benchmarks(args)
    models, results = [], []
    for spec in specs:
        loaded = load_model(spec, args.device, args.seed)
        models.append({"model": spec.spec, "model_name": spec.name, "checkpoint": _checkpoint_of(spec),
                       "context_length": loaded.context_length,
                       "num_parameters": sum(p.numel() for p in loaded.model.parameters())})
        for selected in selected_benchmarks:
            print(f"evaluating {spec.spec} on {selected.benchmark.name}", file=sys.stderr)
            results.append(evaluate_model(loaded, selected, args))
        del loaded  # free the model's memory before the next one is built
        if torch.device(args.device).type == "cuda":
            torch.cuda.empty_cache()
    write_outputs(args, models, results)
    print(comparison_table(results))
    print(f"\nwrote results.json, results.md and recall_by_length.png to {args.output_dir}", file=sys.stderr)
    return results


if __name__ == "__main__":
    try:
        main()
    except BenchmarkError as error:  # a bad benchmark file: its name and fault, without a traceback
        sys.exit(f"error: {error}")
