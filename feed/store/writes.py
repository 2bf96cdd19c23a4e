"""What every writer of the store shares: the channel it notifies at commit, and
`Counts`, what a write did to the records it was given. Its own module so that
storage, measurements and events share them without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass

# LISTEN on this channel to hear, at commit, that 'events' or 'measurements' changed.
CHANGES_CHANNEL = "roadfeed_changes"


@dataclass
class Counts:
    new: int = 0
    updated: int = 0
    unchanged: int = 0

    def __iadd__(self, other: Counts) -> Counts:
        self.new += other.new
        self.updated += other.updated
        self.unchanged += other.unchanged
        return self
