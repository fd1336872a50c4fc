"""Validation: image <-> long-caption retrieval on the --val-data pairs, written like open_clip_train's.

Features are L2-normalised and ranked by cosine similarity (the logit scale does not change a ranking, so none
is applied; TULIP's reference ranked raw unnormalised features). Stage 1 pairs the frozen teacher's image tower
with the student's text tower; stage 2 uses the trained model's own towers.
"""
import json
import logging
import os
from typing import Callable, Dict

import torch
import torch.nn.functional as F
from tqdm import tqdm

from open_clip import get_input_dtype
from open_clip_train.precision import get_autocast

from training_ext.engine.loop import val_due
from training_ext.common.retrieval import retrieval_metrics as ranked_retrieval_metrics

try:
    import wandb
except ImportError:
    wandb = None


@torch.no_grad()
def retrieval_features(encode_image: Callable, encode_text: Callable, dataloader, device, autocast,
                       input_dtype=None):
    """Normalised (N, D) image and text features of a validation loader of (images, long_ids, short_ids)."""
    images_out, texts_out = [], []
    for images, long_ids, _ in tqdm(dataloader, desc="validation", leave=False, dynamic_ncols=True):
        images = images.to(device=device, dtype=input_dtype, non_blocking=True)
        with autocast():
            images_out.append(F.normalize(encode_image(images).float(), dim=-1).cpu())
            texts_out.append(F.normalize(encode_text(long_ids.to(device)).float(), dim=-1).cpu())
    return torch.cat(images_out), torch.cat(texts_out)


def retrieval_metrics(image_features: torch.Tensor, text_features: torch.Tensor) -> Dict[str, float]:
    """R@1/5/10 in percent, image->text and text->image (pair i is image i with caption i), with the
    evaluation CLI's ranking rule so that validation and evaluation numbers agree."""
    metrics, image_ranks, text_ranks = ranked_retrieval_metrics(
        image_features, text_features, torch.arange(len(text_features)))
    metrics["image_to_text_mean_rank"] = image_ranks.double().mean().item() + 1
    metrics["text_to_image_mean_rank"] = text_ranks.double().mean().item() + 1
    return metrics


def report(metrics: Dict[str, float], epoch: int, args, writer, step: int) -> None:
    """open_clip_train's outputs: the 'Eval Epoch' log line, checkpoints/results.jsonl, val/* scalars."""
    metrics = {**metrics, "epoch": epoch}
    logging.info(f"Eval Epoch: {epoch} " + "\t".join(f"{k}: {round(v, 4):.4f}" for k, v in metrics.items()))
    log_data = {"val/" + name: value for name, value in metrics.items()}
    if args.save_logs:
        if writer is not None:
            for name, value in log_data.items():
                writer.add_scalar(name, value, epoch)
        with open(os.path.join(args.checkpoint_path, "results.jsonl"), "a+") as stream:
            stream.write(json.dumps(metrics) + "\n")
    if args.wandb and wandb is not None:
        wandb.log(log_data, step=step)


def make_retrieval_validation(args, image_model, text_model, val_data, device, writer, state) -> Callable:
    """evaluate(epoch): image_model's image tower against text_model's text tower on --val-data, when due."""
    autocast = get_autocast(args.precision, device_type=device.type)
    input_dtype = get_input_dtype(args.precision)

    def evaluate(epoch: int) -> None:
        if val_data is None or not val_due(args, epoch):
            return
        modes = [(m, m.training) for m in (image_model, text_model)]
        for model, _ in modes:
            model.eval()
        image_features, text_features = retrieval_features(
            image_model.encode_image, text_model.encode_text, val_data.dataloader, device, autocast, input_dtype)
        for model, training in modes:
            model.train(training)
        metrics = retrieval_metrics(image_features, text_features)
        metrics["num_samples"] = len(text_features)
        report(metrics, epoch, args, writer, step=state.step)

    return evaluate
