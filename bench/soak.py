"""Soak: a long tiny run for memory growth, and kill -9 at seeded random steps with resumes.

Not a suite test (minutes, not seconds). On the tiny model at 64 px, CPU:

1. a straight run of --steps steps (saves and states every --save-every, samples every
   --sample-every) in this process; resident memory (VmRSS) at step 200 and at the end;
2. the same run as `lorakit train` subprocesses killed with SIGKILL at --kills seeded random
   steps, each time resumed with --resume (from the newest state); a resume "matches" when every
   loss it logged, up to the next kill, equals the straight run's loss of that step bit for bit;
   at the end the adapter must equal the straight run's bit for bit.

    OMP_NUM_THREADS=1 nice -n 10 python bench/soak.py --steps 2000 --kills 20

Prints the figures and writes them to <work>/soak.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def losses(metrics: Path) -> dict[int, float]:
    out = {}
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line a kill cut short
        if "loss" in row:
            out[row["step"]] = row["loss"]
    return out


def newest_state_step(out: Path) -> int:
    steps = [json.loads((p / "state.json").read_text())["progress"]["step"]
             for p in out.glob("*-state") if (p / "state.json").is_file()]
    return max(steps, default=0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--sample-every", type=int, default=500)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="folder for the runs (default: a temporary one)")
    ap.add_argument("--reuse-straight", action="store_true",
                    help="take the straight run (and its memory figures) from an earlier soak in --work")
    args = ap.parse_args(argv)

    from safetensors.torch import load_file

    from lorakit.config.load import load_config
    from lorakit.demo import make_synthetic_dataset
    from lorakit.models.tiny import save_tiny_pipeline
    from lorakit.monitors import MetricsJsonl
    from lorakit.train.loop import train

    work = Path(args.work or tempfile.mkdtemp(prefix="lorakit-soak-"))
    model = save_tiny_pipeline(work / "tiny-sd1", seed=0)
    data = make_synthetic_dataset(work / "data", n_images=4, repeats=1)
    settings = {"resolution": 64, "network_dim": 2, "seed": 7, "max_train_steps": args.steps,
                "save_every_n_steps": args.save_every, "save_state": True, "save_precision": "float",
                "save_last_n_steps": 3 * args.save_every, "save_last_n_steps_state": 3 * args.save_every,
                "sample_every_n_steps": args.sample_every, "sample_prompts": "a red square --w 64 --h 64 --s 2",
                "optimizer_type": "AdamW", "learning_rate": 1e-3, "lr_scheduler": "cosine"}
    conf = work / "soak.toml"
    conf.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()), encoding="utf-8")

    # 1. straight run, memory
    straight = work / "straight"
    rss: dict[int, float] = {}

    def watch(ev):
        if ev.kind == "step" and ev.step in (1, 200, args.steps // 2, args.steps):
            rss[ev.step] = rss_mib()

    cfg = load_config(conf, [], {"pretrained_model_name_or_path": str(model), "train_data_dir": str(data),
                                 "output_dir": str(straight)})
    if args.reuse_straight and (straight / "rss.json").is_file():
        kept = json.loads((straight / "rss.json").read_text())
        rss, straight_s = {int(k): v for k, v in kept["rss_mib"].items()}, kept["seconds"]
    else:
        t0 = time.time()
        train(cfg, [MetricsJsonl(straight / "metrics.jsonl"), watch])
        straight_s = time.time() - t0
        (straight / "rss.json").write_text(json.dumps({"rss_mib": rss, "seconds": straight_s}))
    want_losses, want = losses(straight / "metrics.jsonl"), load_file(straight / "last.safetensors")
    growth = (rss[args.steps] - rss[200]) / rss[200] * 100 if 200 in rss else float("nan")
    print(f"straight: {args.steps} steps in {straight_s:.0f} s; RSS at step 200 {rss.get(200, 0):.1f} MiB, "
          f"at step {args.steps} {rss[args.steps]:.1f} MiB ({growth:+.2f} %)", flush=True)

    # 2. kill -9 at seeded random steps, resume each time
    killed = work / "killed"
    rng = random.Random(args.seed)
    points = sorted(rng.sample(range(2, args.steps), args.kills))
    cmd = [sys.executable, "-m", "lorakit.cli", "train", str(conf), "--model", str(model), "--data", str(data),
           "--output", str(killed), "--quiet"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    matched, resumes, segments, start = 0, 0, [], 0
    for i, point in enumerate(points + [None]):
        resumed_from = newest_state_step(killed) if i else 0
        resume = i > 0 and resumed_from > 0  # killed before the first state: start again (--overwrite)
        extra = ["--resume"] if resume else (["--overwrite"] if i else [])
        proc = subprocess.Popen(cmd + extra, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        metrics = killed / "metrics.jsonl"
        killed_at = None
        # rows up to the last kill are still in the file until the new run truncates it: aim past them
        target = None if point is None else max(point, start + 1)
        while proc.poll() is None:
            if target is not None and metrics.is_file():
                got = losses(metrics)
                if got and max(got) >= target:
                    proc.send_signal(signal.SIGKILL)
                    killed_at = max(got)
                    break
            time.sleep(0.02)
        _, err = proc.communicate()
        if killed_at is None and proc.returncode != 0:
            print(err[-3000:], file=sys.stderr)
            return 1
        got = losses(metrics)
        end = max(got) if got else 0
        first = resumed_from + 1 if resume else 1
        seg = {k: got[k] for k in range(first, end + 1) if k in got}
        ok = bool(seg) and all(want_losses[k] == v for k, v in seg.items())
        if resume:  # a fresh start (the first run, or a kill before any state) is not a resume
            matched += ok
            resumes += 1
        segments.append({"resumed": resume, "resumed_from": resumed_from, "kill_at": target, "killed_at": killed_at,
                         "last_step": end, "losses_equal": ok, "rc": proc.returncode})
        print(f"  run {i:2d}: {'resumed' if resume else 'started'} at step {resumed_from:5d}, ended at {end:5d}"
              f"{' (SIGKILL)' if killed_at else ' (finished)'}: losses equal: {ok}", flush=True)
        start = end
    final = load_file(killed / "last.safetensors")
    adapter_equal = final.keys() == want.keys() and all((final[k] == want[k]).all() for k in want)
    all_losses = losses(killed / "metrics.jsonl") == want_losses
    summary = {"steps": args.steps, "rss_mib": rss, "rss_growth_percent_200_to_end": growth,
               "straight_seconds": straight_s, "kills": args.kills, "kill_points": points,
               "resumes": resumes, "resumes_matched": matched, "final_adapter_equal": adapter_equal,
               "all_losses_equal": all_losses, "segments": segments}
    (work / "soak.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    print(f"resumes whose losses matched the straight run: {matched}/{resumes} ({args.kills} kills); final adapter "
          f"bit-identical: {adapter_equal}; metrics.jsonl equal: {all_losses}; details in {work / 'soak.json'}")
    return 0 if matched == resumes and adapter_equal else 1


if __name__ == "__main__":
    sys.exit(main())
