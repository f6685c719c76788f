"""d*lr spike detection (the second seed guide: "see that d*lr? cut it off if it spikes").

Prodigy and DAdaptation start d tiny (d0) and grow it by orders of magnitude over the
first steps; that climb is normal. The detector arms once d*lr has levelled off (it
changed by less than 10% over one window) and then fires when d*lr exceeds `factor`
times its value `window` steps earlier. The d read after optimizer step k is first
used by step k+1, so the adapter at step k is still the one from before the spike.
"""
from __future__ import annotations

from collections import deque


class DlrSpikeDetector:
    LEVEL = 1.10  # "levelled off": less than 10% change over one window

    def __init__(self, factor: float, window: int):
        self.factor, self.window = factor, window
        self.history: deque[float] = deque(maxlen=window + 1)
        self.armed = False

    def update(self, dlr: float) -> bool:
        """Feed one step's d*lr; True when this step is a spike."""
        if self.factor <= 0 or dlr <= 0:
            return False
        self.history.append(dlr)
        if len(self.history) <= self.window:
            return False
        before = self.history[0]
        if not self.armed:
            self.armed = dlr <= before * self.LEVEL
            return False
        return dlr > self.factor * before
