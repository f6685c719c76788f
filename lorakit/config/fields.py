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


# How a field's value is written as its ss_* metadata value (train/save.py build_metadata)
SS_TEXT = "text"                  # str(value), as sd-scripts writes its argument
SS_NEUTRAL_NONE = "neutral-none"  # "None" at the field's neutral value (sd-scripts' option is unset there)
SS_FILE_NAME = "file-name"        # the file's name without its folders; no key when unset
SS_WRITES = (SS_TEXT, SS_NEUTRAL_NONE, SS_FILE_NAME)
_NONE = object()


def F(default: Any, help: str, *, resume: Optional[str] = None, ss: Optional[str] = None,  # noqa: N802
      ss_write: str = SS_TEXT, neutral: Any = _NONE, network_arg: Optional[str] = None,
      dataset_key: Optional[str] = None, gui_unset: tuple = (), kohya_none: Any = _NONE, **kw: Any) -> Any:
    """A schema field and the facts other modules read from it (schema.field_attr / fields_with); its
    section is the sections/ file that declares it (schema.field_section):
    resume: how a change on --resume is treated (RESUME_KINDS; None = refused).
    ss: the ss_* metadata key the value is saved as, written as `ss_write` says (SS_WRITES).
    neutral: the value that turns the setting off (where it is not plainly the default).
    network_arg: its name among sd-scripts' network_args (lifted onto the field by both importers).
    dataset_key: its name in an sd-scripts dataset_config ([general] / [[datasets]]).
    gui_unset: values the kohya_ss GUI writes for "not set" where the default is not unset.
    kohya_none: how kohya spells the unset (None) value, for a config written back out."""
    extra: dict[str, Any] = {}
    if resume is not None:
        assert resume in RESUME_KINDS, resume
        extra["resume"] = resume
    if ss is not None:
        assert ss_write in SS_WRITES and (ss_write != SS_NEUTRAL_NONE or neutral is not _NONE), ss
        extra["ss"], extra["ss_write"] = ss, ss_write
    named = {"neutral": neutral, "network_arg": network_arg, "dataset_key": dataset_key,
             "gui_unset": gui_unset or None, "kohya_none": kohya_none}
    extra.update({k: v for k, v in named.items() if v is not None and v is not _NONE})
    return Field(default, description=help, json_schema_extra=extra, **kw)
