"""Throughput of `python -m training_ext.eval` against a naive reference-style loop, in one run.

Both sides evaluate the same model on the same generated Urban1k-layout fixture (N image/caption
pairs) and must agree on every recall. The naive side does what the published reference scripts do:
it encodes one image and one caption at a time and builds the whole similarity matrix in one piece
before sorting it. The fast side is the evaluation's own code path (reading the benchmark, token
counts for the length plot, batched DataLoader encoding, chunked ranking). Model loading is left
out of both timings. Reported: images+captions per second of each side and their ratio.

--padding-free times the evaluation's caption encoding instead (``training_ext.eval.features.encode_captions``,
tokenizing included) on two generated length mixes: coco-like (12 to 18 tokens, mean 15) and sharegpt4v-like (100
to 248 tokens, uniform). Both sides run in the same process, alternating: padding-free (each distinct caption once,
sorted by length, every batch cut to its longest caption; the default for a RoPE/CoPE tower) against padded (the
captions in file order, every batch at the full context: the encoding before padding-free). Reported: captions/s of
each side, their ratio with met/MISSED against the mix's target (MIXES: coco-like >= 3x, sharegpt4v-like >= 1.3x,
set for CPU), the CPU-time ratio, the largest feature difference between the sides (in fp32 the run fails above
1e-5), and the captions/s of tokenizing alone: both sides tokenize every caption, which bounds the ratio where the
tower is cheap. On a shared CPU use --threads 1 --workers 0 (as for bench_text_tower.py).

    python scripts/bench_eval.py --pairs 2000                       # the evaluation against the naive loop
    python scripts/bench_eval.py --padding-free --threads 1 --workers 0 --repeats 5   # tiny-clip-rope-248, fp32
    python scripts/bench_eval.py --padding-free --device cuda --precision amp_bf16 --model ViT-B-16-rope-248
"""
import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time

import torch
from PIL import Image
from tqdm import tqdm

from training_ext.eval import runner as evaluation
from training_ext.eval.datasets import read_urban1k
from training_ext.eval.features import TokenizeBatch, encode_captions
from training_ext.common.retrieval import recall_at_k

WORDS = ("red blue green small large wooden metal dog cat car tree house river street window light shadow "
         "person child table chair sky cloud road sign door wall roof grass stone boat").split()


def write_urban1k_fixture(root: str, pairs: int, image_size: int, seed: int = 0) -> str:
    """Urban1k/image/<i>.jpg + Urban1k/caption/<i>.txt with random block images and captions of
    10 to 300 words (so every length bucket is used)."""
    rng = random.Random(seed)
    base = os.path.join(root, "Urban1k")
    os.makedirs(os.path.join(base, "image"), exist_ok=True)
    os.makedirs(os.path.join(base, "caption"), exist_ok=True)
    block = max(1, image_size // 8)
    for i in tqdm(range(pairs), desc="fixture", unit="pair"):
        image = Image.new("RGB", (image_size, image_size))
        for x in range(0, image_size, block):
            for y in range(0, image_size, block):
                image.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + block, y + block))
        image.save(os.path.join(base, "image", f"{i}.jpg"), quality=90)
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 300)))
        with open(os.path.join(base, "caption", f"{i}.txt"), "w") as f:
            f.write(f"photo {i}: {words}.\n")
    return base


# length mix -> (caption words low, high: tokens = words + 3, i.e. the start and end tokens and the final period;
# the least padding-free/padded captions/s ratio wanted on CPU)
MIXES = {"coco-like": (9, 15, 3.0), "sharegpt4v-like": (97, 245, 1.3)}
FP32_TOLERANCE = 1e-5  # padded and padding-free features are the same computation up to rounding


def mixed_captions(count: int, words_low: int, words_high: int, seed: int = 0) -> list:
    """``count`` captions of ``words_low`` to ``words_high`` WORDS (one CLIP token each), uniformly, plus a period."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(words_low, words_high))) + "."
            for _ in range(count)]


def padding_free_report(args) -> dict:
    """The --padding-free run: for each length mix, padding-free against padded caption encoding."""
    device = torch.device(args.device)
    loaded = evaluation.load_model(evaluation.parse_model_spec(args.model), args.device, 0)
    options = dict(batch_size=args.text_batch_size or (256 if device.type == "cuda" else 32), workers=args.workers,
                   device=args.device, precision=args.precision, show_progress=False)

    def encode(captions, padding_free):
        features, counts = encode_captions(loaded.model, loaded.tokenizer, captions, padding_free=padding_free,
                                           **options)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return features, counts

    def tokenize(captions):
        """The tokenizing both sides do (in this process): what no padding-free encoding can speed up."""
        collate = TokenizeBatch(loaded.tokenizer)
        for start in range(0, len(captions), options["batch_size"]):
            collate(captions[start:start + options["batch_size"]])

    mixes, load_before = {}, os.getloadavg()[0]
    for name, (low, high, target) in MIXES.items():
        captions = mixed_captions(args.captions, low, high, seed=args.seed)
        runs = {"padded": lambda: encode(captions, False), "padding_free": lambda: encode(captions, True),
                "tokenizing": lambda: tokenize(captions)}
        times, outputs = {side: [] for side in runs}, {}
        for repeat in range(args.repeats):
            sides = list(runs)[repeat % len(runs):] + list(runs)[:repeat % len(runs)]  # rotate who runs first
            for side in sides:
                outputs[side], *seconds = timed(runs[side])
                times[side].append(seconds)
        (padded, counts), (free, free_counts) = outputs["padded"], outputs["padding_free"]
        if free_counts != counts:
            sys.exit(f"{name}: the two sides counted different token lengths")
        wall, cpu = ({side: min(run[k] for run in runs_) for side, runs_ in times.items()} for k in (0, 1))
        ratio = wall["padded"] / wall["padding_free"]
        mixes[name] = {
            "tokens_mean": round(sum(counts) / len(counts), 1), "tokens_min": min(counts), "tokens_max": max(counts),
            "padded_captions_per_s": round(len(captions) / wall["padded"], 1),
            "padding_free_captions_per_s": round(len(captions) / wall["padding_free"], 1),
            "tokenizing_captions_per_s": round(len(captions) / wall["tokenizing"], 1),
            "ratio": round(ratio, 2), "cpu_time_ratio": round(cpu["padded"] / cpu["padding_free"], 2),
            "target": f">= {target:.2f}x", "met": ratio >= target,
            "max_abs_diff": (padded - free).abs().max().item(),
            "wall_and_cpu_seconds_all": {side: [[round(w, 3), round(c, 3)] for w, c in runs_]
                                         for side, runs_ in times.items()},
        }
    from open_clip_ext.tokens import trims_padding_exactly
    return {"mode": "padding-free", "model": args.model, "trims_padding_exactly": trims_padding_exactly(loaded.model),
            "device": args.device, "precision": args.precision, "captions": args.captions,
            "text_batch_size": options["batch_size"], "workers": args.workers,
            "torch_threads": torch.get_num_threads(), "repeats": args.repeats,
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)], "mixes": mixes}


def print_padding_free(report: dict) -> None:
    print(f"padding-free against padded caption encoding: {report['model']}, {report['device']}, "
          f"{report['precision']}, {report['captions']} captions per mix, batch {report['text_batch_size']}, "
          f"{report['workers']} workers, {report['torch_threads']} torch threads, fastest of {report['repeats']}; "
          f"1-min load average {report['load_average_1min'][0]} before, {report['load_average_1min'][1]} after")
    if not report["trims_padding_exactly"]:
        print("this model's text tower cannot be trimmed exactly: both sides run the padded path")
    print("| length mix | tokens mean (min-max) | padded captions/s | padding-free captions/s | ratio | target | "
          "CPU-time ratio | max abs diff | tokenizing alone, captions/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in report["mixes"].items():
        print(f"| {name} | {r['tokens_mean']} ({r['tokens_min']}-{r['tokens_max']}) | {r['padded_captions_per_s']} | "
              f"{r['padding_free_captions_per_s']} | {r['ratio']:.2f}x | {r['target']}: "
              f"{'met' if r['met'] else 'MISSED'} | {r['cpu_time_ratio']:.2f}x | {r['max_abs_diff']:.1e} | "
              f"{r['tokenizing_captions_per_s']} |")


def naive_ranks(similarity: torch.Tensor):
    """Ranks from the whole matrix, sorted in one piece (one caption per image: target = diagonal)."""
    targets = torch.arange(similarity.shape[0])
    image_order = similarity.argsort(dim=1, descending=True)
    text_order = similarity.t().argsort(dim=1, descending=True)
    return ((image_order == targets[:, None]).float().argmax(dim=1),
            (text_order == targets[:, None]).float().argmax(dim=1))


def run_naive(loaded, data) -> dict:
    """One image, then one caption, per forward pass; full similarity matrix; full argsort."""
    with torch.no_grad():
        image_features = torch.cat([
            loaded.model.encode_image(loaded.preprocess(Image.open(p).convert("RGB")).unsqueeze(0), normalize=True)
            for p in tqdm(data.image_paths, desc="naive images", leave=False)])
        text_features = torch.cat([
            loaded.model.encode_text(loaded.tokenizer([c]), normalize=True)
            for c in tqdm(data.captions, desc="naive captions", leave=False)])
    image_ranks, text_ranks = naive_ranks(image_features @ text_features.t())
    metrics = {}
    for direction, ranks in (("image_to_text", image_ranks), ("text_to_image", text_ranks)):
        metrics.update({f"{direction}_R@{k}": v for k, v in recall_at_k(ranks, (1, 5, 10)).items()})
    return metrics


def run_eval(loaded, eval_args):
    """The evaluation's own path for one model and benchmark: read it, count tokens, encode, rank."""
    selected = evaluation.load_benchmarks(eval_args)[0]
    return evaluation.evaluate_model(loaded, selected, eval_args)


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(function):
    """(result, wall seconds, CPU seconds). CPU seconds measure the work done, which other jobs on a
    shared machine disturb far less than they disturb wall time."""
    start_wall, start_cpu = time.perf_counter(), _cpu_seconds()
    result = function()
    return result, time.perf_counter() - start_wall, _cpu_seconds() - start_cpu


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2000, help="image/caption pairs in the fixture")
    parser.add_argument("--model", default=None, help="open_clip model spec NAME[:PRETRAINED_OR_PATH] (default: "
                        "tiny-clip; with --padding-free tiny-clip-rope-248)")
    parser.add_argument("--image-size", type=int, default=64, help="side of the generated JPEGs in pixels")
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default: the evaluation's)")
    parser.add_argument("--text-batch-size", type=int, default=None, help="captions per batch (default: the evaluation's)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side (alternating); the fastest counts")
    parser.add_argument("--fixture-dir", default=None, help="where to write the fixture (default: a temp folder)")
    parser.add_argument("--output", default=None, help="also write the figures to this JSON file")
    free = parser.add_argument_group("padding-free mode", "padding-free against padded caption encoding (module "
                                     "docstring); --device and --precision apply to this mode only")
    free.add_argument("--padding-free", action="store_true",
                      help="time padding-free against padded caption encoding on each length mix instead")
    free.add_argument("--captions", type=int, default=2048, help="captions per length mix")
    free.add_argument("--device", default="cpu")
    free.add_argument("--precision", default="fp32", choices=("fp32", "amp_bf16", "amp"))
    free.add_argument("--seed", type=int, default=0, help="seed of the generated captions")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.padding_free:
        args.model = args.model or "tiny-clip-rope-248"
        report = padding_free_report(args)
        print_padding_free(report)
        if args.output:
            from training_ext.common.file_io import write_json
            write_json(args.output, report)
        worst = max(r["max_abs_diff"] for r in report["mixes"].values())
        if args.precision == "fp32" and worst > FP32_TOLERANCE:
            sys.exit(f"padded and padding-free features differ by {worst:.2e} (fp32 tolerance {FP32_TOLERANCE})")
        return report
    args.model = args.model or "tiny-clip"

    with tempfile.TemporaryDirectory() as temp_dir:
        root = write_urban1k_fixture(args.fixture_dir or temp_dir, args.pairs, args.image_size)
        batch_flags = [flag for name, value in (("--batch-size", args.batch_size),
                                                ("--text-batch-size", args.text_batch_size))
                       if value is not None for flag in (name, str(value))]
        eval_args = evaluation.parse_args(["--model", args.model, "--urban1k", root, "--workers", str(args.workers),
                                           "--device", "cpu", "--no-progress", *batch_flags])
        loaded = evaluation.load_model(evaluation.parse_model_spec(args.model), "cpu", eval_args.seed)
        times = {"eval": [], "naive": []}
        for repeat in range(args.repeats):
            # alternate which side runs first, so a busy machine or a warm cache favours neither
            for side in (("eval", "naive") if repeat % 2 == 0 else ("naive", "eval")):
                if side == "eval":
                    fast, *seconds = timed(lambda: run_eval(loaded, eval_args))
                else:
                    naive, *seconds = timed(lambda: run_naive(loaded, read_urban1k(root)))
                times[side].append(seconds)

    fast_seconds, naive_seconds = (min(wall for wall, _ in times[side]) for side in ("eval", "naive"))
    fast_cpu, naive_cpu = (min(cpu for _, cpu in times[side]) for side in ("eval", "naive"))
    items = 2 * args.pairs
    disagreement = max(abs(fast["metrics"][k] - naive[k]) for k in naive)
    report = {
        "model": args.model, "pairs": args.pairs, "image_size": args.image_size, "batch_size": eval_args.batch_size,
        "text_batch_size": eval_args.text_batch_size,
        "workers": args.workers, "torch_threads": torch.get_num_threads(), "device": "cpu",
        "repeats": args.repeats, "load_average_1min": round(os.getloadavg()[0], 2),
        "wall_and_cpu_seconds_all": {side: [[round(w, 3), round(c, 3)] for w, c in runs] for side, runs in times.items()},
        "naive_seconds": round(naive_seconds, 3), "eval_seconds": round(fast_seconds, 3),
        "naive_items_per_second": round(items / naive_seconds, 1),
        "eval_items_per_second": round(items / fast_seconds, 1),
        "speedup": round(naive_seconds / fast_seconds, 2),
        "naive_cpu_seconds": round(naive_cpu, 3), "eval_cpu_seconds": round(fast_cpu, 3),
        "cpu_time_ratio": round(naive_cpu / fast_cpu, 2),
        "max_recall_difference": disagreement,
        "metrics": fast["metrics"],
    }
    print(json.dumps(report, indent=2))
    if args.output:
        from training_ext.common.file_io import write_json
        write_json(args.output, report)
    # batched and one-at-a-time encoding differ in float rounding; that may reorder a near-tie or two
    tolerance = 2 * 100.0 / args.pairs
    if disagreement > tolerance:
        sys.exit(f"the two evaluations disagree by {disagreement:.4f} recall points (tolerance {tolerance:.4f})")
    return report


if __name__ == "__main__":
    main()
