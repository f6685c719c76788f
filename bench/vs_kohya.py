"""lorakit against kohya, config by config, from one results file of bench/gpu_run.sh (issue 18:
each row >= 4x kohya's figure measured beside it, at no more memory).

    python bench/vs_kohya.py gpu-run-out/results.txt

For each config kohya ran (bench/kohya_side.sh's lines), prints kohya's img/s, lorakit's eager row
and its fastest row of any setting, each as a ratio to kohya. Both sides must come from one run on
one machine: that is what makes the ratio mean anything.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

TARGET = 4.0
# a train_bench.py row: config batch res img/s med p90 first [peak GB, MFU] setting
ROW = re.compile(r"^(?P<config>\w+)\s+(?P<batch>\d+)\s+(?P<res>\d+)\s+(?P<img_s>[\d.]+)\s+[\d.]+\s+[\d.]+\s+[\d.]+"
                 r"(?:\s+(?P<peak_gb>[\d.]+)\s+[\d.]+%)?\s+(?P<setting>\S.*)$")
# a kohya_side.sh line: kohya CONFIG batch N  S s/step  X img/s [peak P GB (nvidia-smi)] (...)
KOHYA = re.compile(r"^kohya (?P<config>\w+)\s+batch\s+(?P<batch>\d+)\s+[\d.]+ s/step\s+(?P<img_s>[\d.]+) img/s"
                   r"(?:\s+peak (?P<peak_gb>[\d.]+) GB)?")


def parse(text: str) -> tuple[list[dict], dict[str, dict], bool]:
    """(lorakit rows, kohya rows by config, whether the run was the CPU dry run)."""
    rows, kohya, cpu = [], {}, False
    for line in text.splitlines():
        if line.startswith("lorakit gpu_run") and " device cpu " in line:
            cpu = True
        if m := KOHYA.match(line):
            kohya[m["config"]] = {"img_s": float(m["img_s"]), "batch": int(m["batch"]),
                                  "peak_gb": float(m["peak_gb"]) if m["peak_gb"] else None}
        elif (m := ROW.match(line)) and m["config"] != "config":
            rows.append({"config": m["config"], "img_s": float(m["img_s"]), "setting": m["setting"].strip(),
                         "peak_gb": float(m["peak_gb"]) if m["peak_gb"] else None})
    return rows, kohya, cpu


def report(text: str) -> list[str]:
    rows, kohya, cpu = parse(text)
    out = [f"{'config':15s} {'kohya img/s':>11s} {'eager':>8s} {'x':>6s} {'fastest':>8s} {'x':>6s}  "
           f"{'>= ' + str(TARGET) + 'x':8s} fastest setting; peak GB lorakit / kohya"]
    if cpu:
        out.append("(the CPU dry run: kohya trained a full-size SD1.5 at 64 px, lorakit the tiny model; "
                   "the ratios check the script only)")
    for config, k in kohya.items():
        mine = [r for r in rows if r["config"] == config]
        eager = next((r for r in mine if r["setting"] == "eager"), None)
        best = max(mine, key=lambda r: r["img_s"], default=None)
        if best is None:
            out.append(f"{config:15s} {k['img_s']:11.2f}  no lorakit row in this run")
            continue
        e_img = f"{eager['img_s']:8.2f} {eager['img_s'] / k['img_s']:5.2f}x" if eager else f"{'-':>8s} {'-':>6s}"
        ratio = best["img_s"] / k["img_s"]
        peaks = (f"{best['peak_gb']:.2f} / {k['peak_gb']:.2f}" if best["peak_gb"] is not None and k["peak_gb"]
                 else "-")
        out.append(f"{config:15s} {k['img_s']:11.2f} {e_img} {best['img_s']:8.2f} {ratio:5.2f}x  "
                   f"{'yes' if ratio >= TARGET else 'no':8s} {best['setting']}; {peaks}")
    if not kohya:
        out.append("no kohya rows in this file (bench/README.md, 'kohya beside it')")
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    print("\n".join(report(Path(argv[0]).read_text(encoding="utf-8"))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
