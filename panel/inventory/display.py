"""How an environment's state looks on a page: badges built from ``services.environment_state``, nothing more."""

from __future__ import annotations

from dataclasses import dataclass

from panel.inventory.choices import EnvironmentState
from panel.inventory.services import State

STATE_CSS = {
    EnvironmentState.NOT_DEPLOYED: "none",
    EnvironmentState.DEPLOYING: "running",
    EnvironmentState.RESTORING: "running",
    EnvironmentState.RUNNING: "succeeded",
    EnvironmentState.NEEDS_ATTENTION: "alarm",
    EnvironmentState.DEGRADED: "alarm",
    EnvironmentState.CHANGING: "running",
    EnvironmentState.STOPPED: "canceled",
    EnvironmentState.DESTROYED: "none",
}


@dataclass(frozen=True)
class Badge:
    """A status badge: its text, CSS modifier and a longer explanation (title)."""

    label: str
    css: str
    title: str = ""


def state_badges(state: State, *, customer: bool) -> list[Badge]:
    """The state's badge; while a deploy runs, also what still serves. Customers get the customer wording."""
    title = state.customer_detail if customer else state.detail
    badges = [Badge(state.label, STATE_CSS[EnvironmentState(state.code)], title)]
    if state.code == EnvironmentState.DEPLOYING and state.commit:
        badges.append(Badge(f"running {state.commit[:12]}", "succeeded", "What serves until the deploy finishes."))
    return badges
