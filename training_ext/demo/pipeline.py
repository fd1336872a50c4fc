"""The README's first command: TULIP end to end on the embedded synthetic long-caption problem, on CPU.

No pretrained CLIP and no dataset can be downloaded on a fresh machine, so the demo brings its own problem where
long captions matter (training_ext.synthetic: colour-block grids whose long captions describe the bottom row only
after token 77) and runs the whole method on it, each step as the command line a user would type:

  1. data      python -m training_ext.synthetic
  2. teacher   python -m training_ext.main (open_clip_train) trains the 77-token tiny-clip from scratch
  3. stage 1   python -m training_ext.main_distill_rope distils it into a 248-token RoPE (or CoPE) student
  4. stage 2   python -m training_ext.main_context_finetune_rope fine-tunes the student CLIP on long captions
  5. eval      python -m training_ext.eval: teacher vs students on the ordinary and the late-detail test splits

Re-running reuses every finished step (and resumes an interrupted one); --fresh starts over.
The method works when, on the late-detail split, the student's R@1 is at least twice the teacher's in both
directions and, on the ordinary split, it stays within a few points of the teacher.
"""
import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

LATE, ORDINARY = "late-detail", "ordinary"
DIRECTIONS = ("image_to_text_R@1", "text_to_image_R@1")
ORDINARY_TOLERANCE = 5.0  # R@1 points the student may lose on the ordinary split


@dataclass
class DemoPlan:
    """Sizes and schedules; the defaults fit in ~15 minutes on 2 CPU cores (the reduced test uses smaller)."""
    out: Path
    position: str = "rope"
    seed: int = 0
    n_train: int = 8192
    n_test: int = 256
    group_size: int = 8
    batch_size: int = 64
    teacher_epochs: int = 4
    teacher_lr: float = 1e-3
    distill_epochs: int = 1
    distill_lr: float = 1e-3
    finetune_epochs: int = 2
    finetune_lr: float = 5e-4
    workers: int = 1

    @property
    def student_model(self) -> str:
        return f"tiny-clip-{self.position}-248"

    @property
    def data_dir(self) -> Path:
        return self.out / "data"

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    def checkpoint(self, run: str, epochs: int) -> Path:
        return self.logs / run / "checkpoints" / f"epoch_{epochs}.pt"


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def _run(step: str, args: List[str]) -> None:
    command = [sys.executable, "-m", *args]
    print("$ python -m " + " ".join(repr(a) if a == "\t" else a for a in args), flush=True)
    start = time.perf_counter()
    result = subprocess.run(command)
    if result.returncode != 0:
        raise SystemExit(f"demo: step '{step}' failed (exit {result.returncode}); its command is printed above")
    print(f"[{step}] done in {time.perf_counter() - start:.0f}s", flush=True)


def _csv_flags(plan: DemoPlan) -> List[str]:
    data = plan.data_dir
    return ["--train-data", str(data / "train.csv"), "--val-data", str(data / "val.csv"), "--dataset-type", "csv",
            "--csv-separator", "\t", "--csv-img-key", "filepath", "--csv-caption-key", "title",
            "--batch-size", str(plan.batch_size), "--workers", str(plan.workers), "--precision", "fp32",
            "--device", "cpu", "--seed", str(plan.seed), "--logs", str(plan.logs), "--save-frequency", "1",
            "--resume", "latest", "--wd", "0.2", "--report-to", "tensorboard"]


def make_data(plan: DemoPlan) -> None:
    meta = plan.data_dir / "meta.json"
    wanted = {"seed": plan.seed, "n_train": plan.n_train, "n_test": plan.n_test, "group_size": plan.group_size}
    if meta.is_file():
        saved = json.loads(meta.read_text())
        sizes = {"seed": saved.get("seed"), "n_train": saved["splits"]["train"]["n"],
                 "n_test": saved["splits"]["test_ordinary"]["n"], "group_size": saved.get("group_size")}
        if sizes == wanted:
            print(f"[data] reusing {plan.data_dir}")
            return
        shutil.rmtree(plan.data_dir)
    _run("data", ["training_ext.synthetic", "--out", str(plan.data_dir), "--seed", str(plan.seed),
                  "--n-train", str(plan.n_train), "--n-test", str(plan.n_test), "--n-val", str(plan.n_test),
                  "--group-size", str(plan.group_size)])


def train_teacher(plan: DemoPlan) -> Path:
    final = plan.checkpoint("teacher", plan.teacher_epochs)
    if final.is_file():
        print(f"[teacher] reusing {final}")
        return final
    _run("teacher", ["training_ext.main", "--model", "tiny-clip", "--name", "teacher", *_csv_flags(plan),
                     "--epochs", str(plan.teacher_epochs), "--lr", str(plan.teacher_lr), "--warmup", "100"])
    return final


def distill(plan: DemoPlan, teacher: Path) -> Path:
    run = f"stage1-{plan.position}"
    final = plan.checkpoint(run, plan.distill_epochs)
    if final.is_file():
        print(f"[stage 1] reusing {final}")
        return final
    _run("stage 1", ["training_ext.main_distill_rope", "--model", plan.student_model, "--pretrained", str(teacher),
                     "--teacher-model", "tiny-clip", "--teacher-pretrained", str(teacher), "--distill-loss", "cosine",
                     "--name", run, *_csv_flags(plan), "--csv-short-caption-key", "short_title",
                     "--epochs", str(plan.distill_epochs), "--lr", str(plan.distill_lr), "--warmup", "50"])
    return final


def finetune(plan: DemoPlan, teacher: Path, student: Path) -> Path:
    run = f"stage2-{plan.position}"
    final = plan.checkpoint(run, plan.finetune_epochs)
    if final.is_file():
        print(f"[stage 2] reusing {final}")
        return final
    _run("stage 2", ["training_ext.main_context_finetune_rope", "--model", plan.student_model,
                     "--pretrained", str(teacher), "--student-checkpoint", str(student),
                     "--short-caption-weight", "0.2", "--name", run, *_csv_flags(plan),
                     "--csv-short-caption-key", "short_title",
                     "--epochs", str(plan.finetune_epochs), "--lr", str(plan.finetune_lr), "--warmup", "50"])
    return final


def evaluate(plan: DemoPlan, models: List[str]) -> Path:
    out = plan.out / f"eval-{plan.position}"
    data = plan.data_dir
    model_flags = [flag for spec in models for flag in ("--model", spec)]
    _run("eval", ["training_ext.eval", *model_flags, "--csv", f"{ORDINARY}={data / 'test_ordinary.csv'}",
                  "--csv", f"{LATE}={data / 'test_late_detail.csv'}", "--output-dir", str(out),
                  "--workers", str(plan.workers), "--device", "cpu", "--no-progress"])
    return out / "results.json"


def recall(results: dict, model: str, benchmark: str) -> dict:
    for row in results["results"]:
        if row["model"] == model and row["benchmark"] == benchmark:
            return {d: row["metrics"][d] for d in DIRECTIONS}
    raise KeyError(f"no result for {model} on {benchmark}")


def verdict(results: dict, teacher: str, student: str) -> List[str]:
    """The demo's claims, checked on the numbers; returns the failures (empty when the method works)."""
    failures = []
    for direction in DIRECTIONS:
        late_t, late_s = recall(results, teacher, LATE)[direction], recall(results, student, LATE)[direction]
        if not late_s >= 2 * late_t or late_s == 0:
            failures.append(f"late-detail {direction}: student {late_s:.1f} is not at least twice teacher {late_t:.1f}")
        ord_t, ord_s = recall(results, teacher, ORDINARY)[direction], recall(results, student, ORDINARY)[direction]
        if ord_s < ord_t - ORDINARY_TOLERANCE:
            failures.append(f"ordinary {direction}: student {ord_s:.1f} is more than {ORDINARY_TOLERANCE:g} "
                            f"points below teacher {ord_t:.1f}")
    return failures


def run_demo(plan: DemoPlan, fresh: bool = False) -> dict:
    if fresh and plan.out.exists():
        shutil.rmtree(plan.out)
    plan.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    _banner("1/5 synthetic long-caption data")
    make_data(plan)
    _banner("2/5 teacher: tiny-clip, 77 tokens, trained from scratch with open_clip_train")
    teacher = train_teacher(plan)
    _banner(f"3/5 stage 1: distil the teacher into {plan.student_model}")
    stage1 = distill(plan, teacher)
    _banner(f"4/5 stage 2: fine-tune {plan.student_model} on long captions")
    stage2 = finetune(plan, teacher, stage1)
    _banner("5/5 evaluation: teacher vs students, ordinary and late-detail splits")
    teacher_spec = f"tiny-clip:{teacher}"
    student_spec = f"{plan.student_model}:{stage2}"
    results_path = evaluate(plan, [teacher_spec, f"{plan.student_model}:{stage1}", student_spec])
    results = json.loads(results_path.read_text())
    failures = verdict(results, teacher_spec, student_spec)
    print(f"\nplot: {results_path.parent / 'recall_by_length.png'}   table: {results_path.parent / 'results.md'}")
    print(f"demo finished in {time.perf_counter() - started:.0f}s")
    if failures:
        print("the student did NOT show the method working:\n  " + "\n  ".join(failures))
    else:
        print(f"the {plan.position.upper()} student reads what the 77-token teacher cannot: late-detail R@1 at least "
              f"2x the teacher's in both directions, ordinary R@1 within {ORDINARY_TOLERANCE:g} points")
    return {"results": results, "failures": failures, "teacher": teacher_spec, "student": student_spec}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training_ext.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = DemoPlan(out=Path("demo_out"))
    parser.add_argument("--out", type=Path, default=defaults.out, help="working folder (default: demo_out)")
    parser.add_argument("--position", choices=("rope", "cope"), default=defaults.position,
                        help="the student's relative positions")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--fresh", action="store_true", help="delete --out first instead of reusing what is built")
    for field in ("n_train", "n_test", "group_size", "batch_size", "teacher_epochs", "distill_epochs",
                  "finetune_epochs", "workers"):
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, default=getattr(defaults, field))
    for field in ("teacher_lr", "distill_lr", "finetune_lr"):
        parser.add_argument(f"--{field.replace('_', '-')}", type=float, default=getattr(defaults, field))
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = vars(build_parser().parse_args(argv))
    fresh = args.pop("fresh")
    outcome = run_demo(DemoPlan(**args), fresh=fresh)
    return 1 if outcome["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
