"""``schedule:`` parsing and tick arithmetic, on a fake clock (plain datetimes)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from syncer.schedules import ScheduleError, parse_schedule, tick_id

UTC = dt.UTC


def at(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("every 30s", 30),
        ("every 10m", 600),
        ("every 2h", 7200),
        ("every 1d", 86400),
        ("every 5 minutes", 300),
        ("Every 1 Hour", 3600),
        ("every   15min", 900),
    ],
)
def test_intervals(text: str, seconds: int) -> None:
    assert parse_schedule(text).interval == seconds


def test_interval_ticks_are_anchored_to_the_clock_not_to_the_start() -> None:
    """Two replicas started at different moments agree on every tick."""
    schedule = parse_schedule("every 10m")
    started_early = schedule.next_tick(at(2026, 3, 1, 12, 1, 7))
    started_late = schedule.next_tick(at(2026, 3, 1, 12, 9, 59))
    assert started_early == started_late == at(2026, 3, 1, 12, 10)
    assert schedule.ticks_between(at(2026, 3, 1, 12, 0), at(2026, 3, 1, 12, 30)) == [
        at(2026, 3, 1, 12, 10),
        at(2026, 3, 1, 12, 20),
        at(2026, 3, 1, 12, 30),
    ]


def test_a_late_wake_up_runs_only_the_latest_tick() -> None:
    """Missed ticks coalesce: after a 35-minute pause only 12:30 is due, not four ticks."""
    schedule = parse_schedule("every 10m")
    assert schedule.latest_tick(at(2026, 3, 1, 12, 35, 1)) == at(2026, 3, 1, 12, 30)
    assert schedule.latest_tick(at(2026, 3, 1, 12, 30)) == at(2026, 3, 1, 12, 30)


def test_cron_weekdays_follow_crontab_not_apscheduler_numbering() -> None:
    """``1-5`` is Monday to Friday, as in crontab(5) (APScheduler alone would read Tue-Sat)."""
    schedule = parse_schedule("0 6 * * 1-5")
    sunday = at(2026, 3, 1, 12, 0)
    assert sunday.weekday() == 6
    assert schedule.next_tick(sunday) == at(2026, 3, 2, 6, 0)  # Monday
    assert schedule.latest_tick(sunday) == at(2026, 2, 27, 6, 0)  # Friday
    weekend = parse_schedule("30 8 * * 0,6")
    assert [t.weekday() for t in weekend.ticks_between(sunday, at(2026, 3, 16))] == [5, 6, 5, 6]
    assert parse_schedule("0 0 * * 7").next_tick(sunday) == at(2026, 3, 8, 0, 0)  # 7 = Sunday
    assert parse_schedule("0 0 * * mon-fri").next_tick(sunday) == at(2026, 3, 2, 0, 0)


def test_cron_ticks_in_utc_and_latest_tick_of_a_sparse_expression() -> None:
    every_quarter = parse_schedule("*/15 * * * *")
    now = at(2026, 3, 1, 12, 34, 56)
    assert every_quarter.latest_tick(now) == at(2026, 3, 1, 12, 30)
    assert every_quarter.next_tick(now) == at(2026, 3, 1, 12, 45)
    assert every_quarter.next_tick(at(2026, 3, 1, 12, 45)) == at(2026, 3, 1, 13, 0)
    yearly = parse_schedule("0 0 1 1 *")
    assert yearly.latest_tick(now) == at(2026, 1, 1)


def test_the_trigger_given_to_apscheduler_fires_on_the_same_ticks() -> None:
    for text in ("every 10m", "*/15 * * * *", "0 6 * * 1-5"):
        schedule = parse_schedule(text)
        now = at(2026, 3, 1, 12, 34, 56)
        fired = schedule.trigger.get_next_fire_time(None, now)
        assert fired == schedule.next_tick(now), text


def test_tick_ids_are_epoch_seconds() -> None:
    assert tick_id(at(1970, 1, 1, 0, 1)) == 60
    assert tick_id(dt.datetime(2026, 3, 1, 12)) == tick_id(at(2026, 3, 1, 12))


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("every 0m", "at least 1"),
        ("every 10 parsecs", "every 30s"),
        ("every", "every 30s"),
        ("61 * * * *", "not a valid cron"),
        ("* * * *", "5 fields"),
        ("0 6 * * 8", "not a valid cron"),
        ("hourly", "5 fields"),
        ("", "empty"),
    ],
)
def test_bad_expressions_say_what_is_expected(text: str, hint: str) -> None:
    with pytest.raises(ScheduleError, match=hint):
        parse_schedule(text)


def test_a_bad_schedule_is_refused_when_the_mapping_loads(tmp_path: Path) -> None:
    """``syncer check`` and ``sync now`` see it too, naming the file and the field."""
    from syncer.errors import ConfigError
    from syncer.mapping import load_file

    path = tmp_path / "vip.yaml"
    path.write_text(
        "source: {query: select 1, key: email}\n"
        "destination: {connector: file, path: out.csv}\n"
        "schedule: every fortnight\n"
    )
    with pytest.raises(ConfigError, match=r"vip\.yaml.*schedule"):
        load_file(path)
