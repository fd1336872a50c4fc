"""open_clip's own Hugging Face Hub format for this package's models, with a model card.

The layout is open_clip's (``open_clip/push_to_hf_hub.py``, whose ``save_for_hf`` writes it): ``open_clip_config.json``
(``model_cfg`` + ``preprocess_cfg``), ``open_clip_model.safetensors``, tokenizer files; plus README.md naming the
base model, the training recipe and evaluation results (``results.json`` of ``python -m training_ext.eval``). After
``import open_clip_ext``, ``open_clip.create_model('hf-hub:<repo>')`` and ``open_clip.create_model('local-dir:<dir>')``
rebuild the model: the RoPE / CoPE / Long-CLIP settings travel in ``model_cfg.text_cfg`` and ``custom_text``.
"""
import json
import tempfile
from copy import deepcopy
from pathlib import Path
from typing import Dict, Optional

import open_clip
import torch
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.transformer import QuickGELU
from torch import nn

from ..configs import TOWER_ACTIVATION_KEY, TOWER_CONFIG_KEYS, unknown_model_error, with_tower_activations
from ..convert import uses_quick_gelu
from .tokenizer import clip_tokenizer
from .transformers_clip import ExportError, text_parts

CARD_TAGS = ["clip", "open_clip", "open_clip_ext", "long-context"]
RESULTS_KEYS = ("benchmark", "model", "context_length", "metrics", "protocol")


def _activations(tower: nn.Module):
    return [(type(m).__name__, getattr(m, "approximate", None)) for m in tower.modules()
            if isinstance(m, (QuickGELU, nn.GELU))]


def check_config_rebuilds(model, model_cfg: Dict) -> None:
    """Check that ``model_cfg`` builds ``model``: the same tensor names and shapes and, per tower, the same
    activations (a QuickGELU model saved with a GELU config loads without error and computes wrongly). The
    rebuild happens on the meta device, so it costs no memory even for ViT-bigG.

    Raises:
        ExportError: naming the differing tensors or towers, and the fix.
    """
    cfg = deepcopy(model_cfg)
    model_class = CustomTextCLIP if cfg.pop("custom_text", False) else CLIP
    with torch.device("meta"):
        rebuilt = model_class(**cfg)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    problems = [f"{k}: model {ours.get(k)} vs config {theirs.get(k)}"
                for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]
    for where, mine, other in (("image tower", model.visual, rebuilt.visual),
                               ("text tower", text_parts(model)[1], text_parts(rebuilt)[1])):
        if _activations(mine) != _activations(other):
            problems.append(f"{where} activations: model {sorted(set(_activations(mine)))} vs config "
                            f"{sorted(set(_activations(other)))}")
    if problems:
        raise ExportError(f"the model config does not rebuild this model ({'; '.join(problems[:8])}); pass the "
                          f"config it was created with (open_clip.get_model_config(name), plus quick_gelu / "
                          f"force_context_length changes made at creation)")


def model_config_for(model, model_name: str) -> Dict:
    """The config of registered ``model_name`` as ``model`` was built from it: the activation each tower was built
    with (``create_model(..., pretrained='openai')`` forces QuickGELU; towers that differ get per-tower keys), and
    the text context as built. Checked with ``check_config_rebuilds``."""
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise unknown_model_error(model_name)
    tower, blocks = text_parts(model)
    vision_quick, text_quick = uses_quick_gelu(model.visual), uses_quick_gelu(blocks)
    if vision_quick != text_quick or any(TOWER_ACTIVATION_KEY in cfg[k] for k in TOWER_CONFIG_KEYS):
        cfg = with_tower_activations(cfg, vision_quick_gelu=vision_quick, text_quick_gelu=text_quick)
    elif vision_quick:
        cfg["quick_gelu"] = True
    cfg["text_cfg"]["context_length"] = tower.context_length
    check_config_rebuilds(model, cfg)
    return cfg


def read_eval_results(path) -> list:
    """The per-(benchmark, model) rows of a ``results.json`` written by ``python -m training_ext.eval``.

    Raises:
        ExportError: unreadable file, or rows without the keys the card's table needs (names file, row and key).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: cannot read evaluation results ({e}); pass the results.json written by "
                          f"`python -m training_ext.eval --output-dir DIR`") from None
    rows = data.get("results") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ExportError(f"{path}: no 'results' list; expected the results.json of `python -m training_ext.eval`")
    for i, row in enumerate(rows):
        missing = [k for k in RESULTS_KEYS if k not in row]
        if missing:
            raise ExportError(f"{path}: results[{i}] lacks {missing}; expected the results.json of "
                              f"`python -m training_ext.eval`")
    return rows


def _describe(model_cfg: Dict) -> str:
    text_cfg = model_cfg.get("text_cfg", {})
    position = text_cfg.get("pos_embed_type")
    kind = {"rope": "rotary (RoPE)", "cope": "contextual (CoPE)", "longclip": "Long-CLIP stretched",
            "uniform": "uniformly interpolated"}.get(position, "learned absolute")
    text = (f"An open_clip CLIP model whose text tower takes {text_cfg.get('context_length', 77)} tokens with "
            f"{kind} positions.")
    if position:
        text += (" Loading it needs open_clip_ext installed and imported: it registers this text tower "
                 f"(`text_cfg.pos_embed_type={position!r}`) with open_clip.")
    return text


def model_card(model_cfg: Dict, repo_id: str, base: Optional[str] = None, recipe: Optional[str] = None,
               results: Optional[str] = None, license: str = "mit", base_model_id: Optional[str] = None) -> str:
    """README.md text: Hub metadata (``huggingface_hub.ModelCardData``), description, base model, training
    recipe, evaluation table (from ``results``, a results.json path), usage and the text-tower config.

    base: e.g. "ViT-L-14 (openai)"; base_model_id: the base's Hub id for the metadata (e.g.
    "openai/clip-vit-large-patch14"); recipe: free text (markdown), e.g. the training commands.
    """
    from huggingface_hub import ModelCardData

    metadata = ModelCardData(library_name="open_clip", tags=CARD_TAGS, license=license,
                             pipeline_tag="zero-shot-image-classification", base_model=base_model_id)
    sections = [f"# {repo_id.split('/')[-1]}", _describe(model_cfg)]
    if base:
        sections.append(f"## Base model\n\n{base}")
    if recipe:
        sections.append(f"## Training recipe\n\n{recipe}")
    if results:
        # the evaluation CLI's own report writer (training_ext ships in the same distribution)
        from training_ext.eval.report import markdown_report

        sections.append(markdown_report(read_eval_results(results)).replace("# ", "## ", 1).strip())
    sections.append("## Usage\n\n```python\nimport open_clip\nimport open_clip_ext  # registers the text tower\n\n"
                    f"model, preprocess = open_clip.create_model_from_pretrained('hf-hub:{repo_id}')\n"
                    f"tokenizer = open_clip.get_tokenizer('hf-hub:{repo_id}')\n```")
    text_cfg = json.dumps(model_cfg.get("text_cfg", {}), indent=2)
    sections.append(f"## Text tower config\n\n```json\n{text_cfg}\n```")
    return f"---\n{metadata.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"


def save_open_clip_dir(model, directory, model_cfg: Optional[Dict] = None, model_name: Optional[str] = None,
                       repo_id: Optional[str] = None, card: bool = True, **card_options) -> Path:
    """Write ``model`` in open_clip's Hub layout (what ``local-dir:`` and ``hf-hub:`` read) to ``directory``.

    model_cfg: the config it was built with, or model_name: a registered config name (``model_config_for``).
    repo_id: used in the card's usage snippet (default: the directory name). card_options: ``model_card``'s.
    Weights are written in the model's current dtype. Raises ``ExportError`` if the config does not rebuild the
    model or the results file is unusable.
    """
    from open_clip.push_to_hf_hub import save_for_hf

    if (model_cfg is None) == (model_name is None):
        raise ExportError("pass exactly one of model_cfg (the config dict) and model_name (a registered name)")
    cfg = deepcopy(model_cfg) if model_cfg is not None else model_config_for(model, model_name)
    check_config_rebuilds(model, cfg)
    directory = Path(directory)
    context = text_parts(model)[0].context_length
    save_for_hf(model, tokenizer=clip_tokenizer(context), model_config=cfg, save_directory=str(directory),
                safe_serialization=True)
    if card:
        readme = model_card(cfg, repo_id or directory.name, **card_options)
        (directory / "README.md").write_text(readme, encoding="utf-8")
    return directory


def push_to_hub(model, repo_id: str, model_cfg: Optional[Dict] = None, model_name: Optional[str] = None,
                token: Optional[str] = None, private: bool = False, revision: Optional[str] = None,
                create_pr: bool = False, commit_message: str = "Add open_clip_ext model", **card_options):
    """Create (or reuse) the Hub repo ``repo_id`` and upload the model in open_clip's format with a model card.

    Returns ``huggingface_hub.upload_folder``'s CommitInfo. Network errors are huggingface_hub's
    (authentication: ``token=``, else ``$HF_TOKEN``, else the token ``hf auth login`` saved).
    """
    from huggingface_hub import create_repo, upload_folder

    repo_id = create_repo(repo_id, token=token, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        save_open_clip_dir(model, folder, model_cfg=model_cfg, model_name=model_name, repo_id=repo_id,
                           **card_options)
        return upload_folder(repo_id=repo_id, folder_path=folder, token=token, revision=revision,
                             create_pr=create_pr, commit_message=commit_message)
