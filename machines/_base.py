"""The strict base every quiesce lifecycle derives from.

python-statemachine's ``StateChart`` ignores an event that matches no transition and turns a
callback's exception into an ``error.execution`` event. For a lifecycle that guards against
data loss both hide bugs, so every machine here sets them off: an impossible event raises
``TransitionNotAllowed`` and leaves the state unchanged.
"""

from __future__ import annotations

from typing import Any

from statemachine import State, StateChart
from statemachine.transition_list import TransitionList


class Lifecycle(StateChart[Any]):
    """A StateChart on which an illegal event is an error, never a silent no-op."""

    allow_event_without_transition = False
    catch_errors_as_events = False
    # A lifecycle reaches a final state once; the engine must not keep running after it.
    enable_self_transition_entries = False

    @property
    def state(self) -> str:
        """The id of the current state (``"running"``, ``"draining"``…)."""
        return str(self.current_state_value)

    def observe(self, listener: object) -> None:
        """Attach a listener (e.g. one with ``after_transition``): a typed ``add_listener``."""
        self.add_listener(listener)  # type: ignore[no-untyped-call]  # untyped in the library

    @property
    def is_final(self) -> bool:
        """True once a final state has been entered."""
        return any(state.final for state in self.configuration)


def stays(
    state: State, on: str | None = None, unless: str | None = None, cond: str | None = None
) -> TransitionList:
    """Declare that an event is legal in ``state`` and keeps it there (an internal transition).

    This is how a machine says "this fact may arrive here, and changes nothing but what
    ``on`` records": the actor never has to probe the state before reporting it.
    """
    kwargs: dict[str, object] = {"internal": True}
    if on is not None:
        kwargs["on"] = on
    if unless is not None:
        kwargs["unless"] = unless
    if cond is not None:
        kwargs["cond"] = cond
    result: TransitionList = state.to.itself(**kwargs)  # type: ignore[no-untyped-call]
    return result
