"""Text-encoder outputs (:class:`PromptEmbeds` rows: states and any pooled vector) cached by caption
string while the text encoder is frozen.

With the TE frozen (text_encoder_lr = 0 or network_train_unet_only) a caption's states
depend on its string only, so each distinct string is encoded once and its row reused
whenever the same string comes again (repeats, epochs). The key is the exact string the
batch trains with, after caption shuffle / tag dropout / caption dropout, so those stay
exact; sd-scripts' --cache_text_encoder_outputs instead refuses them. It only pays when
strings repeat: with heavy shuffling most lookups miss and the cache only costs memory.

Rows stay on the training device in the dtype the encoder produced them (under the
loop's autocast), in a least-recently-used store capped at DEFAULT_MAX_MB; a batch
encodes only its missing captions, in one forward.

When every caption string of the run can be listed before it starts (run_captions: the
dataset draws each caption from (seed, epoch, sample)) and their rows fit in the store,
they are all encoded first (prefill) and the frozen encoders stay off the device
(train/loop.py place_text_encoders), as sd-scripts' cache_text_encoder_outputs does:
SDXL's two encoders are 1.5 GiB of bf16 weights that no step then needs.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Callable, Iterable

from ..models.family import PromptEmbeds

if TYPE_CHECKING:
    from ..data.dataset import TrainDataset

# ~1000 SD1 rows in float32 (77 x 768 x 4 bytes = 231 KiB each); ~2000 in fp16/bf16
DEFAULT_MAX_MB = 256.0
# run_captions gives up past this many distinct strings (shuffled captions: no point listing them)
# or this many draws (every sample of every epoch: a long run over a large dataset)
MAX_PREFILL_STRINGS = 8192
MAX_LISTED_DRAWS = 500_000


class TextCache:
    def __init__(self, max_mb: float = DEFAULT_MAX_MB):
        self.max_bytes = int(max_mb * 2**20)
        self.rows: OrderedDict[str, PromptEmbeds] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self.rows)

    def encode(self, captions: list[str], encode_fn: Callable[[list[str]], PromptEmbeds]) -> PromptEmbeds:
        """The embeddings of `captions`; `encode_fn(strings)` encodes the ones not cached."""
        missing = [c for c in dict.fromkeys(captions) if c not in self.rows]
        fresh: dict[str, PromptEmbeds] = {}
        if missing:
            embeds = encode_fn(missing).detach()
            fresh = {c: embeds.row(i) for i, c in enumerate(missing)}
        n_hit = sum(c in self.rows for c in captions)
        self.hits, self.misses = self.hits + n_hit, self.misses + len(captions) - n_hit
        out = PromptEmbeds.stack([fresh[c] if c in fresh else self.rows[c] for c in captions])
        for c in captions:
            if c in self.rows:
                self.rows.move_to_end(c)
        for c, row in fresh.items():
            self._put(c, row)
        return out

    def prefill(self, captions: list[str], encode_fn: Callable[[list[str]], PromptEmbeds], chunk: int = 16) -> bool:
        """Encode `captions` ahead, `chunk` strings per forward. True when every row fits in the store
        together (no later lookup of them misses); the lookups do not count in the step stats."""
        for i in range(0, len(captions), chunk):
            self.encode(captions[i:i + chunk], encode_fn)
            if len(self.rows) < min(i + chunk, len(captions)):  # one was dropped: they do not all fit
                self.hits = self.misses = 0
                return False
        self.hits = self.misses = 0
        return True

    def _put(self, caption: str, row: PromptEmbeds) -> None:
        size = row.nbytes()
        if size > self.max_bytes:
            return
        while self.rows and self.bytes + size > self.max_bytes:
            _, old = self.rows.popitem(last=False)
            self.bytes -= old.nbytes()
        self.rows[caption] = row
        self.bytes += size

    def take_stats(self) -> dict[str, float]:
        """Lookups since the last call (one optimizer step), for the step's stats."""
        out = {"text_cache/hits": self.hits, "text_cache/misses": self.misses, "text_cache/rows": len(self.rows)}
        self.hits = self.misses = 0
        return out


def run_captions(dataset: "TrainDataset", epochs: Iterable[int], seed: int) -> list[str] | None:
    """Every distinct caption string the run trains with over `epochs`, in first-use order; None
    past MAX_PREFILL_STRINGS distinct strings or MAX_LISTED_DRAWS draws. Fixed captions are listed
    from the epochs that can differ only (TrainDataset.caption_epochs), so a long run over a large
    dataset is listed in one epoch's draws."""
    seen: dict[str, None] = {}
    draws = 0
    for epoch in dataset.caption_epochs(epochs):
        for sample_id in range(len(dataset)):
            seen.setdefault(dataset.caption_for(sample_id, epoch, seed))
            draws += 1
            if len(seen) > MAX_PREFILL_STRINGS or draws > MAX_LISTED_DRAWS:
                return None
    return list(seen)
