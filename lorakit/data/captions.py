"""Per-draw caption processing (docs/kohya-rules.md 2.3, sd-scripts BaseDataset.process_caption).

kohya's order, reproduced stage by stage in :meth:`CaptionOptions.apply`:

1. `caption_prefix + " " + caption + " " + caption_suffix` (each only when set);
2. the whole caption is dropped ("") when `random() < caption_dropout_rate` (one draw,
   only made when the rate is > 0) or when `caption_dropout_every_n_epochs` = n > 0 and
   epoch % n == 0 (epochs count from 1);
3. only when shuffle_caption or caption_tag_dropout_rate is on, the caption is split:
   with `keep_tokens_separator` present, the text before it is kept in place, the text
   after it is shuffled, and a second separator marks a kept suffix (empty tags are
   removed in this form); otherwise split on "," (tags stripped, empty ones kept) and
   the first `keep_tokens` tags are kept in place;
4. the movable tags are shuffled (shuffle_caption), then each is dropped with
   probability caption_tag_dropout_rate (`random() < rate` drops it);
5. joined with ", ".

All randomness comes from the `rng` passed in, so a draw is reproducible.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

SEPARATOR = ","  # kohya's caption_separator
# config key -> CaptionOptions field (the keys a dataset subset may set for its own images)
CONFIG_KEYS = {"shuffle_caption": "shuffle", "keep_tokens": "keep_tokens",
               "keep_tokens_separator": "keep_tokens_separator", "caption_prefix": "prefix",
               "caption_suffix": "suffix", "caption_dropout_rate": "dropout_rate",
               "caption_dropout_every_n_epochs": "dropout_every_n_epochs",
               "caption_tag_dropout_rate": "tag_dropout_rate"}


@dataclass(frozen=True)
class CaptionOptions:
    shuffle: bool = False  # shuffle_caption
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    prefix: str = ""  # caption_prefix
    suffix: str = ""  # caption_suffix
    dropout_rate: float = 0.0  # caption_dropout_rate
    dropout_every_n_epochs: int = 0  # caption_dropout_every_n_epochs
    tag_dropout_rate: float = 0.0  # caption_tag_dropout_rate

    def override(self, settings: dict[str, Any]) -> "CaptionOptions":
        """These options with a subset's own values (config key names; other keys ignored)."""
        mine = {CONFIG_KEYS[k]: v for k, v in settings.items() if k in CONFIG_KEYS and v is not None}
        return replace(self, **mine) if mine else self

    @property
    def splits_tags(self) -> bool:
        """kohya only splits and re-joins the caption when a tag operation is on."""
        return self.shuffle or self.tag_dropout_rate > 0

    @property
    def random(self) -> bool:
        """Whether a draw's caption depends on its rng (else only on the epoch, through
        dropout_every_n_epochs: see dropped_in)."""
        return self.dropout_rate > 0 or self.splits_tags

    def dropped_in(self, epoch: int) -> bool:
        """Whether caption_dropout_every_n_epochs drops every caption of `epoch`."""
        return self.dropout_every_n_epochs > 0 and epoch % self.dropout_every_n_epochs == 0

    def apply(self, caption: str, rng: random.Random, epoch: int = 1) -> str:
        if self.prefix:
            caption = self.prefix + " " + caption
        if self.suffix:
            caption = caption + " " + self.suffix
        dropped = self.dropout_rate > 0 and rng.random() < self.dropout_rate
        if dropped or self.dropped_in(epoch):
            return ""
        if not self.splits_tags:
            return caption
        fixed, flex, tail = self.split(caption)
        if self.shuffle:
            rng.shuffle(flex)
        if self.tag_dropout_rate > 0:
            flex = [t for t in flex if rng.random() >= self.tag_dropout_rate]
        return join_tags(fixed + flex + tail)

    def split(self, caption: str) -> tuple[list[str], list[str], list[str]]:
        """(kept head, movable tags, kept tail) of a caption, as kohya splits it."""
        sep = self.keep_tokens_separator
        if sep and sep in caption:
            head, flex_part = caption.split(sep, 1)
            tail_part = ""
            if sep in flex_part:
                flex_part, tail_part = flex_part.split(sep, 1)
            return _nonempty(head), _nonempty(flex_part), _nonempty(tail_part)
        fixed, flex = split_tags(caption, self.keep_tokens)
        return fixed, flex, []


def _nonempty(text: str) -> list[str]:
    return [t.strip() for t in text.split(SEPARATOR) if t.strip()]


def split_tags(caption: str, keep_tokens: int) -> tuple[list[str], list[str]]:
    """'a, b ,c' with keep_tokens=1 -> (['a'], ['b', 'c']).

    As sd-scripts, tags are stripped but empty ones are kept ('a,,b' has three tags).
    """
    tags = [t.strip() for t in caption.strip().split(SEPARATOR)]
    if keep_tokens > 0:
        return tags[:keep_tokens], tags[keep_tokens:]
    return [], tags


def join_tags(tags: list[str]) -> str:
    return ", ".join(tags)


def process_caption(caption: str, *, shuffle: bool = False, keep_tokens: int = 0,
                    rng: random.Random, epoch: int = 1, **options) -> str:
    """One draw of `caption` with the given :class:`CaptionOptions` fields; without any
    tag operation the caption is returned unchanged (as kohya)."""
    return CaptionOptions(shuffle=shuffle, keep_tokens=keep_tokens, **options).apply(caption, rng, epoch)
