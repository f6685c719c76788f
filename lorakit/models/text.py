"""Caption tokens and text-encoder states, as kohya sd-scripts computes them.

Tokens (kohya-semantics 2.4): captions are tokenized to ``max_token_length + 2`` ids
(padded/truncated); longer-than-77 sequences are cut into 77-token chunks
``[BOS] + ids[i:i+75] + [ids[-1]]`` for ``i in range(1, L - 77 + 2, 75)``. When pad != eos
(SD2) each chunk is fixed up: if ``chunk[-2]`` is neither eos nor pad, ``chunk[-1] = eos``;
if ``chunk[1]`` is pad, ``chunk[1] = eos``.

States (2.4/2.5): every chunk is encoded on its own; ``clip_skip`` k takes
``hidden_states[-k]`` through ``final_layer_norm``; the result keeps state 0 of the first
chunk, positions 1..75 of every chunk and the last state of the last chunk: length n*75+2.
"""
from __future__ import annotations

import torch

CHUNK = 77
BODY = CHUNK - 2


def tokenize(tokenizer, captions: list[str], max_token_length: int | None) -> torch.LongTensor:
    """Ids of shape (B, n_chunks, 77); n_chunks = max_token_length // 75 (1 when None)."""
    length = CHUNK if max_token_length is None else max_token_length + 2
    ids = tokenizer(list(captions), padding="max_length", truncation=True, max_length=length,
                    return_tensors="pt").input_ids
    if length <= CHUNK:
        return ids.reshape(len(captions), 1, CHUNK)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    out = []
    for row in ids:
        chunks = []
        for i in range(1, length - CHUNK + 2, BODY):
            chunk = torch.cat([row[:1], row[i:i + BODY], row[-1:]])
            if pad != eos:  # SD2 tokenizer (pad "!"): kohya's fix-ups
                if chunk[-2] != eos and chunk[-2] != pad:
                    chunk[-1] = eos
                if chunk[1] == pad:
                    chunk[1] = eos
            chunks.append(chunk)
        out.append(torch.stack(chunks))
    return torch.stack(out)


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
