"""Checkpoint, state and sample names (lorakit/checkpoints.py): kohya's spelling, and each name found
again by the pattern that retention, --resume auto and the UI use."""
from __future__ import annotations

import pytest

from lorakit.checkpoints import (SAMPLE_RE, STATE_GLOB, checkpoint_name, numbered_pattern, sample_file_name,
                                 state_name)


def test_kohya_spelling():
    assert checkpoint_name("last") == "last"
    assert checkpoint_name("last", step=120) == "last-step00000120"
    assert checkpoint_name("last", epoch=3) == "last-000003"
    assert checkpoint_name("last", step=7, prespike=True) == "last-prespike-step00000007"
    assert state_name("last") == "last-state"
    assert state_name("last", step=120) == "last-step00000120-state"
    assert state_name("last", epoch=3) == "last-000003-state"


@pytest.mark.parametrize("name", ["last", "my.lora-v2", "a+b (1)"])
@pytest.mark.parametrize("n", [1, 42, 99_999_999])
def test_round_trip_name_pattern_number(name, n):
    files = {("step", False): checkpoint_name(name, step=n) + ".safetensors",
             ("step", True): state_name(name, step=n)}
    if n < 10**6:
        files |= {("epoch", False): checkpoint_name(name, epoch=n) + ".safetensors",
                  ("epoch", True): state_name(name, epoch=n)}
    for (by, state), file in files.items():
        m = numbered_pattern(name, by, state).fullmatch(file)
        assert m and int(m.group(1)) == n, (by, state, file)
        # no pattern matches another kind's name: retention never removes the wrong files
        for other, other_file in files.items():
            if other != (by, state):
                assert numbered_pattern(name, by, state).fullmatch(other_file) is None, (by, state, other_file)
    assert numbered_pattern(name, "step", False).fullmatch(checkpoint_name(name, step=n, prespike=True)
                                                           + ".safetensors") is None
    assert numbered_pattern("other", "step", False).fullmatch(files["step", False]) is None
    assert state_name(name, step=n).endswith(STATE_GLOB.lstrip("*"))


@pytest.mark.parametrize("epoch, step, seed, at", [(None, 12, None, 12), (3, 40, 5, 3), (None, 0, 77, 0)])
def test_sample_name_round_trip(epoch, step, seed, at):
    name = sample_file_name("my_lora", 4, epoch=epoch, step=step, seed=seed)
    m = SAMPLE_RE.match(name)
    assert m and m["name"] == "my_lora" and int(m["index"]) == 4 and len(m["time"]) == 14
    assert m["at"] == (f"e{epoch:06d}" if epoch is not None else f"{step:06d}")
    assert int(m["at"].lstrip("e")) == at
    assert (m["seed"] and int(m["seed"])) == seed
