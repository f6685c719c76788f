"""Render the config reference (docs/config.md) from the schema, so the docs stay true."""
from __future__ import annotations

import json

from .schema import SECTIONS, TrainConfig, field_section


def _range(f) -> str:
    bounds = []
    for m in f.metadata:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(m, attr, None) is not None:
                bounds.append(f"{sym} {getattr(m, attr)}")
    return ", ".join(bounds)


def render_markdown() -> str:
    lines = ["# Config reference", "",
             "Generated from `lorakit/config/schema.py` (`python -m lorakit.config.reference > docs/config.md`).",
             "Keys use kohya's names. In a TOML config they may stand at top level or inside a table named",
             f"after their section ({', '.join(SECTIONS)}). Unknown keys are errors.", ""]
    for section in SECTIONS:
        lines += [f"## {section}", "", "| key | default | range | meaning |", "|---|---|---|---|"]
        for name, f in TrainConfig.model_fields.items():
            if field_section(name) == section:
                desc = (f.description or "").replace("|", "\\|")
                lines.append(f"| `{name}` | `{json.dumps(f.default)}` | {_range(f)} | {desc} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_markdown())
