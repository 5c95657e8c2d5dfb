"""Build the manifest ``imagenet_val.csv`` for ImageNet's flat validation folder.

ImageNet's 50,000 validation images come as one flat folder (``ILSVRC2012_val_00000001.JPEG``
...) and a label file; torchvision's and timm's ImageNet models number the 1,000 classes by the
sorted WordNet ids (``n01440764`` is 0). This script writes one row per image with the class
index (``label``) and the WordNet id (``wnid``, kept as a metadata column), reading either label
file ImageNet ships:

* ``LOC_val_solution.csv`` (Kaggle's ImageNet download): ``ImageId,PredictionString``, the
  WordNet id first in the prediction string; or
* Caffe's ``val.txt`` (``ILSVRC2012_val_00000001.JPEG 65`` per line), whose indices already
  follow the sorted WordNet ids. (The devkit's ``ILSVRC2012_validation_ground_truth.txt`` does
  not: its ids follow ``meta.mat``'s order, another numbering — convert it with the devkit.)

Usage (no reportgen import; standard library only):

    python sample_configs/imagenet_val_manifest.py --solution LOC_val_solution.csv \\
        --out imagenet_val.csv
    python sample_configs/imagenet_val_manifest.py --caffe-val val.txt --out imagenet_val.csv

then ``reportgen run --config sample_configs/imagenet_val_manifest.yaml``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def from_solution(solution: Path) -> list[tuple[str, str]]:
    """(image file name, WordNet id) from Kaggle's LOC_val_solution.csv."""
    rows = []
    with solution.open(newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            rows.append((row["ImageId"] + ".JPEG", row["PredictionString"].split()[0]))
    return sorted(rows)


def from_caffe_val(val: Path) -> list[tuple[str, int]]:
    """(image file name, class index) from Caffe's val.txt (indices in sorted-WordNet-id order)."""
    rows = []
    for line in val.read_text(encoding="utf-8").splitlines():
        if line.strip():
            name, index = line.split()
            rows.append((name, int(index)))
    return sorted(rows)


def indexed(rows: list[tuple[str, str]]) -> list[tuple[str, int, str]]:
    """path, label, wnid: label = the WordNet id's position among the sorted ids."""
    index = {wnid: i for i, wnid in enumerate(sorted({w for _, w in rows}))}
    if len(index) != 1000:
        print(f"note: {len(index)} classes in the label file (ImageNet has 1000)")
    return [(name, index[wnid], wnid) for name, wnid in rows]


def write_manifest(rows: list[tuple[str, int, str]], out: Path) -> None:
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "label", "wnid"])
        w.writerows(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--solution", type=Path, help="LOC_val_solution.csv")
    p.add_argument("--caffe-val", type=Path, help="Caffe's val.txt (file name, class index)")
    p.add_argument("--out", type=Path, default=Path("imagenet_val.csv"))
    a = p.parse_args()
    if a.solution:
        rows = indexed(from_solution(a.solution))
    elif a.caffe_val:
        rows = [(name, index, "") for name, index in from_caffe_val(a.caffe_val)]
    else:
        p.error("give --solution or --caffe-val")
    write_manifest(rows, a.out)
    print(f"{a.out}: {len(rows)} images")


if __name__ == "__main__":
    main()
