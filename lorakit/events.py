"""Training events.

Training is a library call that emits events; the CLI progress bar, TensorBoard,
metrics.jsonl and any later UI subscribe to them. Nothing else reaches into the loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Event:
    kind: str  # start | step | epoch | sample | save | warning | compiling | end
    step: int = 0
    epoch: int = 0
    data: dict[str, Any] = field(default_factory=dict)


Subscriber = Callable[[Event], None]


class EventBus:
    def __init__(self, subscribers: list[Subscriber] | None = None):
        self.subscribers: list[Subscriber] = list(subscribers or [])

    def subscribe(self, fn: Subscriber) -> None:
        self.subscribers.append(fn)

    def emit(self, kind: str, step: int = 0, epoch: int = 0, **data: Any) -> None:
        ev = Event(kind, step, epoch, data)
        for fn in self.subscribers:
            fn(ev)
