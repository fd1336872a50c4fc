"""Whether a model spec's weights can be loaded, checked without building the model, so command lines
(``python -m training_ext.eval``, ``python -m open_clip_ext.export``) refuse a typo before any model is built. Each
check returns a phrase for an error message (None when fine); the caller puts the flag in front.

``model_spec_problem``: the name (``configs.model_name_problem``: an open_clip config, a derivable
``<base>-<kind>-<N>``, hf-hub: or local-dir:), a local-dir: folder that exists, and weights that are a pretrained
tag open_clip knows for the name, an hf-hub: reference or an existing file that looks whole (its first bytes and
zip directory: ``convert.weights_file_problem``). Whether a whole file fits the model is only known when it is
loaded.
"""
import os
from typing import Optional

import open_clip

from open_clip_ext.configs import model_name_problem
from open_clip_ext.convert import weights_file_problem

SCHEMAS = ("hf-hub:", "local-dir:")


def pretrained_problem(name: str, pretrained: Optional[str]) -> Optional[str]:
    """None when ``pretrained`` (None = random init) is an existing file, an hf-hub: reference or a pretrained tag
    of ``name``; else why not, with the tags open_clip knows for ``name``."""
    if pretrained is not None and os.path.isfile(os.path.expanduser(pretrained)):
        problem = weights_file_problem(os.path.expanduser(pretrained))
        return f"{pretrained}: truncated or not a weights file ({problem})" if problem else None
    if pretrained is None or pretrained.startswith("hf-hub:"):
        return None
    has_schema = name.startswith(SCHEMAS)
    if not has_schema and open_clip.get_pretrained_cfg(name, pretrained):
        return None
    tags = [] if has_schema else open_clip.list_pretrained_tags_by_model(name)
    return (f"checkpoint file not found: {os.path.abspath(os.path.expanduser(pretrained))} "
            f"(and {pretrained!r} is not a pretrained tag of {name}" + (f"; its tags: {', '.join(tags)})" if tags
                                                                        else ")"))


def model_spec_problem(name: str, pretrained: Optional[str]) -> Optional[str]:
    """None when open_clip can build ``name`` with ``pretrained``; else the first reason it cannot."""
    if name.startswith("local-dir:") and not os.path.isdir(name[len("local-dir:"):]):
        return f"local model folder not found: {name[len('local-dir:'):]}"
    return model_name_problem(name) or pretrained_problem(name, pretrained)
