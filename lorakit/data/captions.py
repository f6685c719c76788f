"""Per-draw caption processing (kohya-semantics 2.3, sd-scripts BaseDataset.process_caption).

kohya's order is: prefix/suffix -> whole-caption dropout -> (when shuffling or tag
dropout is on) split on the separator, keep the first `keep_tokens` tags (or the text
before `keep_tokens_separator`), shuffle the rest, drop tags -> join with ", ".
This first cut implements shuffle and keep_tokens; each later step is a stage of
:meth:`CaptionOptions.apply` and a field of :class:`CaptionOptions`.

All randomness comes from the `rng` passed in, so a draw is reproducible.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

SEPARATOR = ","  # kohya's caption_separator


@dataclass(frozen=True)
class CaptionOptions:
    shuffle: bool = False  # shuffle_caption
    keep_tokens: int = 0
    # later: caption_prefix, caption_suffix, caption_dropout_rate,
    # caption_dropout_every_n_epochs, caption_tag_dropout_rate, keep_tokens_separator

    @property
    def splits_tags(self) -> bool:
        """kohya only splits and re-joins the caption when a tag operation is on."""
        return self.shuffle

    def apply(self, caption: str, rng: random.Random) -> str:
        if not self.splits_tags:
            return caption
        fixed, flex = split_tags(caption, self.keep_tokens)
        if self.shuffle:
            rng.shuffle(flex)
        return join_tags(fixed + flex)


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
                    rng: random.Random) -> str:
    """One draw of `caption`: with shuffle, the tags after the first `keep_tokens` are shuffled
    and all are joined with ', '; without, the caption is returned unchanged (as kohya)."""
    return CaptionOptions(shuffle=shuffle, keep_tokens=keep_tokens).apply(caption, rng)
