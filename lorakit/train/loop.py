"""The training loop: a library call that emits events (start, step, epoch, save, end)."""
from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from collections import deque
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import torch

from ..checkpoints import checkpoint_name, state_name
from ..config.schema import TrainConfig
from ..data.dataset import Batch
from ..data.loader import BatchLoader, rank_groups
from ..events import EventBus, Subscriber
from ..lock import output_lock
from ..transfer import HOST, module_device, on_device, on_device_all, to_device
from ..models.family import PromptEmbeds
from ..optim.foreach_util import acc_dtype
from .hooks import RunHooks
from .loss import latent_seed, sample_seed
from .noise import draw_noise
from .objective import sample_losses
from .plan import Plan
from .run import Run, StepResult
from .save import save_adapter
from .settings import freeze_text_encoder
from .speed import choose_forms
from .setup import check_output_paths, setup_run
from .validation import maybe_validate
from .state import (Diverged, Progress, check_resume_config, check_resume_data, find_state, load_state,
                    save_state)

if TYPE_CHECKING:
    from ..adapters.network import AdapterNetwork
    from ..models.family import ModelFamily


@dataclass
class TrainResult:
    output_file: Path
    steps: int
    epochs: int
    final_loss: float
    seed: int
    model: ModelFamily | None = None    # the loaded model, adapters still applied (for sampling after training)
    network: AdapterNetwork | None = None


def encode_prompts(run: Run, captions: list[str]) -> PromptEmbeds:
    # frozen TE: rows by caption string, only the batch's new strings go through the encoder
    forward = functools.partial(encode_uncached, run)
    return forward(captions) if run.text.cache is None else run.text.cache.encode(captions, forward)


def encode_uncached(run: Run, strings: list[str]) -> PromptEmbeds:
    cfg, m = run.cfg, run.model
    # waiting on the host (place_text_encoders); the type, as "cuda" and "cuda:0" are one device
    away = module_device(m.text_encoders[0]).type != run.device.type
    with torch.set_grad_enabled(run.text.training), \
            on_device_all(m.text_encoders, run.device) if away else contextlib.nullcontext():
        return m.encode_prompts(strings, max_token_length=cfg.max_token_length, clip_skip=cfg.clip_skip,
                                weighted=cfg.weighted_captions, device=run.device)


def place_text_encoders(run: Run, first_epoch: int) -> bool:
    """Frozen text encoders with cached outputs start on the host (train/setup.py). When the cache can
    hold every caption the run will train with from `first_epoch` on, those are encoded now and the
    encoders stay there: no step needs them (sd-scripts' cache_text_encoder_outputs frees them too;
    SDXL's two are 1.5 GiB in bf16). The UNet waits on the host meanwhile, as in sd-scripts, so that
    the device never holds both. Otherwise (shuffled or dropped captions: too many strings to list)
    the encoders go to the device for good, to encode as the steps need. Returns whether they stay
    on the host."""
    from .text_cache import run_captions

    cache = run.text.cache
    if not run.text.on_host or cache is None:
        return False
    captions = run_captions(run.dataset, range(first_epoch, run.plan.epochs + 1), run.seed)
    fits = False
    if captions is not None:
        # the encoders leave before the UNet comes back; the rows are what the steps would have
        # encoded, in the same dtype
        with on_device(run.model.unet, HOST), on_device_all(run.model.text_encoders, run.device), \
                run.accelerator.autocast():
            fits = cache.prefill(captions, functools.partial(encode_uncached, run))
    run.text.on_host = fits
    for encoder in run.model.text_encoders if not fits else ():
        encoder.to(run.device)
    return fits


def batch_latents(run: Run, batch: Batch, seeds: list[int]) -> torch.Tensor:
    vae = run.model.vae
    if batch.latents is not None:  # pinned by the DataLoader's workers on CUDA, else here
        latents = to_device(batch.latents, run.device)
    else:
        with torch.no_grad():
            pixels = batch.pixels.to(run.device, dtype=vae.dtype, non_blocking=True,
                                     memory_format=run.memory_format)
            dist = vae.encode(pixels).latent_dist
        # mean + std * eps as DiagonalGaussianDistribution.sample, but eps from each sample's own
        # seed instead of one stream: a resumed run, or W processes, draw what a straight run does
        eps = torch.stack([torch.randn(dist.mean.shape[1:], generator=torch.Generator().manual_seed(latent_seed(s)))
                           for s in seeds])
        latents = dist.mean + dist.std * to_device(eps, run.device, dist.mean.dtype)
    return latents.float() * vae.config.scaling_factor  # float(): no copy when already float32


def micro_step_loss(run: Run, batch: Batch, seeds: list[int]) -> torch.Tensor:
    """Weighted mean loss over the samples of one micro-batch."""
    latents = batch_latents(run, batch, seeds)
    d = draw_noise(latents, seeds, run.noise_settings, run.model.noise_scheduler.config.num_train_timesteps)
    # host-to-device copies before the UNet is queued: a blocking copy after it would make the
    # host wait for the whole forward before it can queue the loss and the backward
    weights = to_device(batch.loss_weights, run.device)
    mask = None if batch.masks is None else to_device(batch.masks, run.device)
    with run.accelerator.autocast():
        embeds = encode_prompts(run, batch.captions)
    added = run.model.added_conditioning(batch, run.device)
    return sample_losses(run, latents, d, embeds, added, weights, mask).mean()


def group_lrs(run: Run) -> dict[str, float]:
    # float(): Adafactor with relative_step writes its computed lr back into the group as a tensor
    return {g.get("name", str(i)): float(g["lr"]) for i, g in enumerate(run.optimizer.param_groups)}


def clip_gradients(run: Run) -> torch.Tensor | None:
    """max_grad_norm: clip the adapter gradients; returns their norm before clipping (on the device)."""
    if run.cfg.max_grad_norm <= 0:
        return None
    params = [p for g in run.optimizer.param_groups for p in g["params"]]
    return run.accelerator.clip_grad_norm_(params, run.cfg.max_grad_norm)


def optimizer_step(run: Run) -> tuple[dict[str, float], list[tuple[float, float]]]:
    """The update, the schedule and max-norm. Returns the max-norm stats and (d, k) of each group
    that has a d (Prodigy, DAdaptation: as this update computed them, for the d*lr log)."""
    cfg = run.cfg
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    # d and Prodigy's step count k per group, and every module's norm for max-norm, in one read
    # after the update (lorakit's foreach optimizers keep d and k on the device)
    dk = [x for g in run.optimizer.param_groups if "d" in g for x in (g["d"], g.get("k", 0))]
    norms = run.network.delta_norms() if cfg.scale_weight_norms else None  # once per optimizer step
    dk, norm_values = read_together(dk, norms)
    ds = list(zip(dk[::2], dk[1::2]))
    if norms is None:
        return {}, ds
    scaled, avg, top = run.network.cap_norms(norm_values, cfg.scale_weight_norms)  # sd-scripts: every micro-step
    return {"max_norm/keys_scaled": scaled, "norm/avg_key_norm": avg, "max_norm/max_key_norm": top}, ds


def read_together(values: list, tensor: torch.Tensor | None) -> tuple[list[float], list[float]]:
    """(floats of `values`, a list of `tensor`'s elements) with one device -> host transfer for
    everything on a device (`values` may mix Python numbers and 0-dim tensors)."""
    parts = [v.reshape(1) for v in values if isinstance(v, torch.Tensor)]
    if tensor is not None:
        parts.append(tensor.reshape(-1))
    if not parts:
        return [float(v) for v in values], []
    dev = parts[0].device
    read = torch.cat([p.to(dev, acc_dtype(dev)) for p in parts]).tolist()  # d's own dtype: float64, MPS float32
    it = iter(read)
    out = [next(it) if isinstance(v, torch.Tensor) else float(v) for v in values]
    return out, list(it)


def train_step(run: Run, mine: list[tuple[Batch, int]], n_images: int, epoch: int) -> StepResult:
    """One optimizer step over all micro-batches of the step, across processes.

    `mine`: (batch, start) of the micro-batches this process trains (r, r+W, ... of the step,
    see data/loader.rank_groups); `n_images`: images of the whole step, every process's.
    Each sample's noise is keyed by its position in the epoch (`start`), so the result does
    not depend on the batch size, the accumulation or the number of processes.
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
    norm = clip_gradients(run)
    # the step's one device -> host read (each read makes the host wait for the device): the loss
    # for the log, and both values to stop before an update that would make the adapter non-finite
    total, grad_norm = (torch.stack([loss_sum, norm.to(loss_sum)]).tolist() if norm is not None
                        else (loss_sum.item(), None))
    if not math.isfinite(total):
        raise Diverged(total)
    # fp16's grad scaler skips inf steps itself
    if grad_norm is not None and run.cfg.mixed_precision != "fp16" and not math.isfinite(grad_norm):
        raise Diverged(grad_norm, "gradient norm")
    stats, ds = optimizer_step(run)
    stats.update(choose_forms(run.network))  # merged_op = "auto": shapes first met in this step
    if run.text.cache is not None:
        stats.update(run.text.cache.take_stats())
    return StepResult(total / n_images, n_images, stats, ds)


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
    resuming = bool(resume or cfg.resume)  # the command line's --resume wins over the config's
    run, progress = _start(cfg, subscribers, overwrite, resume, resume_changed_data, notes)
    place_text_encoders(run, max(1, progress.epoch))
    cfg, plan, bus, loss = run.cfg, run.plan, run.bus, math.nan
    hooks, loader = RunHooks(run), BatchLoader.for_run(run)
    if not resuming:
        hooks.at_start()
    recent: deque[float] = deque(maxlen=plan.steps_per_epoch)
    step, epoch, stop = progress.step, progress.epoch, step_done(progress.step, plan)
    try:
        for epoch in range(max(1, progress.epoch), plan.epochs + 1):
            done = progress.groups_done if epoch == progress.epoch else 0  # resume mid-epoch
            epoch_losses: list[float] = []
            for j, mine, n_images in [] if stop else epoch_steps(run, loader, epoch, done):
                if run.text.stop_step is not None and step >= run.text.stop_step:
                    freeze_text_encoder(run)  # stop_text_encoder_training
                lrs = group_lrs(run)  # the lr this step uses, before the scheduler moves on
                t0 = time.perf_counter()
                res = train_step(run, mine, n_images, epoch)
                progress, step, loss = Progress(step + 1, epoch, j + 1), step + 1, res.loss
                recent.append(loss)
                epoch_losses.append(loss)
                dlr = dlr_values(run, lrs, res.ds)
                bus.emit("step", step, epoch, loss=loss, loss_avg=sum(recent) / len(recent), lrs=lrs,
                         images=res.images, dlr=dlr, images_per_s=res.images / (time.perf_counter() - t0),
                         peak_memory_mb=peak_memory_mb(run.device), stats=res.stats)
                stop = hooks.after_step(progress, lrs, dlr) or step_done(step, plan)
                if stop:
                    break
            if progress.epoch == epoch and progress.groups_done == epoch_groups(run, epoch):
                # a whole epoch, not a resume that started at its end
                bus.emit("epoch", step, epoch, loss=sum(epoch_losses) / max(1, len(epoch_losses)))
                hooks.after_epoch(progress)
                maybe_validate(run, step, epoch)  # held-out images at fixed timesteps and noise
            if stop:
                break
    except Diverged as e:
        path = save_adapter(run, step, epoch, checkpoint_name(cfg.output_name, step=step))
        bus.emit("end", step, epoch, output_file=str(path), loss=e.loss, failed=True)
        raise e.user_error(step + 1, path) from None
    except KeyboardInterrupt:
        path = save_adapter(run, step, epoch, checkpoint_name(cfg.output_name, step=step))
        save_state(run, state_name(cfg.output_name, step=step), progress)
        bus.emit("end", step, epoch, output_file=str(path), loss=loss, interrupted=True)
        raise
    finally:
        loader.close()  # persistent workers end with the run
    path = save_adapter(run, step, epoch, cfg.output_name)
    if cfg.save_state or cfg.save_state_on_train_end:
        save_state(run, state_name(cfg.output_name), progress)
    bus.emit("end", step, epoch, output_file=str(path), loss=loss)
    return TrainResult(path, step, epoch, loss, run.seed, run.model, run.network)


def _start(cfg: TrainConfig, subscribers: Iterable[Subscriber], overwrite: bool, resume: str | None,
           resume_changed_data: bool, notes: list[str]) -> tuple[Run, Progress]:
    """Check a resume (config, dataset) before any model is loaded, set the run up, load the state
    and announce the start; returns the run and the progress to continue from."""
    state_dir, resume = None, resume or cfg.resume
    if resume:
        state_dir = find_state(cfg.output_dir, resume)
        cfg, changed = check_resume_config(cfg, state_dir)
        notes = notes + changed + check_resume_data(cfg, state_dir, resume_changed_data)
    run = setup_run(cfg, EventBus(list(subscribers)), overwrite or state_dir is not None, state_dir=state_dir)
    progress = load_state(run, state_dir) if state_dir else Progress()
    if progress.groups_done >= run.plan.steps_per_epoch:  # the state was saved at an epoch's end
        progress = Progress(progress.step, progress.epoch + 1, 0)
    run.bus.emit("start", plan=run.plan, seed=run.seed, config=run.cfg, resumed_at=progress.step)
    for message in notes + run.index.warnings + list(run.warnings):
        run.bus.emit("warning", message=message)
    return run, progress


def epoch_batches(run: Run, epoch: int) -> tuple[list[list[int]], int, int]:
    """(the epoch's batches as sample ids, batches per optimizer step, optimizer steps in the epoch):
    every process together, gradient accumulation included."""
    ids = run.dataset.batch_plan(epoch, run.cfg.train_batch_size, run.seed)  # sample ids only
    per_step = run.cfg.gradient_accumulation_steps * run.accelerator.num_processes
    return ids, per_step, math.ceil(len(ids) / per_step)


def epoch_groups(run: Run, epoch: int) -> int:
    """Optimizer steps in `epoch` (every process together)."""
    return epoch_batches(run, epoch)[2]


def epoch_steps(run: Run, loader: BatchLoader, epoch: int, done: int
                ) -> Iterator[tuple[int, list[tuple[Batch, int]], int]]:
    """(index of the step in the epoch, this process's (batch, start) pairs, images in the step of
    every process) for the steps of `epoch` from step `done` on; batches are built when their step comes."""
    acc = run.accelerator
    ids, per_step, n_steps = epoch_batches(run, epoch)
    starts = list(accumulate(map(len, ids), initial=0))  # each batch's first sample in the epoch
    groups = rank_groups(len(ids), per_step, acc.num_processes, acc.process_index, done)
    feed = loader.batches(epoch, [ids[k] for g in groups for k in g])
    for j, mine in zip(range(done, n_steps), groups):
        yield j, [(next(feed), starts[k]) for k in mine], sum(map(len, ids[j * per_step:(j + 1) * per_step]))


def step_done(step: int, plan: Plan) -> bool:
    return step >= plan.total_steps


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource  # CPU: peak resident set size of the process (KiB on Linux)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dlr_values(run: Run, lrs: dict[str, float], ds: list[tuple[float, float]]) -> dict[str, float]:
    """d * lr per group for Prodigy / DAdaptation: d as this step updated it (`ds`: (d, k) per group
    with a "d", read by optimizer_step), times this step's lr, times Prodigy's bias correction
    sqrt(1 - beta2^k) / (1 - beta1^k) when use_bias_correction is on."""
    import prodigyopt

    inner = getattr(run.optimizer, "optimizer", run.optimizer)
    prodigy = isinstance(inner, prodigyopt.Prodigy)  # also lorakit's foreach and group-scaled Prodigy
    groups = [(g.get("name", str(i)), g) for i, g in enumerate(run.optimizer.param_groups) if "d" in g]
    return {name: d * lrs[name] * bias_correction(g, k, prodigy) for (name, g), (d, k) in zip(groups, ds)}


def bias_correction(group: dict, k: float, prodigy: bool = True) -> float:
    if not prodigy or not group.get("use_bias_correction") or "betas" not in group:
        return 1.0
    k = max(1, int(k))  # the step just taken (Prodigy counts k after it)
    beta1, beta2 = group["betas"][0], group["betas"][1]
    return (1 - beta2 ** k) ** 0.5 / (1 - beta1 ** k)
