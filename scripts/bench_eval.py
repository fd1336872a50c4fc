"""Throughput of `python -m training_ext.eval` against a naive reference-style loop, in one run.

Both sides evaluate the same model on the same generated Urban1k-layout fixture (N image/caption
pairs) and must agree on every recall. The naive side does what the published reference scripts do:
it encodes one image and one caption at a time and builds the whole similarity matrix in one piece
before sorting it. The fast side is the evaluation's own code path (reading the benchmark, token
counts for the length plot, batched DataLoader encoding, chunked ranking). Model loading is left
out of both timings. Reported: images+captions per second of each side and their ratio.
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
    parser.add_argument("--model", default="tiny-clip", help="open_clip model spec NAME[:PRETRAINED_OR_PATH]")
    parser.add_argument("--image-size", type=int, default=64, help="side of the generated JPEGs in pixels")
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default: the evaluation's)")
    parser.add_argument("--text-batch-size", type=int, default=None, help="captions per batch (default: the evaluation's)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side (alternating); the fastest counts")
    parser.add_argument("--fixture-dir", default=None, help="where to write the fixture (default: a temp folder)")
    parser.add_argument("--output", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

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
