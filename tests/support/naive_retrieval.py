"""Reference recall computation for the tests: full similarity matrix, Python sorting, no chunks."""


def naive_rank(scores, is_positive):
    """Position of the first positive after sorting by score, ties broken with negatives first."""
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], is_positive[j]))
    return next(position for position, j in enumerate(order) if is_positive[j])


def naive_metrics(similarity, caption_image, ks=(1, 5, 10)):
    """Recall@k from a full similarity matrix (images x captions) with plain Python loops."""
    sim = similarity.tolist()
    num_images, num_captions = len(sim), len(sim[0])
    image_ranks = [naive_rank(sim[i], [caption_image[c] == i for c in range(num_captions)])
                   for i in range(num_images)]
    text_ranks = [naive_rank([sim[i][c] for i in range(num_images)], [caption_image[c] == i for i in range(num_images)])
                  for c in range(num_captions)]
    metrics = {}
    for direction, ranks in (("image_to_text", image_ranks), ("text_to_image", text_ranks)):
        for k in ks:
            metrics[f"{direction}_R@{k}"] = 100.0 * sum(r < k for r in ranks) / len(ranks)
    return metrics, image_ranks, text_ranks
