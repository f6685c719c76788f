"""`make demo`: train a LoRA on the embedded tiny model and synthetic captioned images, on CPU.

Writes the adapter, metrics.jsonl, TensorBoard logs, loss/lr plots and sample images.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

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


def main(argv: list[str] | None = None) -> int:
    from .config.load import load_config
    from .models.tiny import save_tiny_pipeline
    from .monitors import MetricsJsonl, Plots, ProgressBar, TensorBoard
    from .train.loop import train

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--output", default="demo-out")
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args(argv)
    out = Path(args.output)
    t0 = time.perf_counter()
    model_dir = out / "tiny-model"
    if not (model_dir / "model_index.json").exists():
        save_tiny_pipeline(model_dir, seed=0)
    data_dir = make_synthetic_dataset(out / "data")
    run_dir = out / "run"
    cfg = load_config(None, [f"max_train_steps={args.steps}"], {
        "pretrained_model_name_or_path": str(model_dir), "train_data_dir": str(data_dir),
        "output_dir": str(run_dir), "output_name": "demo-lora", "resolution": 64, "network_dim": 4,
        "network_alpha": 4, "learning_rate": 3e-3, "train_batch_size": 2, "lr_scheduler": "cosine",
        "lr_warmup_steps": 0.1, "seed": 42, "shuffle_caption": True, "keep_tokens": 1,
        "training_comment": "lorakit demo", "sample_every_n_epochs": 1,
        "sample_prompts": "lkshape, red circle, simple background --w 64 --h 64 --d 1 --s 20\n"
                          "lkshape, blue square, simple background --n red --w 64 --h 64 --d 2 --s 20",
    })
    shutil.rmtree(run_dir / "sample", ignore_errors=True)  # the demo's own folder: start it fresh
    subscribers = [MetricsJsonl(run_dir / "metrics.jsonl"), TensorBoard(run_dir / "logs"), Plots(run_dir),
                   ProgressBar()]
    result = train(cfg, subscribers, overwrite=True)
    plots = sorted(run_dir.glob("*.png"))
    samples = sorted((run_dir / "sample").glob("*.png"))
    print(f"\nlorakit demo finished in {time.perf_counter() - t0:.0f} s")
    print(f"  adapter : {result.output_file}")
    print(f"  metrics : {run_dir / 'metrics.jsonl'}  (TensorBoard: {run_dir / 'logs'})")
    for p in plots:
        print(f"  plot    : {p}")
    for p in samples:
        print(f"  sample  : {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
