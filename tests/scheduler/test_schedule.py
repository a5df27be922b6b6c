"""Schedules: durations, cron expressions and ``calculated``, and when each is due."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.errors import InvalidSchedule
from scheduler.schedule import Schedule, ScheduleKind, format_duration, parse_schedule

T0 = datetime(2024, 1, 1, 12, 1, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "interval"),
    [
        ("500ms", timedelta(milliseconds=500)),
        ("1s", timedelta(seconds=1)),
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1m30s", timedelta(minutes=1, seconds=30)),
        ("1d2h3m4s5ms", timedelta(days=1, hours=2, minutes=3, seconds=4, milliseconds=5)),
        ("90s", timedelta(seconds=90)),
    ],
)
def test_durations_parse_to_their_interval(text: str, interval: timedelta) -> None:
    schedule = parse_schedule(text)
    assert schedule == Schedule(ScheduleKind.DURATION, text, interval=interval)


def test_the_original_text_is_kept() -> None:
    assert parse_schedule(" 5m ").text == " 5m "
    assert str(parse_schedule("1m30s")) == "1m30s"


@pytest.mark.parametrize(
    "text", ["*/5 * * * *", "0 3 * * MON-FRI", "*/10 * * * * *", "@hourly", "@daily"]
)
def test_cron_expressions_and_aliases_parse(text: str) -> None:
    schedule = parse_schedule(text)
    assert schedule.kind is ScheduleKind.CRON
    assert schedule.interval is None
    assert schedule.cron == text


def test_cron_whitespace_is_normalised() -> None:
    assert parse_schedule("*/5  *\t* * *").cron == "*/5 * * * *"


def test_calculated_has_no_clock() -> None:
    schedule = parse_schedule("calculated")
    assert schedule.kind is ScheduleKind.CALCULATED
    assert schedule.next_due(None, T0) is None
    assert schedule.next_due(T0, T0) is None


def test_a_duration_is_due_its_interval_after_the_last_refresh() -> None:
    assert parse_schedule("1m30s").next_due(T0, T0) == T0 + timedelta(seconds=90)


def test_a_table_never_refreshed_is_due_now() -> None:
    for text in ("5m", "*/5 * * * *", "@daily"):
        assert parse_schedule(text).next_due(None, T0) == T0


def test_cron_is_due_at_the_next_fire_time_after_the_last_refresh() -> None:
    due = parse_schedule("*/5 * * * *").next_due(T0, T0 + timedelta(seconds=10))
    assert due == datetime(2024, 1, 1, 12, 5, tzinfo=UTC)


def test_cron_fire_times_are_strictly_after_the_last_refresh() -> None:
    on_the_dot = datetime(2024, 1, 1, 12, 5, tzinfo=UTC)
    assert parse_schedule("*/5 * * * *").next_due(on_the_dot, on_the_dot) == datetime(
        2024, 1, 1, 12, 10, tzinfo=UTC
    )


def test_missed_cron_fire_times_collapse_into_one_refresh_due_at_once() -> None:
    long_ago = T0 - timedelta(days=3)
    due = parse_schedule("@hourly").next_due(long_ago, T0)
    assert due is not None
    assert due == long_ago.replace(minute=0, second=0) + timedelta(hours=1)
    assert due < T0


def test_six_field_cron_has_the_seconds_first() -> None:
    due = parse_schedule("*/10 * * * * *").next_due(T0, T0)
    assert due == T0 + timedelta(seconds=10)


def test_cron_keeps_the_time_zone_of_the_last_refresh() -> None:
    naive = T0.replace(tzinfo=None)
    due = parse_schedule("@hourly").next_due(naive, naive)
    assert due == datetime(2024, 1, 1, 13, 0)


def test_a_duration_past_the_end_of_the_calendar_is_never_due() -> None:
    far = datetime(9999, 12, 31, tzinfo=UTC)
    assert parse_schedule("2d").next_due(far, far) == datetime.max.replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "the schedule is empty"),
        ("   ", "the schedule is empty"),
        ("0s", "a duration must be greater than zero"),
        ("0m0s", "a duration must be greater than zero"),
        ("30s1m", "the units of a duration go from largest to smallest, each at most once"),
        ("1m1m", "the units of a duration go from largest to smallest, each at most once"),
        ("99999999999d", "the duration is too long"),
        ("5", "not a duration, a cron expression or calculated"),
        ("5M", "not a duration, a cron expression or calculated"),
        ("-5m", "not a duration, a cron expression or calculated"),
        ("1.5s", "not a duration, a cron expression or calculated"),
        ("5 minutes", "a cron expression has 5 fields (or 6 with the seconds first), not 2"),
        ("* * * *", "a cron expression has 5 fields (or 6 with the seconds first), not 4"),
        ("0 0 1 1 * 2030 1", "a cron expression has 5 fields (or 6 with the seconds first), not 7"),
    ],
)
def test_bad_schedules_are_refused_naming_the_value(text: str, problem: str) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        parse_schedule(text)
    assert caught.value.message == f'invalid schedule "{text}": {problem}'
    assert caught.value.detail and "duration" in caught.value.detail
    assert caught.value.hint and "for example" in caught.value.hint


@pytest.mark.parametrize("text", ["61 * * * *", "*/0 * * * *", "0 0 30 2 *", "@every"])
def test_invalid_cron_expressions_are_refused_with_croniters_reason(text: str) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        parse_schedule(text)
    assert caught.value.message.startswith(
        f'invalid schedule "{text}": not a valid cron expression ('
    )
    assert caught.value.detail and "cron expression of 5 fields" in caught.value.detail
    assert caught.value.hint and '"*/5 * * * *"' in caught.value.hint


def test_a_near_miss_of_calculated_suggests_it() -> None:
    with pytest.raises(InvalidSchedule) as caught:
        parse_schedule("calculate")
    assert caught.value.hint == 'did you mean "calculated"?'


durations = st.integers(min_value=1, max_value=10**12).map(lambda ms: timedelta(milliseconds=ms))


@given(durations)
def test_durations_round_trip_through_their_text(interval: timedelta) -> None:
    text = format_duration(interval)
    assert parse_schedule(text).interval == interval


@given(
    st.lists(st.integers(min_value=0, max_value=10**4), min_size=5, max_size=5).filter(any),
    st.lists(st.booleans(), min_size=5, max_size=5),
)
def test_compound_durations_add_up_their_parts(counts: list[int], written: list[bool]) -> None:
    units = [("d", timedelta(days=1)), ("h", timedelta(hours=1)), ("m", timedelta(minutes=1))]
    units += [("s", timedelta(seconds=1)), ("ms", timedelta(milliseconds=1))]
    parts = [
        (count, unit, size)
        for count, (unit, size), keep in zip(counts, units, written, strict=True)
        if keep or count
    ]
    text = "".join(f"{count}{unit}" for count, unit, _ in parts)
    expected = sum((count * size for count, _, size in parts), timedelta())
    assert parse_schedule(text).interval == expected
