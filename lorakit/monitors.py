"""Subscribers to training events: metrics.jsonl, TensorBoard, wandb, the progress bar."""
from __future__ import annotations

import json
import sys
import time
from collections import deque
from pathlib import Path

from .events import Event


class MetricsJsonl:
    """One JSON object per optimizer step: step, epoch, loss, loss_avg, lr/<group>, dlr/<group>."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.fh = None

    def __call__(self, ev: Event) -> None:
        _disk_errors_named(self._handle, ev, self.path)

    def _handle(self, ev: Event) -> None:
        if ev.kind == "start":  # opened only once the run has passed its checks
            self.path.parent.mkdir(parents=True, exist_ok=True)
            resumed_at = ev.data.get("resumed_at") or 0
            if resumed_at and self.path.is_file():
                self._truncate_after(resumed_at)
                self.fh = open(self.path, "a", encoding="utf-8")
            else:
                self.fh = open(self.path, "w", encoding="utf-8")
        elif self.fh is None:
            return
        elif ev.kind == "step":
            row = {"step": ev.step, "epoch": ev.epoch, "loss": ev.data["loss"], "loss_avg": ev.data["loss_avg"],
                   "time": time.time()}
            row.update({f"lr/{k}": v for k, v in ev.data["lrs"].items()})
            row.update({f"dlr/{k}": v for k, v in ev.data.get("dlr", {}).items()})
            for k in ("images_per_s", "peak_memory_mb"):
                if k in ev.data:
                    row[k] = ev.data[k]
            row.update(ev.data.get("stats", {}))
            self.fh.write(json.dumps(row) + "\n")
            self.fh.flush()
        elif ev.kind == "epoch":
            self.fh.write(json.dumps({"epoch_end": ev.epoch, "step": ev.step, "loss_epoch": ev.data["loss"]}) + "\n")
            self.fh.flush()
        elif ev.kind == "warning":
            self.fh.write(json.dumps({"warning": ev.data["message"], "step": ev.step}) + "\n")
            self.fh.flush()
        elif ev.kind == "validation":
            self.fh.write(json.dumps({"validation_loss": ev.data["loss"], "epoch": ev.epoch, "step": ev.step,
                                      "validation_images": ev.data["images"],
                                      "validation_batches": ev.data.get("batches"),
                                      "validation_trigger": ev.data.get("trigger", "epoch")}) + "\n")
            self.fh.flush()
        elif ev.kind == "end":
            self.fh.close()


    def _truncate_after(self, step: int) -> None:
        """A resumed run continues the file: rows after the resumed step (a killed run's tail) go."""
        from .io import atomic_write_bytes

        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if row.get("step", 0) <= step:
                keep.append(line + "\n")
        atomic_write_bytes(self.path, "".join(keep).encode("utf-8"))


def _disk_errors_named(handle, ev: Event, path: Path) -> None:
    """Run a subscriber's handler; a write that failed because of the disk becomes a DiskError
    naming `path` (the writers raise OSError, TensorBoard's background writer re-raises it here)."""
    try:
        handle(ev)
    except Exception as e:
        from .errors import UserError
        from .io import disk_error

        err = None if isinstance(e, UserError) else disk_error(e, path)
        if err is None:
            raise
        raise err from e


class TensorBoard:
    """kohya's tags: loss/current, loss/average, loss/epoch, lr/<group>, lr/d*lr/<group>."""

    def __init__(self, logdir: str | Path):
        self.logdir = str(logdir)
        self.writer = None

    def __call__(self, ev: Event) -> None:
        _disk_errors_named(self._handle, ev, Path(self.logdir) / "events.out.tfevents")

    def _handle(self, ev: Event) -> None:
        if ev.kind == "start":
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(self.logdir)
        w = self.writer
        if w is None:
            return
        if ev.kind == "step":
            w.add_scalar("loss/current", ev.data["loss"], ev.step)
            w.add_scalar("loss/average", ev.data["loss_avg"], ev.step)
            for group, lr in ev.data["lrs"].items():
                w.add_scalar(f"lr/{group}", lr, ev.step)
            for group, dlr in ev.data.get("dlr", {}).items():
                w.add_scalar(f"lr/d*lr/{group}", dlr, ev.step)
            for k in ("images_per_s", "peak_memory_mb"):
                if k in ev.data:
                    w.add_scalar(f"perf/{k}", ev.data[k], ev.step)
            for k, v in ev.data.get("stats", {}).items():
                w.add_scalar(k, v, ev.step)
        elif ev.kind == "epoch":
            w.add_scalar("loss/epoch", ev.data["loss"], ev.epoch)
        elif ev.kind == "validation":
            if ev.data.get("trigger") == "step":  # sd-scripts' names: step_average by step, epoch_average by epoch
                w.add_scalar("loss/validation/step_average", ev.data["loss"], ev.step)
            else:
                w.add_scalar("loss/validation/epoch_average", ev.data["loss"], ev.epoch)
        elif ev.kind == "sample":
            import numpy as np

            for i, img in enumerate(ev.data.get("images", [])):
                w.add_image(f"sample/{i:02d}", np.asarray(img), ev.step, dataformats="HWC")
        elif ev.kind == "end":
            w.close()


class ProgressBar:
    """step/total, ETA, smoothed loss, lr (or d*lr), images/s; a line per finished epoch.

    images/s is the training rate of the last RATE_STEPS steps (each step's own time): sampling,
    saving and validation between steps are left out, as are the steps before them, so the figure
    is the one a benchmark or kohya's it/s x batch would give."""

    RATE_STEPS = 20

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.bar = None
        self.recent: deque[tuple[int, float]] = deque(maxlen=self.RATE_STEPS)  # (images, seconds)

    def __call__(self, ev: Event) -> None:
        from tqdm import tqdm

        if ev.kind == "start":
            plan = ev.data["plan"]
            self.stream.write(f"lorakit: {plan.describe()}\n")
            self.bar = tqdm(total=plan.total_steps, file=self.stream, unit="step", dynamic_ncols=True)
        elif ev.kind == "compiling" and self.bar is not None and self.bar.desc != "compiling":
            self.bar.set_description_str("compiling", refresh=True)  # the first step of a shape: not stuck
        elif ev.kind == "step" and self.bar is not None:
            if self.bar.desc:
                self.bar.set_description_str("", refresh=False)
            if ev.data.get("images_per_s"):
                self.recent.append((ev.data["images"], ev.data["images"] / ev.data["images_per_s"]))
            rate = {"img_s": f"{sum(n for n, _ in self.recent) / sum(t for _, t in self.recent):.2f}"} \
                if self.recent else {}
            lr = ev.data.get("dlr") or ev.data["lrs"]
            shown = {("d*lr " if ev.data.get("dlr") else "lr ") + k: f"{v:.3g}" for k, v in lr.items()}
            self.bar.set_postfix(loss=f"{ev.data['loss_avg']:.4f}", **rate, **shown, refresh=False)
            self.bar.update(1)
        elif ev.kind == "epoch" and self.bar is not None:
            self.bar.write(f"epoch {ev.epoch}: mean loss {ev.data['loss']:.4f} (step {ev.step})", file=self.stream)
        elif ev.kind == "validation" and self.bar is not None:
            where = f"step {ev.step}" if ev.data.get("trigger") == "step" else f"epoch {ev.epoch}"
            self.bar.write(f"{where}: validation loss {ev.data['loss']:.4f} over {ev.data['images']} "
                           "image(s)", file=self.stream)
        elif ev.kind == "sample" and self.bar is not None:
            self.bar.write(f"sampled {len(ev.data['paths'])} image(s) into {Path(ev.data['paths'][0]).parent}"
                           if ev.data["paths"] else "sampled nothing", file=self.stream)
            if self.bar.n == 0:  # the samples before training: not part of the first step's time (the ETA)
                self.bar.unpause()
        elif ev.kind == "save" and self.bar is not None:
            self.bar.write(f"saved {ev.data['path']}", file=self.stream)
        elif ev.kind == "end" and self.bar is not None:
            self.bar.close()


class Warnings:
    """Every warning to stderr, with or without a progress bar (--quiet hides only the bar)."""

    def __init__(self, stream=None):
        self.stream = stream

    def __call__(self, ev: Event) -> None:
        if ev.kind == "warning":
            from tqdm import tqdm

            tqdm.write(f"warning: {ev.data['message']}", file=self.stream or sys.stderr)  # above a live bar


class Plots:
    """At the end of a run, loss / lr / d*lr PNGs next to metrics.jsonl (subscribe after MetricsJsonl)."""

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)

    def __call__(self, ev: Event) -> None:
        if ev.kind == "end" and (self.output_dir / "metrics.jsonl").is_file():
            from .plot import plot_run

            plot_run(self.output_dir)


class Wandb:
    """log_with = "wandb" / "all": the step metrics under TensorBoard's tag names, in a wandb run
    (project log_tracker_name, default "network_train" as sd-scripts; files under logdir)."""

    def __init__(self, logdir: str | Path, project: str | None = None, name: str | None = None):
        self.logdir, self.project, self.name = str(logdir), project or "network_train", name
        self.run = None

    def __call__(self, ev: Event) -> None:
        if ev.kind == "start":
            import wandb

            Path(self.logdir).mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(project=self.project, name=self.name, dir=self.logdir,
                                  config=ev.data["config"].model_dump(mode="json"))
        if self.run is None:
            return
        if ev.kind == "step":
            row = {"loss/current": ev.data["loss"], "loss/average": ev.data["loss_avg"]}
            row.update({f"lr/{k}": v for k, v in ev.data["lrs"].items()})
            row.update({f"lr/d*lr/{k}": v for k, v in ev.data.get("dlr", {}).items()})
            row.update(ev.data.get("stats", {}))
            self.run.log(row, step=ev.step)
        elif ev.kind == "epoch":
            self.run.log({"loss/epoch": ev.data["loss"]}, step=ev.step)
        elif ev.kind == "validation":
            self.run.log({"loss/validation": ev.data["loss"]}, step=ev.step)
        elif ev.kind == "end":
            self.run.finish()
            self.run = None


def loggers_for(cfg, output_dir: str | Path) -> list:
    """The metric loggers log_with asks for: TensorBoard (unset, "tensorboard", "all") and
    wandb ("wandb", "all"); logs under logging_dir, else <output_dir>/logs."""
    logdir = Path(cfg.logging_dir or Path(output_dir) / "logs")
    out: list = []
    if cfg.log_with in (None, "tensorboard", "all"):
        out.append(TensorBoard(logdir))
    if cfg.log_with in ("wandb", "all"):
        out.append(Wandb(logdir, cfg.log_tracker_name, cfg.wandb_run_name or cfg.output_name))  # the GUI's default name
    return out
