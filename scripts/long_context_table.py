"""R@1 by the detail's token position on the demo's long detail split (details at tokens 250-497, captions up to
504 tokens): a 248-token RoPE model read at 248, the same model read at 512 under each position scaling, and a
model fine-tuned at 512.

    python scripts/long_context_table.py --demo-out demo_out

reads a finished default demo run (`make demo`: its teacher, stage-1 RoPE student and TULIP RoPE stage-2 model for
--seed) and, every step as the command line a user would type (python -m ..., printed, reused when re-run
unchanged, through the demo's step runner):

  1. data      python -m training_ext.synthetic with the demo's sizes and seed plus --n-train-long: the demo's splits
               again (the same bytes), test_detail_long.csv and train_long.csv (captions of 134-504 tokens)
  2. stage 2   python -m training_ext.main_context_finetune_rope --model tiny-clip-rope-248
               --force-context-length 512 from the demo's stage-1 student, on train_long.csv, with the demo's
               TULIP RoPE stage-2 schedule (--finetune-epochs to shorten it)
  3. eval      python -m training_ext.eval once per reading (248; 512 with --position-scaling none, ntk, yarn),
               --bucket-by-column detail_position on test_detail_long.csv, test_detail.csv (43-237) for reference

and writes the table to <out>/long_context.md (numbers in long_context.json).
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from training_ext.common.file_io import atomic_open
from training_ext.common.text_files import read_json
from training_ext.demo import colour_grids
from training_ext.demo.pipeline import RECIPES, VARIANTS, DemoPlan, Runner, _train_flags
from training_ext.demo.report import DIRECTIONS, SHORT_DIRECTIONS, banner

# eval's --bucket-column-edges: 50-token buckets over the long split's 250-497
EDGES = (300, 350, 400, 450)
LONG, REFERENCE = "detail-long", "detail"
FINETUNED_RUN = "stage2-tulip-rope-512"
# open_clip has no 512-token tiny config: the fine-tuned checkpoint is read with its 248-token config at 512,
# scaling none, which is how --force-context-length 512 trained it (the trained frequencies over all 512 positions)
LONG_MODEL = VARIANTS["tulip-rope"].model
# (row label, eval's --context-length and --position-scaling, or none for the model's own context)
READINGS: Tuple[Tuple[str, Sequence[str]], ...] = (
    ("read at 248 (captions cut)", ()),
    ("read at 512, scaling none", ("--context-length", "512", "--position-scaling", "none")),
    ("read at 512, scaling ntk", ("--context-length", "512", "--position-scaling", "ntk")),
    ("read at 512, scaling yarn", ("--context-length", "512", "--position-scaling", "yarn")),
)
FINETUNED_LABEL = "fine-tuned at 512 on train_long.csv, read at 512"


def demo_checkpoints(plan: DemoPlan, demo_out: Path, seed: int) -> Dict[str, Path]:
    """The demo run's teacher, stage-1 RoPE student and TULIP RoPE stage-2 checkpoints; SystemExit naming the
    missing file and the command that makes it."""
    demo = DemoPlan(out=demo_out)
    variant = VARIANTS["tulip-rope"]
    paths = {"teacher": demo.checkpoint(seed, "teacher", plan.teacher_epochs),
             "stage1": demo.checkpoint(seed, "stage1-rope", plan.distill_epochs),
             "stage2": demo.checkpoint(seed, f"stage2-{variant.key}", plan.finetune_epochs_of(variant)),
             "meta": demo.data_dir(seed) / "meta.json"}
    for path in paths.values():
        if not path.is_file():
            raise SystemExit(f"error: {path} is missing: run the default demo first (python -m training_ext.demo "
                             f"--out {demo_out} --seeds {seed}) or give its folder with --demo-out")
    return paths


def make_data(runner: Runner, seed: int, demo_meta: dict, n_train_long: int) -> Path:
    """The demo's data for ``seed`` again (sizes from its meta.json) with the long splits; returns the folder."""
    sizes = {split: demo_meta["splits"][split]["n"] for split in ("train", "val", "test_detail")}
    data = runner.plan.data_dir(seed)
    argv = ["training_ext.synthetic", "--out", str(data), "--seed", str(seed), "--n-train", str(sizes["train"]),
            "--n-val", str(sizes["val"]), "--n-test", str(sizes["test_detail"]),
            "--group-size", str(demo_meta["group_size"]), "--image-size", str(demo_meta["image_size"]),
            "--n-train-long", str(n_train_long)]
    runner.step(seed, "data with long splits", argv, data, data / "meta.json")
    return data


def finetune_argv(plan: DemoPlan, seed: int, checkpoints: Dict[str, Path]) -> List[str]:
    """The demo's TULIP RoPE stage 2 (pipeline.finetune) at 512 tokens on train_long.csv."""
    flags = _train_flags(plan, seed)
    flags[flags.index("--train-data") + 1] = str(plan.data_dir(seed) / colour_grids.LONG_SPLIT_FILES["train_long"])
    return ["training_ext.main_context_finetune_rope", "--model", VARIANTS["tulip-rope"].model,
            "--force-context-length", str(colour_grids.LONG_CONTEXT), "--pretrained", str(checkpoints["teacher"]),
            "--student-checkpoint", str(checkpoints["stage1"]), *RECIPES["tulip"], "--name", FINETUNED_RUN, *flags,
            "--csv-short-caption-key", "short_title", "--epochs", str(plan.finetune_epochs),
            "--lr", str(plan.finetune_lr), "--warmup", str(plan.warmup)]


def eval_argv(plan: DemoPlan, data: Path, models: Sequence[str], reading: Sequence[str], folder: Path) -> List[str]:
    csvs = [f"{LONG}={data / colour_grids.LONG_SPLIT_FILES['test_detail_long']}",
            f"{REFERENCE}={data / colour_grids.SPLIT_FILES['test_detail']}"]
    return ["training_ext.eval", *[f for spec in models for f in ("--model", spec)],
            *[f for csv in csvs for f in ("--csv", csv)], *reading, "--bucket-by-column", "detail_position",
            "--bucket-column-edges", ",".join(map(str, EDGES)), "--workers", str(plan.workers), "--device", "cpu",
            "--no-progress", "--output-dir", str(folder)]


def table_rows(results: Dict[str, dict], rows: Sequence[Tuple[str, str, str]]) -> List[dict]:
    """One row per (label, eval run, model spec): R@1 per detail_position bucket of the long split and overall on
    the reference split, both directions. KeyError when a run lacks a model or benchmark."""
    out = []
    for label, run, spec in rows:
        by_benchmark = {r["benchmark"]: r for r in results[run]["results"] if r["model"] == spec}
        buckets = by_benchmark[LONG]["recall_by_column"]["buckets"]
        out.append({"label": label, "model": spec, "context_length": by_benchmark[LONG]["context_length"],
                    "by_position": {b["bucket"]: {d: b[d] for d in DIRECTIONS} for b in buckets},
                    "counts": {b["bucket"]: b["num_images"] for b in buckets},
                    REFERENCE: {d: by_benchmark[REFERENCE]["metrics"][d] for d in DIRECTIONS}})
    return out


def markdown(rows: Sequence[dict]) -> str:
    """R@1 'I2T / T2I' per bucket; the header gives each bucket's image count."""
    buckets = list(rows[0]["by_position"])
    header = ["model", *[f"detail {b} (n={rows[0]['counts'][b]})" for b in buckets], "detail 43-237 (reference)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["by_position"][b] for b in buckets] + [row[REFERENCE]]
        lines.append(f"| {row['label']} | " + " | ".join(
            " / ".join(f"{cell[d]:.1f}" for d in DIRECTIONS) for cell in cells) + " |")
    directions = " / ".join(SHORT_DIRECTIONS[d] for d in DIRECTIONS)
    return "\n".join(lines) + f"\n\nR@1 ({directions}, %) on test_detail_long.csv by the detail's token position"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python scripts/long_context_table.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = DemoPlan(out=Path("demo_out"))
    parser.add_argument("--demo-out", type=Path, default=defaults.out,
                        help="a finished default demo's folder (default: demo_out)")
    parser.add_argument("--seed", type=int, default=0, help="the demo's data seed whose models are read")
    parser.add_argument("--out", type=Path, default=None,
                        help="working folder (default: <demo-out>/long_context)")
    parser.add_argument("--n-train-long", type=int, default=defaults.n_train,
                        help=f"training pairs of train_long.csv (default: {defaults.n_train}, the demo's train.csv)")
    parser.add_argument("--finetune-epochs", type=int, default=defaults.finetune_epochs,
                        help=f"epochs of the 512-token fine-tune (default: {defaults.finetune_epochs}, the demo's "
                             f"stage 2)")
    parser.add_argument("--threads", type=int, default=defaults.threads,
                        help=f"CPU threads per step (default: {defaults.threads}, as the demo)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.n_train_long < 1 or args.finetune_epochs < 1 or args.threads < 1:
        raise SystemExit("error: --n-train-long, --finetune-epochs and --threads must be 1 or more")
    out = args.out or args.demo_out / "long_context"
    plan = DemoPlan(out=out, seeds=(args.seed,), finetune_epochs=args.finetune_epochs, threads=args.threads)
    checkpoints = demo_checkpoints(DemoPlan(out=args.demo_out), args.demo_out, args.seed)
    runner = Runner(plan)
    banner("1/3 data: the demo's splits with test_detail_long.csv and train_long.csv")
    data = make_data(runner, args.seed, read_json(str(checkpoints["meta"])), args.n_train_long)
    banner(f"2/3 stage 2 at {colour_grids.LONG_CONTEXT} tokens from the demo's stage-1 student, on train_long.csv")
    run_dir = plan.logs(args.seed) / FINETUNED_RUN
    finetuned = runner.step(args.seed, "stage 2 at 512", finetune_argv(plan, args.seed, checkpoints), run_dir,
                            plan.checkpoint(args.seed, FINETUNED_RUN, plan.finetune_epochs),
                            train_epochs=plan.finetune_epochs)
    banner("3/3 evaluation: test_detail_long.csv by detail position, one run per reading")
    stage2 = f"{VARIANTS['tulip-rope'].model}:{checkpoints['stage2']}"
    results, rows = {}, []
    for index, (label, reading) in enumerate(READINGS):
        models = [stage2]
        if "none" in reading:  # the fine-tuned model as it was trained
            models.append(f"{LONG_MODEL}:{finetuned}")
        folder = plan.seed_dir(args.seed) / f"eval-reading{index}"
        path = runner.step(args.seed, f"eval {label}", eval_argv(plan, data, models, reading, folder), folder,
                           folder / "results.json", stdout_file="eval.txt")
        results[label] = read_json(str(path))
        rows.append((f"TULIP RoPE 248, {label}", label, stage2))
    rows.append((FINETUNED_LABEL, READINGS[1][0], f"{LONG_MODEL}:{finetuned}"))
    numbers = table_rows(results, rows)
    table = markdown(numbers)
    with atomic_open(str(out / "long_context.md"), "w", encoding="utf-8") as handle:
        handle.write(table + "\n")
    with atomic_open(str(out / "long_context.json"), "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"rows": numbers, "timings": [t.__dict__ for t in runner.times]}, indent=1) + "\n")
    banner("result")
    print(table)
    for t in runner.times:
        print(f"{t.step}: {t.wall_s:.0f}s wall, {t.cpu_s:.0f} CPU-s" + (" (reused)" if t.reused else ""))
    print(f"table: {out / 'long_context.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
