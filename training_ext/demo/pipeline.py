"""The README's first command: TULIP against the alternatives on an embedded long-caption problem, on CPU.

No pretrained CLIP and no dataset can be downloaded on a fresh machine, so the demo brings its own problem where
long captions matter (training_ext.synthetic: colour-block grids whose captions run to 244 tokens, with a test
split whose distinguishing detail sits anywhere from token 43 to 237) and runs each method on it, every step as
the command line a user would type:

  1. data      python -m training_ext.synthetic
  2. teacher   python -m training_ext.main (open_clip_train) trains the 77-token tiny-clip from scratch
  3. stage 1   python -m training_ext.main_distill_{rope,cope} distils it into a 248-token student
  4. stage 2   python -m training_ext.main_context_finetune_rope fine-tunes each variant's 248-token CLIP
  5. eval      python -m training_ext.eval on the ordinary split and on the detail split, R@1 bucketed by the
               detail's token position (--bucket-by-column detail_position)

Every variant starts from the same teacher (one per data seed) and gets the same stage-2 schedule (epochs,
learning rate, warmup, batch size); the TULIP variants run stage 1 first. --compare picks the variants, --seeds
the data seeds (each seed: its own data, teacher and runs); the table gives the mean and half the range over
seeds. Subprocesses run with a fixed thread count (--threads, default 2: the README's numbers; another count
changes their last digits) and CPU kernels pinned to AVX2, so that a seed gives the same numbers on x86-64
machines with AVX2 and the same library versions (checked on one machine, bit for bit; not yet across CPU
families). --threads auto takes the cores the load average leaves free (and changes the last digits).

Each step's own output goes to a file in its folder (console.txt; a training run also logs to out.log); the
terminal gets its command, one progress line rewritten in place (on a terminal only) and the time it took.

Re-running reuses every step whose command is unchanged; an interrupted step starts over (a resumed run would
not reproduce the uninterrupted numbers); --fresh deletes everything first.
"""
import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from training_ext.common.file_io import atomic_open, write_json
from training_ext.demo import report
from training_ext.demo.progress import StatusLine, TrainLog, choose_threads, format_duration, progress_line
from training_ext.demo.report import DETAIL, DIRECTIONS, LATE, ORDINARY

ORDINARY_TOLERANCE = 5.0  # R@1 points the student may lose against the teacher on the ordinary split
STEP_RECORD = "demo_step.json"  # written into a step's folder once it has finished: the command it ran
CONSOLE = "console.txt"  # a step's stdout and stderr, in its folder
THREADS = 2  # the README's numbers were made with this many threads per step
# Seconds on the README's idle 2-core machine (its "Time" table): to start a step, then per optimizer step at
# batch 64 (validation included), per image generated, per model and test image evaluated. Only for the estimate
# of what is left, which scales them by how much slower than that this machine runs.
IDLE_SECONDS = {"start": 8.0, "teacher": 0.383, "stage 1": 0.453, "stage 2": 0.529, "data": 0.00296, "eval": 0.0072}


@dataclass(frozen=True)
class Variant:
    """One way to get a 248-token CLIP from the 77-token teacher."""
    key: str
    label: str            # the row name in the table and the plot
    model: str            # open_clip config the fine-tuned CLIP is built from
    distilled: bool       # True: stage 1 first, its student's text tower goes into stage 2
    recipe: str           # stage-2 loss: "tulip" (CLIP loss + 0.2 x short-caption CLIP loss) or "longclip"
    # True: stage 2 also gets the epochs stage 1 would have had, so that the variant takes as many optimizer
    # steps as a TULIP variant (stage-1 steps are text-only and cheaper, so it spends more time)
    matched_steps: bool = False

    @property
    def position(self) -> str:
        return self.model.split("-")[-2]


# Long-CLIP's recipe: primary component matching of the short captions with weight 1 and label smoothing 0.1;
# its model stretches the 77 learned positions to 248 and freezes the first 20 (tiny-clip-longclip-248).
RECIPES = {
    "tulip": ["--short-caption-weight", "0.2"],
    "longclip": ["--short-caption-loss", "pcm", "--short-caption-weight", "1", "--label-smoothing", "0.1"],
}
VARIANTS: Dict[str, Variant] = {v.key: v for v in (
    Variant("tulip-rope", "TULIP RoPE (stage 1 + 2)", "tiny-clip-rope-248", True, "tulip"),
    Variant("tulip-cope", "TULIP CoPE (stage 1 + 2)", "tiny-clip-cope-248", True, "tulip"),
    Variant("rope-stage2-only", "RoPE, stage 2 only", "tiny-clip-rope-248", False, "tulip"),
    Variant("rope-stage2-matched", "RoPE, stage 2 only, TULIP's steps", "tiny-clip-rope-248", False, "tulip",
            matched_steps=True),
    Variant("longclip", "Long-CLIP (stretch + PCM)", "tiny-clip-longclip-248", False, "longclip"),
    Variant("uniform", "uniform interp. + PCM", "tiny-clip-uniform-248", False, "longclip"),
)}
# `make demo` answers "does the method work, and does its stage 1 pay off?" in about 15 minutes on 2 idle cores;
# --compare all adds CoPE and the two position-table stretches.
DEFAULT_VARIANTS = ("tulip-rope", "rope-stage2-only")
TEACHER_LABEL = "teacher (tiny-clip, 77 tokens)"
UNTRAINED_LABEL = "RoPE student, teacher weights, untrained"


POSITION_NAMES = {"rope": "RoPE", "cope": "CoPE"}


def stage1_label(position: str) -> str:
    return f"stage-1 {POSITION_NAMES[position]} student"


@dataclass
class DemoPlan:
    """Sizes, schedules and what to compare; the defaults fit in ~15 minutes on 2 idle CPU cores."""
    out: Path
    variants: Tuple[str, ...] = DEFAULT_VARIANTS
    seeds: Tuple[int, ...] = (0,)
    n_train: int = 8192
    n_test: int = 512
    n_val: int = 256
    group_size: int = 8
    batch_size: int = 64
    teacher_epochs: int = 4
    teacher_lr: float = 1e-3
    distill_epochs: int = 1
    distill_lr: float = 1e-3
    finetune_epochs: int = 2
    finetune_lr: float = 5e-4
    warmup: int = 50
    workers: int = 1
    threads: int = THREADS
    # 0: stages 1 and 2 train on the whole training split, like the teacher. N: on its first N rows only, the
    # situation TULIP is made for (a teacher trained on far more pairs than the long-caption data holds); the
    # runs and outputs get a suffix, so they sit beside the full-data ones and reuse the same teachers.
    long_caption_subset: int = 0

    def __post_init__(self):
        self.out = Path(self.out)
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise ValueError(f"unknown variant(s) {unknown or '(none given)'}; choose from {', '.join(VARIANTS)}")
        if not self.seeds:
            raise ValueError("give at least one seed")
        if not 0 <= self.long_caption_subset <= self.n_train:
            raise ValueError(f"long_caption_subset must be between 0 and n_train ({self.n_train}), "
                             f"got {self.long_caption_subset}")

    @property
    def suffix(self) -> str:
        """Appended to the names of runs and outputs that train on a subset."""
        return f"-first{self.long_caption_subset}" if self.long_caption_subset else ""

    @property
    def student_positions(self) -> List[str]:
        """Positions that need a stage-1 student, in variant order."""
        return list(dict.fromkeys(VARIANTS[v].position for v in self.variants if VARIANTS[v].distilled))

    def seed_dir(self, seed: int) -> Path:
        return self.out / f"seed{seed}"

    def data_dir(self, seed: int) -> Path:
        return self.seed_dir(seed) / "data"

    def logs(self, seed: int) -> Path:
        return self.seed_dir(seed) / "logs"

    def checkpoint(self, seed: int, run: str, epochs: int) -> Path:
        return self.logs(seed) / run / "checkpoints" / f"epoch_{epochs}.pt"

    def steps_per_epoch(self, long_captions: bool = True) -> int:
        """Optimizer steps per epoch (open_clip_train drops the last partial batch)."""
        rows = self.long_caption_subset if long_captions and self.long_caption_subset else self.n_train
        return rows // self.batch_size

    def finetune_epochs_of(self, variant: "Variant") -> int:
        return self.finetune_epochs + (self.distill_epochs if variant.matched_steps else 0)

    @property
    def with_untrained_student(self) -> bool:
        """Whether the evaluation shows the teacher's weights in an untrained RoPE tower: where stage 2 starts
        without stage 1, against the stage-1 student it shows what distillation hands over."""
        return any(not VARIANTS[v].distilled and VARIANTS[v].position == "rope" for v in self.variants)

    def evaluated_models(self) -> int:
        """Models each evaluation step scores (run_seed's ``models``)."""
        return 1 + self.with_untrained_student + len(self.student_positions) + len(self.variants)


@dataclass(frozen=True)
class PlannedStep:
    """A step of the demo as run_seed will run it, with a guess at its duration."""
    seed: int
    name: str            # as Runner.step names it
    train_steps: int     # optimizer steps, 0 for a step that does not train
    idle_seconds: float  # on the README's idle 2-core machine (IDLE_SECONDS)


def planned_steps(plan: DemoPlan) -> List[PlannedStep]:
    """Every step of ``plan``, in the order run_seed runs them."""
    scale, start = plan.batch_size / 64, IDLE_SECONDS["start"]
    steps = []
    for seed in plan.seeds:
        images = plan.n_train + 2 * plan.n_test + plan.n_val
        steps.append(PlannedStep(seed, "data", 0, start + IDLE_SECONDS["data"] * images))
        train = [("teacher", "teacher", plan.teacher_epochs * plan.steps_per_epoch(False))]
        train += [(f"stage 1 {p}", "stage 1", plan.distill_epochs * plan.steps_per_epoch())
                  for p in plan.student_positions]
        train += [(f"stage 2 {key}", "stage 2", plan.finetune_epochs_of(VARIANTS[key]) * plan.steps_per_epoch())
                  for key in plan.variants]
        steps += [PlannedStep(seed, name, count, start + IDLE_SECONDS[kind] * scale * count)
                  for name, kind, count in train]
        steps += [PlannedStep(seed, f"eval {split}", 0,
                              start + IDLE_SECONDS["eval"] * plan.evaluated_models() * plan.n_test)
                  for split in (ORDINARY, DETAIL)]
    return steps


# ------------------------------------------------------------------------------------------ running steps

def pinned_environment(threads: int) -> Dict[str, str]:
    """The subprocesses' environment: what a seed's numbers depend on beyond the seed, fixed.

    Thread counts change the order of floating-point sums (torch's intra-op threads, MKL's); MKL, oneDNN and
    ATen pick kernels by CPU, so AVX2 and AVX-512 machines (or Intel and AMD ones) would otherwise round
    differently. MKL_CBWR is MKL's conditional numerical reproducibility switch. A CPU without AVX2 keeps its
    own kernels (and may give other numbers).
    """
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONHASHSEED="0")
    # OpenMP threads otherwise spin between parallel regions: on 2 cores shared with 3 to 7 other busy processes, 2
    # spinning threads took 2 to 10 times as long per stage-2 step as 2 sleeping ones (5 paired runs). How threads
    # wait does not change any number (checked bit for bit).
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if _cpu_has_avx2():
        env.update(MKL_CBWR="AVX2,STRICT", ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    return env


def _cpu_has_avx2() -> bool:
    try:
        import torch
        return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    except Exception:  # an old torch without get_cpu_capability: leave the kernels alone
        return False


@dataclass
class StepTime:
    seed: int
    step: str
    wall_s: float
    cpu_s: float
    reused: bool


@dataclass
class Runner:
    """Runs (or reuses) the steps of a plan and keeps their times; shows a running step's progress and what is left
    of the demo (``status``: a terminal line, silent elsewhere)."""
    plan: DemoPlan
    times: List[StepTime] = field(default_factory=list)
    status: StatusLine = field(default_factory=lambda: StatusLine(sys.stdout))
    # how many times slower than IDLE_SECONDS this machine runs, from the last step measured (None before)
    slowdown: Optional[float] = None

    def __post_init__(self):
        self.left = {(s.seed, s.name): s for s in planned_steps(self.plan)}  # steps not yet finished

    def step(self, seed: int, name: str, argv: List[str], folder: Path, product: Path,
             stdout_file: Optional[str] = None, train_epochs: Optional[int] = None) -> Path:
        """Run ``python -m argv`` unless ``folder`` holds ``product`` from the same command; returns ``product``.

        A folder without the record of a finished run with this command is deleted first: open_clip_train
        refuses an existing run name, and starting over keeps a step's numbers those of an uninterrupted run.
        The step's stdout goes to ``folder/stdout_file`` (default: with its stderr to ``folder/console.txt``);
        ``train_epochs``: a training run, whose progress is read from ``folder/out.log``.
        Raises SystemExit naming the step, with the end of its output, when it fails or leaves no ``product``.
        """
        record = {"argv": argv, "threads": self.plan.threads}
        record_path = folder / STEP_RECORD
        if product.is_file() and record_path.is_file() and json.loads(record_path.read_text()) == record:
            print(f"[{name}] reusing {product}", flush=True)
            self.times.append(StepTime(seed, name, 0.0, 0.0, True))
            self.left.pop((seed, name), None)
            return product
        if folder.exists():
            why = "its command changed" if record_path.is_file() else "it did not finish"
            print(f"[{name}] starting over in {folder} ({why})", flush=True)
            shutil.rmtree(folder)
        print("$ python -m " + " ".join(repr(a) if a == "\t" else a for a in argv), flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        console = folder / CONSOLE
        log = TrainLog(folder / "out.log", train_epochs, self.plan.batch_size) if train_epochs else None
        wall, cpu = time.perf_counter(), _children_cpu_seconds()
        with open(console, "wb") as output, \
                (open(folder / stdout_file, "wb") if stdout_file else contextlib.nullcontext(output)) as stdout:
            process = subprocess.Popen([sys.executable, "-m", *argv], env=pinned_environment(self.plan.threads),
                                       stdout=stdout, stderr=output)
            try:
                returncode = self._follow(process, seed, name, log)
            finally:
                self.status.clear()
                if process.poll() is None:  # interrupted: the step starts over next time anyway
                    process.kill()
                    process.wait()
        if returncode != 0 or not product.is_file():
            tail = console.read_bytes().decode("utf-8", errors="replace").splitlines()[-15:]
            raise SystemExit(f"demo: step '{name}' failed (exit {returncode}); its command is printed above, the end "
                             f"of its output (all of it in {console}):\n" + "\n".join("  " + line for line in tail))
        write_json(str(record_path), record)
        elapsed = StepTime(seed, name, time.perf_counter() - wall, _children_cpu_seconds() - cpu, False)
        self.times.append(elapsed)
        planned = self.left.pop((seed, name), None)
        if planned is not None and planned.idle_seconds > 0:
            self.slowdown = elapsed.wall_s / planned.idle_seconds
        left = self.demo_left()
        print(f"[{name}] done in {elapsed.wall_s:.0f}s ({elapsed.cpu_s:.0f} CPU-s); output in "
              f"{log.path if log else folder / (stdout_file or CONSOLE)}"
              + (f"; demo ~{format_duration(left)} left" if left else ""), flush=True)
        return product

    def demo_left(self, running: Optional[Tuple[int, str]] = None, running_left: float = 0.0) -> Optional[float]:
        """Seconds the steps not yet finished should take at the pace of the steps finished so far (None before
        one has); ``running``: the step under way, which has ``running_left`` seconds to go."""
        if self.slowdown is None:
            return None
        return running_left + self.slowdown * sum(s.idle_seconds for key, s in self.left.items() if key != running)

    def _follow(self, process: subprocess.Popen, seed: int, name: str, log: Optional[TrainLog]) -> int:
        """Waits for ``process``, rewriting the status line every second; returns its exit code."""
        started, planned = time.perf_counter(), self.left.get((seed, name))
        while True:
            try:
                return process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
            if not self.status.live:
                continue
            elapsed, train = time.perf_counter() - started, log.poll() if log else None
            step_left = train.seconds_left if train is not None else None
            if step_left is None and self.slowdown is not None and planned is not None:
                step_left = max(0.0, self.slowdown * planned.idle_seconds - elapsed)
            demo_left = self.demo_left((seed, name), step_left) if step_left is not None else None
            self.status.show("  " + progress_line(name, elapsed, train, step_left, demo_left))


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _train_flags(plan: DemoPlan, seed: int, long_captions: bool = True) -> List[str]:
    """open_clip_train's data and run flags; ``long_captions``: a stage-1/2 run (the subset, if any)."""
    data = plan.data_dir(seed)
    train = data / "train.csv"
    if long_captions and plan.long_caption_subset:
        train = data / f"train{plan.suffix}.csv"
    return ["--train-data", str(train), "--val-data", str(data / "val.csv"), "--dataset-type", "csv",
            "--csv-separator", "\t", "--csv-img-key", "filepath", "--csv-caption-key", "title",
            "--batch-size", str(plan.batch_size), "--workers", str(plan.workers), "--precision", "fp32",
            "--device", "cpu", "--seed", str(seed), "--logs", str(plan.logs(seed)), "--save-frequency", "1",
            "--wd", "0.2", "--report-to", "tensorboard", "--log-every-n-steps", "10"]  # the progress line reads it


def make_data(runner: Runner, seed: int) -> Path:
    plan = runner.plan
    argv = ["training_ext.synthetic", "--out", str(plan.data_dir(seed)), "--seed", str(seed),
            "--n-train", str(plan.n_train), "--n-test", str(plan.n_test), "--n-val", str(plan.n_val),
            "--group-size", str(plan.group_size)]
    meta = runner.step(seed, "data", argv, plan.data_dir(seed), plan.data_dir(seed) / "meta.json")
    if plan.long_caption_subset:
        write_subset(plan.data_dir(seed) / "train.csv", plan.data_dir(seed) / f"train{plan.suffix}.csv",
                     plan.long_caption_subset)
    return meta


def write_subset(source: Path, target: Path, rows: int) -> None:
    """The header and the first ``rows`` rows of a CSV (the generator writes one line per row, scenes in random
    order, so the first rows are a random sample)."""
    with open(source, encoding="utf-8") as handle:
        lines = [line for _, line in zip(range(rows + 1), handle)]
    text = "".join(lines)
    if not target.is_file() or target.read_text(encoding="utf-8") != text:
        with atomic_open(str(target), "w", encoding="utf-8") as handle:
            handle.write(text)


def train_teacher(runner: Runner, seed: int) -> Path:
    plan = runner.plan
    argv = ["training_ext.main", "--model", "tiny-clip", "--name", "teacher", *_train_flags(plan, seed, False),
            "--epochs", str(plan.teacher_epochs), "--lr", str(plan.teacher_lr), "--warmup", "100"]
    return runner.step(seed, "teacher", argv, plan.logs(seed) / "teacher",
                       plan.checkpoint(seed, "teacher", plan.teacher_epochs), train_epochs=plan.teacher_epochs)


def distill(runner: Runner, seed: int, position: str, teacher: Path) -> Path:
    plan, run = runner.plan, f"stage1-{position}{runner.plan.suffix}"
    argv = [f"training_ext.main_distill_{position}", "--model", f"tiny-clip-{position}-248",
            "--pretrained", str(teacher), "--teacher-model", "tiny-clip", "--teacher-pretrained", str(teacher),
            "--distill-loss", "cosine", "--name", run, *_train_flags(plan, seed),
            "--csv-short-caption-key", "short_title", "--epochs", str(plan.distill_epochs),
            "--lr", str(plan.distill_lr), "--warmup", str(plan.warmup)]
    return runner.step(seed, f"stage 1 {position}", argv, plan.logs(seed) / run,
                       plan.checkpoint(seed, run, plan.distill_epochs), train_epochs=plan.distill_epochs)


def finetune(runner: Runner, seed: int, variant: Variant, teacher: Path, student: Optional[Path]) -> Path:
    """Stage 2 of one variant: the same schedule for every variant (a matched-steps variant's is longer by
    stage 1's epochs), only the model, its initial text tower and the recipe's short-caption loss differ."""
    plan, run = runner.plan, f"stage2-{variant.key}{runner.plan.suffix}"
    epochs = plan.finetune_epochs_of(variant)
    init = ["--student-checkpoint", str(student)] if student is not None else []
    argv = ["training_ext.main_context_finetune_rope", "--model", variant.model, "--pretrained", str(teacher),
            *init, *RECIPES[variant.recipe], "--name", run, *_train_flags(plan, seed),
            "--csv-short-caption-key", "short_title", "--epochs", str(epochs),
            "--lr", str(plan.finetune_lr), "--warmup", str(plan.warmup)]
    return runner.step(seed, f"stage 2 {variant.key}", argv, plan.logs(seed) / run, plan.checkpoint(seed, run, epochs),
                       train_epochs=epochs)


def evaluate(runner: Runner, seed: int, models: Dict[str, str]) -> Dict[str, dict]:
    """Two evaluation runs (eval buckets every CSV benchmark by the column, and only the detail split has it):
    the ordinary split, and the detail split bucketed by the detail's token position."""
    plan, data = runner.plan, runner.plan.data_dir(seed)
    model_flags = [flag for spec in models.values() for flag in ("--model", spec)]
    common = [*model_flags, "--workers", str(plan.workers), "--device", "cpu", "--no-progress",
              "--length-buckets", report.LENGTH_EDGES]
    results = {}
    for split, extra in ((ORDINARY, []),
                         (DETAIL, ["--bucket-by-column", "detail_position",
                                   "--bucket-column-edges", ",".join(map(str, report.DETAIL_EDGES))])):
        folder = plan.seed_dir(seed) / f"eval-{split}{plan.suffix}"
        csv = data / ("test_ordinary.csv" if split == ORDINARY else "test_detail.csv")
        argv = ["training_ext.eval", *common, "--csv", f"{split}={csv}", *extra, "--output-dir", str(folder)]
        path = runner.step(seed, f"eval {split}", argv, folder, folder / "results.json", stdout_file="eval.txt")
        results[split] = json.loads(path.read_text())
    return results


def run_seed(runner: Runner, seed: int) -> dict:
    """Every step for one data seed; returns {label: {split: metrics}} and the model specs."""
    plan = runner.plan
    report.banner(f"seed {seed}: 1/5 synthetic long-caption data")
    make_data(runner, seed)
    report.banner(f"seed {seed}: 2/5 teacher: tiny-clip, 77 tokens, trained from scratch with open_clip_train")
    teacher = train_teacher(runner, seed)
    models = {TEACHER_LABEL: f"tiny-clip:{teacher}"}
    if plan.with_untrained_student:
        models[UNTRAINED_LABEL] = f"tiny-clip-rope-248:{teacher}"
    students = {}
    report.banner(f"seed {seed}: 3/5 stage 1: distil the teacher into "
                  + (", ".join(f"tiny-clip-{p}-248" for p in plan.student_positions) or "(no distilled variant)"))
    for position in plan.student_positions:
        students[position] = distill(runner, seed, position, teacher)
        models[stage1_label(position)] = f"tiny-clip-{position}-248:{students[position]}"
    report.banner(f"seed {seed}: 4/5 stage 2: fine-tune every variant on long captions, same schedule")
    for key in plan.variants:
        variant = VARIANTS[key]
        final = finetune(runner, seed, variant, teacher, students.get(variant.position) if variant.distilled else None)
        models[variant.label] = f"{variant.model}:{final}"
    report.banner(f"seed {seed}: 5/5 evaluation: ordinary split, detail split by the detail's token position")
    results = evaluate(runner, seed, models)
    return {"seed": seed, "models": models, "metrics": report.metrics_by_model(results, models)}


def verdict(metrics: Dict[str, dict], student: str) -> List[str]:
    """The demo's claim, checked on one seed's numbers; returns the failures (empty when the method works):
    on details past token 75 the student's R@1 is at least twice the teacher's (and above 0) both ways, and on
    the ordinary split it stays within ORDINARY_TOLERANCE points of the teacher."""
    failures = []
    teacher, model = metrics[TEACHER_LABEL], metrics[student]
    for direction in DIRECTIONS:
        late_t, late_s = teacher[LATE][direction], model[LATE][direction]
        if not late_s >= 2 * late_t or late_s == 0:
            failures.append(f"{LATE} {direction}: {student} {late_s:.1f} is not at least twice the teacher's "
                            f"{late_t:.1f}")
        ord_t, ord_s = teacher[ORDINARY][direction], model[ORDINARY][direction]
        if ord_s < ord_t - ORDINARY_TOLERANCE:
            failures.append(f"{ORDINARY} {direction}: {student} {ord_s:.1f} is more than {ORDINARY_TOLERANCE:g} "
                            f"points below the teacher's {ord_t:.1f}")
    return failures


def run_demo(plan: DemoPlan, fresh: bool = False) -> dict:
    if fresh and plan.out.exists():
        shutil.rmtree(plan.out)
    plan.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    runner = Runner(plan)
    idle = sum(s.idle_seconds for s in runner.left.values())
    print(f"demo: {len(runner.left)} steps, about {format_duration(idle)} on the README's idle 2-core machine "
          f"(more while other jobs run); each step's own output goes to a file in its folder", flush=True)
    per_seed = [run_seed(runner, seed) for seed in plan.seeds]
    labels = list(per_seed[0]["metrics"])
    summary = report.summarise(per_seed, labels)
    student = VARIANTS[plan.variants[0]].label
    failures = [f"seed {run['seed']}: {failure}" for run in per_seed for failure in verdict(run["metrics"], student)]
    table = report.table(summary, labels, len(plan.seeds))
    methods = [TEACHER_LABEL] + [VARIANTS[key].label for key in plan.variants]  # the plot leaves out the steps
    plot = report.plot_detail_position(per_seed, methods, plan.out / f"recall_by_detail_position{plan.suffix}.png")
    outcome = {"plan": {**asdict(plan), "out": str(plan.out)}, "per_seed": per_seed, "summary": summary,
               "timings": [asdict(t) for t in runner.times], "failures": failures, "student": student}
    with atomic_open(str(plan.out / f"comparison{plan.suffix}.json"), "w", encoding="utf-8") as handle:
        handle.write(json.dumps(outcome, indent=1, default=str) + "\n")
    with atomic_open(str(plan.out / f"comparison{plan.suffix}.md"), "w", encoding="utf-8") as handle:
        handle.write(table + "\n")
    report.banner("result")
    print(table)
    print(report.timing_table(runner.times))
    print(f"\nplot: {plot}\ntable: {plan.out / f'comparison{plan.suffix}.md'}   "
          f"numbers: {plan.out / f'comparison{plan.suffix}.json'}")
    print(f"demo finished in {time.perf_counter() - started:.0f}s")
    if failures:
        print("the student did NOT show the method working:\n  " + "\n  ".join(failures))
    else:
        print(f"{student} reads what the 77-token teacher cannot: R@1 on details past token "
              f"{report.LAST_TEACHER_POSITION} at least 2x the teacher's in both directions, ordinary R@1 within "
              f"{ORDINARY_TOLERANCE:g} points")
    return outcome


# ------------------------------------------------------------------------------------------ command line

def _int_list(text: str) -> Tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _variant_list(text: str) -> Tuple[str, ...]:
    if text == "default":
        return DEFAULT_VARIANTS
    if text == "all":
        return tuple(VARIANTS)
    chosen = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = [x for x in chosen if x not in VARIANTS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {unknown}; choose from default, all or a "
                                         f"comma-separated list of {', '.join(VARIANTS)}")
    return chosen


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training_ext.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = DemoPlan(out=Path("demo_out"))
    variants = "; ".join(f"{v.key}: {v.label}" for v in VARIANTS.values())
    parser.add_argument("--out", type=Path, default=defaults.out, help="working folder (default: demo_out)")
    parser.add_argument("--compare", type=_variant_list, default=defaults.variants, dest="variants",
                        metavar="VARIANTS",
                        help=f"'default' ({', '.join(DEFAULT_VARIANTS)}), 'all', or a comma-separated list; the first "
                             f"is the one the demo's claim is checked on. Variants: {variants}")
    parser.add_argument("--seeds", type=_int_list, default=defaults.seeds,
                        help="comma-separated data seeds, e.g. 0,1 (each: its own data, teacher and runs)")
    parser.add_argument("--fresh", action="store_true", help="delete --out first instead of reusing what is built")
    sizes = {"n_train": "training pairs per seed", "n_test": "images in each test split",
             "n_val": "validation pairs", "group_size": "captions per detail group",
             "batch_size": "batch size of every training run", "teacher_epochs": "epochs of the 77-token teacher",
             "distill_epochs": "stage-1 epochs", "finetune_epochs": "stage-2 epochs",
             "warmup": "warmup steps of stages 1 and 2", "workers": "data-loader workers per run",
             "long_caption_subset": "N > 0: stages 1 and 2 train on the first N training pairs only (the "
                                    "teacher on all); its runs and outputs get the suffix -firstN",
             "teacher_lr": "teacher learning rate", "distill_lr": "stage-1 learning rate",
             "finetune_lr": "stage-2 learning rate"}
    for name, meaning in sizes.items():
        default = getattr(defaults, name)
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default,
                            help=f"{meaning} (default: {default})")
    parser.add_argument("--threads", type=_threads, default=THREADS, metavar="N|auto",
                        help=f"CPU threads per step (default: {THREADS}, as the README's numbers were made; another "
                             f"count changes their last digits). 'auto': the CPUs the load average leaves free, at "
                             f"least 1")
    return parser


def _threads(text: str):
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of threads (1 or more) or 'auto', got {text!r}")
    return value


def resolve_threads(threads, cpu_count: Optional[int], load: float) -> Tuple[int, str]:
    """(threads per step, the line that says why) for --threads N or 'auto' on a machine with ``cpu_count`` CPUs
    and this 1-minute load average."""
    machine = f"{cpu_count or 1} CPUs, load average {load:.1f}"
    fitting = choose_threads(cpu_count, load)
    if threads == "auto":
        return fitting, (f"threads: {fitting} per step (--threads auto: {machine}); the README's numbers were made "
                         f"with {THREADS}, another count changes their last digits")
    line = f"threads: {threads} per step ({machine})"
    if fitting < threads:
        line += (f"; other jobs are running: expect the steps to take longer than the estimates for an idle "
                 f"machine (--threads auto would use {fitting}, and change the last digits of the numbers)")
    return threads, line


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = vars(build_parser().parse_args(argv))
    fresh = args.pop("fresh")
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not reported on this system
        load = 0.0
    args["threads"], why = resolve_threads(args["threads"], os.cpu_count(), load)
    print(why, flush=True)
    outcome = run_demo(DemoPlan(**args), fresh=fresh)
    return 1 if outcome["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
