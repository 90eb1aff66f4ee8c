"""What monitoring adds to the panel through ``panel.extensions``, registered in ``MonitoringConfig.ready()``.

Each part of monitoring adds its ``Contribution`` subclass here and lists an instance in ``contributions()``.
"""

from __future__ import annotations

from panel.extensions import Contribution


def contributions() -> list[Contribution]:
    """The contributions ``MonitoringConfig.ready()`` registers."""
    return []
