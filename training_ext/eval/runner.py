"""python -m training_ext.eval: compare open_clip models on long- and short-caption benchmarks.

Each model (a stock open_clip model at 77 tokens, this project's RoPE/CoPE models, any checkpoint)
is run on every benchmark given; the output is one comparison table (terminal and results.md),
results.json with every number, a protocol card per result, and recall_by_length.png (R@1 against
caption length in tokens). Every model spec, checkpoint, benchmark (its images' first bytes included) and the
output folder are checked before the first model runs; results.json and results.md are rewritten after each
benchmark of each model, and whatever stops the run (an image that cannot be decoded, a crash, Ctrl-C) first
writes every finished result.
"""
import argparse
import datetime
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

import open_clip
import open_clip_ext  # noqa: F401  (registers this project's model configs with open_clip)
from open_clip import OPENAI_IMAGENET_TEMPLATES, build_zero_shot_classifier
from open_clip_train.precision import get_autocast

from training_ext.eval.datasets import (BENCHMARKS, IMAGE_ROOT_HELP, Benchmark, BenchmarkError, ClassificationSet,
                                        RetrievalSet, caption_csv_benchmark)
from training_ext.eval.report import (column_bucket_table, comparison_table, markdown_report, perturbation_table,
                                      plot_perturbations, plot_recall_by_column, plot_recall_by_length, write_text)
from training_ext.common.file_io import write_json
from training_ext.eval import column_buckets
from training_ext.eval.column_buckets import ColumnBuckets
from training_ext.eval.features import encode_captions, encode_images
from training_ext.eval.length_buckets import (DEFAULT_BUCKET_EDGES, check_bucket_edges, recall_at_1_by_length,
                                             tokenizer_name)
from training_ext.eval.perturb import parse_perturbations, perturb_captions
from training_ext.eval.preflight import check_benchmark_images, check_model_spec, check_output_dir
from training_ext.eval.options import build_parser
from training_ext.eval.protocol_card import dataset_card, format_card, model_card
from training_ext.common.retrieval import (DEFAULT_CHUNK_ELEMENTS, TIE_RULES, recall_at_k, recall_metrics,
                                           retrieval_metrics, retrieval_rank_bounds, target_rank_bounds, tie_report)

# open_clip model names that carry a schema of their own before the name proper
_NAME_SCHEMAS = ("hf-hub:", "local-dir:")
RETRIEVAL_KS = (1, 5, 10)
# The long-caption benchmarks' cards count the captions longer than these (TULIP's 248, a 512-token context).
LONG_CAPTION_COUNTS = (248, 512)

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
    position_scaling: Optional[dict] = None  # --context-length on a RoPE tower: RelPosTextTransformer's setting


@dataclass
class SelectedBenchmark:
    benchmark: Benchmark
    source: str
    image_root: Optional[str]
    data: object               # RetrievalSet or ClassificationSet
    card: Optional[dict] = None  # the model-independent part of the protocol card
    column_buckets: Optional[ColumnBuckets] = None  # --bucket-by-column, where the CSV has the column


def parse_model_spec(text: str) -> ModelSpec:
    """'NAME' or 'NAME:PRETRAINED_OR_PATH'; the split is at the first ':' after any hf-hub:/local-dir: schema."""
    schema = next((s for s in _NAME_SCHEMAS if text.startswith(s)), "")
    name, _, pretrained = text[len(schema):].partition(":")
    if not name:
        raise ValueError(f"model spec {text!r} has no model name")
    return ModelSpec(text, schema + name, pretrained or None)


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
    if args.tie_rule == "peer":
        parser.error("--tie-rule peer was removed: the peers break ties differently (argmax takes the first maximal "
                     "index; argsort and topk take an order that depends on tensor length, device and torch "
                     "version), so no one rule reproduces them all; every result now "
                     "reports, per R@k, how many queries a tie decides and the R@k that ties in the model's favour "
                     "would give ('ties' in results.json and the protocol card)")
    if args.tie_rule not in TIE_RULES:
        parser.error(f"--tie-rule {args.tie_rule!r}: choose from {', '.join(sorted(TIE_RULES))}")
    if args.position_scaling and args.context_length is None:
        parser.error("--position-scaling says how a RoPE tower reads a longer context: give --context-length N too")
    if args.context_length is not None and args.context_length < 1:
        parser.error(f"--context-length {args.context_length}: give a positive number of tokens")
    if args.context_length is not None:
        args.position_scaling = args.position_scaling or "none"
    if args.coco_karpathy_captions and not args.coco_karpathy_5k:
        parser.error("--coco-karpathy-captions gives the captions of --coco-karpathy-5k: give that benchmark too")
    args.length_buckets = args.length_buckets or ",".join(map(str, DEFAULT_BUCKET_EDGES))
    args.chunk_elements = args.chunk_elements or DEFAULT_CHUNK_ELEMENTS
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        args.bucket_edges = [int(x) for x in args.length_buckets.split(",")]
        check_bucket_edges(args.bucket_edges)
    except ValueError as e:
        parser.error(f"--length-buckets: {e}")
    try:
        args.perturbations = parse_perturbations(args.perturb)
    except ValueError as e:
        parser.error(f"--perturb: {e}")
    try:
        args.column_edges = column_buckets.parse_edges(args.bucket_column_edges)
    except ValueError as e:
        parser.error(f"--bucket-column-edges: {e}")
    if args.column_edges is not None and not args.bucket_by_column:
        parser.error("--bucket-column-edges needs --bucket-by-column")
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
        extra = {option: getattr(args, option) for option in benchmark.extra_options}
        print(f"reading {benchmark.name} from {source}", file=sys.stderr)
        selected.append(SelectedBenchmark(benchmark, source, image_root, benchmark.reader(source, image_root, **extra)))
    for entry in args.csv:
        name, _, source = entry.partition("=")
        benchmark = caption_csv_benchmark(name, args.csv_separator, args.csv_img_key, args.csv_caption_key)
        print(f"reading {name} from {source}", file=sys.stderr)
        selected.append(SelectedBenchmark(benchmark, source, args.csv_image_root,
                                          benchmark.reader(source, args.csv_image_root)))
    for item in selected:
        check_benchmark_images(item.benchmark.name, item.source, item.data.image_paths)
        describe_benchmark(item)
    attach_bucket_column(args, selected)
    return selected


def describe_benchmark(item: SelectedBenchmark) -> None:
    """The dataset part of the protocol card, and the counts read, on the terminal."""
    item.card = dataset_card(item.benchmark, item.data)
    card = item.card
    unit, count = ("classes", card["num_classes"]) if "num_classes" in card else ("captions", card["num_captions"])
    print(f"{item.benchmark.name}: {card['num_images']} images, {count} {unit}", file=sys.stderr)
    if card["matches_release"] is False:
        print(f"warning: {item.benchmark.name}: the full release has {card['release_counts'][0]} images and "
              f"{card['release_counts'][1]} {unit}: this is not the full benchmark", file=sys.stderr)
    if card["skipped_files"]:
        print(f"note: {item.benchmark.name}: the protocol leaves out {card['skipped_files']} file(s), e.g. "
              f"{', '.join(card['skipped_examples'][:3])}", file=sys.stderr)


def _is_csv_benchmark(item: SelectedBenchmark) -> bool:
    return item.benchmark.name == "long-dci" or item.benchmark.name not in BENCHMARKS


def attach_bucket_column(args, selected: List[SelectedBenchmark]) -> None:
    """--bucket-by-column: the buckets of every CSV benchmark whose file has the column. Every other benchmark is
    evaluated without them, and a line on the terminal says which and why.

    Raises:
        BenchmarkError: no CSV benchmark was given, or none has the column (names each file's columns).
    """
    if not args.bucket_by_column:
        return
    column = args.bucket_by_column
    csv_benchmarks = [item for item in selected if _is_csv_benchmark(item)]
    if not csv_benchmarks:
        raise BenchmarkError(f"{column_buckets.FLAG} needs a CSV benchmark (--csv NAME=PATH or --long-dci)")
    separator = getattr(args, "csv_separator", None) or "\t"
    headers = {}
    for item in csv_benchmarks:
        values, table = column_buckets.read_bucket_column(item.source, column, len(item.data.captions), separator)
        if values is None:
            headers[item.benchmark.name] = (item.source, table.header)
        else:
            item.column_buckets = column_buckets.assign_buckets(values, args.column_edges, table.where)
    if len(headers) == len(csv_benchmarks):
        found = "; ".join(f"{name} ({path}): {', '.join(header)}" for name, (path, header) in headers.items())
        raise BenchmarkError(f"{column_buckets.FLAG} {column}: no CSV benchmark has a column {column!r} (their "
                             f"columns: {found}); name one of these columns, or leave {column_buckets.FLAG} out")
    for item in selected:
        if item.column_buckets is not None:
            continue
        why = (f"{item.source} has no column {column!r}" if item.benchmark.name in headers
               else "only CSV benchmarks (--csv, --long-dci) have columns")
        print(f"note: {item.benchmark.name}: evaluated without {column_buckets.FLAG} buckets ({why})",
              file=sys.stderr)


def longer_context_refusal(spec: ModelSpec, position: Optional[str], own_context: int,
                           context_length: Optional[int]) -> Optional[str]:
    """Why --context-length cannot apply to a tower with positions ``position`` ('rope', 'cope', anything else:
    an absolute table) built at ``own_context`` tokens; None when it can."""
    if context_length is None or position == "rope" or context_length == own_context:
        return None
    if position == "cope":
        what = (f"a CoPE tower: its per-layer position table has {own_context} entries and none past them "
                f"(TULIP's CoPE stage 2 builds and trains the table at the longer length)")
    else:
        what = (f"its text tower reads absolute positions from a table of {own_context} rows (stock CLIP, Long-CLIP "
                f"and uniform towers) and has no row past them")
    return (f"--model {spec.spec} cannot be read at --context-length {context_length}: {what}; evaluate it in a "
            f"run without --context-length")


def check_longer_context(spec: ModelSpec, context_length: Optional[int]) -> None:
    """--context-length against the model's config, before any model is built (a name open_clip has no config
    for, e.g. hf-hub:, is checked after loading)."""
    cfg = open_clip.get_model_config(spec.name) if context_length is not None else None
    if cfg:
        text_cfg = cfg.get("text_cfg", {})
        problem = longer_context_refusal(spec, text_cfg.get("pos_embed_type"),
                                         text_cfg.get("context_length", open_clip.factory.DEFAULT_CONTEXT_LENGTH),
                                         context_length)
        if problem:
            raise ValueError(problem)


def load_model(spec: ModelSpec, device: str, seed: int, context_length: Optional[int] = None,
               position_scaling: Optional[str] = None) -> LoadedModel:
    """The model as trained, then (``context_length``) a RoPE tower read at that length with ``position_scaling``
    (a runtime override after loading: the checkpoint is checked against the config it was trained with)."""
    torch.manual_seed(seed)  # a model without weights is then the same random model on every run
    model, _, preprocess = open_clip.create_model_and_transforms(spec.name, pretrained=spec.pretrained, device=device)
    model.eval()
    scaling = None
    if context_length is not None:
        text = getattr(model, "text", None)
        position = getattr(text, "position", None)
        problem = longer_context_refusal(spec, position, model.context_length, context_length)
        if problem:
            raise ValueError(problem)
        if position == "rope":
            scaling = text.set_position_scaling(position_scaling, context_length)
            model.context_length = context_length
    tokenizer = open_clip.get_tokenizer(spec.name, **({} if context_length is None else
                                                      {"context_length": context_length}))
    context_length = getattr(tokenizer, "context_length", None) or model.context_length
    return LoadedModel(spec, model, preprocess, tokenizer, int(context_length), scaling)


def _encoding_options(args) -> dict:
    return dict(workers=args.workers, device=args.device, precision=args.precision,
                show_progress=not args.no_progress)


def image_preprocess(loaded: LoadedModel, benchmark: Benchmark) -> Callable:
    """The model's preprocess, after the peer's own image transform where the protocol has one (FG-CLIP's DCI
    resize). torchvision's Compose pickles, so DataLoader workers can run it."""
    if benchmark.image_transform is None:
        return loaded.preprocess
    from torchvision.transforms import Compose
    return Compose([benchmark.image_transform, loaded.preprocess])


def evaluate_retrieval(loaded: LoadedModel, selected: SelectedBenchmark, args) -> dict:
    data: RetrievalSet = selected.data
    options = _encoding_options(args)
    image_features = encode_images(loaded.model, image_preprocess(loaded, selected.benchmark), data.image_paths,
                                   batch_size=args.batch_size, **options)
    text_features, token_counts = encode_captions(loaded.model, loaded.tokenizer, data.captions,
                                                  batch_size=args.text_batch_size, **options)
    caption_image = torch.tensor(data.caption_image, dtype=torch.long)
    image_bounds, text_bounds = retrieval_rank_bounds(image_features, text_features, caption_image,
                                                      chunk_elements=args.chunk_elements)
    image_ranks, text_ranks = image_bounds.reported, text_bounds.reported
    metrics = recall_metrics(image_ranks, text_ranks, RETRIEVAL_KS)
    ties = {"image_to_text": tie_report(image_bounds, RETRIEVAL_KS),
            "text_to_image": tie_report(text_bounds, RETRIEVAL_KS)}
    card = model_card(selected.card, token_counts, loaded.context_length, args.tie_rule, args.precision, ties,
                      loaded.position_scaling, () if selected.benchmark.short_captions else LONG_CAPTION_COUNTS)
    numbers = {
        "num_images": len(data.image_paths),
        "num_captions": len(data.captions),
        "captions_over_context": card["captions_over_context"],
        "caption_length_tokenizer": tokenizer_name(loaded.tokenizer),
        "metrics": metrics,
        "ties": ties,
        "recall_by_length": recall_at_1_by_length(image_ranks, text_ranks, caption_image,
                                                  token_counts, args.bucket_edges),
        "protocol_card": card,
    }
    if selected.column_buckets is not None:
        numbers["recall_by_column"] = column_buckets.bucket_by_column(
            image_ranks, text_ranks, caption_image, selected.column_buckets, args.bucket_by_column)
    if args.perturbations and not selected.benchmark.short_captions:
        numbers["perturbations"] = [evaluate_perturbation(loaded, data, name, image_features, caption_image,
                                                          metrics, args) for name in args.perturbations]
    return numbers


def evaluate_perturbation(loaded: LoadedModel, data: RetrievalSet, name: str, image_features: torch.Tensor,
                          caption_image: torch.Tensor, intact: dict, args) -> dict:
    """R@1 on the perturbed captions (same images, same model) and its change against the intact captions."""
    captions = perturb_captions(data.captions, name, args.perturb_seed, loaded.tokenizer)
    text_features, _ = encode_captions(loaded.model, loaded.tokenizer, captions, batch_size=args.text_batch_size,
                                       **_encoding_options(args))
    metrics, _, _ = retrieval_metrics(image_features, text_features, caption_image, ks=(1,),
                                      chunk_elements=args.chunk_elements)
    row = {"perturbation": name,
           "captions_changed": sum(a != b for a, b in zip(data.captions, captions)),
           "captions_emptied": sum(bool(a.strip()) and not b.strip() for a, b in zip(data.captions, captions))}
    for key in ("image_to_text_R@1", "text_to_image_R@1"):
        row[key] = metrics[key]
        row[f"delta_{key}"] = metrics[key] - intact[key]
    return row


def evaluate_zero_shot(loaded: LoadedModel, selected: SelectedBenchmark, args) -> dict:
    data: ClassificationSet = selected.data
    autocast = get_autocast(args.precision, device_type=torch.device(args.device).type)
    with torch.inference_mode(), autocast():
        classifier = build_zero_shot_classifier(
            loaded.model, loaded.tokenizer, data.classnames, OPENAI_IMAGENET_TEMPLATES,
            num_classes_per_batch=10, device=args.device, use_tqdm=not args.no_progress)
    image_features = encode_images(loaded.model, image_preprocess(loaded, selected.benchmark), data.image_paths,
                                   batch_size=args.batch_size, **_encoding_options(args))
    bounds = target_rank_bounds(image_features, classifier.t().float(), torch.tensor(data.labels, dtype=torch.long),
                                chunk_elements=args.chunk_elements)
    accuracy = recall_at_k(bounds.reported, (1, 5))
    ties = {"image_to_class": tie_report(bounds, (1, 5))}
    return {"num_images": len(data.image_paths), "num_classes": len(data.classnames),
            "metrics": {"top1": accuracy[1], "top5": accuracy[5]}, "ties": ties,
            "protocol_card": model_card(selected.card, None, loaded.context_length, args.tie_rule, args.precision,
                                        ties, loaded.position_scaling)}


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
        "context_length": loaded.context_length, "position_scaling": loaded.position_scaling,
        "benchmark": selected.benchmark.name, "protocol": selected.benchmark.protocol,
        "source": os.path.abspath(selected.source), "tie_rule": args.tie_rule,
        **numbers,
        "seconds": round(time.perf_counter() - start, 3),
    }


def write_outputs(args, models: List[dict], results: List[dict], pending: Sequence[str] = (),
                  plots: bool = True) -> List[str]:
    """results.json, results.md and (with ``plots``) the plots, each written atomically; called after every
    benchmark of every model, so a crash later keeps the finished results (results.json then says complete: false
    and names the models not finished). Returns the names of the files written, in args.output_dir."""
    os.makedirs(args.output_dir, exist_ok=True)
    write_json(os.path.join(args.output_dir, "results.json"), {
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv if args.invoked_from_cli else None,
        "complete": not pending, "models_pending": list(pending),
        "device": args.device, "precision": args.precision,
        "tie_rule": args.tie_rule, "tie_rule_meaning": TIE_RULES[args.tie_rule],
        "caption_length": "tokens of each model's own tokenizer (each result's caption_length_tokenizer), "
                          "untruncated, its special tokens included",
        "length_bucket_edges": args.bucket_edges,
        "perturbations": args.perturbations, "perturb_seed": args.perturb_seed,
        "bucket_by_column": args.bucket_by_column, "bucket_column_edges": args.column_edges,
        "models": models,
        "results": results,
    })
    write_text(os.path.join(args.output_dir, "results.md"), markdown_report(results, pending))
    if not plots:
        return ["results.json", "results.md"]
    plot_path = plot_recall_by_length(results, os.path.join(args.output_dir, "recall_by_length.png"))
    if plot_path is None:
        print("no retrieval benchmark: recall_by_length.png not written", file=sys.stderr)
    plot_paths = [plot_path]
    if args.bucket_by_column:
        plot_paths.append(plot_recall_by_column(results, os.path.join(args.output_dir, "recall_by_column.png")))
    if args.perturbations:
        plot_paths.append(plot_perturbations(results, os.path.join(args.output_dir, "caption_perturbations.png")))
    return ["results.json", "results.md"] + [os.path.basename(path) for path in plot_paths if path]


# features.ImageFiles raises ValueError("cannot read image PATH: REASON"); from a DataLoader worker the message
# becomes the worker's traceback, whose last such line is the original
_UNREADABLE_IMAGE = re.compile(r"cannot read image (.+)")


def unreadable_image(error: BaseException) -> Optional[str]:
    """'PATH: REASON' of an image that could not be decoded during encoding, or None for any other error."""
    found = _UNREADABLE_IMAGE.findall(str(error)) if isinstance(error, ValueError) else []
    return found[-1].strip() if found else None


def save_finished(args, models: List[dict], results: List[dict], pending: Sequence[str]) -> None:
    """The finished results on disk before a stop propagates; a failure to write them is reported, not raised,
    so that it does not hide the error that stopped the run."""
    try:
        write_outputs(args, models, results, pending, plots=bool(results))
    except Exception as error:  # noqa: BLE001  (the original error follows)
        print(f"warning: could not save the finished results in {args.output_dir}: {error}", file=sys.stderr)


def preflight(args) -> Tuple[List[ModelSpec], List[SelectedBenchmark]]:
    """Every model spec, checkpoint path and benchmark, and the output folder, checked before the first model
    runs (the folder last: it is created, and a run refused for another reason leaves none behind)."""
    specs = [parse_model_spec(s) for s in args.model_specs]
    for spec in specs:
        check_model_spec(spec)
        check_longer_context(spec, args.context_length)
    selected = load_benchmarks(args)
    check_output_dir(args.output_dir)
    return specs, selected


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    args = parse_args(argv)
    args.invoked_from_cli = argv is None
    try:
        specs, selected_benchmarks = preflight(args)
    except (ValueError, OSError) as error:  # BenchmarkError, PreflightError, unreadable files: no traceback
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    models, results = [], []
    for index, spec in enumerate(specs):
        pending = [s.spec for s in specs[index:]]
        selected = None
        try:
            loaded = load_model(spec, args.device, args.seed, args.context_length, args.position_scaling)
            models.append({"model": spec.spec, "model_name": spec.name, "checkpoint": _checkpoint_of(spec),
                           "context_length": loaded.context_length, "position_scaling": loaded.position_scaling,
                           "num_parameters": sum(p.numel() for p in loaded.model.parameters())})
            for selected in selected_benchmarks:
                print(f"evaluating {spec.spec} on {selected.benchmark.name}", file=sys.stderr)
                results.append(evaluate_model(loaded, selected, args))
                print(format_card(results[-1]["protocol_card"], spec.spec))
                write_outputs(args, models, results, pending, plots=False)
        except BaseException as error:  # a crash or Ctrl-C: the finished results first, then the error
            save_finished(args, models, results, pending)
            image = unreadable_image(error)
            if image is None or selected is None:
                raise
            print(f"error: {selected.benchmark.name} ({selected.source}): cannot read image {image}; replace the "
                  f"file and run again ({len(results)} finished result(s) saved in "
                  f"{os.path.join(args.output_dir, 'results.json')})", file=sys.stderr)
            raise SystemExit(2) from None
        del loaded  # free the model's memory before the next one is built
        if torch.device(args.device).type == "cuda":
            torch.cuda.empty_cache()
        written = write_outputs(args, models, results, pending=[s.spec for s in specs[index + 1:]])
    print(comparison_table(results))
    if args.perturbations:
        print("\n" + perturbation_table(results))
    by_column = column_bucket_table(results)
    if by_column:
        print("\n" + by_column)
    print(f"\nwrote {', '.join(written)} to {args.output_dir}", file=sys.stderr)
    return results


if __name__ == "__main__":
    try:
        main()
    except BenchmarkError as error:  # a bad benchmark file: its name and fault, without a traceback
        sys.exit(f"error: {error}")
