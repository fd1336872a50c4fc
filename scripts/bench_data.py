#!/usr/bin/env python
"""Start-up cost of the CSV training data at ShareGPT4V's size, against open_clip_train's CsvDataset in the same run.

Generates a ShareGPT4V-like CSV (TULIP's layout: tab-separated `filepath`, `title`, written by Python's csv module;
~170-word captions, one in five quoting text seen in the image), then, each in a fresh process:

- builds open_clip_train's `CsvDataset`, this project's stage-1 dataset (`CsvTextDataset`) and stage-2 dataset
  (`CsvImageTextDataset`, including the image-existence check it makes before training) and reports the time and
  the resident memory the build added;
- forks a child, as a DataLoader worker is forked, that reads every field of `--touch` random rows, and reports how
  much its private memory (USS) grew: a per-row Python object is copied into the child when its reference count is
  touched (pytorch#13246), flat buffers are not;
- generates a teacher cache of the same number of rows (random embeddings, width 768) and opens it.

Image paths name `--distinct-images` small files (repeated) in one folder: the existence check lists each folder the
names use once and looks the names up in the listing (ShareGPT4V's 1.2M images lie in a few dozen folders; pass
`--distinct-images 1200000` for a listing as long as the rows). It runs once per node: on a network file system
listing and stat-ing cost more than on a warm local cache.

Targets (issue "ShareGPT4V scale"): each stage's dataset ready in <= 1/3 of CsvDataset's time with <= 1/2 of its
added memory; a worker grows by <= 10 MB after touching 20,000 rows. Printed with met/MISSED.

Example (the README's table):
  python scripts/bench_data.py --rows 1200000 --out /tmp/bench_data
"""
import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import torch

from training_ext.common.file_io import atomic_open

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("a the red blue green large small wooden metal sign reads stop in white letters on pole beside road tree car "
         "person wearing hat standing near building window sky cloud street lamp dog bench grass").split()
TARGET_TIME, TARGET_MEMORY, TARGET_WORKER_MB = 1 / 3, 1 / 2, 10.0


def write_csv(path: str, rows: int, distinct_images: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    image_dir = os.path.join(os.path.dirname(path), "images")
    os.makedirs(image_dir, exist_ok=True)
    for index in range(distinct_images):
        open(os.path.join(image_dir, f"sa_{index}.jpg"), "wb").close()
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")  # as TULIP's sharegpt_prepocessing.py writes it
        writer.writerow(["filepath", "title"])
        for index in range(rows):
            caption = " ".join(rng.choice(WORDS) for _ in range(170)).capitalize() + "."
            if index % 5 == 0:
                caption += ' The sign says "OPEN".'
            writer.writerow([f"images/sa_{index % distinct_images}.jpg", caption])


def write_cache(path: str, rows: int, width: int = 768) -> None:
    """A complete teacher cache of `rows` rows in the project's format (random embeddings, made-up digests)."""
    from training_ext.data.teacher_cache import CacheHeader, TeacherCacheWriter
    header = CacheHeader(teacher="bench", checkpoint_sha256="0" * 64, tokenizer_context_length=77,
                         embedding_width=width, dataset_type="csv", dataset="bench.csv", caption_field="title")
    writer = TeacherCacheWriter(path, header)
    chunk = 65536
    rng = np.random.default_rng(0)
    for start in range(0, rows, chunk):
        count = min(chunk, rows - start)
        features = torch.from_numpy(rng.standard_normal((count, width), dtype=np.float32))
        writer.append([f"row{i}" for i in range(start, start + count)],
                      [f"{i:016x}" for i in range(start, start + count)], features, features)
    writer.finish()


# ------------------------------------------------------------------------------------------- one measurement

def _build(kind: str, csv_path: str, cache_path: str):
    if kind == "CsvDataset":
        from open_clip_train.data import CsvDataset
        return CsvDataset(csv_path, None, "filepath", "title", sep="\t", tokenizer=None)
    if kind == "stage 1":
        from training_ext.data.csv_datasets import CsvTextDataset
        return CsvTextDataset(csv_path, "title", None)
    if kind == "stage 2":
        from training_ext.data.csv_datasets import CsvImageTextDataset
        return CsvImageTextDataset(csv_path, "filepath", "title", None, None)
    if kind == "teacher cache":
        from training_ext.data.teacher_cache import TeacherCache
        return TeacherCache(cache_path)
    raise ValueError(kind)


def _touch(kind: str, dataset, index: int) -> int:
    """Read every field of one row without decoding an image or tokenizing; returns a size so nothing is elided."""
    if kind == "CsvDataset":
        return len(str(dataset.images[index])) + len(str(dataset.captions[index]))
    if kind == "stage 1":
        return len(dataset.captions[index]) + int(dataset.row_numbers[index])
    if kind == "stage 2":
        return len(dataset.image_paths[index]) + len(dataset.captions[index]) + len(dataset.short_caption(index))
    return len(dataset.keys[index]) + len(dataset.digests[index])


def measure(kind: str, csv_path: str, cache_path: str, touch: int) -> dict:
    """Run in a fresh process: build time, added RSS, and a forked child's USS growth after touching rows."""
    import psutil
    import open_clip_train.data  # noqa: F401  (module imports are start-up, not the data: both sides pay them first)
    import pyarrow.compute  # noqa: F401
    import pyarrow.csv  # noqa: F401
    import training_ext.data.csv_datasets  # noqa: F401
    process = psutil.Process()
    before = process.memory_info().rss
    start = time.perf_counter()
    dataset = _build(kind, csv_path, cache_path)
    seconds = time.perf_counter() - start
    added = process.memory_info().rss - before
    size = len(dataset)
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # a DataLoader worker: forked after the dataset was built
        os.close(reader)
        me = psutil.Process()
        uss = me.memory_full_info().uss
        rng = random.Random(1)
        total = sum(_touch(kind, dataset, rng.randrange(size)) for _ in range(touch))
        grown = me.memory_full_info().uss - uss
        os.write(writer, json.dumps({"grown": grown, "total": total}).encode())
        os._exit(0)
    os.close(writer)
    report = json.loads(os.read(reader, 4096).decode())
    os.waitpid(child, 0)
    return {"kind": kind, "rows": size, "seconds": seconds, "added_mb": added / 2 ** 20,
            "worker_growth_mb": report["grown"] / 2 ** 20}


def _run_fresh(kind: str, csv_path: str, cache_path: str, touch: int) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--measure", kind, "--csv", csv_path, "--cache", cache_path,
               "--touch", str(touch)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")})
    if done.returncode:
        raise RuntimeError(f"measuring {kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: list, touch: int) -> str:
    """The markdown table, with ratios to CsvDataset and met/MISSED against the targets."""
    base = next(r for r in results if r["kind"] == "CsvDataset")
    lines = ["| data | rows | ready (s) | vs CsvDataset | added memory (MiB) | vs CsvDataset | "
             f"worker growth after {touch} rows (MiB) |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        if r["kind"] == "CsvDataset":
            time_cell, memory_cell = "1.00", "1.00"
        elif r["kind"] == "teacher cache":
            time_cell = memory_cell = "-"
        else:
            t, m = r["seconds"] / base["seconds"], r["added_mb"] / base["added_mb"]
            time_cell = f"{t:.2f} ({'met' if t <= TARGET_TIME else 'MISSED'} <= 0.33)"
            memory_cell = f"{m:.2f} ({'met' if m <= TARGET_MEMORY else 'MISSED'} <= 0.50)"
        growth = r["worker_growth_mb"]
        growth_cell = f"{growth:.1f}" + ("" if r["kind"] == "CsvDataset" else
                                         f" ({'met' if growth <= TARGET_WORKER_MB else 'MISSED'} <= 10)")
        lines.append(f"| {r['kind']} | {r['rows']} | {r['seconds']:.2f} | {time_cell} | {r['added_mb']:.0f} | "
                     f"{memory_cell} | {growth_cell} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_200_000, help="CSV rows (default 1,200,000: ShareGPT4V)")
    parser.add_argument("--out", default="bench_data_out", help="folder for the generated CSV and cache (reused "
                                                                "when the row count matches)")
    parser.add_argument("--touch", type=int, default=20_000, help="rows a forked worker reads (default 20,000)")
    parser.add_argument("--distinct-images", type=int, default=1000, help="image files the rows name (default 1000)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--csv", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.csv, args.cache, args.touch)))
        return 0
    os.makedirs(args.out, exist_ok=True)
    csv_path, cache_path = os.path.join(args.out, f"sharegpt4v_like_{args.rows}.csv"), \
        os.path.join(args.out, f"cache_{args.rows}")
    if not os.path.exists(csv_path):
        print(f"writing {csv_path} ...", flush=True)
        write_csv(csv_path, args.rows, args.distinct_images)
    if not os.path.exists(os.path.join(cache_path, "header.json")):
        print(f"writing {cache_path} ...", flush=True)
        write_cache(cache_path, args.rows)
    print(f"{csv_path}: {os.path.getsize(csv_path) / 2 ** 20:.0f} MiB, {args.rows} rows", flush=True)
    results = []
    for kind in ("CsvDataset", "stage 1", "stage 2", "teacher cache"):
        results.append(_run_fresh(kind, csv_path, cache_path, args.touch))
        print(f"  {kind}: {results[-1]['seconds']:.2f} s", flush=True)
    text = table(results, args.touch)
    print(text)
    with atomic_open(os.path.join(args.out, "bench_data.md"), "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
    with atomic_open(os.path.join(args.out, "bench_data.json"), "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
