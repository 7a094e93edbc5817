"""The on-drift cap: off until the drift rule says the conversation is drifting.

``cap: "on-drift"`` (server, ``persona-axis chat``, ``persona-axis simulate``, the Python API)
caps a reply with the bundle's recommended cap only while the conversation is **armed**. The
state is a function of the conversation's earlier turns alone (read by
:class:`~persona_axis.drift.live.LiveDrift`), never of the process, so a stateless server
decides it from the history in the request and gets the same answer as a chat session.

Reply-level arming with hysteresis, over the rule's verdicts of turns ``1..t``:

- the gate **arms** after turn ``t`` when that turn's level reaches ``warning`` (or ``alarm``);
  the cap then applies from reply ``t + 1`` on;
- it **stays armed** while the EWMA of the rule's input stays above :data:`RELEASE` (in the
  rule's units, half the default warning limit), and releases once it falls to or below it;
  turns the rule skips (no content, the anchor) leave the state unchanged.

So one turn just over the warning limit does not switch the cap on and off at every turn. Not
done: arming within a reply, at the token where the running projection crosses the alarm level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from persona_axis.drift.rule import LEVELS, TurnVerdict

ON_DRIFT = "on-drift"
"""The cap name that asks for the gated cap."""
RELEASE = 1.0
"""The gate releases once the EWMA falls to this (rule units; the warning default is 2)."""


@dataclass(frozen=True)
class Arming:
    """The gate after some turns: ``armed`` (the next reply is capped), ``since`` the 1-based
    turn whose level armed it (None: not armed), and ``fired`` every turn after which it was
    armed (the turns whose next reply was capped)."""

    armed: bool
    since: int | None
    fired: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"armed": self.armed, "since_turn": self.since, "armed_after": list(self.fired)}


def arming(verdicts: Sequence[TurnVerdict], release: float = RELEASE) -> Arming:
    """The gate's state after ``verdicts`` (module doc)."""
    armed, since, fired = False, None, []
    warning = LEVELS.index("warning")
    for turn, verdict in enumerate(verdicts, start=1):
        if LEVELS.index(verdict.level) >= warning:
            if not armed:
                since = turn
            armed = True
        elif armed and verdict.ewma is not None and verdict.ewma <= release:
            armed, since = False, None
        if armed:
            fired.append(turn)
    return Arming(armed, since, tuple(fired))
