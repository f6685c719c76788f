"""The training loop: a library call that emits events (start, step, epoch, save, end)."""
from __future__ import annotations

import math
import os
import time
from collections import deque
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any, Iterable

import torch

from ..config.schema import TrainConfig
from ..data.loader import BatchLoader, rank_groups
from ..events import EventBus, Subscriber
from ..models.family import PromptEmbeds
from .loss import latent_seed, sample_seed
from .noise import draw_noise
from .objective import sample_losses
from .hooks import RunHooks
from .save import save_adapter
from .settings import freeze_text_encoder
from .run import Run
from .setup import check_output_paths, setup_run
from .validation import maybe_validate
from ..lock import output_lock
from .state import (Diverged, Progress, check_resume_config, check_resume_data, find_state, load_state,
                    save_state)


@dataclass
class TrainResult:
    output_file: Path
    steps: int
    epochs: int
    final_loss: float
    seed: int
    model: Any = None    # the loaded model, adapters still applied (for sampling after training)
    network: Any = None


def encode_prompts(run: Run, captions: list[str]) -> PromptEmbeds:
    cfg = run.cfg

    def forward(strings: list[str]) -> PromptEmbeds:
        with torch.set_grad_enabled(run.te_training):
            return run.model.encode_prompts(strings, max_token_length=cfg.max_token_length,
                                            clip_skip=cfg.clip_skip, weighted=cfg.weighted_captions,
                                            device=run.device)

    # frozen TE: rows by caption string, only the batch's new strings go through the encoder
    return forward(captions) if run.text_cache is None else run.text_cache.encode(captions, forward)


def batch_latents(run: Run, batch, seeds: list[int]) -> torch.Tensor:
    vae = run.model.vae
    if batch.latents is not None:  # non_blocking: pinned by the DataLoader on CUDA
        latents = batch.latents.to(run.device, non_blocking=True)
    else:
        with torch.no_grad():
            pixels = batch.pixels.to(run.device, dtype=vae.dtype, non_blocking=True,
                                     memory_format=run.memory_format)
            dist = vae.encode(pixels).latent_dist
        # mean + std * eps as DiagonalGaussianDistribution.sample, but eps from each sample's own
        # seed instead of one stream: a resumed run, or W processes, draw what a straight run does
        eps = torch.stack([torch.randn(dist.mean.shape[1:], generator=torch.Generator().manual_seed(latent_seed(s)))
                           for s in seeds])
        latents = dist.mean + dist.std * eps.to(run.device, dist.mean.dtype)
    return latents.float() * vae.config.scaling_factor  # float(): no copy when already float32


def micro_step_loss(run: Run, batch, seeds: list[int]) -> torch.Tensor:
    """Weighted mean loss over the samples of one micro-batch."""
    latents = batch_latents(run, batch, seeds)
    d = draw_noise(latents, seeds, run.noise_settings, run.model.noise_scheduler.config.num_train_timesteps)
    # host-to-device copies before the UNet is queued: a blocking copy after it would make the
    # host wait for the whole forward before it can queue the loss and the backward
    weights = batch.loss_weights.to(run.device, non_blocking=True)
    mask = getattr(batch, "masks", None)
    mask = None if mask is None else mask.to(run.device, non_blocking=True)
    with run.accelerator.autocast():
        embeds = encode_prompts(run, batch.captions)
    added = run.model.added_conditioning(batch, run.device)
    return sample_losses(run, latents, d, embeds, added, weights, mask).mean()


def group_lrs(run: Run) -> dict[str, float]:
    return {g.get("name", str(i)): g["lr"] for i, g in enumerate(run.optimizer.param_groups)}


def optimizer_step(run: Run) -> dict[str, float]:
    cfg = run.cfg
    if cfg.max_grad_norm > 0:
        params = [p for g in run.optimizer.param_groups for p in g["params"]]
        norm = run.accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        # fp16's grad scaler skips inf steps itself; elsewhere a non-finite gradient would make
        # the adapter NaN, so stop before the update (the saved adapter stays finite)
        if cfg.mixed_precision != "fp16" and norm is not None and not math.isfinite(float(norm)):
            raise Diverged(float(norm), "gradient norm")
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    if cfg.scale_weight_norms:  # once per optimizer step (sd-scripts: every micro-step)
        scaled, avg, top = run.network.apply_max_norm(cfg.scale_weight_norms)
        return {"max_norm/keys_scaled": scaled, "norm/avg_key_norm": avg, "max_norm/max_key_norm": top}
    return {}


def train_step(run: Run, mine: list[tuple[Any, int]], n_images: int, epoch: int) -> tuple[float, int]:
    """One optimizer step over all micro-batches of the step, across processes.

    `mine`: (batch, start) of the micro-batches this process trains (r, r+W, ... of the step,
    see data/loader.rank_groups); `n_images`: images of the whole step, every process's.
    Each sample's noise is keyed by its position in the epoch (`start`), so the result does
    not depend on the batch size, the accumulation or the number of processes.
    Returns (mean loss, images in the step).
    """
    acc = run.accelerator
    W = acc.num_processes
    loss_sum = torch.zeros((), device=run.device)
    for batch, start in mine:
        n = len(batch.captions)
        loss = micro_step_loss(run, batch, [sample_seed(run.seed, epoch, start + i) for i in range(n)])
        # the gradient of the mean over every image of the optimizer step, also for a short last group
        acc.backward(loss * (n / n_images))
        loss_sum += loss.detach() * n
    if W > 1:
        sum_gradients(run)
        loss_sum = acc.reduce(loss_sum, "sum")
    total = loss_sum.item()
    if not math.isfinite(total):
        raise Diverged(total)
    run.step_stats = optimizer_step(run)
    if run.text_cache is not None:
        run.step_stats.update(run.text_cache.take_stats())
    return total / n_images, n_images


def sum_gradients(run: Run) -> None:
    """All-reduce the adapter gradients (each process already scaled its share by 1/images)."""
    import torch.distributed as dist

    # frozen parameters (stop_text_encoder_training) keep no gradient, so the optimizer skips them
    params = [p for g in run.optimizer.param_groups for p in g["params"] if p.requires_grad]
    for p in params:  # a process without a micro-batch in this step still joins the reduction
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def train(cfg: TrainConfig, subscribers: Iterable[Subscriber] = (), *, overwrite: bool = False,
          resume: str | None = None, resume_changed_data: bool = False) -> TrainResult:
    """Train one adapter. The output folder is locked for the run (lorakit/lock.py; rank 0 of a
    distributed launch holds it); a resume is checked (config, dataset) before any model loads."""
    if not cfg.output_dir or os.environ.get("RANK", "0") != "0":
        return _train(cfg, subscribers, overwrite, resume, resume_changed_data, [])
    check_output_paths(cfg)  # before the folder is made or locked
    with output_lock(cfg.output_dir) as notes:
        return _train(cfg, subscribers, overwrite, resume, resume_changed_data, notes)


def _train(cfg: TrainConfig, subscribers: Iterable[Subscriber], overwrite: bool, resume: str | None,
           resume_changed_data: bool, notes: list[str]) -> TrainResult:
    state_dir, resume = None, resume or cfg.resume  # the command line's --resume wins over the config's
    if resume:  # checked before any model is loaded
        state_dir = find_state(cfg.output_dir, resume)
        cfg, changed = check_resume_config(cfg, state_dir)
        notes = notes + changed + check_resume_data(cfg, state_dir, resume_changed_data)
    bus = EventBus(list(subscribers))
    run = setup_run(cfg, bus, overwrite or state_dir is not None, state_dir=state_dir)
    bus = run.bus  # silent on every process but rank 0
    plan, ga = run.plan, cfg.gradient_accumulation_steps
    progress = load_state(run, state_dir) if state_dir else Progress()
    if progress.groups_done >= plan.steps_per_epoch:  # the state was saved at an epoch's end
        progress = Progress(progress.step, progress.epoch + 1, 0)
    bus.emit("start", plan=plan, seed=run.seed, config=cfg, resumed_at=progress.step)
    for message in notes + run.index.warnings + run.warnings:
        bus.emit("warning", message=message)
    hooks = RunHooks(run)
    if not resume:
        hooks.at_start()
    recent: deque[float] = deque(maxlen=plan.steps_per_epoch)
    loader = BatchLoader.for_run(run)
    step, epoch, loss_value, stop = progress.step, progress.epoch, math.nan, step_done(progress.step, plan)
    try:
        for epoch in range(max(1, progress.epoch), plan.epochs + 1):
            ids = run.dataset.batch_plan(epoch, cfg.train_batch_size, run.seed)  # sample ids only
            starts = list(accumulate(map(len, ids), initial=0))  # each batch's first sample in the epoch
            per_step = ga * run.accelerator.num_processes
            n_groups = math.ceil(len(ids) / per_step)
            done = progress.groups_done if epoch == progress.epoch else 0  # resume mid-epoch
            # this process's batches of the steps still to run, built when their step comes
            groups = [] if stop else rank_groups(len(ids), per_step, run.accelerator.num_processes,
                                                 run.accelerator.process_index, done)
            feed = loader.batches(epoch, [ids[k] for g in groups for k in g])
            epoch_losses: list[float] = []
            for j, mine in zip(range(done, n_groups), groups):
                if run.te_stop_step is not None and step >= run.te_stop_step:
                    freeze_text_encoder(run)  # stop_text_encoder_training
                lrs = group_lrs(run)  # the lr this step uses, before the scheduler moves on
                t0 = time.perf_counter()
                n_images = sum(map(len, ids[j * per_step:(j + 1) * per_step]))
                loss_value, n_images = train_step(run, [(next(feed), starts[k]) for k in mine], n_images, epoch)
                done, step = done + 1, step + 1
                run.progress = Progress(step, epoch, done)
                recent.append(loss_value)
                epoch_losses.append(loss_value)
                dlr = dlr_values(run, lrs)
                bus.emit("step", step, epoch, loss=loss_value, loss_avg=sum(recent) / len(recent), lrs=lrs,
                         images=n_images, dlr=dlr, images_per_s=n_images / (time.perf_counter() - t0),
                         peak_memory_mb=peak_memory_mb(run.device), stats=run.step_stats)
                stop = hooks.after_step(step, epoch, lrs, dlr) or step_done(step, plan)
                if stop:
                    break
            if done == n_groups:  # a whole epoch, not a resume that started at its end
                bus.emit("epoch", step, epoch, loss=sum(epoch_losses) / max(1, len(epoch_losses)))
                hooks.after_epoch(step, epoch)
                maybe_validate(run, step, epoch)  # held-out images at fixed timesteps and noise
            if stop:
                break
    except Diverged as e:
        path = save_adapter(run, step, epoch, f"{cfg.output_name}-step{step:08d}")
        bus.emit("end", step, epoch, output_file=str(path), loss=e.loss, failed=True)
        raise e.user_error(step + 1, path) from None
    except KeyboardInterrupt:
        path = save_adapter(run, step, epoch, f"{cfg.output_name}-step{step:08d}")
        save_state(run, f"{cfg.output_name}-step{step:08d}-state")
        bus.emit("end", step, epoch, output_file=str(path), loss=loss_value, interrupted=True)
        raise
    finally:
        loader.close()  # persistent workers end with the run
    path = save_adapter(run, step, epoch, cfg.output_name)
    if cfg.save_state or cfg.save_state_on_train_end:
        save_state(run, f"{cfg.output_name}-state")
    bus.emit("end", step, epoch, output_file=str(path), loss=loss_value)
    return TrainResult(path, step, epoch, loss_value, run.seed, run.model, run.network)


def step_done(step: int, plan) -> bool:
    return step >= plan.total_steps


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource  # CPU: peak resident set size of the process (KiB on Linux)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dlr_values(run: Run, lrs: dict[str, float]) -> dict[str, float]:
    """d * lr per group for Prodigy / DAdaptation: d as this step updated it, times this step's lr,
    times Prodigy's bias correction sqrt(1 - beta2^k) / (1 - beta1^k) when use_bias_correction is on."""
    import prodigyopt

    inner = getattr(run.optimizer, "optimizer", run.optimizer)
    prodigy = isinstance(inner, prodigyopt.Prodigy)  # also lorakit's foreach and group-scaled Prodigy
    out = {}
    for i, g in enumerate(run.optimizer.param_groups):
        if "d" in g:
            name = g.get("name", str(i))
            out[name] = float(g["d"]) * lrs[name] * bias_correction(g, prodigy)
    return out


def bias_correction(group: dict, prodigy: bool = True) -> float:
    if not prodigy or not group.get("use_bias_correction") or "betas" not in group:
        return 1.0
    k = max(1, int(float(group.get("k", 1))))  # the step just taken (Prodigy counts k after it)
    beta1, beta2 = group["betas"][0], group["betas"][1]
    return (1 - beta2 ** k) ** 0.5 / (1 - beta1 ** k)
