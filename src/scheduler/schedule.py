"""Schedules: when a stream table is due for a refresh.

A schedule is written as one of:

- a duration, a run of numbers with units from largest to smallest, each unit at most once:
  ``500ms``, ``30s``, ``5m``, ``2h``, ``1d``, ``1m30s``, ``1h30m``. It must be greater than zero.
- a cron expression croniter accepts, with 5 fields (``*/5 * * * *``) or 6 with the seconds
  *first*, as in Quartz and Spring (``*/10 * * * * *`` is every ten seconds), or an alias such
  as ``@hourly`` or ``@daily``. Expressions that can never fire (``0 0 30 2 *``) are refused.
- ``calculated``: no clock of its own; the table refreshes when its sources change or a stream
  table downstream needs it.

>>> parse_schedule("1m30s").interval
datetime.timedelta(seconds=90)
>>> parse_schedule("*/5 * * * *").kind
<ScheduleKind.CRON: 'cron'>
>>> parse_schedule("calculated").next_due(None, datetime(2024, 1, 1)) is None
True
"""

from __future__ import annotations

import difflib
import enum
import itertools
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from croniter import CroniterError, croniter

from scheduler.errors import InvalidSchedule

__all__ = ["Schedule", "ScheduleKind", "format_duration", "parse_schedule"]

CALCULATED = "calculated"

# Largest first: that is also the only order a compound duration may use.
_UNITS: dict[str, timedelta] = {
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
    "ms": timedelta(milliseconds=1),
}
_DURATION = re.compile(r"(?:\d+(?:ms|d|h|m|s))+")
_DURATION_PART = re.compile(r"(\d+)(ms|d|h|m|s)")

_EXPECTED = (
    "A schedule is a duration (a number and a unit among ms, s, m, h, d, largest first, "
    "such as 30s or 1m30s), a cron expression of 5 fields (or 6 with the seconds first) or "
    "an alias such as @hourly, or the word calculated."
)
_EXAMPLES = 'for example: 30s, 5m, 1h30m, "*/5 * * * *", "@hourly" or calculated'


class ScheduleKind(enum.Enum):
    DURATION = "duration"
    CRON = "cron"
    CALCULATED = "calculated"


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule; ``text`` is what the user wrote, unchanged.

    ``interval`` is set for durations only; ``cron`` holds a cron expression with its
    whitespace normalised (aliases such as ``@hourly`` are kept as written).
    """

    kind: ScheduleKind
    text: str
    interval: timedelta | None = None
    cron: str | None = None

    def next_due(self, last_refresh: datetime | None, now: datetime) -> datetime | None:
        """When the next refresh is due; ``None`` for ``calculated`` (changes drive it).

        A table that was never refreshed is due ``now``, whatever its schedule: it has no
        contents yet, and a cron schedule answering "the next fire time after now" would
        move away on every call, so a scheduler polling this would never see it due.

        Otherwise a duration is due ``interval`` after the last refresh, and a cron schedule
        at its first fire time strictly after the last refresh. Fire times missed while the
        service was down therefore collapse into one refresh, due at once. Cron fields are read
        in the time zone of ``last_refresh`` (the service passes aware UTC datetimes), and the
        result has the same time zone. ``datetime.max`` stands for "not in this calendar".

        >>> from datetime import timezone
        >>> t = datetime(2024, 1, 1, 12, 1, tzinfo=timezone.utc)
        >>> parse_schedule("5m").next_due(t, t).isoformat()
        '2024-01-01T12:06:00+00:00'
        >>> parse_schedule("*/5 * * * *").next_due(t, t).isoformat()
        '2024-01-01T12:05:00+00:00'
        """
        if self.kind is ScheduleKind.CALCULATED:
            return None
        if last_refresh is None:
            return now
        try:
            if self.interval is not None:
                return last_refresh + self.interval
            assert self.cron is not None
            fire_times = croniter(
                self.cron,
                last_refresh,
                second_at_beginning=_has_seconds(self.cron),
            )
            due: datetime = fire_times.get_next(datetime)
            return due
        except (OverflowError, CroniterError):
            return datetime.max.replace(tzinfo=last_refresh.tzinfo)

    def __str__(self) -> str:
        return self.text


def parse_schedule(text: str) -> Schedule:
    """Read a schedule as written in ``pgtrickle.yaml``; refuse it with ``InvalidSchedule``.

    >>> parse_schedule("500ms").interval
    datetime.timedelta(microseconds=500000)
    >>> parse_schedule("0 */10 * * * *").cron
    '0 */10 * * * *'
    >>> try:
    ...     parse_schedule("0s")
    ... except InvalidSchedule as err:
    ...     print(err.message)
    invalid schedule "0s": a duration must be greater than zero
    """
    written = text.strip()
    if not written:
        raise _refuse(text, "the schedule is empty")
    if written == CALCULATED:
        return Schedule(ScheduleKind.CALCULATED, text)
    if written.startswith("@") or len(written.split()) > 1:
        return Schedule(ScheduleKind.CRON, text, cron=_parse_cron(text, written))
    if _DURATION.fullmatch(written):
        return Schedule(ScheduleKind.DURATION, text, interval=_parse_duration(text, written))
    close = difflib.get_close_matches(written, [CALCULATED], n=1)
    raise _refuse(
        text,
        "not a duration, a cron expression or calculated",
        hint=f'did you mean "{close[0]}"?' if close else None,
    )


def format_duration(interval: timedelta) -> str:
    """Write a positive whole number of milliseconds the way ``parse_schedule`` reads it.

    >>> format_duration(timedelta(minutes=1, seconds=30))
    '1m30s'
    >>> format_duration(timedelta(days=2, milliseconds=5))
    '2d5ms'
    """
    remaining, rest = divmod(interval, _UNITS["ms"])
    if remaining <= 0 or rest:
        raise ValueError(f"not a positive whole number of milliseconds: {interval!r}")
    parts = []
    for unit, size in _UNITS.items():
        count, remaining = divmod(remaining, size // _UNITS["ms"])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _parse_duration(text: str, written: str) -> timedelta:
    units = [unit for _, unit in _DURATION_PART.findall(written)]
    order = list(_UNITS)
    if any(order.index(a) >= order.index(b) for a, b in itertools.pairwise(units)):
        raise _refuse(
            text,
            "the units of a duration go from largest to smallest, each at most once",
            hint=f"for example: 1h30m, 1m30s, 2s500ms (units in order: {', '.join(order)})",
        )
    try:
        interval = sum(
            (int(count) * _UNITS[unit] for count, unit in _DURATION_PART.findall(written)),
            timedelta(),
        )
    except OverflowError:
        raise _refuse(text, "the duration is too long") from None
    if interval <= timedelta():
        raise _refuse(text, "a duration must be greater than zero")
    return interval


def _parse_cron(text: str, written: str) -> str:
    expression = " ".join(written.split())
    if not expression.startswith("@"):
        fields = len(expression.split())
        if fields not in (5, 6):
            raise _refuse(
                text, f"a cron expression has 5 fields (or 6 with the seconds first), not {fields}"
            )
    try:
        croniter.expand(expression, second_at_beginning=_has_seconds(expression), strict=True)
    except CroniterError as exc:
        raise _refuse(text, f"not a valid cron expression ({exc})") from None
    return expression


def _has_seconds(expression: str) -> bool:
    return len(expression.split()) == 6


def _refuse(text: str, problem: str, *, hint: str | None = None) -> InvalidSchedule:
    return InvalidSchedule(
        f'invalid schedule "{text}": {problem}',
        detail=_EXPECTED,
        hint=hint or _EXAMPLES,
    )
