"""How a schema field is declared: F() records its default, section and help, and the facts other
modules read from the field instead of keeping their own lists (schema.field_attr / fields_with)."""
from __future__ import annotations

from typing import Any, Optional

from pydantic import Field

# What a change of the key between a run and its --resume does (train/state.py check_resume_config);
# a key without one must stay the same.
RESUME_SAFE = "safe"    # may change
RESUME_NOTED = "noted"  # may change, with a line saying so (save and sample settings)
RESUME_LR = "lr"        # may change, but not to or from 0 (that adds or drops a parameter group); told
RESUME_KINDS = (RESUME_SAFE, RESUME_NOTED, RESUME_LR)


def F(default: Any, section: str, help: str, *, resume: Optional[str] = None, **kw: Any) -> Any:  # noqa: N802
    """A schema field. resume: how a change on --resume is treated (RESUME_KINDS; None = refused)."""
    extra: dict[str, Any] = {"section": section}
    if resume is not None:
        assert resume in RESUME_KINDS, resume
        extra["resume"] = resume
    return Field(default, description=help, json_schema_extra=extra, **kw)
