"""lorakit.models.clip_tokenizer: the BPE pair stored once gives the tokenizers of complete folders."""
from __future__ import annotations

import hashlib
import json
import random
import shutil

import pytest
from transformers import CLIPTokenizer

from lorakit.models.clip_tokenizer import BPE_FILES, CLIP_BPE_DIR, load_tokenizer, write_tokenizer
from lorakit.models.configs_data import CONFIGS_ROOT

# sha256 of the vocab.json / merges.txt that every shipped tokenizer folder carried before they were shared
BPE_SHA256 = {"vocab.json": "3f0c4f7d2086b61b38487075278ea9ed04edb53a03cbb045b86c27190fa8fb69",
              "merges.txt": "9fd691f7c8039210e0fced15865466c65820d09b63988b0174bfe25de299051a"}
# shipped tokenizer folder -> pad id (SD1 and SDXL's tokenizer 1 pad with EOS, SD2 and tokenizer 2 with "!")
SHIPPED = {"sd15/tokenizer": 49407, "sd2-512/tokenizer": 0, "sd2-768-v/tokenizer": 0,
           "sdxl/tokenizer": 49407, "sdxl/tokenizer_2": 0}

WORDS = ("a photo of cat dog masterpiece best quality 1girl solo long_hair looking_at_viewer smile "
         "blue eyes red dress standing outdoors sky cloud tree, lkshape circle triangle square "
         "don't it's we're o'clock BREAK AND 1234 3.14 1e-5 #hashtag @user http://x.io/a?b=c "
         "<lora:style:0.8> [[blurry]] {a|b} score_9 score_8_up rating:safe").split()
UNICODE = ["café", "naïve", "Ünïcödé", "Straße", "東京タワー", "猫の写真", "한국어", "Привет мир", "مرحبا",
           "שלום", "ελληνικά", "हिन्दी", "ไทย", "🐱", "🐈‍⬛", "👩🏽‍🚀", "🏳️‍🌈", "❤️", "✨✨", "ﬁ ligature",
           "ｆｕｌｌｗｉｄｔｈ", "e\u0301", "\u200b", "\t", "\n", "  ", "…", "—", "«»", "™", "½"]


def _captions() -> list[str]:
    rng = random.Random(0)
    fixed = ["", " ", "!", "!!!", "a photo of a cat", "(word:1.2)", "((masterpiece)), (best quality:1.4), [bad]",
             "\\(escaped\\) (a:0.5) (b c:1.15) [d] {e}", "<|startoftext|>", "<|endoftext|> after",
             "A PHOTO OF A CAT!", "wow!!! such! pad! tokens!", "  leading and trailing  ", "tabs\tand\nnewlines",
             " ".join(WORDS), ", ".join(WORDS * 3), "a " * 300, "!" * 120]
    out = list(fixed)
    for i in range(300):
        n = rng.choice((1, 3, 8, 20, 60, 150))
        parts = []
        for _ in range(n):
            r = rng.random()
            w = rng.choice(WORDS) if r < 0.6 else rng.choice(UNICODE) if r < 0.85 else \
                f"({rng.choice(WORDS)}:{rng.choice((0.5, 0.8, 1.1, 1.2, 1.5))})"
            parts.append(w.upper() if rng.random() < 0.1 else w)
        out.append(rng.choice((" ", ", ", ",", " ,  ")).join(parts))
    return out


CAPTIONS = _captions()


def _old_way(shipped, tmp_path):
    """The tokenizer as it was loaded before: a complete folder (settings + BPE pair) read by from_pretrained."""
    folder = tmp_path / "complete"
    folder.mkdir()
    for f in shipped.iterdir():
        shutil.copy2(f, folder / f.name)
    for name in BPE_FILES:
        shutil.copy2(CLIP_BPE_DIR / name, folder / name)
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def test_bpe_pair_is_stored_once_and_unchanged():
    for name in BPE_FILES:
        assert hashlib.sha256((CLIP_BPE_DIR / name).read_bytes()).hexdigest() == BPE_SHA256[name]
        assert [p.relative_to(CONFIGS_ROOT).as_posix() for p in CONFIGS_ROOT.rglob(name)] == [f"clip-bpe/{name}"]
    for sub in SHIPPED:
        assert sorted(p.name for p in (CONFIGS_ROOT / sub).iterdir()) == ["special_tokens_map.json",
                                                                          "tokenizer_config.json"]


@pytest.mark.parametrize("sub", list(SHIPPED))
def test_shared_bpe_gives_the_ids_of_a_complete_folder(sub, tmp_path):
    assert len(CAPTIONS) == 318 and max(len(c) for c in CAPTIONS) > 1000
    new, old = load_tokenizer(CONFIGS_ROOT / sub), _old_way(CONFIGS_ROOT / sub, tmp_path)
    assert (new.bos_token_id, new.eos_token_id, new.pad_token_id) == (49406, 49407, SHIPPED[sub])
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "pad_token", "model_max_length"):
        assert getattr(new, attr) == getattr(old, attr), attr
    assert len(new) == len(old) == 49408 and new.get_vocab() == old.get_vocab()
    for length in (77, 227):
        ids = new(CAPTIONS, padding="max_length", max_length=length, truncation=True).input_ids
        assert ids == old(CAPTIONS, padding="max_length", max_length=length, truncation=True).input_ids
        assert all(len(row) == length for row in ids)
        # the long captions were cut (EOS last), the short ones padded with this folder's pad id
        assert ids[CAPTIONS.index("a " * 300)][-1] == 49407 and ids[0][:3] == [49406, 49407, SHIPPED[sub]]
    # unpadded, as the weighted-caption path tokenizes each piece
    assert new(CAPTIONS).input_ids == old(CAPTIONS).input_ids


def test_folder_with_its_own_vocabulary_is_read_as_it_is(tmp_path):
    # a byte-level vocabulary of 514 tokens without merges: loaded from the folder, not the shared pair
    symbols = [chr(c) for c in range(ord("!"), ord("!") + 256)]
    vocab = {t: i for i, t in enumerate(symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>",
                                                                                   "<|endoftext|>"])}
    own = write_tokenizer(tmp_path / "own", v2=False, bpe=False)
    (own / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (own / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tok = load_tokenizer(own)
    assert len(tok) == 514 and tok.eos_token_id == 513
    complete = write_tokenizer(tmp_path / "complete", v2=True)   # with its copy of the BPE pair
    assert (complete / "vocab.json").read_bytes() == (CLIP_BPE_DIR / "vocab.json").read_bytes()
    assert load_tokenizer(complete)("a photo of a cat!").input_ids == [49406, 320, 1125, 539, 320, 2368, 0, 49407]


def test_transformers5_diffusers_folder_keeps_its_tokenizer_json(tiny_model_dir):
    folder = tiny_model_dir / "tokenizer"
    assert (folder / "tokenizer.json").is_file() and not (folder / "vocab.json").exists()
    tok = load_tokenizer(folder)
    assert tok("a photo of a cat", padding="max_length", max_length=9).input_ids == \
        [49406, 320, 1125, 539, 320, 2368, 49407, 49407, 49407]


def test_folder_without_tokenizer_files_fails_as_from_pretrained_does(tmp_path):
    with pytest.raises(OSError):
        load_tokenizer(tmp_path / "missing")


def test_a_folder_read_again_gives_the_same_tokenizer_until_its_files_change(tmp_path):
    folder = write_tokenizer(tmp_path / "tok", v2=False)
    first = load_tokenizer(folder)
    assert load_tokenizer(folder) is first  # read once per process
    assert first("a red circle").input_ids == [49406, 320, 736, 7117, 49407]
    for name in ("tokenizer_config.json", "special_tokens_map.json"):  # SD2's padding
        config = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({**config, "pad_token": "!"}))
    changed = load_tokenizer(folder)
    assert changed is not first and changed.pad_token == "!" and first.pad_token != "!"
