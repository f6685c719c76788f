"""`lorakit doctor DATA_DIR`: check a kohya dataset folder before training.

Reports per folder images x repeats, caption coverage, tag frequency and balance (top
tags, rare tags), exact duplicates (sha256), near duplicates (64-bit dHash, Hamming
distance <= 6, and colours that match: see below), image sizes and their buckets, and images smaller than the training
resolution. Findings are "fix" (exit code 2: no images, unreadable files, duplicates,
some images captioned and others not) or "note" (exit 0).

dHash: the image in grayscale, resized to 9 x 8 (area average); bit (row, col) is set
when pixel (row, col) is brighter than pixel (row, col + 1). Resizing or re-encoding
an image changes few of the 64 bits; different images differ in about half.

dHash sees only brightness, so a blue and a green square on the same background hash alike.
A pair is a near duplicate only when its colours match too: the image averaged to a 3 x 3 grid
of RGB cells; the colour distance is the largest RGB distance between corresponding cells (0 to
441). Measured (tests/test_doctor.py): resized, JPEG q60 and 4 %-cropped copies of smooth
pictures stay within 1.7, 1.7 and 23.6; `make demo`'s shapes whose dHash is within 6 bits are
35 or more apart (153 for its blue and green squares). The limit is 30.
"""
from __future__ import annotations

import hashlib
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .data.buckets import BucketSet
from .data.folders import read_caption, scan_folders
from .data.images import load_image_rgb

NEAR_DUPLICATE_BITS = 6
NEAR_DUPLICATE_COLOUR = 30.0


def dhash(image: Image.Image | str | Path) -> int:
    """64-bit difference hash of an image (see the module doc)."""
    im = load_image_rgb(image) if not isinstance(image, Image.Image) else image
    g = np.asarray(im.convert("L").resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    bits = (g[:, :-1] > g[:, 1:]).reshape(-1)
    return int("".join("1" if b else "0" for b in bits), 2)


def colour_grid(image: Image.Image) -> np.ndarray:
    """The image's mean colour in each cell of a 3 x 3 grid, (3, 3, 3) float."""
    return np.asarray(image.convert("RGB").resize((3, 3), Image.Resampling.BOX), dtype=np.float64)


def colour_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Largest RGB distance between corresponding cells of two colour grids."""
    return float(np.sqrt(((a - b) ** 2).sum(-1)).max())


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)  # must be fixed before training
    notes: list[str] = field(default_factory=list)
    duplicates: list[list[Path]] = field(default_factory=list)
    near_duplicates: list[tuple[Path, Path, int]] = field(default_factory=list)
    uncaptioned: list[Path] = field(default_factory=list)
    small: list[Path] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 2 if self.fixes else 0

    def render(self) -> str:
        out = list(self.lines)
        if self.fixes:
            out += ["", "MUST FIX:"] + [f"  - {f}" for f in self.fixes]
        if self.notes:
            out += ["", "Notes:"] + [f"  - {n}" for n in self.notes]
        out += ["", "OK: nothing must be fixed." if not self.fixes else f"{len(self.fixes)} problem(s) to fix."]
        return "\n".join(out)


def _names(paths: list[Path], root: Path, n: int = 8) -> str:
    shown = [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in paths[:n]]
    return ", ".join(shown) + (f" and {len(paths) - n} more" if len(paths) > n else "")


def diagnose(data_dir: str | Path, *, reg_data_dir: str | Path | None = None, caption_extension: str = ".txt",
             resolution: tuple[int, int] = (512, 512), min_bucket_reso: int = 256, max_bucket_reso: int = 1024,
             bucket_reso_steps: int = 64, rare_percent: float = 5.0, top: int = 10) -> Report:
    """Check a dataset; raises DataError when the folder layout itself is unusable."""
    root = Path(data_dir)
    idx = scan_folders(root, reg_data_dir, caption_extension)
    rep = Report()
    add = rep.lines.append
    add(f"Dataset {root}")
    for f in idx.folders:
        kind = "reg  " if f.is_reg else "train"
        add(f"  {kind} {f.name}: {f.images} images x {f.repeats} repeats = {f.images * f.repeats} samples, "
            f"{f.images - f.captions_missing}/{f.images} captioned")
    if idx.skipped:
        rep.fixes.append(f"{len(idx.skipped)} unreadable images (replace or delete them): "
                         + "; ".join(f"{p.name} ({why})" for p, why in idx.skipped))
    seen: dict[Path, None] = {}
    for it in idx._all_captioned or idx.items:
        seen.setdefault(Path(it.path), None)
    paths = list(seen)
    if not paths:
        rep.fixes.append("no images")
        return rep

    # captions
    captions = {p: read_caption(p, caption_extension) for p in paths}
    rep.uncaptioned = [p for p, c in captions.items() if c is None]
    n_cap = len(paths) - len(rep.uncaptioned)
    add(f"Captions: {n_cap}/{len(paths)} images have a {caption_extension} file")
    if rep.uncaptioned and n_cap:
        rep.fixes.append(f"{len(rep.uncaptioned)} images have no {caption_extension} caption while "
                         f"{n_cap} do (they would train on the folder name only): {_names(rep.uncaptioned, root)}")
    elif rep.uncaptioned:
        rep.notes.append(f"no image has a {caption_extension} caption: every image trains on its folder's "
                         "class tokens")
    empty = [p for p, c in captions.items() if c == ""]
    if empty:
        rep.notes.append(f"{len(empty)} caption files are empty: {_names(empty, root)}")

    _tags(rep, captions, n_cap, rare_percent, top)
    images = _duplicates(rep, paths, root)
    _sizes_and_buckets(rep, images, root, resolution, min_bucket_reso, max_bucket_reso, bucket_reso_steps)
    for wmsg in idx.warnings:
        if "unreadable" not in wmsg:
            rep.notes.append(wmsg)
    return rep


def _tags(rep: Report, captions: dict, n_cap: int, rare_percent: float, top: int) -> None:
    add = rep.lines.append
    tags: Counter[str] = Counter()
    for c in captions.values():
        if c:
            tags.update({t.strip().lower() for t in c.split(",") if t.strip()})
    if tags and n_cap:
        add(f"Tags: {len(tags)} distinct; top {min(top, len(tags))}:")
        for t, k in tags.most_common(top):
            add(f"    {k:5d}  {100 * k / n_cap:5.1f}%  {t}")
        rare = sorted(t for t, k in tags.items() if 100 * k / n_cap < rare_percent)
        if rare:
            add(f"  {len(rare)} tags are in fewer than {rare_percent:g}% of captioned images: "
                + ", ".join(rare[:15]) + (" ..." if len(rare) > 15 else ""))
        everywhere = sorted(t for t, k in tags.items() if k == n_cap)
        if everywhere and n_cap > 1:
            add(f"  in every caption: {', '.join(everywhere)}")


def _duplicates(rep: Report, paths: list[Path], root: Path) -> dict:
    """Exact and near duplicates; returns the decoded image of each distinct file."""
    by_sha: dict[str, list[Path]] = {}
    for p in paths:
        by_sha.setdefault(hashlib.sha256(p.read_bytes()).hexdigest(), []).append(p)
    rep.duplicates = [g for g in by_sha.values() if len(g) > 1]
    for g in rep.duplicates:
        rep.fixes.append(f"exact duplicates: {_names(g, root)} (keep one)")
    firsts = [g[0] for g in by_sha.values()]
    images = {p: load_image_rgb(p) for p in firsts}
    hashes = {p: dhash(images[p]) for p in firsts}
    colours = {p: colour_grid(images[p]) for p in firsts}
    for i, a in enumerate(firsts):
        for b in firsts[i + 1:]:
            d = hamming(hashes[a], hashes[b])
            if d <= NEAR_DUPLICATE_BITS:
                c = colour_distance(colours[a], colours[b])
                if c > NEAR_DUPLICATE_COLOUR:  # same shapes and light, other colours: not a copy
                    continue
                rep.near_duplicates.append((a, b, d))
                rep.fixes.append(f"near duplicates ({d}/64 dHash bits differ, colours within {c:.0f}/441): "
                                 f"{_names([a, b], root)} (resized or re-encoded copies; keep one)")
    return images


def _sizes_and_buckets(rep: Report, images: dict, root: Path, resolution: tuple[int, int], min_bucket_reso: int,
                       max_bucket_reso: int, bucket_reso_steps: int) -> None:
    add = rep.lines.append
    sizes = {p: im.size for p, im in images.items()}
    shorts = sorted(min(s) for s in sizes.values())
    add(f"Sizes: short side min {shorts[0]}, median {int(statistics.median(shorts))}, max {shorts[-1]}")
    w, h = resolution
    rep.small = [p for p, (iw, ih) in sizes.items() if iw * ih < w * h]
    if rep.small:
        rep.notes.append(f"{len(rep.small)} images are smaller than the training resolution {w}x{h} "
                         f"(they are upscaled, which blurs them): {_names(rep.small, root)}")
    buckets = BucketSet(resolution, min_reso=min_bucket_reso, max_reso=max_bucket_reso, steps=bucket_reso_steps)
    counts = Counter(buckets.place(s).bucket for s in sizes.values())
    add(f"Buckets at {w}x{h} (enable_bucket): " + ", ".join(f"{bw}x{bh}: {k}" for (bw, bh), k in sorted(counts.items())))
    single = [f"{bw}x{bh}" for (bw, bh), k in counts.items() if k == 1]
    if single and len(counts) > 1:
        rep.notes.append(f"buckets with a single image: {', '.join(sorted(single))} "
                         "(batches of one there whatever the batch size)")
