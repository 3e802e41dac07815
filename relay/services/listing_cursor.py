"""Where a ListJobs listing goes on from: the state a page token carries.

The token's JSON keeps the one-letter keys it always had (``p`` phase, ``t`` when the listing began,
``l`` whether it has a legacy phase; ``m`` the last index member listed; ``c``/``n``/``k`` the SCAN
cursor, count and last legacy key), so tokens issued before this class existed stay valid.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

INDEX, LEGACY = "index", "legacy"


@dataclass(frozen=True)
class ListingCursor:
    phase: str
    #: Redis time (microseconds) when the first page was listed; 0 when there is no legacy phase.
    began: int = 0
    #: The listing has a legacy phase after the index phase (legacy records may be unindexed).
    legacy_phase: bool = False
    #: Index phase: the last member listed (members sort newest first).
    after_member: str = ""
    #: Legacy phase: the SCAN cursor, the COUNT to ask for (None: the default), the last key listed.
    scan_cursor: int = 0
    scan_count: int | None = None
    after_key: str = ""

    @classmethod
    def first(cls, began: int, legacy_phase: bool) -> ListingCursor:
        return cls(INDEX, began=began, legacy_phase=legacy_phase)

    def index_after(self, member: str) -> ListingCursor:
        return replace(self, phase=INDEX, after_member=member)

    def legacy_from(self, cursor: int, count: int | None = None, after_key: str = "") -> ListingCursor:
        return ListingCursor(
            LEGACY,
            began=self.began,
            legacy_phase=True,
            scan_cursor=cursor,
            scan_count=count,
            after_key=after_key,
        )

    def to_state(self) -> dict[str, Any]:
        """The token's JSON object."""
        if self.phase == INDEX:
            return {"p": INDEX, "m": self.after_member, "t": self.began, "l": int(self.legacy_phase)}
        state: dict[str, Any] = {"p": self.phase, "c": self.scan_cursor}
        if self.scan_count is not None:
            state["n"] = self.scan_count
        if self.after_key:
            state["k"] = self.after_key
        state["t"] = self.began
        state["l"] = int(self.legacy_phase)
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ListingCursor:
        count = state.get("n")
        return cls(
            phase=str(state.get("p", "")),
            began=int(state.get("t", 0)),
            legacy_phase=bool(state.get("l")),
            after_member=str(state.get("m", "")),
            scan_cursor=int(state.get("c", 0)),
            scan_count=None if count is None else int(count),
            after_key=str(state.get("k", "")),
        )
