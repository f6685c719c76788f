"""Render the config reference (docs/config.md) from the schema, so the docs stay true."""
from __future__ import annotations

import json

from .fields import RESUME_LR, RESUME_NOTED, RESUME_SAFE
from .schema import SECTIONS, TrainConfig, field_attr, field_section


def _range(f) -> str:
    bounds = []
    for m in f.metadata:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(m, attr, None) is not None:
                bounds.append(f"{sym} {getattr(m, attr)}")
    return ", ".join(bounds)


_RESUME = {RESUME_SAFE: "may change", RESUME_NOTED: "may change (noted)", RESUME_LR: "may change, not to or from 0"}


def _facts(name: str) -> str:
    """What the field's attributes tell a user: --resume, the ss_* metadata key, kohya's other names."""
    out = [f"--resume: {_RESUME.get(field_attr(name, 'resume'), 'must stay the same')}"]
    if field_attr(name, "ss"):
        out.append(f"saved as `{field_attr(name, 'ss')}`")
    for attr, where in (("network_arg", "network_args"), ("dataset_key", "dataset_config")):
        if field_attr(name, attr):
            out.append(f"sd-scripts {where}: `{field_attr(name, attr)}`")
    return "; ".join(out)


def render_markdown() -> str:
    lines = ["# Config reference", "",
             "Generated from `lorakit/config/schema.py` and its sections in `lorakit/config/sections/`",
             "(`python -m lorakit.config.reference > docs/config.md`).",
             "Keys use kohya's names. In a TOML config they may stand at top level or inside a table named",
             f"after their section ({', '.join(SECTIONS)}). Unknown keys are errors.", ""]
    for section in SECTIONS:
        lines += [f"## {section}", "", "| key | default | range | meaning | resume, metadata, aliases |",
                  "|---|---|---|---|---|"]
        for name, f in TrainConfig.model_fields.items():
            if field_section(name) == section:
                desc = (f.description or "").replace("|", "\\|")
                lines.append(f"| `{name}` | `{json.dumps(f.default)}` | {_range(f)} | {desc} | {_facts(name)} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_markdown())
