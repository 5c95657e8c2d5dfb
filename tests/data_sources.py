"""The same images as every data source reportgen reads, written independently of reportgen.

Each writer takes an ImageFolder tree (class folders named after their index) and writes one
other source holding the same files in the same order (class folder, then file name — the order
the folder scan gives), with two metadata columns (``site``, ``note``) derived from the index.
Nothing here imports reportgen: the sources are what other tools (pandas, pyarrow, the
``datasets`` library, ``tarfile``) write.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

SITES = ("A", "B", "C")


def folder_rows(root: Path) -> list[tuple[str, int, bytes]]:
    """(relative path, class index, bytes) in the folder scan's order."""
    rows = []
    for cls in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name):
        for f in sorted(cls.iterdir(), key=lambda p: p.name):
            rows.append((f"{cls.name}/{f.name}", int(cls.name), f.read_bytes()))
    return rows


def metadata(i: int) -> dict[str, str]:
    """Metadata for row ``i``: a site, and a note with the characters CSV must quote."""
    note = ["plain", 'comma, "quoted"', "ünïcode ✓", ""][i % 4]
    return {"site": SITES[i % 3], "note": note}


def write_csv(root: Path, out: Path, delimiter: str = ",") -> Path:
    import csv

    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(["path", "label", "site", "note"])
        for i, (rel, label, _) in enumerate(folder_rows(root)):
            m = metadata(i)
            w.writerow([rel, label, m["site"], m["note"]])
    return out


def write_jsonl(root: Path, out: Path) -> Path:
    with out.open("w", encoding="utf-8") as f:
        for i, (rel, label, _) in enumerate(folder_rows(root)):
            f.write(json.dumps({"path": rel, "label": label, **metadata(i)}) + "\n")
    return out


def _hf_dataset(root: Path, names: list[str], meta: tuple[str, ...]) -> object:
    """A ``datasets.Dataset`` with ``Image`` and ``ClassLabel`` features and ``meta`` columns."""
    import datasets

    rows = folder_rows(root)
    features = {"image": datasets.Image(), "label": datasets.ClassLabel(names=names)}
    features.update({m: datasets.Value("string") for m in meta})
    columns = {
        "image": [{"bytes": data, "path": rel} for rel, _, data in rows],
        "label": [label for _, label, _ in rows],
        **{m: [metadata(i)[m] for i in range(len(rows))] for m in meta},
    }
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def write_parquet_with_bytes(root: Path, out: Path, names: list[str]) -> Path:
    """A Hugging Face-style Parquet file (``Image`` + ``ClassLabel`` features) via ``datasets``."""
    _hf_dataset(root, names, ("site", "note")).to_parquet(str(out))  # type: ignore[attr-defined]
    return out


def write_save_to_disk(root: Path, out: Path, names: list[str]) -> Path:
    _hf_dataset(root, names, ("site",)).save_to_disk(str(out))  # type: ignore[attr-defined]
    return out


def write_shards(root: Path, out: Path, shards: int = 4) -> list[Path]:
    """WebDataset shards ``val-000000.tar`` ...: ``KEY.png``, ``KEY.cls``, ``KEY.json``."""
    out.mkdir(parents=True, exist_ok=True)
    rows = folder_rows(root)
    per = -(-len(rows) // shards)
    paths = []
    for s in range(shards):
        path = out / f"val-{s:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(s * per, min((s + 1) * per, len(rows))):
                rel, label, data = rows[i]
                key = rel.rsplit(".", 1)[0]
                for ext, payload in (
                    ("png", data),
                    ("cls", str(label).encode()),
                    ("json", json.dumps(metadata(i)).encode()),
                ):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        paths.append(path)
    return paths
