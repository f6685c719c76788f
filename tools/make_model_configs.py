"""Write the config-only model folders shipped under lorakit/models/configs/.

Run from the repository root: ``.venv/bin/python tools/make_model_configs.py``.

The CLIP BPE pair (configs/clip-bpe/vocab.json, merges.txt), written once and shared by every
config folder's tokenizer settings, is derived offline from OpenAI's BPE list shipped in the
open-clip-torch wheel (MIT licence): vocab = the 256 byte symbols, the same with
"</w>", the joined merges, then the two special tokens (49408 entries). The model
configs are the published SD1.5 / SD2-base / SD2-768-v / SDXL base 1.0 diffusers configs, written
from their known values (no weights).
"""
from __future__ import annotations

import gzip
import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lorakit.models.clip_tokenizer import BOS, CLIP_BPE_DIR, EOS, write_bpe  # noqa: E402
from lorakit.models.configs_data import CONFIG_FOLDERS, write_config_folder  # noqa: E402
from lorakit.models.sdxl_configs import SDXL_CONFIG_DIR, write_sdxl_config_folder  # noqa: E402


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode symbol table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install open_clip_torch (pip install --no-deps open_clip_torch) to regenerate")
    path = os.path.join(spec.submodule_search_locations[0], "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == 49408, len(vocab)
    return vocab, merges


def main() -> None:
    vocab, merges = clip_vocab_and_merges()
    write_bpe(CLIP_BPE_DIR, vocab, merges)
    print("wrote", CLIP_BPE_DIR)
    out = ROOT / "lorakit" / "models" / "configs"
    for name in CONFIG_FOLDERS:
        write_config_folder(out / name, name)
        print("wrote", out / name)
    write_sdxl_config_folder(SDXL_CONFIG_DIR)
    print("wrote", SDXL_CONFIG_DIR)


if __name__ == "__main__":
    main()
