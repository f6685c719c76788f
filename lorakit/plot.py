"""PNG plots of a run from its metrics.jsonl: loss (raw and smoothed), lr and d*lr against steps."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError
from .io import atomic_path


def read_metrics(path: str | Path, warnings: list[str] | None = None) -> list[dict]:
    """The step rows of a metrics.jsonl. A last line cut short (a killed run, a full disk) is left out
    with a warning; an unreadable line elsewhere is a UserError naming it."""
    rows = []
    try:
        lines = Path(path).read_bytes().decode("utf-8", errors="replace").splitlines()
    except OSError as e:
        raise UserError(f"cannot read it: {e.strerror}", file=str(path)) from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                if warnings is not None:
                    warnings.append(f"{path}: left out line {n}, cut short (the run was killed or the disk filled)")
                continue
            raise UserError(f"line {n} is not JSON ({line[:40]!r}...)", file=str(path),
                            fix="lorakit writes one JSON object per line; restore the file or delete that line") \
                from None
        if isinstance(row, dict) and "loss" in row:
            rows.append(row)
    return rows


def smooth(values: list[float], alpha: float = 0.9) -> list[float]:
    """TensorBoard-style exponential moving average, bias-corrected."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = alpha * avg + (1 - alpha) * v
        out.append(avg / (1 - alpha ** i))
    return out


def plot_run(output_dir: str | Path, warnings: list[str] | None = None) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(output_dir)
    rows = read_metrics(out / "metrics.jsonl", warnings)
    if not rows:
        return []
    steps = [r["step"] for r in rows]
    written = []
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(steps, [r["loss"] for r in rows], alpha=0.35, label="loss")
    ax.plot(steps, smooth([r["loss"] for r in rows]), label="loss (smoothed)")
    ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.legend(), ax.grid(alpha=0.3)
    written.append(_save(fig, out / "loss.png"))
    for prefix, name, label in (("lr/", "lr.png", "learning rate"), ("dlr/", "dlr.png", "d*lr")):
        keys = sorted({k for r in rows for k in r if k.startswith(prefix)})
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(8, 4))
        for k in keys:
            ax.plot(steps, [r.get(k, float("nan")) for r in rows], label=k[len(prefix):])
        ax.set_xlabel("step"), ax.set_ylabel(label), ax.legend(), ax.grid(alpha=0.3)
        written.append(_save(fig, out / name))
    plt.close("all")
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path
