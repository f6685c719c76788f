"""The CLIP tokenizer of every shipped model family: its settings, the shared BPE pair, one loader.

SD1.x, SD2.x and SDXL's two tokenizers use the same BPE vocabulary (OpenAI CLIP's, 49408 tokens) and
differ only in their settings: SD1 and SDXL's tokenizer 1 pad with EOS, SD2 and SDXL's tokenizer 2
pad with "!" (id 0). So the shipped config-only folders hold just the settings
(``tokenizer_config.json``, ``special_tokens_map.json``) and the BPE pair (``vocab.json``,
``merges.txt``, 1.5 MB) is stored once, in ``configs/clip-bpe/``.
:func:`load_tokenizer` reads either kind of folder.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

CLIP_BPE_DIR = Path(__file__).resolve().parent / "configs" / "clip-bpe"
BPE_FILES = ("vocab.json", "merges.txt")
# a folder with one of these carries its own vocabulary (transformers 5 saves only tokenizer.json)
OWN_VOCAB_FILES = ("vocab.json", "tokenizer.json")
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def tokenizer_config(v2: bool) -> dict:
    """SD1 (pad = EOS) or SD2 (pad "!") settings; SDXL's tokenizer 1 is SD1's, tokenizer 2 SD2's."""
    return {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": BOS, "eos_token": EOS,
            "unk_token": EOS, "pad_token": "!" if v2 else EOS, "do_lower_case": True, "errors": "replace",
            "add_prefix_space": False, "clean_up_tokenization_spaces": True}


def _dump(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_tokenizer(folder: Path, v2: bool, bpe: bool = True) -> Path:
    """Write the tokenizer settings into ``folder``, with ``bpe`` also a copy of the shared BPE pair.

    With the pair the folder is complete (any ``CLIPTokenizer.from_pretrained`` reads it: diffusers
    folders); without it only :func:`load_tokenizer` does (the shipped config-only folders).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if bpe:
        for name in BPE_FILES:
            (folder / name).write_bytes((CLIP_BPE_DIR / name).read_bytes())
    cfg = tokenizer_config(v2)
    _dump(folder / "tokenizer_config.json", cfg)
    _dump(folder / "special_tokens_map.json",
          {k: cfg[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")})
    return folder


def write_bpe(folder: Path, vocab: dict[str, int], merges: list[str]) -> Path:
    """Write the BPE pair (``vocab.json``, ``merges.txt`` in the format CLIPTokenizer reads)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


def load_tokenizer(folder: Path):
    """The CLIPTokenizer of ``folder``, offline.

    A folder with its own vocabulary (a user's diffusers folder, the shipped base model) is read as
    it is; a settings-only folder (the shipped configs) gets the shared BPE pair. A folder with
    neither is left to ``from_pretrained``, whose error names what is missing.

    One process that loads models again and again (the test suite, the UI, a script training several
    adapters) gets the tokenizer it read before while the folder's files are unchanged: reading the
    49k-merge BPE takes 0.1-0.25 s, a third of loading the tiny test model. Encoding does not change
    a tokenizer (padding and truncation are set per call), so one instance serves every model.
    """
    folder = Path(folder).resolve()
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.glob("*")) if p.is_file())
    return _load_tokenizer(folder, stamp)


@functools.lru_cache(maxsize=8)
def _load_tokenizer(folder: Path, stamp: tuple):  # stamp: the folder's (name, size, mtime) per file, the key
    from transformers import CLIPTokenizer

    settings_only = (folder / "tokenizer_config.json").is_file() and \
        not any((folder / name).is_file() for name in OWN_VOCAB_FILES)
    shared_bpe = {"vocab_file": str(CLIP_BPE_DIR / "vocab.json"),
                  "merges_file": str(CLIP_BPE_DIR / "merges.txt")} if settings_only else {}
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True, **shared_bpe)
