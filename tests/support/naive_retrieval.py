"""Reference recall computation for the tests: full similarity matrix, Python sorting, no chunks; features
encoded one item at a time, without DataLoader, batching or the one-pass tokenizer."""


def naive_rank(scores, is_positive, optimistic=False):
    """Position of the first positive after sorting by descending score, with equal scores ordered negatives
    first (ties against the model) or, optimistic, positives first (ties in its favour)."""
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], is_positive[j] != optimistic))
    return next(position for position, j in enumerate(order) if is_positive[j])


def naive_metrics(similarity, caption_image, ks=(1, 5, 10), optimistic=False):
    """Recall@k from a full similarity matrix (images x captions) with plain Python loops."""
    sim = similarity.tolist()
    num_images, num_captions = len(sim), len(sim[0])
    image_ranks = [naive_rank(sim[i], [caption_image[c] == i for c in range(num_captions)], optimistic)
                   for i in range(num_images)]
    text_ranks = [naive_rank([sim[i][c] for i in range(num_images)], [caption_image[c] == i for i in range(num_images)],
                             optimistic)
                  for c in range(num_captions)]
    metrics = {}
    for direction, ranks in (("image_to_text", image_ranks), ("text_to_image", text_ranks)):
        for k in ks:
            metrics[f"{direction}_R@{k}"] = 100.0 * sum(r < k for r in ranks) / len(ranks)
    return metrics, image_ranks, text_ranks


def build_model(name, seed=0, checkpoint=None):
    """The model the runner builds for NAME[:checkpoint] (same seed for random weights)."""
    import open_clip
    import open_clip_ext  # noqa: F401
    import torch
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=checkpoint)
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


def naive_image_features(model, preprocess, paths):
    import torch
    from PIL import Image
    with torch.no_grad():
        return torch.cat([model.encode_image(preprocess(Image.open(p).convert("RGB"))[None], normalize=True)
                          for p in paths])


def naive_text_features(model, tokenizer, captions):
    import torch
    with torch.no_grad():
        return torch.cat([model.encode_text(tokenizer([c]), normalize=True) for c in captions])
