"""Checks that run before the first model loads, so that a typo in the last of several model specs stops the run
at once instead of after hours of evaluating the others.

A model spec is NAME[:PRETRAINED_OR_PATH]: NAME must be an open_clip model (this project's configs included) or
an hf-hub:/local-dir: name; PRETRAINED must be a pretrained tag open_clip knows for NAME, an hf-hub: reference, or
an existing checkpoint file. (Whether a checkpoint file loads is only known when it is loaded.)
"""
import difflib
import os


class PreflightError(ValueError):
    """A model spec that cannot work; the message names the spec."""


def check_model_spec(spec) -> None:
    """spec: a runner.ModelSpec (spec, name, pretrained). Raises PreflightError."""
    import open_clip
    import open_clip_ext  # noqa: F401  (registers this project's model configs with open_clip)

    name, pretrained = spec.name, spec.pretrained
    has_schema = name.startswith(("hf-hub:", "local-dir:"))
    if name.startswith("local-dir:") and not os.path.isdir(name[len("local-dir:"):]):
        raise PreflightError(f"--model {spec.spec}: local model folder not found: {name[len('local-dir:'):]}")
    if not has_schema and name not in open_clip.list_models():
        close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
        raise PreflightError(f"--model {spec.spec}: {name!r} is not an open_clip model"
                             + (f" (did you mean {', '.join(close)}?)" if close else ""))
    if pretrained is None or pretrained.startswith("hf-hub:") or os.path.isfile(os.path.expanduser(pretrained)):
        return
    if not has_schema and open_clip.get_pretrained_cfg(name, pretrained):
        return
    tags = [] if has_schema else open_clip.list_pretrained_tags_by_model(name)
    raise PreflightError(
        f"--model {spec.spec}: checkpoint file not found: {os.path.abspath(os.path.expanduser(pretrained))} "
        f"(and {pretrained!r} is not a pretrained tag of {name}"
        + (f"; its tags: {', '.join(tags)})" if tags else ")"))
