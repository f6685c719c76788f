"""Schedule-free optimizers: train/eval modes, and what their configs should hear about.

Schedule-free AdamW / RAdam / SGD (the `schedulefree` package) and ProdigyPlusScheduleFree
(`prodigy-plus-schedule-free`) keep two sequences: the parameters hold the training
iterate y while stepping ("train" mode) and the averaged weights x after `eval()`.
The weights to save, sample and validate with are x; steps must be taken on y. So:

- `train_mode(opt)` once before the first step, and again after loading a saved
  optimizer state (the state carries the mode it was saved in);
- `with eval_mode(opt):` around every save, sample and validation. On exit the previous
  mode comes back (a no-op when it was already eval, so nesting is safe).

Both are no-ops for optimizers without `train()`/`eval()` (AdamW, Prodigy, ...), and both
look through wrappers that hold the real optimizer as `.optimizer` (accelerate's
AcceleratedOptimizer, DeepSpeed's).

ProdigyPlusScheduleFree with different group lrs: with its default `split_groups=True`
each group estimates its own d, and the group lr multiplies that group's d. The d of a
group with a lower lr grows to make up for it (docs/optimizers.md has the measured
numbers), so the TE/UNet step ratio is not text_encoder_lr / unet_lr there; lorakit
passes the lrs through as kohya does and warns. `split_groups=False` (one shared d) or
`split_groups_mean=True` (the harmonic mean of the groups' d, shared) give steps in
the ratio of the lrs.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

# classes whose parameters hold the training iterate between train() and eval()
SCHEDULE_FREE = frozenset({"AdamWScheduleFree", "RAdamScheduleFree", "SGDScheduleFree",
                           "ProdigyPlusScheduleFree"})


def is_prodigy_plus(cls: type) -> bool:
    return any(getattr(b, "__module__", "").split(".")[0] == "prodigyplus" for b in cls.__mro__)


def is_schedule_free(cls: type, kwargs: dict[str, Any]) -> bool:
    """True when `cls(**kwargs)` keeps a separate evaluation average (prodigyplus can turn it off)."""
    if is_prodigy_plus(cls):
        return bool(kwargs.get("use_schedulefree", True))
    return any(b.__name__ in SCHEDULE_FREE for b in cls.__mro__)


def unwrap(optimizer: Any) -> Any:
    """The optimizer that owns train()/eval(): through accelerate's / DeepSpeed's `.optimizer`."""
    seen = 0
    while seen < 8 and getattr(optimizer, "optimizer", None) is not None \
            and hasattr(optimizer.optimizer, "param_groups"):
        optimizer, seen = optimizer.optimizer, seen + 1
    return optimizer


def _has_modes(opt: Any) -> bool:
    return callable(getattr(opt, "train", None)) and callable(getattr(opt, "eval", None))


def in_train_mode(optimizer: Any) -> bool:
    """Whether the parameters hold the training iterate (always True without modes)."""
    opt = unwrap(optimizer)
    flags = [bool(g["train_mode"]) for g in getattr(opt, "param_groups", []) if "train_mode" in g]
    if not _has_modes(opt) or not flags:
        return getattr(opt, "_lorakit_train_mode", True)
    return all(flags)


def train_mode(optimizer: Any) -> None:
    """Put a schedule-free optimizer's parameters on the training iterate; no-op for the others."""
    opt = unwrap(optimizer)
    if _has_modes(opt):
        opt.train()
        opt._lorakit_train_mode = True


@contextmanager
def eval_mode(optimizer: Any) -> Iterator[None]:
    """Parameters hold the evaluation weights inside the block; the previous mode is restored after."""
    opt = unwrap(optimizer)
    if not _has_modes(opt):
        yield
        return
    was_training = in_train_mode(opt)
    opt.eval()
    opt._lorakit_train_mode = False
    try:
        yield
    finally:
        if was_training:
            opt.train()
            opt._lorakit_train_mode = True


def schedule_free_warnings(name: str, cls: type, kwargs: dict[str, Any], lrs: list[float],
                           scheduler: str, scheduler_type: str | None, warmup: float,
                           max_grad_norm: float) -> list[str]:
    out: list[str] = []
    prodigy = is_prodigy_plus(cls)
    if prodigy and lrs and max(lrs) <= 0.1:
        out.append(f"{name} adapts its step size and expects lrs around 1.0; the largest here is "
                   f"{max(lrs):g}, which scales every step down by that factor")
    if prodigy and len(set(lrs)) > 1 and kwargs.get("split_groups", True) and not kwargs.get("split_groups_mean"):
        out.append(f"{name} with split_groups=True (its default) estimates d per group and each group's d "
                   "adapts to its lr, so text_encoder_lr / unet_lr is not the ratio of their steps; set "
                   "optimizer_args split_groups_mean=True or split_groups=False for steps in that ratio")
    if prodigy and max_grad_norm > 0:
        out.append(f"{name} recommends no gradient clipping (it disturbs the step-size estimate); "
                   f"max_grad_norm is {max_grad_norm:g}, set it to 0 to follow that advice")
    if not is_schedule_free(cls, kwargs):
        return out
    if scheduler_type or scheduler != "constant":
        own = "its own warmup_steps argument" if "warmup_steps" in _init_args(cls) else "no external warmup"
        out.append(f"{name} is schedule-free: it expects lr_scheduler \"constant\" (it averages the weights "
                   f"instead of decaying the lr) and has {own}; {scheduler_type or scheduler} changes its lr anyway")
    elif warmup > 0 and "warmup_steps" in _init_args(cls):
        out.append(f"{name}: lr_warmup_steps is ignored by lr_scheduler \"constant\"; use optimizer_args "
                   "warmup_steps=N for the optimizer's own warmup")
    return out


def _init_args(cls: type) -> tuple[str, ...]:
    code = getattr(cls.__init__, "__code__", None)
    return code.co_varnames[:code.co_argcount] if code is not None else ()
