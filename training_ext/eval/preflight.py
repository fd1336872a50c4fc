"""Checks that run before the first model loads, so that a typo in the last of several model specs stops the run
at once instead of after hours of evaluating the others.

A model spec is NAME[:PRETRAINED_OR_PATH]: NAME must be an open_clip model (this project's configs included) or
an hf-hub:/local-dir: name; PRETRAINED must be a pretrained tag open_clip knows for NAME, an hf-hub: reference, or
an existing checkpoint file. (Whether a checkpoint file loads is only known when it is loaded.)

Every benchmark image must start like an image (``training_ext.common.image_files``: an HTML page saved as
``1.jpg`` stops the run here); an image whose data past its header is damaged is found when it is decoded, and the
runner then stops with the file named, after writing the results finished so far. The output folder must be
writable: it is created and a probe file written and removed in it.
"""
import os
import tempfile
from typing import Sequence

from training_ext.common.image_files import image_file_problem


class PreflightError(ValueError):
    """A model spec, benchmark image or output folder that cannot work; the message names it and the fix."""


def check_model_spec(spec) -> None:
    """spec: a runner.ModelSpec (spec, name, pretrained). Raises PreflightError naming the spec
    (``open_clip_ext.model_specs``' checks)."""
    from open_clip_ext.model_specs import model_spec_problem

    problem = model_spec_problem(spec.name, spec.pretrained)
    if problem:
        raise PreflightError(f"--model {spec.spec}: {problem}")


def check_benchmark_images(benchmark: str, source: str, paths: Sequence[str]) -> None:
    """Every image file of one benchmark starts like an image (a read of its first bytes each). Raises
    PreflightError naming the benchmark, its source, the first bad file and why, and how many there are."""
    problems = [(path, why) for path in dict.fromkeys(paths) if (why := image_file_problem(path)) is not None]
    if problems:
        path, why = problems[0]
        more = f" ({len(problems)} such files, e.g. also {problems[1][0]})" if len(problems) > 1 else ""
        raise PreflightError(f"{benchmark} ({source}): image {path}: {why}{more}; replace it with the image the "
                             f"benchmark names (re-download or re-extract it)")


def check_output_dir(path: str) -> None:
    """Create ``path`` (--output-dir) and write and remove a probe file in it, so that results that could not be
    saved stop the run before any model is built. Raises PreflightError naming the folder and the OS reason."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise PreflightError(f"--output-dir {path}: is a file, not a folder; choose a folder for the results")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-probe-"):
            pass
    except OSError as error:
        where = f" ({error.filename})" if error.filename and os.path.abspath(error.filename) != os.path.abspath(
            path) else ""
        raise PreflightError(f"--output-dir {path}: cannot write the results there: {error.strerror or error}"
                             f"{where}; choose a folder you can write to") from None
