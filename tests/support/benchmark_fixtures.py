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


def make_sharegpt4v(root: str, count: int = 6, extra: int = 2, seed: int = 1,
                    json_name: str = "share-captioner_coco_lcs_sam_1246k_1107.json"):
    """A ShareGPT4V-style json with `count + extra` entries; the protocol reads the first `count`.

    Each gpt answer is 'picture i shows\n\n<words>.'; expected["captions"] is it with white space collapsed,
    expected["lotlip_captions"] as LoTLIP's normalisation leaves it ('picture i shows. <words>', built here
    from the two pieces, not by running a normaliser).
    """
    rng = random.Random(seed)
    entries, paths, captions, lotlip = [], [], [], []
    for i, words in enumerate(_varied_lengths(count + extra)):
        relative = f"sam/images/sa_{i}.jpg"
        write_image(os.path.join(root, relative), rng)
        sentences = caption_text(rng, i, words)
        entries.append({"id": f"sa_{i}", "image": relative, "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image in detail."},
            {"from": "gpt", "value": sentences.replace(" shows ", " shows\n\n", 1)}]})
        paths.append(os.path.join(root, relative))
        captions.append(sentences)
        head, body = sentences[:-1].split(" shows ", 1)
        lotlip.append(f"{head} shows. {body}")
    json_path = os.path.join(root, json_name)
    with open(json_path, "w") as f:
        json.dump(entries, f)
    return json_path, root, {"image_paths": paths[:count], "captions": captions[:count],
                             "caption_image": list(range(count)), "lotlip_captions": lotlip[:count]}


def make_long_dci(root: str, count: int = 6, seed: int = 2, extra_columns=None):
    """dci_long.csv (tab-separated filepath, title); extra_columns {name: one value per row} adds columns."""
    rng = random.Random(seed)
    extra_columns = extra_columns or {}
    paths, captions, lines = [], [], ["\t".join(["filepath", "title", *extra_columns])]
    for i, words in enumerate(_varied_lengths(count)):
        relative = os.path.join("photos", f"sa_{5000 + i}.jpg")
        paths.append(os.path.join(root, relative))
        write_image(paths[-1], rng)
        captions.append(caption_text(rng, i, words))
        lines.append("\t".join([relative, captions[-1], *(str(values[i]) for values in extra_columns.values())]))
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


# ----------------------------------------------------------------------------------------------
# long-caption benchmarks in their release layouts (DOCCI, IIW, DCI annotation JSONs, COCO Karpathy)

def lotlip_pieces(rng: random.Random, index: int, count: int):
    """Caption pieces without '.', newlines or '</s>': LoTLIP's normalisation must give '. '.join(pieces)."""
    return [f"piece {index}-{n} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))
            for n in range(count)]


def join_messily(rng: random.Random, pieces) -> str:
    """The pieces joined the ways long captions are: '. ', '.\n', ' </s> ', '..', stray spaces."""
    text = pieces[0]
    for piece in pieces[1:]:
        text += rng.choice([". ", ".\n", " </s> ", "..  ", "\n\n", ".</s>"]) + piece
    return "  " + text + rng.choice([".", ". ", "\n", ""])


DOCCI_SPLITS = ("train", "test", "qual_dev", "qual_test", "test", "qual_test", "test", "train")


def make_docci(root: str, splits=DOCCI_SPLITS, seed: int = 6):
    """docci/docci_descriptions.jsonlines + docci/images/<image_file> for every split (the release holds all
    15k images in one folder). Returns (root, expected for split 'test', expected for GOAL's qual_test + test)."""
    rng = random.Random(seed)
    base = os.path.join(root, "docci")
    counters, rows = {}, []
    for split in splits:
        number = counters[split] = counters.get(split, -1) + 1
        example_id = f"{split}_{number:05d}"
        description = caption_text(rng, len(rows), rng.choice((20, 60))) + " A second sentence. And a third."
        rows.append({"example_id": example_id, "split": split, "image_file": example_id + ".jpg",
                     "description": description})
        write_image(os.path.join(base, "images", example_id + ".jpg"), rng)
    with open(os.path.join(base, "docci_descriptions.jsonlines"), "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)

    def expected(selected_splits):
        chosen = [row for split in selected_splits for row in rows if row["split"] == split]
        return {"image_paths": [os.path.join(base, "images", row["image_file"]) for row in chosen],
                "captions": [row["description"] for row in chosen], "caption_image": list(range(len(chosen)))}

    return base, expected(("test",)), expected(("qual_test", "test"))


def make_iiw(root: str, counts=(2, 3, 2), seed: int = 7):
    """imageinwords/{DOCCI_Test,IIW-400,DCI_Test}/data.jsonl (fields as google/imageinwords releases them) and
    the images where LoTLIP's data_preprocess.py puts them: docci/, docci_aar/, dci/."""
    rng = random.Random(seed)
    base = os.path.join(root, "imageinwords")
    expected = {"image_paths": [], "captions": [], "caption_image": []}
    parts = (("DOCCI_Test", "docci"), ("IIW-400", "docci_aar"), ("DCI_Test", "dci"))
    for (part, folder), count in zip(parts, counts):
        rows = []
        for n in range(count):
            pieces = lotlip_pieces(rng, len(expected["captions"]), rng.randint(1, 4))
            description = join_messily(rng, pieces)
            metrics = {"metrics/Comprehensiveness": "Neutral", "metrics/Hallucination": "Neutral"}
            if part == "DOCCI_Test":
                name = f"test_{1427 + n:05d}"  # without .jpg: LoTLIP appends it
                row = {"DOCCI": "the original DOCCI description.", "IIW": description, "image": name, **metrics}
            elif part == "IIW-400":
                name = f"aar_test_{4600 + n:05d}"
                row = {"IIW": description, "IIW-P5B": "a model description.", "image/key": name,
                       "iiw-human-sxs-gpt4v": metrics, "objects": [{"label": "Sky", "description": "blue.",
                                                                   "normalized_coords": ["0", "0", "9", "9"]}]}
            else:
                name = f"sa_{1500 + n}.jpg"
                row = {"IIW": description, "ex_id": f"sa_{1500 + n}", "image": name, **metrics}
            rows.append(row)
            file_name = name if name.endswith(".jpg") else name + ".jpg"
            expected["image_paths"].append(os.path.join(base, folder, file_name))
            write_image(expected["image_paths"][-1], rng)
            expected["captions"].append(". ".join(pieces))
            expected["caption_image"].append(len(expected["caption_image"]))
        os.makedirs(os.path.join(base, part))
        with open(os.path.join(base, part, "data.jsonl"), "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    return base, expected


def make_dci(root: str, splits=(("train", 4), ("valid", 1), ("test", 2)), unlisted: int = 1, seed: int = 8):
    """dci/densely_captioned_images/{splits.json, annotations/<id>.json, photos/sa_<id>.jpg}. One entry has an
    empty extra_caption and one has both captions empty (the peers keep them); `unlisted` annotation files (with
    their photos) are not in splits.json: LoTLIP and FLAIR never read them, FG-CLIP's folder listing does.

    Returns (root, expected LoTLIP, expected listed files with the extra caption, expected FG-CLIP, unlisted
    annotation paths). FG-CLIP's expected pairs are every annotation file in name order (its reader lists the
    folder; this project sorts the listing)."""
    rng = random.Random(seed)
    base = os.path.join(root, "dci", "densely_captioned_images")
    os.makedirs(os.path.join(base, "annotations"))
    split_lists, lotlip, extra_only, paths = {}, [], [], []
    by_file = {}  # annotation file name -> (photo path, extra caption)
    index = 0
    for split, count in splits:
        split_lists[split] = []
        for _ in range(count):
            file_name, image = f"{112956 + index}-data.json", f"sa_{1200 + index}.jpg"
            short = lotlip_pieces(rng, index, 1)
            extra = lotlip_pieces(rng, 100 + index, rng.randint(2, 4))
            short_text, extra_text = short[0] + ".", join_messily(rng, extra)
            if index == 1:
                extra, extra_text = [], ""
            if index == 2:
                short, short_text, extra, extra_text = [], " ", [], "\n"
            with open(os.path.join(base, "annotations", file_name), "w") as f:
                json.dump({"image": image, "short_caption": short_text, "extra_caption": extra_text,
                           "mask_data": {"0": {"label": "thing", "caption": "a thing."}}}, f)
            split_lists[split].append(file_name)
            paths.append(os.path.join(base, "photos", image))
            write_image(paths[-1], rng)
            lotlip.append(". ".join(short + extra))
            extra_only.append(extra_text)
            by_file[file_name] = (paths[-1], extra_text)
            index += 1
    skipped = []
    for n in range(unlisted):
        file_name, image, extra_text = f"{999000 + n}-data.json", f"sa_{9000 + n}.jpg", f"unlisted extra {n}."
        skipped.append(os.path.join(base, "annotations", file_name))
        with open(skipped[-1], "w") as f:
            json.dump({"image": image, "short_caption": "x.", "extra_caption": extra_text}, f)
        write_image(os.path.join(base, "photos", image), rng)
        by_file[file_name] = (os.path.join(base, "photos", image), extra_text)
    with open(os.path.join(base, "splits.json"), "w") as f:
        json.dump(split_lists, f)
    order = list(range(len(paths)))
    listing = sorted(by_file)
    return (os.path.join(root, "dci"),
            {"image_paths": paths, "captions": lotlip, "caption_image": order},
            {"image_paths": paths, "captions": extra_only, "caption_image": order},
            {"image_paths": [by_file[name][0] for name in listing], "captions": [by_file[name][1] for name in listing],
             "caption_image": list(range(len(listing)))},
            skipped)


def make_iiw_flair(root: str, sentences=(3, 1, 4, 2), seed: int = 10):
    """FLAIR's IIW file in its format (ExplainableML/flair@0f9ce05 datasets/imageinwords/test_annotations.json):
    {"annotations": [{"image_id", "image", "caption", "caption_id"}]}, one entry per sentence, image paths relative
    to the file's folder (docci/, docci_aar/, dci/), image_id in order of first appearance. Expected: images in
    that order, every sentence a caption of its image."""
    rng = random.Random(seed)
    base = os.path.join(root, "imageinwords-flair")
    folders = ("docci", "docci_aar", "dci", "dci")
    names = ("test_00731.jpg", "aar_test_04600.jpg", "sa_1545038.jpg", "sa_1545118.jpg")
    annotations, expected = [], {"image_paths": [], "captions": [], "caption_image": []}
    for image_id, (folder, name, count) in enumerate(zip(folders, names, sentences)):
        relative = f"{folder}/{name}"
        expected["image_paths"].append(os.path.join(base, folder, name))
        write_image(expected["image_paths"][-1], rng)
        for _ in range(count):
            caption = f"Sentence {len(annotations)} of image {image_id} shows " + " ".join(
                rng.choice(WORDS) for _ in range(rng.randint(2, 9)))
            annotations.append({"image_id": image_id, "image": relative, "caption": caption,
                                "caption_id": len(annotations)})
            expected["captions"].append(caption)
            expected["caption_image"].append(image_id)
    json_path = os.path.join(base, "test_annotations.json")
    with open(json_path, "w") as f:
        json.dump({"annotations": annotations}, f, indent=4)
    return json_path, expected


def make_coco_karpathy(root: str, seed: int = 9):
    """Karpathy's dataset_coco.json (splits train/restval/val/test, cocoids out of order, one test image with 7
    sentences), the val2014/ images of the test split, and COCO's annotations/captions_val2014.json for the val2014
    images (the test ones and the val one), its annotations interleaved across images.

    Karpathy's raw sentences repeat COCO's captions except two test captions that COCO writes differently (a
    trailing space, a double space), and one test image lists its sentences in reverse annotation order.
    Returns (json path, expected from raw, {"path": captions_val2014.json, "expected": expected from COCO's captions,
    "differing": 2})."""
    rng = random.Random(seed)
    base = os.path.join(root, "coco-karpathy")
    specs = [("train", 11, 5), ("test", 391895, 5), ("restval", 5, 5), ("test", 42, 7), ("val", 77, 5),
             ("test", 1000, 5), ("test", 9, 6)]
    differs = {(391895, 1): lambda raw: raw + " ", (42, 6): lambda raw: raw.replace(" ", "  ", 1)}
    images, coco_captions_of = [], {}
    for imgid, (split, cocoid, sentences) in enumerate(specs):
        folder = "train2014" if split == "train" else "val2014"
        filename = f"COCO_{folder}_{cocoid:012d}.jpg"
        raws = [caption_text(rng, cocoid, rng.choice((5, 11))) for _ in range(sentences)]
        if folder == "val2014":
            coco_captions_of[(cocoid, filename)] = [
                differs[(cocoid, n)](raw) if (cocoid, n) in differs else raw
                for n, raw in enumerate(raws)]
        karpathy_order = raws[::-1] if cocoid == 1000 else raws
        images.append({"filepath": folder, "filename": filename, "imgid": imgid, "split": split, "cocoid": cocoid,
                       "sentids": list(range(sentences)),
                       "sentences": [{"raw": raw, "tokens": raw.split(), "imgid": imgid, "sentid": n}
                                     for n, raw in enumerate(karpathy_order)]})
        if split == "test":
            write_image(os.path.join(base, folder, filename), rng)
    json_path = os.path.join(base, "dataset_coco.json")
    with open(json_path, "w") as f:
        json.dump({"dataset": "coco", "images": images}, f)
    coco_images = [{"id": cocoid, "file_name": filename, "height": 24, "width": 24}
                   for cocoid, filename in coco_captions_of]
    annotations = []
    for round_index in range(7):  # caption 0 of every image, then caption 1, ...: COCO's order is per annotation
        for (cocoid, _), captions in coco_captions_of.items():
            if round_index < len(captions):
                annotations.append({"image_id": cocoid, "id": 100 + len(annotations), "caption": captions[round_index]})
    captions_path = os.path.join(base, "annotations", "captions_val2014.json")
    os.makedirs(os.path.dirname(captions_path))
    with open(captions_path, "w") as f:
        json.dump({"info": {}, "licenses": [], "images": coco_images, "annotations": annotations}, f)
    test = sorted((image for image in images if image["split"] == "test"), key=lambda image: image["cocoid"])
    image_paths = [os.path.join(base, image["filepath"], image["filename"]) for image in test]
    expected = {"image_paths": image_paths,
                "captions": [s["raw"] for image in test for s in image["sentences"]],
                "caption_image": [i for i, image in enumerate(test) for _ in image["sentences"]]}
    coco_test = [coco_captions_of[(image["cocoid"], image["filename"])] for image in test]
    expected_coco = {"image_paths": image_paths, "captions": [c for captions in coco_test for c in captions],
                     "caption_image": [i for i, captions in enumerate(coco_test) for _ in captions]}
    return json_path, expected, {"path": captions_path, "expected": expected_coco, "differing": len(differs)}
