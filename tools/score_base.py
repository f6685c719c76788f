"""Score the shipped base model: N seeded samples per shape x colour prompt, read by the pixel scorer.

    python tools/score_base.py --n 8            # appends the table to lorakit/models/base/CARD.md
    python tools/score_base.py --n 4 --no-card  # print only

Also scores the scorer on held-out procedural images (a seed no training set uses).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lorakit.models.base import BASE_DIR, base_model_path  # noqa: E402
from lorakit.models.loader import load_sd_model  # noqa: E402
from lorakit.quality import shapes  # noqa: E402
from lorakit.quality.evaluate import SAMPLER, SCALE, STEPS, base_targets, mean, score_targets  # noqa: E402
from lorakit.quality.score import classify  # noqa: E402

MARK = "## Scores"


def scorer_accuracy(per_class: int = 20, seed: int = 777) -> float:
    rng = np.random.default_rng(seed)
    right = total = 0
    for shape in shapes.SHAPES:
        for colour, rgb in shapes.ALL_COLOURS.items():
            for _ in range(per_class):
                right += classify(shapes.draw(shape, shapes.jitter(rgb, rng), rng)).is_(shape, colour)
                total += 1
    return right / total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--no-card", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model = load_sd_model(args.model or base_model_path())
    scores = score_targets(model, base_targets(), args.n, seed=args.seed)
    colours = list(shapes.COLOURS)
    lines = [MARK, "",
             f"Base prompts, {args.n} samples each (seeds {args.seed}..{args.seed + args.n - 1}, {SAMPLER} "
             f"{STEPS} steps, CFG {SCALE}), share the pixel scorer (lorakit/quality/score.py) reads as the "
             f"prompt's shape and colour: **{mean(scores):.0%} overall**.", "",
             "| shape | " + " | ".join(colours) + " |", "|---" * (len(colours) + 1) + "|"]
    for s in shapes.SHAPES:
        row = [f"{scores[t]:.0%}" for c in colours for t in scores if t.shape == s and t.colour == c]
        lines.append(f"| {s} | " + " | ".join(row) + " |")
    acc = scorer_accuracy()
    lines += ["", f"The scorer on held-out procedural images (20 per shape x colour, purple included): "
              f"{acc:.1%} right.", ""]
    text = "\n".join(lines)
    print(text)
    print(f"({time.perf_counter() - t0:.0f} s)")
    if not args.no_card and args.model is None:
        card = BASE_DIR / "CARD.md"
        body = card.read_text(encoding="utf-8").split(MARK)[0].rstrip() + "\n\n"
        card.write_text(body + text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
