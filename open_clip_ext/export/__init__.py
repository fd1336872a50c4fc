"""Use this package's long-context CLIP models where people use CLIP: transformers, the Hugging Face Hub, diffusers.

- ``export_clip`` / ``import_clip`` (transformers_clip.py): absolute-position models (stock 77-token CLIP,
  Long-CLIP, uniform interpolation) <-> transformers ``CLIPModel`` directories;
- ``export_relpos_text_model`` (relpos_hf.py): RoPE / CoPE text towers as transformers models carrying their own
  code; importing this package registers those classes with transformers' Auto API;
- ``save_open_clip_dir`` / ``push_to_hub`` (hub.py): open_clip's own Hub format with a model card;
- ``SDXLPromptEncoder`` (diffusion.py): SDXL pipeline conditioning from long text towers.
Command line: ``python -m open_clip_ext.export --help``. Needs the ``hf`` extra (``pip install
open_clip_ext[hf]``); the SDXL helper also needs ``diffusion``. docs/export.md walks through each.
"""
try:
    import transformers  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("open_clip_ext.export needs transformers: pip install 'open_clip_ext[hf]'") from e

from .hub import push_to_hub, save_open_clip_dir  # noqa: E402
from .relpos_hf import export_relpos_text_model, register_auto_classes  # noqa: E402
from .tokenizer import clean_caption, clip_tokenizer, open_clip_input_ids  # noqa: E402
from .transformers_clip import (ExportError, UnfinetunedPositionsWarning, export_clip,  # noqa: E402
                                import_clip)

register_auto_classes()

__all__ = ["ExportError", "UnfinetunedPositionsWarning", "clean_caption", "clip_tokenizer", "export_clip",
           "export_relpos_text_model", "import_clip", "open_clip_input_ids", "push_to_hub", "register_auto_classes",
           "save_open_clip_dir"]
