"""lorakit.models.text: kohya token chunks (2.4) and hidden states with clip_skip (2.5)."""
from __future__ import annotations

import copy

import pytest
import torch

from lorakit.models.text import encode, final_layer_norm, tokenize
from lorakit.models.tiny import load_clip_tokenizer

BOS, EOS, A = 49406, 49407, 320   # "a" -> 320


@pytest.fixture(scope="module")
def tok1():
    return load_clip_tokenizer(False)


@pytest.fixture(scope="module")
def tok2():
    return load_clip_tokenizer(True)


@pytest.fixture(scope="module")
def te(tiny_components):
    return tiny_components(seed=0)["text_encoder"]


def test_77_tokens_is_plain_tokenizer(tok1):
    ids = tokenize(tok1, ["a photo of a cat", ""], None)
    assert ids.shape == (2, 1, 77) and ids.dtype == torch.long
    assert ids[0, 0, :7].tolist() == [BOS, 320, 1125, 539, 320, 2368, EOS]
    assert ids[0, 0, 7:].tolist() == [EOS] * 70
    assert ids[1, 0, :2].tolist() == [BOS, EOS]
    assert torch.equal(tokenize(tok1, ["a photo of a cat"], 75), ids[:1])


def test_sd1_chunks_150(tok1):
    ids = tokenize(tok1, ["a " * 100, "a " * 200], 150)
    assert ids.shape == (2, 2, 77)
    # 100 tokens: chunk 0 = BOS + 75 x "a" + ids[-1] (pad = EOS); chunk 1 = BOS + 25 x "a" + EOS...
    assert ids[0, 0].tolist() == [BOS] + [A] * 75 + [EOS]
    assert ids[0, 1].tolist() == [BOS] + [A] * 25 + [EOS] * 51
    # 200 tokens truncated to 150: the EOS kept at the end of the 152 ids closes chunk 1
    assert ids[1, 0].tolist() == [BOS] + [A] * 75 + [EOS]
    assert ids[1, 1].tolist() == [BOS] + [A] * 75 + [EOS]


def test_chunk_boundaries_225_on_distinct_ids(tok1):
    words = [str(d) for d in range(10)] * 20          # digits tokenize one by one: ids 271..280
    ids = tokenize(tok1, [" ".join(words)], 225)[0]
    assert ids.shape == (3, 77)
    raw = [271 + int(w) for w in words]              # 200 ids
    assert ids[0].tolist() == [BOS] + raw[0:75] + [EOS]
    assert ids[1].tolist() == [BOS] + raw[75:150] + [EOS]
    assert ids[2].tolist() == [BOS] + raw[150:200] + [EOS] * 26


def test_sd2_fixups(tok2):
    assert tok2.pad_token_id == 0
    ids = tokenize(tok2, ["a " * 100, "a photo", "a " * 200], 150)
    # chunk[-2] is "a" (neither eos nor pad) -> last id forced to EOS instead of the pad at ids[-1]
    assert ids[0, 0].tolist() == [BOS] + [A] * 75 + [EOS]
    assert ids[0, 1].tolist() == [BOS] + [A] * 25 + [EOS] + [0] * 50   # chunk[-2] is pad: unchanged
    # an all-pad second chunk starts with EOS: chunk[1] == pad -> EOS
    assert ids[1, 0].tolist() == [BOS, A, 1125, EOS] + [0] * 73
    assert ids[1, 1].tolist() == [BOS, EOS] + [0] * 75
    assert ids[2, 1].tolist() == [BOS] + [A] * 75 + [EOS]


def test_encode_lengths_and_layout(tok1, te):
    ids = tokenize(tok1, ["a photo of a cat", "a " * 120], 150)
    with torch.no_grad():
        out = encode(te, ids)
        per_chunk = te(ids.reshape(-1, 77)).last_hidden_state.reshape(2, 2, 77, 32)
        plain = te(tokenize(tok1, ["a photo of a cat"], None)[:, 0]).last_hidden_state
    assert out.shape == (2, 152, 32)
    assert encode(te, tokenize(tok1, ["x"] * 3, 225)).shape == (3, 227, 32)
    # short caption: chunk 0 is exactly the plain 77-token ids; its states fill positions 0..75
    assert torch.equal(ids[0, 0], tokenize(tok1, ["a photo of a cat"], None)[0, 0])
    assert torch.allclose(out[0, :76], plain[0, :76], atol=1e-6)
    assert torch.allclose(out[:, 76:151], per_chunk[:, 1, 1:76], atol=1e-6)
    assert torch.allclose(out[:, 151], per_chunk[:, 1, 76], atol=1e-6)
    # every chunk is encoded on its own: chunk 1 starts with BOS, so its states differ from a 152-long run
    assert not torch.allclose(out[1, 76], per_chunk[1, 0, 76], atol=1e-3)
    # one chunk: the plain last_hidden_state, all 77 positions
    with torch.no_grad():
        assert torch.equal(encode(te, tokenize(tok1, ["a photo of a cat"], 75)), plain)


def test_clip_skip_2_is_penultimate_layer_through_final_norm(tok1, te):
    ids = tokenize(tok1, ["a photo of a cat", "lkshape, red circle"], None)
    one_layer = copy.deepcopy(te)
    one_layer.encoder.layers = one_layer.encoder.layers[:1]        # the same weights, last layer cut off
    with torch.no_grad():
        skip2 = encode(te, ids, clip_skip=2)
        skip1 = encode(te, ids, clip_skip=1)
        want = one_layer(ids[:, 0]).last_hidden_state                # = final_layer_norm(hidden_states[-2])
        hs = te(ids[:, 0], output_hidden_states=True).hidden_states
    assert len(hs) == 3
    assert torch.allclose(skip2, want, atol=1e-6)
    assert torch.allclose(skip2, te.final_layer_norm(hs[-2]), atol=1e-6)
    assert (skip2 - skip1).abs().max() > 1e-2


def test_final_layer_norm_found_in_both_transformers_layouts(te):
    class V4Style(torch.nn.Module):              # transformers 4: CLIPTextModel.text_model.final_layer_norm
        def __init__(self, inner):
            super().__init__()
            self.text_model = inner

    assert final_layer_norm(te) is te.final_layer_norm
    assert final_layer_norm(V4Style(te)) is te.final_layer_norm
