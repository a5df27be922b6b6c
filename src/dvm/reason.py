"""Why the compiler chose what it chose: a construct the user wrote, and what follows from it.

A plan that cannot be differentiated carries the reasons it falls back to a full refresh; a
differentiable one carries notes (an ignored ORDER BY, groups that are rescanned). Both are
data, so that ``explain``, the catalog and the errors can each say them their own way.

>>> reason = Reason("DISTINCT", "not differentiable yet (needs row multiplicities)")
>>> str(reason), Reason.from_json(reason.to_json()) == reason
('DISTINCT: not differentiable yet (needs row multiplicities)', True)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Reason:
    construct: str
    """What the user wrote, as they would recognize it: ``DISTINCT``, ``random()``."""
    why: str

    def __str__(self) -> str:
        return f"{self.construct}: {self.why}"

    def to_json(self) -> dict[str, str]:
        return {"construct": self.construct, "why": self.why}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> Reason:
        return cls(data["construct"], data["why"])


def summary(reasons: Iterable[Reason]) -> str:
    """All reasons in one line, as a catalog column or a log field holds them.

    >>> summary([Reason("WITH", "not yet"), Reason("random()", "volatile")])
    'WITH: not yet; random(): volatile'
    """
    return "; ".join(str(reason) for reason in reasons)
