"""kohya's sample prompt syntax (docs/kohya-rules.md 2.17).

One prompt per line, options after " --": --n negative, --w/--h size (rounded down
to a multiple of 8, at least 64), --d seed, --s steps (1-1000), --l CFG scale,
--ss sampler. Lines starting with # are comments.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError


@dataclass
class SamplePrompt:
    prompt: str
    negative: str = ""
    width: int = 512
    height: int = 512
    seed: int | None = None
    steps: int = 30
    scale: float = 7.5
    sampler: str | None = None


def _size(v: str) -> int:
    return max(64, int(v) // 8 * 8)


def parse_prompt_line(line: str, source: str = "sample_prompts") -> SamplePrompt:
    parts = line.split(" --")
    sp = SamplePrompt(parts[0].strip())
    for part in parts[1:]:
        opt, _, value = part.strip().partition(" ")
        value = value.strip()
        try:
            if opt == "n":
                sp.negative = value
            elif opt == "w":
                sp.width = _size(value)
            elif opt == "h":
                sp.height = _size(value)
            elif opt == "d":
                sp.seed = int(value)
            elif opt == "s":
                sp.steps = min(1000, max(1, int(value)))
            elif opt == "l":
                sp.scale = float(value)
            elif opt == "ss":
                sp.sampler = value
            else:
                raise ConfigError(f"unknown sample option '--{opt}' in '{line.strip()}'", file=source,
                                  key="sample_prompts", fix="use --n --w --h --d --s --l --ss")
        except ValueError:
            raise ConfigError(f"bad value for --{opt}: '{value}'", file=source, key="sample_prompts",
                              fix="--w/--h/--d/--s take integers, --l a number") from None
    return sp


def parse_prompts(text_or_path: str) -> list[SamplePrompt]:
    """Inline prompts, or the path of a prompt file (.txt)."""
    source = "sample_prompts"
    text = text_or_path
    p = Path(text_or_path)
    if "\n" not in text_or_path and p.suffix.lower() in (".txt", ".prompt", ".prompts"):
        if not p.is_file():
            raise ConfigError(f"prompt file '{p}' not found", file=str(p), key="sample_prompts",
                              fix="check the path, or write the prompts inline")
        text, source = p.read_text(encoding="utf-8-sig"), str(p)
    prompts = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            prompts.append(parse_prompt_line(line, source))
    return prompts
