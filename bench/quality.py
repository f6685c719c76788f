"""Does each config teach? The seed guides' configs and LoRA + AdamW on the demo's concept.

    python bench/quality.py                 # about 10 minutes on 2 shared CPU cores
    python bench/quality.py --images 240 --n 8 --configs lora dadapt-loha

Every config trains on the same concept (lorakit.demo: a dozen purple shapes captioned
"a zkv <shape>", with the base prompts' procedural images as reg_data_dir) from the shipped base
model, for the same number of images seen. The seed
configs run verbatim (the guides' JSON bytes, from tests/test_kohya.py) with only what a user
must set for this model: resolution 64, the bucket range, max_train_steps, no sample images.
Reported: the concept score (samples of "a zkv <shape>" that the pixel scorer reads as purple), the prior score (the 16 base prompts still drawn right), the adapter
file's size, the training wall time, and the concept score at strength 0 / 0.5 / 1.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SEEDS = ROOT / "tests" / "fixtures" / "seed_guides"  # the seed guides' JSON blocks, byte for byte

import torch  # noqa: E402

from lorakit.config.load import load_config  # noqa: E402
from lorakit.demo import concept_targets, demo_config, make_concept_dataset, make_prior_dataset  # noqa: E402
from lorakit.models.base import base_model_path  # noqa: E402
from lorakit.quality.evaluate import base_targets, mean, score_targets  # noqa: E402
from lorakit.train.loop import train  # noqa: E402

FOR_THIS_MODEL = ["resolution=64", "min_bucket_reso=64", "max_bucket_reso=128", "sample_prompts=''",
                  "sample_every_n_epochs=0", "save_every_n_epochs=0"]


def run_config(name: str, work: Path, data: Path, reg: Path, images: int, n: int) -> dict:
    base = base_model_path()
    out = work / name
    dirs = {"pretrained_model_name_or_path": str(base), "train_data_dir": str(data), "reg_data_dir": str(reg),
            "output_dir": str(out)}
    if name == "lora":
        values = demo_config(base, data, out, sample_prompts=None, sample_at_first=False,
                             sample_every_n_epochs=None, max_train_epochs=None, reg_data_dir=str(reg))
        batch = values["train_batch_size"]
        cfg = load_config(None, [f"max_train_steps={math.ceil(images / batch)}"], values)
    else:
        path = SEEDS / f"{name.replace('-', '_')}.json"
        probe = load_config(path, FOR_THIS_MODEL, dirs)
        steps = math.ceil(images / probe.train_batch_size)
        cfg = load_config(path, FOR_THIS_MODEL + [f"max_train_steps={steps}"], dirs)
    t0 = time.perf_counter()
    result = train(cfg, [], overwrite=True)
    wall = time.perf_counter() - t0
    concept = {}
    for strength in (0.0, 0.5, 1.0):
        result.network.set_multiplier(strength)
        concept[strength] = mean(score_targets(result.model, concept_targets(), n))
    prior = mean(score_targets(result.model, base_targets(), max(1, n // 2)))
    return {"config": name, "steps": result.steps, "batch": cfg.train_batch_size, "concept": concept[1.0],
            "prior": prior, "strengths": concept, "size_kb": result.output_file.stat().st_size / 1024,
            "wall_s": wall}


def table(rows: list[dict], images: int, n: int) -> str:
    lines = [f"images seen per config: {images}; scores over {n} seeds x 4 concept prompts and "
             f"{max(1, n // 2)} seeds x 16 base prompts", "",
             "| config | steps x batch | concept | prior | concept at strength 0 / 0.5 / 1 | file | train wall |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["strengths"]
        lines.append(f"| {r['config']} | {r['steps']} x {r['batch']} | {r['concept']:.0%} | {r['prior']:.0%} | "
                     f"{s[0.0]:.0%} / {s[0.5]:.0%} / {s[1.0]:.0%} | {r['size_kb']:.0f} KB | {r['wall_s']:.0f} s |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["lora", "dadapt-loha", "prodigy-ia3", "prodigy-lokr"])
    ap.add_argument("--images", type=int, default=480, help="images seen by every config")
    ap.add_argument("--n", type=int, default=4, help="seeds per concept prompt")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data, reg = make_concept_dataset(work / "data"), make_prior_dataset(work / "reg")
        for name in args.configs:
            rows.append(run_config(name, work, data, reg, args.images, args.n))
            r = rows[-1]
            print(f"{name}: concept {r['concept']:.0%} prior {r['prior']:.0%} ({r['wall_s']:.0f} s)", flush=True)
    print(table(rows, args.images, args.n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
