"""Tiny fake copies of the official CUB-200-2011, Cars196 and SOP downloads, in their exact layout.

Each writer puts the files a user would download into `manual_dir` and returns the list of images
it wrote as `FakeImage` records (the expected contents of the prepared dataset).
"""

from __future__ import annotations

import dataclasses
import io
import os
import tarfile
import zipfile

import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class FakeImage:
    path: str  # as stored in the TFDS 'image/filename' feature
    class_id: int  # the official 1-based class id
    height: int
    width: int
    split: str  # 'train' or 'test' under the DML protocol
    bbox: tuple[int, int, int, int] | None = None  # Cars196: 1-based inclusive (x1, y1, x2, y2)


def encode(pixels: np.ndarray, fmt: str = "JPEG", mode: str | None = None) -> bytes:
    """`pixels` (uint8 [H, W, 3] or [H, W]) encoded as `fmt`, converted to `mode` first if given."""
    img = Image.fromarray(pixels)
    if mode is not None:
        img = img.convert(mode)
    out = io.BytesIO()
    img.save(out, format=fmt, quality=95) if fmt == "JPEG" else img.save(out, format=fmt)
    return out.getvalue()


def smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3]: coarse random colours upsampled bicubically plus mild noise (photo-like
    JPEG sizes and decode costs, unlike pure noise)."""
    coarse = Image.fromarray(rng.integers(0, 256, (max(height // 32, 2), max(width // 32, 2), 3), dtype=np.uint8))
    base = np.asarray(coarse.resize((width, height), Image.BICUBIC), np.int16)
    noise = rng.integers(-8, 9, (height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _size(rng: np.random.Generator, size: tuple[int, int] | None) -> tuple[int, int]:
    return size if size is not None else (int(rng.integers(20, 41)), int(rng.integers(20, 41)))


def _write_tar(path: str, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _write_tree(root: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


CUB_NAMES = {
    1: "Black_footed_Albatross", 2: "Laysan_Albatross", 3: "Sooty_Albatross", 100: "Brown_Pelican",
    101: "White_Pelican", 102: "Western_Wood_Pewee", 150: "Sage_Thrasher", 200: "Common_Yellowthroat",
}


def write_cub200(
    manual_dir: str, per_class: dict[int, int], archive: bool = True, seed: int = 0, size: tuple[int, int] | None = None
) -> list[FakeImage]:
    """CUB_200_2011.tgz (or the extracted CUB_200_2011/ folder): images/NNN.Name/Name_XXXX_YYYY.jpg,
    images.txt, image_class_labels.txt, classes.txt, train_test_split.txt, and the top-level
    attributes.txt of the archive. The first image of class 2 is a grayscale JPEG."""
    rng = np.random.default_rng(seed)
    files, images, image_id = {}, [], 0
    lines = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": []}
    for class_id, count in sorted(per_class.items()):
        folder = f"{class_id:03d}.{CUB_NAMES.get(class_id, f'Bird_{class_id}')}"
        for k in range(count):
            image_id += 1
            h, w = _size(rng, size)
            name = f"{folder}/{folder[4:]}_{k + 1:04d}_{int(rng.integers(1000, 999999))}.jpg"
            mode = "L" if (class_id, k) == (2, 0) else None
            files[f"CUB_200_2011/images/{name}"] = encode(smooth_image(rng, h, w), mode=mode)
            lines["images.txt"].append(f"{image_id} {name}")
            lines["image_class_labels.txt"].append(f"{image_id} {class_id}")
            lines["train_test_split.txt"].append(f"{image_id} {k % 2}")
            split = "train" if class_id <= 100 else "test"
            images.append(FakeImage(f"CUB_200_2011/images/{name}", class_id, h, w, split))
    for name, text in lines.items():
        files[f"CUB_200_2011/{name}"] = ("\n".join(text) + "\n").encode()
    classes = [f"{c} {c:03d}.{CUB_NAMES.get(c, f'Bird_{c}')}" for c in range(1, 201)]
    files["CUB_200_2011/classes.txt"] = ("\n".join(classes) + "\n").encode()
    files["CUB_200_2011/README"] = b"fake CUB-200-2011\n"
    files["attributes.txt"] = b"1 has_bill_shape::curved_(up_or_down)\n"
    os.makedirs(manual_dir, exist_ok=True)
    if archive:
        _write_tar(os.path.join(manual_dir, "CUB_200_2011.tgz"), files)
    else:
        _write_tree(manual_dir, {k: v for k, v in files.items() if k.startswith("CUB_200_2011/")})
    return images


def write_cars196(
    manual_dir: str, per_class: dict[int, int], archive: bool = True, seed: int = 0, size: tuple[int, int] | None = None
) -> list[FakeImage]:
    """car_ims.tgz (or the extracted car_ims/ folder) with car_ims/NNNNNN.jpg, and cars_annos.mat
    (scipy.io.savemat) with the official fields: annotations (1 x N struct array: relative_im_path,
    bbox_x1, bbox_y1, bbox_x2, bbox_y2, class, test) and class_names (1 x 196 cell). Image 2 is a CMYK
    JPEG."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    rows, files, images = [], {}, []
    for class_id, count in sorted(per_class.items()):
        for _ in range(count):
            index = len(rows) + 1
            h, w = _size(rng, size)
            path = f"car_ims/{index:06d}.jpg"
            files[path] = encode(smooth_image(rng, h, w), mode="CMYK" if index == 2 else None)
            x1, y1 = int(rng.integers(1, w // 2)), int(rng.integers(1, h // 2))
            x2, y2 = int(rng.integers(w // 2, w + 1)), int(rng.integers(h // 2, h + 1))
            rows.append((path, x1, y1, x2, y2, class_id, index % 2))
            images.append(FakeImage(path, class_id, h, w, "train" if class_id <= 98 else "test", (x1, y1, x2, y2)))
    annotations = np.zeros((1, len(rows)), dtype=[(f, object) for f in fields])
    for k, (path, x1, y1, x2, y2, class_id, test) in enumerate(rows):
        annotations[0, k] = (
            np.array([path]),
            *(np.array([[v]], np.uint16) for v in (x1, y1, x2, y2)),
            np.array([[class_id]], np.uint8),
            np.array([[test]], np.uint8),
        )
    class_names = np.empty((1, 196), dtype=object)
    for c in range(196):
        class_names[0, c] = np.array([f"Make Model {c + 1} 2012"])
    os.makedirs(manual_dir, exist_ok=True)
    savemat(os.path.join(manual_dir, "cars_annos.mat"), {"annotations": annotations, "class_names": class_names})
    if archive:
        _write_tar(os.path.join(manual_dir, "car_ims.tgz"), files)
    else:
        _write_tree(manual_dir, files)
    return images


SOP_SUPER = ("bicycle", "cabinet", "chair", "coffee_maker", "fan", "kettle", "lamp", "mug", "sofa", "stapler", "table", "toaster")


def write_sop(
    manual_dir: str,
    per_class: dict[int, int],
    super_class: dict[int, int],
    archive: bool = True,
    seed: int = 0,
    size: tuple[int, int] | None = None,
) -> list[FakeImage]:
    """Stanford_Online_Products.zip (or the folder): <super>_final/<product>_<k>.JPG images,
    Ebay_train.txt (classes <= 11318), Ebay_test.txt (the others) and Ebay_info.txt, each with the
    header `image_id class_id super_class_id path`. The second image is a PNG named .JPG."""
    rng = np.random.default_rng(seed)
    files, images = {}, []
    lines = {"train": [], "test": []}
    info = []
    for class_id, count in sorted(per_class.items()):
        split = "train" if class_id <= 11318 else "test"
        sc = super_class[class_id]
        product = 111085122871 + class_id
        for k in range(count):
            h, w = _size(rng, size)
            rel = f"{SOP_SUPER[sc - 1]}_final/{product}_{k}.JPG"
            fmt = "PNG" if len(images) == 1 else "JPEG"
            files[f"Stanford_Online_Products/{rel}"] = encode(smooth_image(rng, h, w), fmt=fmt)
            lines[split].append(f"{len(lines[split]) + 1} {class_id} {sc} {rel}")
            info.append(f"{len(info) + 1} {class_id} {sc} {rel}")
            images.append(FakeImage(f"Stanford_Online_Products/{rel}", class_id, h, w, split))
    header = "image_id class_id super_class_id path"
    for split, name in (("train", "Ebay_train.txt"), ("test", "Ebay_test.txt")):
        files[f"Stanford_Online_Products/{name}"] = ("\n".join([header, *lines[split]]) + "\n").encode()
    files["Stanford_Online_Products/Ebay_info.txt"] = ("\n".join([header, *info]) + "\n").encode()
    files["Stanford_Online_Products/README"] = b"fake Stanford Online Products\n"
    os.makedirs(manual_dir, exist_ok=True)
    if archive:
        with zipfile.ZipFile(os.path.join(manual_dir, "Stanford_Online_Products.zip"), "w") as z:
            for name, data in files.items():
                z.writestr(name, data)
    else:
        _write_tree(manual_dir, files)
    return images
