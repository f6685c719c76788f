"""What happens between steps: periodic saves, sample images, step validation, the d*lr spike watch."""
from __future__ import annotations

import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .. import signals
from ..checkpoints import checkpoint_name, numbered_pattern, state_name
from ..optim.optimizers import eval_mode
from .save import save_adapter
from .spike import DlrSpikeDetector
from .state import Progress, save_state
from .validation import maybe_validate

if TYPE_CHECKING:
    from .run import Run


class RunHooks:
    def __init__(self, run: "Run"):
        from ..sample.prompts import parse_prompts

        self.run, cfg = run, run.cfg
        self.prompts = parse_prompts(cfg.sample_prompts) if cfg.sample_prompts else []
        self.spike = DlrSpikeDetector(cfg.dlr_spike_factor, cfg.dlr_spike_window)
        self.spiked = False
        signals.steps_begin()  # a Ctrl-C or SIGTERM now waits for the step to end (lorakit/signals.py)

    def sample(self, step: int, epoch: int | None) -> None:
        from ..sample.generate import sample_prompts

        if not self.prompts:
            return
        cfg, run = self.run.cfg, self.run
        # autocast for fp8_base: only autocast casts float8 weights to the compute dtype
        with eval_mode(run.optimizer), (run.accelerator.autocast() if cfg.fp8_base else nullcontext()):
            written = sample_prompts(run.model, self.prompts, run.output_dir / "sample", cfg.output_name,
                                     epoch=epoch, step=step, sampler=cfg.sample_sampler,
                                     max_token_length=cfg.max_token_length, clip_skip=cfg.clip_skip,
                                     base_seed=run.seed)
        run.bus.emit("sample", step, epoch or 0, paths=[str(p) for p, _ in written],
                     images=[img for _, img in written])

    def at_start(self) -> None:
        if self.run.cfg.sample_at_first:
            self.sample(0, None)

    def after_step(self, progress: Progress, lrs: dict[str, float], dlr: dict[str, float]) -> bool:
        """Returns True when the run must stop here."""
        signals.raise_pending()  # the step is done and counted: the loop saves it and stops
        step, epoch = progress.step, progress.epoch
        cfg, run, last = self.run.cfg, self.run, step >= self.run.plan.total_steps
        if cfg.save_every_n_steps and step % cfg.save_every_n_steps == 0 and not last:
            save_adapter(run, step, epoch, checkpoint_name(cfg.output_name, step=step))
            if cfg.save_state:
                save_state(run, state_name(cfg.output_name, step=step), progress)
            self.retain_steps(step)
        if cfg.sample_every_n_steps and step % cfg.sample_every_n_steps == 0:
            self.sample(step, None)
        maybe_validate(run, step, epoch, "step")  # validate_every_n_steps (sd-scripts: after the step's save)
        signals.raise_pending()  # a signal during the saves or samples above
        return self.watch_dlr(step, epoch, lrs, dlr)

    def watch_dlr(self, step: int, epoch: int, lrs: dict[str, float], dlr: dict[str, float]) -> bool:
        # measured on d (d*lr without the schedule) so warmup or restarts never look like a spike
        group = next(iter(dlr), None)
        if group is None or self.spiked or not lrs.get(group):
            return False
        if not self.spike.update(dlr[group] / lrs[group]):
            return False
        self.spiked = True
        cfg, run = self.run.cfg, self.run
        action = cfg.dlr_spike_action
        run.bus.emit("warning", step, epoch, reason="dlr_spike", message=(
            f"d*lr spiked at step {step}: more than x{cfg.dlr_spike_factor:g} within {cfg.dlr_spike_window} steps "
            f"(now {dlr[group]:.3g}). The guide: lower d_coef, add weight_decay or eta_min, or fewer steps. "
            + {"warn": "Training goes on (dlr_spike_action = 'warn').",
               "save": "Saved the adapter from before the spike.",
               "stop": "Stopping here; the adapter from before the spike is saved."}[action]))
        if action == "save":
            save_adapter(run, step, epoch, checkpoint_name(cfg.output_name, step=step, prespike=True))
        return action == "stop"

    def after_epoch(self, progress: Progress) -> None:
        cfg, run, step, epoch = self.run.cfg, self.run, progress.step, progress.epoch
        if cfg.save_every_n_epochs and epoch % cfg.save_every_n_epochs == 0 and step < run.plan.total_steps:
            save_adapter(run, step, epoch, checkpoint_name(cfg.output_name, epoch=epoch))
            if cfg.save_state:
                save_state(run, state_name(cfg.output_name, epoch=epoch), progress)
            self.retain_epochs()
        if cfg.sample_every_n_epochs and epoch % cfg.sample_every_n_epochs == 0:
            self.sample(step, epoch)

    # --- retention: runs after the new file is in place, so the newest good file is never removed ----
    def _numbered(self, by: Literal["step", "epoch"], state: bool) -> list[tuple[int, Path]]:
        rx = numbered_pattern(self.run.cfg.output_name, by, state)
        found = [(int(m.group(1)), p) for p in self.run.output_dir.iterdir() if (m := rx.fullmatch(p.name))]
        return sorted(found)

    def retain_epochs(self) -> None:
        cfg = self.run.cfg
        for keep, state in ((cfg.save_last_n_epochs, False), (cfg.save_last_n_epochs_state, True)):
            if keep and self.run.accelerator.is_main_process:
                for _, path in self._numbered("epoch", state)[:-keep]:
                    remove(path)

    def retain_steps(self, step: int) -> None:
        cfg = self.run.cfg
        for window, state in ((cfg.save_last_n_steps, False), (cfg.save_last_n_steps_state, True)):
            if window and self.run.accelerator.is_main_process:
                for n, path in self._numbered("step", state):
                    if n < step - window:  # sd-scripts: files older than the last N steps go
                        remove(path)


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
