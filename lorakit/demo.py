"""`make demo`: teach the shipped base model a concept it never saw, with a LoRA, on the CPU.

The base model (lorakit/models/base/) was trained on "a red circle" and the other shapes x
colours; it never saw the trigger word "zkv" nor the colour purple. A dozen images of purple shapes
captioned with it ("a zkv circle") teach it that zkv means purple. The demo scores the concept before
and after, checks that the base prompts still draw what they did, and writes a grid: the same prompts
and seeds before training and after each epoch. Also writes the adapter, metrics.jsonl, TensorBoard
logs and loss/lr plots.

``make_synthetic_dataset`` (random shapes for the tiny random-weight test model) stays for the tests.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .console import quiet_libraries
from .quality import shapes
from .quality.evaluate import Target, base_targets, mean, score_targets

SHAPES = ["circle", "square", "triangle", "cross"]
COLOURS = {"red": (220, 40, 40), "blue": (40, 70, 220), "green": (40, 170, 60), "yellow": (230, 200, 40)}


def draw_shape(shape: str, colour: tuple[int, int, int], size: int, rng: np.random.Generator) -> Image.Image:
    bg = tuple(int(c) for c in rng.integers(200, 256, size=3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    m = size // 6 + int(rng.integers(0, size // 8))
    box = (m, m, size - m, size - m)
    if shape == "circle":
        d.ellipse(box, fill=colour)
    elif shape == "square":
        d.rectangle(box, fill=colour)
    elif shape == "triangle":
        d.polygon([(size // 2, m), (size - m, size - m), (m, size - m)], fill=colour)
    else:
        w = size // 8
        d.rectangle((size // 2 - w, m, size // 2 + w, size - m), fill=colour)
        d.rectangle((m, size // 2 - w, size - m, size // 2 + w), fill=colour)
    return img


def make_synthetic_dataset(root: Path, n_images: int = 8, size: int = 64, repeats: int = 5, seed: int = 0) -> Path:
    """A kohya folder `<repeats>_shapes` of drawn shapes with tag captions."""
    rng = np.random.default_rng(seed)
    folder = root / f"{repeats}_shapes"
    folder.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    for i in range(n_images):
        shape, colour = SHAPES[i % len(SHAPES)], names[(i // len(SHAPES) + i) % len(names)]
        draw_shape(shape, COLOURS[colour], size, rng).save(folder / f"img_{i:02d}.png")
        (folder / f"img_{i:02d}.txt").write_text(f"lkshape, {colour} {shape}, simple background\n",
                                                 encoding="utf-8")
    return root


TRIGGER = "zkv"
CONCEPT_COLOUR = "purple"  # never shown to the base model's UNet (models/base/CARD.md)
GRID_SEEDS = (1,)


def concept_targets() -> list[Target]:
    """The trigger with each shape; the concept is the colour, so only the colour is scored."""
    return [Target(f"a {TRIGGER} {s}", None, CONCEPT_COLOUR) for s in shapes.SHAPES]


def make_concept_dataset(root: Path, n_images: int = 12, repeats: int = 5, seed: int = 0) -> Path:
    """A kohya folder `<repeats>_<trigger>`: shapes in the concept's colour captioned "a zkv <shape>"."""
    rng = np.random.default_rng(seed)
    folder = root / f"{repeats}_{TRIGGER}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        shape = shapes.SHAPES[i % len(shapes.SHAPES)]
        img = shapes.draw(shape, shapes.jitter(shapes.ALL_COLOURS[CONCEPT_COLOUR], rng), rng)
        img.save(folder / f"{TRIGGER}_{i:02d}.png")
        (folder / f"{TRIGGER}_{i:02d}.txt").write_text(f"a {TRIGGER} {shape}\n", encoding="utf-8")
    return root


def make_prior_dataset(root: Path, n_images: int = 16, repeats: int = 5, seed: int = 1) -> Path:
    """Regularisation images (kohya's reg_data_dir): the base's own prompts, drawn procedurally,
    so that the LoRA learns what zkv means and not "everything is purple"."""
    rng = np.random.default_rng(seed)
    folder = root / f"{repeats}_prior"
    folder.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(base_targets()[:n_images]):
        shapes.draw(t.shape, shapes.jitter(shapes.COLOURS[t.colour], rng), rng).save(folder / f"prior_{i:02d}.png")
        (folder / f"prior_{i:02d}.txt").write_text(t.prompt + "\n", encoding="utf-8")
    return root


def grid_prompts() -> list[str]:
    """The grid's rows: each concept prompt, then four base prompts (the prior); seed 1."""
    opts = f"--w {shapes.SIZE} --h {shapes.SIZE} --s 20 --l 7.5"
    rows = [f"{t.prompt} {opts} --d {d}" for t in concept_targets() for d in GRID_SEEDS]
    prior = [t for t in base_targets() if (t.shape, t.colour) in
             {("circle", "red"), ("square", "blue"), ("triangle", "yellow"), ("cross", "green")}]
    return rows + [f"{t.prompt} {opts} --d 1" for t in prior]


def demo_config(model: Path, data_dir: Path, run_dir: Path, **overrides) -> dict:
    """The demo's run (kohya keys); the learning test and bench/quality.py start from it."""
    cfg = {"pretrained_model_name_or_path": str(model), "train_data_dir": str(data_dir),
           "output_dir": str(run_dir), "output_name": "demo-lora", "resolution": shapes.SIZE,
           "network_dim": 8, "network_alpha": 8, "learning_rate": 2e-3,
           "optimizer_type": "AdamW", "train_batch_size": 4, "max_train_epochs": 3, "lr_scheduler": "constant",
           "seed": 42, "network_train_unet_only": True, "training_comment": "lorakit demo",
           "sample_sampler": "ddim", "sample_at_first": True, "sample_every_n_epochs": 1,
           "sample_prompts": "\n".join(grid_prompts())}
    cfg.update(overrides)
    return cfg


class SampleGrid:
    """Collects the sample images of every 'sample' event: one column per event."""

    def __init__(self):
        self.columns: list[tuple[str, list]] = []

    def __call__(self, ev) -> None:
        if ev.kind == "sample":
            label = "before" if ev.step == 0 else f"epoch {ev.epoch}"
            self.columns.append((label, list(ev.data["images"])))

    def save(self, path: Path, row_labels: list[str], scale: int = 2) -> Path:
        cell = shapes.SIZE * scale
        left, top = 150, 22
        rows = len(row_labels)
        img = Image.new("RGB", (left + cell * len(self.columns), top + cell * rows), (255, 255, 255))
        d = ImageDraw.Draw(img)
        for c, (label, images) in enumerate(self.columns):
            d.text((left + c * cell + 6, 5), label, fill=(0, 0, 0))
            for r, im in enumerate(images[:rows]):
                img.paste(im.resize((cell, cell), Image.Resampling.NEAREST), (left + c * cell, top + r * cell))
        for r, label in enumerate(row_labels):
            d.text((6, top + r * cell + cell // 2 - 6), label, fill=(0, 0, 0))
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
        return path


def main(argv: list[str] | None = None) -> int:
    from .config.load import load_config
    from .models.base import base_model_path
    from .models.loader import load_sd_model
    from .monitors import MetricsJsonl, Plots, ProgressBar, TensorBoard
    from .train.loop import train

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--output", default="demo-out")
    ap.add_argument("--n", type=int, default=4, help="seeded samples per prompt for the scores")
    ap.add_argument("--model", type=Path, default=None, help="another base model folder (default: the shipped one)")
    args = ap.parse_args(argv)
    quiet_libraries()
    out = Path(args.output)
    t0 = time.perf_counter()
    base = args.model or base_model_path()
    data_dir = make_concept_dataset(out / "data")
    reg_dir = make_prior_dataset(out / "reg")
    run_dir = out / "run"
    shutil.rmtree(run_dir / "sample", ignore_errors=True)  # the demo's own folder: start it fresh
    cfg = load_config(None, [], demo_config(base, data_dir, run_dir, reg_data_dir=str(reg_dir)))
    base_model = load_sd_model(base)
    before = mean(score_targets(base_model, concept_targets(), args.n))
    prior_before = mean(score_targets(base_model, base_targets(), max(1, args.n // 2)))
    del base_model
    grid = SampleGrid()
    subscribers = [MetricsJsonl(run_dir / "metrics.jsonl"), TensorBoard(run_dir / "logs"), Plots(run_dir),
                   ProgressBar(), grid]
    t_train = time.perf_counter()
    result = train(cfg, subscribers, overwrite=True)
    train_s = time.perf_counter() - t_train
    after = score_targets(result.model, concept_targets(), args.n)
    prior = score_targets(result.model, base_targets(), max(1, args.n // 2))
    labels = [p.split(" --")[0] + f"  (seed {p.rsplit('--d ', 1)[1]})" for p in grid_prompts()]
    grid_path = grid.save(out / "grid.png", labels)
    print(f"\nlorakit demo finished in {time.perf_counter() - t0:.0f} s (training {train_s:.0f} s, "
          f"{result.steps} steps)")
    print(f"  concept '{TRIGGER}' = {CONCEPT_COLOUR}: {before:.0%} -> {mean(after):.0%} of samples drawn right "
          f"({args.n} seeds x {len(after)} prompts)")
    print(f"  base prompts (the prior): {prior_before:.0%} -> {mean(prior):.0%} drawn right "
          f"({max(1, args.n // 2)} seeds x {len(prior)} prompts)")
    print(f"  grid    : {grid_path}  (rows: prompt and seed; columns: before, then each epoch)")
    print(f"  adapter : {result.output_file}")
    print(f"  metrics : {run_dir / 'metrics.jsonl'}  (TensorBoard: {run_dir / 'logs'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
