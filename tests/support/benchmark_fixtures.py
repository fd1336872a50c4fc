"""Tiny copies of every evaluation benchmark in its exact on-disk layout, generated in a tmp folder.

Each builder returns what a correct reader must produce (image paths, captions, caption->image),
built here from the generator's own bookkeeping, not by reading the files back.
"""
import json
import os
import random

from PIL import Image

WORDS = ("red blue green small large wooden metal dog cat car tree house river street window light "
         "shadow person child table chair sky cloud road sign door wall roof grass stone boat").split()


def caption_text(rng: random.Random, index: int, words: int) -> str:
    return f"picture {index} shows " + " ".join(rng.choice(WORDS) for _ in range(words)) + "."


def write_image(path: str, rng: random.Random, size: int = 24) -> None:
    """A small image of random coloured blocks, so different files give different embeddings."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.new("RGB", (size, size))
    block = size // 4
    for x in range(0, size, block):
        for y in range(0, size, block):
            image.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + block, y + block))
    image.save(path)


def _varied_lengths(count: int):
    """Caption word counts spread over every length bucket (short, > 77, > 154, > 248 tokens)."""
    cycle = (6, 90, 170, 260)
    return [cycle[i % len(cycle)] for i in range(count)]


def make_urban1k(root: str, count: int = 8, seed: int = 0):
    rng = random.Random(seed)
    base = os.path.join(root, "Urban1k")
    paths, captions = [], []
    for i, words in enumerate(_varied_lengths(count)):
        name = f"{100 + i}"
        paths.append(os.path.join(base, "image", name + ".jpg"))
        write_image(paths[-1], rng)
        captions.append(caption_text(rng, i, words))
        os.makedirs(os.path.join(base, "caption"), exist_ok=True)
        with open(os.path.join(base, "caption", name + ".txt"), "w") as f:
            f.write(captions[-1] + "\nsecond line that the protocol ignores\n")
    return base, {"image_paths": paths, "captions": captions, "caption_image": list(range(count))}


def make_sharegpt4v(root: str, count: int = 6, extra: int = 2, seed: int = 1):
    """A ShareGPT4V-style json with `count + extra` entries; the protocol reads the first `count`."""
    rng = random.Random(seed)
    entries, paths, captions = [], [], []
    for i, words in enumerate(_varied_lengths(count + extra)):
        relative = f"sam/images/sa_{i}.jpg"
        write_image(os.path.join(root, relative), rng)
        sentences = caption_text(rng, i, words)
        entries.append({"id": f"sa_{i}", "image": relative, "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image in detail."},
            {"from": "gpt", "value": sentences.replace(" shows ", " shows\n\n", 1)}]})
        paths.append(os.path.join(root, relative))
        captions.append(sentences)
    json_path = os.path.join(root, "share-captioner_coco_lcs_sam_1246k_1107.json")
    with open(json_path, "w") as f:
        json.dump(entries, f)
    return json_path, root, {"image_paths": paths[:count], "captions": captions[:count],
                             "caption_image": list(range(count))}


def make_long_dci(root: str, count: int = 6, seed: int = 2):
    rng = random.Random(seed)
    paths, captions, lines = [], [], ["filepath\ttitle"]
    for i, words in enumerate(_varied_lengths(count)):
        relative = os.path.join("photos", f"sa_{5000 + i}.jpg")
        paths.append(os.path.join(root, relative))
        write_image(paths[-1], rng)
        captions.append(caption_text(rng, i, words))
        lines.append(f"{relative}\t{captions[-1]}")
    csv_path = os.path.join(root, "dci_long.csv")
    with open(csv_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return csv_path, {"image_paths": paths, "captions": captions, "caption_image": list(range(count))}


def make_coco(root: str, image_ids=(42, 7, 19, 3), seed: int = 3):
    """COCO val2017 layout. Image ids out of order in the file; the first image gets 6 captions (the
    protocol keeps 5) and annotations are interleaved across images."""
    rng = random.Random(seed)
    base = os.path.join(root, "coco")
    images = [{"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": 24, "width": 24}
              for image_id in image_ids]
    captions_of = {image_id: [caption_text(rng, image_id, rng.choice((5, 12)))
                              for _ in range(6 if n == 0 else 5)] for n, image_id in enumerate(image_ids)}
    annotations, annotation_id = [], 1
    for round_index in range(6):  # interleave: caption 0 of every image, then caption 1, ...
        for image_id in image_ids:
            if round_index < len(captions_of[image_id]):
                annotations.append({"image_id": image_id, "id": annotation_id,
                                    "caption": captions_of[image_id][round_index]})
                annotation_id += 1
    for image in images:
        write_image(os.path.join(base, "val2017", image["file_name"]), rng)
    os.makedirs(os.path.join(base, "annotations"))
    with open(os.path.join(base, "annotations", "captions_val2017.json"), "w") as f:
        json.dump({"info": {}, "licenses": [], "images": images, "annotations": annotations}, f)
    expected = {"image_paths": [], "captions": [], "caption_image": []}
    for index, image_id in enumerate(sorted(image_ids)):
        expected["image_paths"].append(os.path.join(base, "val2017", f"{image_id:012d}.jpg"))
        expected["captions"] += captions_of[image_id][:5]
        expected["caption_image"] += [index] * 5
    return base, expected


def make_flickr30k(root: str, splits=("train", "test", "val", "test", "test"), seed: int = 4):
    """flickr30k-images/ plus all three caption files: Karpathy's json (only 'test' images count for
    the 1k protocol), results_20130124.token and the Kaggle results.csv (every image counts)."""
    rng = random.Random(seed)
    image_dir = os.path.join(root, "flickr30k-images")
    names = [f"{1000092795 + 11 * i}.jpg" for i in range(len(splits))]
    captions_of = {name: [caption_text(rng, i, rng.choice((5, 14))) for _ in range(5)]
                   for i, name in enumerate(names)}
    for name in names:
        write_image(os.path.join(image_dir, name), rng)
    karpathy = {"dataset": "flickr30k", "images": [
        {"filename": name, "imgid": i, "split": split, "sentids": list(range(5 * i, 5 * i + 5)),
         "sentences": [{"raw": c, "tokens": c.split(), "imgid": i, "sentid": 5 * i + n}
                       for n, c in enumerate(captions_of[name])]}
        for i, (name, split) in enumerate(zip(names, splits))]}
    karpathy_path = os.path.join(root, "dataset_flickr30k.json")
    with open(karpathy_path, "w") as f:
        json.dump(karpathy, f)
    token_path = os.path.join(root, "results_20130124.token")
    with open(token_path, "w") as f:
        f.writelines(f"{name}#{n}\t{c}\n" for name in names for n, c in enumerate(captions_of[name]))
    csv_path = os.path.join(root, "results.csv")
    csv_lines = ["image_name| comment_number| comment"]
    csv_lines += [f"{name}| {n}| {c}" for name in names for n, c in enumerate(captions_of[name])]
    csv_lines[3] = csv_lines[3].replace("| 2| ", "| 2   ")  # the Kaggle copy's row without its second '|'
    with open(csv_path, "w") as f:
        f.write("\n".join(csv_lines) + "\n")

    def expected_for(selected_names):
        return {"image_paths": [os.path.join(image_dir, n) for n in selected_names],
                "captions": [c for n in selected_names for c in captions_of[n]],
                "caption_image": [i for i in range(len(selected_names)) for _ in range(5)]}

    test_names = [n for n, split in zip(names, splits) if split == "test"]
    return {"image_dir": image_dir, "karpathy": karpathy_path, "token": token_path, "csv": csv_path,
            "expected_karpathy": expected_for(test_names), "expected_full": expected_for(names)}


# three real ImageNet-1k wnids and their open_clip class names (class indices 0, 1, 2)
IMAGENET_WNIDS = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}


def make_imagenet(root: str, per_class: int = 2, seed: int = 5):
    rng = random.Random(seed)
    base = os.path.join(root, "imagenet", "val")
    paths, labels = [], []
    for label, wnid in enumerate(sorted(IMAGENET_WNIDS)):
        for n in range(per_class):
            paths.append(os.path.join(base, wnid, f"ILSVRC2012_val_{label * per_class + n:08d}.JPEG"))
            write_image(paths[-1], rng)
            labels.append(label)
    return base, {"image_paths": paths, "labels": labels,
                  "classnames": [IMAGENET_WNIDS[w] for w in sorted(IMAGENET_WNIDS)]}
