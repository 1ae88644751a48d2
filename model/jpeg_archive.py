#!/usr/bin/env python3
"""Rebuild the CIFAR binary layout (jpeg75/data_batch_1..5.bin, test_batch.bin) from the 19.6 MB JPEG
archive, so that `train.py --data OUT` runs on a machine the 184 MB binaries cannot be carried to (a
GPU lease). Pixels come within a unit or two of ../shared/data/cifar10/jpeg75 (another JPEG decoder);
the record order is not the original one (the archive keeps only the order within each class), so
records go class by class in turn: image k of every class, then image k+1.

    python model/jpeg_archive.py ../shared/data/cifar10/cifar10-jpeg75.tar.gz /tmp/cifar10
"""

import argparse
import io
import os
import tarfile

import numpy as np
from PIL import Image

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def read_archive(path):
    """{split: {class index: {image index: CHW uint8}}} from train/<class>/NNNN.jpg entries."""
    out = {"train": {}, "test": {}}
    with tarfile.open(path) as tar:
        for m in tar:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) != 3 or parts[0] not in out or parts[1] not in CLASSES:
                continue
            with Image.open(io.BytesIO(tar.extractfile(m).read())) as im:
                px = np.asarray(im.convert("RGB"), dtype=np.uint8)
            if px.shape != (32, 32, 3):
                raise ValueError(f"{m.name}: {px.shape[1]}x{px.shape[0]}, expected 32x32")
            out[parts[0]].setdefault(CLASSES.index(parts[1]), {})[int(parts[2].split(".")[0])] = px.transpose(2, 0, 1)
    return out


def records(by_class):
    """3073-byte records, image k of each class in turn."""
    depth = max(len(v) for v in by_class.values())
    rows = []
    for k in range(depth):
        for c in sorted(by_class):
            if k in by_class[c]:
                rows.append(np.concatenate([[c], by_class[c][k].reshape(-1)]).astype(np.uint8))
    return np.stack(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("archive")
    ap.add_argument("out", help="folder that receives jpeg75/*.bin (give it to train.py as --data)")
    args = ap.parse_args()
    data = read_archive(args.archive)
    os.makedirs(os.path.join(args.out, "jpeg75"), exist_ok=True)
    train = records(data["train"])
    for i, chunk in enumerate(np.array_split(train, 5), start=1):
        chunk.tofile(os.path.join(args.out, "jpeg75", f"data_batch_{i}.bin"))
    records(data["test"]).tofile(os.path.join(args.out, "jpeg75", "test_batch.bin"))
    print(f"{len(train)} training and {sum(map(len, data['test'].values()))} test images in {args.out}/jpeg75")


if __name__ == "__main__":
    main()
