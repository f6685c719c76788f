"""Caption tokens and text-encoder states, as kohya sd-scripts computes them.

Tokens (docs/kohya-rules.md 2.4): captions are tokenized to ``max_token_length + 2`` ids
(padded/truncated); longer-than-77 sequences are cut into 77-token chunks
``[BOS] + ids[i:i+75] + [ids[-1]]`` for ``i in range(1, L - 77 + 2, 75)``. When pad != eos
(SD2) each chunk is fixed up: if ``chunk[-2]`` is neither eos nor pad, ``chunk[-1] = eos``;
if ``chunk[1]`` is pad, ``chunk[1] = eos``.

States (2.4, 2.5): every chunk is encoded on its own; ``clip_skip`` k takes
``hidden_states[-k]`` through ``final_layer_norm``; the result keeps state 0 of the first
chunk, positions 1..75 of every chunk and the last state of the last chunk: length n*75+2.
"""
from __future__ import annotations

import re

import torch

from ..transfer import to_device

CHUNK = 77
BODY = CHUNK - 2


def tokenize(tokenizer, captions: list[str], max_token_length: int | None) -> torch.LongTensor:
    """Ids of shape (B, n_chunks, 77); n_chunks = max_token_length // 75 (1 when None)."""
    length = CHUNK if max_token_length is None else max_token_length + 2
    ids = tokenizer(list(captions), padding="max_length", truncation=True, max_length=length,
                    return_tensors="pt").input_ids
    if length <= CHUNK:
        return ids.reshape(len(captions), 1, CHUNK)
    return torch.stack([chunk_ids(row, tokenizer, length) for row in ids])


def chunk_ids(row: torch.Tensor, tokenizer, length: int) -> torch.Tensor:
    """One caption's ids (length,) cut into (n, 77) chunks (see the module docstring)."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    chunks = []
    for i in range(1, length - CHUNK + 2, BODY):
        chunk = torch.cat([row[:1], row[i:i + BODY], row[-1:]])
        if pad != eos:  # SD2 tokenizer (pad "!"): kohya's fix-ups
            if chunk[-2] != eos and chunk[-2] != pad:
                chunk[-1] = eos
            if chunk[1] == pad:
                chunk[1] = eos
        chunks.append(chunk)
    return torch.stack(chunks)


def final_layer_norm(text_encoder):
    """The final LayerNorm of a CLIPTextModel (transformers 4: .text_model.final_layer_norm)."""
    inner = getattr(text_encoder, "text_model", text_encoder)
    return inner.final_layer_norm


def encode(text_encoder, input_ids: torch.Tensor, clip_skip: int = 1) -> torch.Tensor:
    """States (B, n*75+2, D) from ids (B, n, 77); see the module docstring."""
    if input_ids.dim() == 2:
        input_ids = input_ids.unsqueeze(1)
    b, n, width = input_ids.shape
    flat = input_ids.reshape(b * n, width).to(text_encoder.device)
    if clip_skip is None or clip_skip <= 1:
        states = text_encoder(flat, return_dict=True).last_hidden_state
    else:
        out = text_encoder(flat, output_hidden_states=True, return_dict=True)
        states = final_layer_norm(text_encoder)(out.hidden_states[-clip_skip])
    states = states.reshape(b, n, width, -1)
    if n == 1:
        return states[:, 0]
    parts = [states[:, 0, :1]] + [states[:, c, 1:width - 1] for c in range(n)] + [states[:, -1, -1:]]
    return torch.cat(parts, dim=1)


# ---- weighted captions (weighted_captions) -------------------------------------------------
# kohya's attention syntax (sd-scripts TokenizeStrategy._get_weighted_input_ids): "(x)" multiplies
# the weight of x by 1.1, "[x]" divides it by 1.1, "(x:w)" multiplies it by w; brackets nest and
# multiply; an unclosed bracket applies to the rest; "\(" "\)" "\[" "\]" "\\" are literal.
ROUND, SQUARE = 1.1, 1 / 1.1
_ATTENTION = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:([+-]?[.\d]+)\)|\)|]|[^\\()\[\]:]+|:")


def parse_attention(text: str) -> list[tuple[str, float]]:
    """[(text, weight), ...] of a caption; neighbours of equal weight merged; [("", 1.0)] if empty."""
    pieces: list[list] = []
    rounds: list[int] = []
    squares: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for m in _ATTENTION.finditer(text):
        tok, weight = m.group(0), m.group(1)
        if tok.startswith("\\"):
            pieces.append([tok[1:], 1.0])
        elif tok == "(":
            rounds.append(len(pieces))
        elif tok == "[":
            squares.append(len(pieces))
        elif weight is not None and rounds:
            scale(rounds.pop(), float(weight))
        elif tok == ")" and rounds:
            scale(rounds.pop(), ROUND)
        elif tok == "]" and squares:
            scale(squares.pop(), SQUARE)
        else:
            pieces.append([tok, 1.0])
    for start in rounds:
        scale(start, ROUND)
    for start in squares:
        scale(start, SQUARE)
    merged: list[list] = []
    for piece in pieces or [["", 1.0]]:
        if merged and merged[-1][1] == piece[1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return [(t, w) for t, w in merged]


def tokenize_weighted(tokenizer, captions: list[str], max_token_length: int | None
                      ) -> tuple[torch.LongTensor, torch.Tensor]:
    """Ids (B, n, 77) as :func:`tokenize` gives for the captions without their brackets, and the
    weight of each id (B, n, 77) float32: each piece's weight for its tokens, 1.0 for BOS, EOS,
    padding and the chunk ends. Text past the token limit is cut, as in tokenize."""
    length = CHUNK if max_token_length is None else max_token_length + 2
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    rows, weight_rows = [], []
    for caption in captions:
        ids: list[int] = []
        weights: list[float] = []
        for piece, w in parse_attention(caption):
            piece_ids = tokenizer(piece).input_ids[1:-1]  # without its own BOS / EOS
            ids += piece_ids
            weights += [w] * len(piece_ids)
        ids, weights = ids[:length - 2], weights[:length - 2]
        rows.append([bos] + ids + [eos] + [pad] * (length - 2 - len(ids)))
        weight_rows.append([1.0] + weights + [1.0] * (length - 1 - len(weights)))
    full, w = torch.tensor(rows), torch.tensor(weight_rows, dtype=torch.float32)
    if length <= CHUNK:
        return full.reshape(len(captions), 1, CHUNK), w.reshape(len(captions), 1, CHUNK)
    ids = torch.stack([chunk_ids(row, tokenizer, length) for row in full])
    chunked = torch.ones(ids.shape, dtype=torch.float32)
    for c, i in enumerate(range(1, length - CHUNK + 2, BODY)):
        chunked[:, c, 1:1 + BODY] = w[:, i:i + BODY]
    return ids, chunked


def apply_token_weights(states: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Each token's state (B, n*75+2, D) times its weight (B, n, 77): one chunk multiplies all 77
    states; several chunks multiply their 75 body states each (BOS and EOS states keep theirs),
    as sd-scripts' encode_tokens_with_weights (no renormalisation of the mean)."""
    w = to_device(weights, states.device, states.dtype)
    if w.shape[1] == 1:
        return states * w[:, 0, :, None]
    body = torch.cat([w[:, c, 1:-1] for c in range(w.shape[1])], dim=1)
    ones = torch.ones_like(body[:, :1])
    return states * torch.cat([ones, body, ones], dim=1)[..., None]


def encode_captions(tokenizer, text_encoder, captions: list[str], max_token_length: int | None,
                    clip_skip: int = 1, weighted: bool = False, device=None) -> torch.Tensor:
    """States (B, n*75+2, D) of caption strings; weighted: kohya's (word:1.2) syntax applied."""
    if weighted:
        ids, weights = tokenize_weighted(tokenizer, captions, max_token_length)
    else:
        ids, weights = tokenize(tokenizer, captions, max_token_length), None
    states = encode(text_encoder, to_device(ids, device or text_encoder.device), clip_skip=clip_skip)
    return states if weights is None else apply_token_weights(states, weights)
