"""Grandfather-father-son retention (backups.retention): examples, time zones, DST, and hypothesis over random
backup histories (the newest verified backup and any backup in use are never pruned, no file a kept backup lists
is deleted, the GFS counts hold)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backups.retention import (
    REASON_AWAITING_VERIFICATION,
    REASON_IN_USE,
    REASON_NEWEST_VERIFIED,
    BackupKind,
    BackupRecord,
    RetentionPolicy,
    files_to_delete,
    plan_retention,
)

MADRID = ZoneInfo("Europe/Madrid")


def daily_history(days: int, *, end: datetime, hour: int = 3) -> list[BackupRecord]:
    """One verified scheduled backup a day at ``hour`` UTC, for ``days`` days up to ``end``'s date."""
    last = end.replace(hour=hour, minute=0, second=0, microsecond=0)
    return [BackupRecord(id=f"b{n}", taken_at=last - timedelta(days=n), verified=True) for n in range(days)]


def kept_dates(plan, records, zone=UTC) -> list[str]:
    by_id = {record.id: record for record in records}
    return sorted(by_id[backup_id].taken_at.astimezone(zone).date().isoformat() for backup_id in plan.keep)


def test_it_keeps_seven_daily_four_weekly_three_monthly_of_a_daily_history():
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)  # a Monday
    records = daily_history(120, end=now)
    plan = plan_retention(records, RetentionPolicy(), now=now)

    daily = [f"2026-11-{day}" for day in range(24, 31)]
    # Newest backup of each ISO week: Monday 30 (W49), then the Sundays ending W48, W47, W46.
    weekly = ["2026-11-15", "2026-11-22", "2026-11-29", "2026-11-30"]
    monthly = ["2026-09-30", "2026-10-31", "2026-11-30"]
    assert kept_dates(plan, records) == sorted(set(daily + weekly + monthly))
    assert plan.reasons("b0") == (REASON_NEWEST_VERIFIED, "daily 2026-11-30", "weekly 2026-W49", "monthly 2026-11")
    assert plan.reasons("b1") == ("daily 2026-11-29", "weekly 2026-W48")
    by_date = {record.taken_at.date().isoformat(): record.id for record in records}
    assert plan.reasons(by_date["2026-10-31"]) == ("monthly 2026-10",)
    assert len(plan.keep) + len(plan.prune) == 120
    assert by_date["2026-11-23"] in plan.prune  # a Monday, neither daily nor the newest of its week


def test_it_takes_the_newest_backup_of_each_day_and_skips_days_without_one():
    now = datetime(2026, 11, 30, 23, 0, tzinfo=UTC)
    records = [
        BackupRecord(id="morning", taken_at=datetime(2026, 11, 30, 6, tzinfo=UTC), verified=True),
        BackupRecord(id="evening", taken_at=datetime(2026, 11, 30, 18, tzinfo=UTC), verified=True),
        # Nothing on the 29th and 28th; the second daily slot goes to the 27th.
        BackupRecord(id="27th", taken_at=datetime(2026, 11, 27, 6, tzinfo=UTC), verified=True),
        BackupRecord(id="26th", taken_at=datetime(2026, 11, 26, 6, tzinfo=UTC), verified=True),
    ]
    plan = plan_retention(records, RetentionPolicy(daily=2, weekly=0, monthly=0), now=now)
    assert plan.keep == {"evening": (REASON_NEWEST_VERIFIED, "daily 2026-11-30"), "27th": ("daily 2026-11-27",)}
    assert plan.prune == ("morning", "26th")


def test_it_buckets_days_in_the_policys_time_zone():
    # 22:30 and 23:30 UTC on Nov 30 are 23:30 on Nov 30 and 00:30 on Dec 1 in Madrid.
    records = [
        BackupRecord(id="late", taken_at=datetime(2026, 11, 30, 23, 30, tzinfo=UTC), verified=True),
        BackupRecord(id="early", taken_at=datetime(2026, 11, 30, 22, 30, tzinfo=UTC), verified=True),
    ]
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    in_utc = plan_retention(records, RetentionPolicy(daily=2, weekly=0, monthly=0), now=now)
    in_madrid = plan_retention(
        records, RetentionPolicy(daily=2, weekly=0, monthly=0, time_zone="Europe/Madrid"), now=now
    )
    assert in_utc.keep == {"late": (REASON_NEWEST_VERIFIED, "daily 2026-11-30")}
    assert in_madrid.keep == {
        "late": (REASON_NEWEST_VERIFIED, "daily 2026-12-01"),
        "early": ("daily 2026-11-30",),
    }
    # The month changes at local midnight too.
    monthly = plan_retention(records, RetentionPolicy(daily=0, weekly=0, monthly=2, time_zone="Europe/Madrid"), now=now)
    assert monthly.reasons("late")[1:] == ("monthly 2026-12",)
    assert monthly.reasons("early") == ("monthly 2026-11",)


def test_it_keeps_one_backup_for_the_repeated_hour_of_the_autumn_dst_change():
    # On 2026-10-25 Madrid's clocks go back from 03:00 CEST to 02:00 CET: 02:30 happens twice, one local day.
    first = datetime(2026, 10, 25, 2, 30, tzinfo=MADRID)  # fold=0: 00:30 UTC
    second = datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=MADRID)  # 01:30 UTC
    assert second.astimezone(UTC) - first.astimezone(UTC) == timedelta(hours=1)
    records = [
        BackupRecord(id="first", taken_at=first, verified=True),
        BackupRecord(id="second", taken_at=second, verified=True),
        BackupRecord(id="day before", taken_at=datetime(2026, 10, 24, 23, 30, tzinfo=MADRID), verified=True),
    ]
    policy = RetentionPolicy(daily=3, weekly=0, monthly=0, time_zone="Europe/Madrid")
    plan = plan_retention(records, policy, now=datetime(2026, 10, 26, tzinfo=UTC))
    assert plan.keep == {
        "second": (REASON_NEWEST_VERIFIED, "daily 2026-10-25"),
        "day before": ("daily 2026-10-24",),
    }
    assert plan.prune == ("first",)


def test_it_keeps_the_spring_dst_day_as_one_short_day():
    # 2026-03-29 in Madrid has 23 hours: 00:30 local is 23:30 UTC the day before, 23:30 local is 21:30 UTC.
    records = [
        BackupRecord(id="start", taken_at=datetime(2026, 3, 29, 0, 30, tzinfo=MADRID), verified=True),
        BackupRecord(id="end", taken_at=datetime(2026, 3, 29, 23, 30, tzinfo=MADRID), verified=True),
    ]
    policy = RetentionPolicy(daily=2, weekly=0, monthly=0, time_zone="Europe/Madrid")
    plan = plan_retention(records, policy, now=datetime(2026, 3, 30, tzinfo=UTC))
    assert plan.keep == {"end": (REASON_NEWEST_VERIFIED, "daily 2026-03-29")}


def test_it_never_lets_an_unverified_or_failed_backup_fill_a_slot():
    now = datetime(2026, 11, 30, 20, tzinfo=UTC)
    records = [
        BackupRecord(id="failed", taken_at=datetime(2026, 11, 30, 18, tzinfo=UTC), verified=False),
        BackupRecord(id="good", taken_at=datetime(2026, 11, 30, 6, tzinfo=UTC), verified=True),
        BackupRecord(id="old failed", taken_at=datetime(2026, 11, 20, 6, tzinfo=UTC), verified=False),
    ]
    plan = plan_retention(records, RetentionPolicy(), now=now)
    assert plan.reasons("good") == (REASON_NEWEST_VERIFIED, "daily 2026-11-30", "weekly 2026-W49", "monthly 2026-11")
    # The recent one may still be verifying; the old one is past the grace period.
    assert plan.reasons("failed") == (REASON_AWAITING_VERIFICATION,)
    assert plan.prune == ("old failed",)
    assert plan_retention(records, RetentionPolicy(unverified_grace_hours=1), now=now).prune == ("failed", "old failed")


def test_it_never_prunes_the_newest_verified_backup_or_one_in_use():
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    records = [
        BackupRecord(id="pre", taken_at=now - timedelta(days=40), verified=True, kind="pre-deploy"),
        BackupRecord(id="restoring", taken_at=now - timedelta(days=400), verified=True, in_use=True),
        BackupRecord(id="broken in use", taken_at=now - timedelta(days=500), verified=False, in_use=True),
        BackupRecord(id="old", taken_at=now - timedelta(days=600), verified=True),
    ]
    plan = plan_retention(records, RetentionPolicy(daily=0, weekly=0, monthly=0, pre_deploy_keep=0), now=now)
    assert plan.keep == {
        "pre": (REASON_NEWEST_VERIFIED,),
        "restoring": (REASON_IN_USE,),
        "broken in use": (REASON_IN_USE,),
    }
    assert plan.prune == ("old",)


def test_it_keeps_pre_deploy_backups_by_count_and_age_outside_the_gfs_slots():
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    records = [
        BackupRecord(id=f"pre{n}", taken_at=now - timedelta(days=n * 4), verified=True, kind=BackupKind.PRE_DEPLOY)
        for n in range(6)
    ] + [BackupRecord(id="nightly", taken_at=now - timedelta(hours=1), verified=True)]
    policy = RetentionPolicy(pre_deploy_keep=4, pre_deploy_max_age_days=10)
    plan = plan_retention(records, policy, now=now)
    # pre0..pre2 are 0, 4 and 8 days old; pre3 is the 4th newest but 12 days old.
    assert plan.reasons("pre0") == (REASON_NEWEST_VERIFIED, "pre-deploy 1 of 4")
    assert plan.reasons("pre1") == ("pre-deploy 2 of 4",)
    assert plan.reasons("pre2") == ("pre-deploy 3 of 4",)
    assert set(plan.prune) == {"pre3", "pre4", "pre5"}
    # The nightly one holds today's slot although pre0 is newer and verified: pre-deploy dumps fill no GFS slot.
    assert plan.reasons("nightly") == ("daily 2026-11-30", "weekly 2026-W49", "monthly 2026-11")


def test_it_refuses_naive_times_duplicate_ids_and_bad_policies():
    with pytest.raises(ValueError, match="aware"):
        BackupRecord(id=1, taken_at=datetime(2026, 1, 1), verified=True)
    with pytest.raises(ValueError):
        BackupRecord(id=1, taken_at=datetime(2026, 1, 1, tzinfo=UTC), verified=True, kind="weekly")
    record = BackupRecord(id=1, taken_at=datetime(2026, 1, 1, tzinfo=UTC), verified=True)
    with pytest.raises(ValueError, match="unique"):
        plan_retention([record, record], RetentionPolicy(), now=datetime(2026, 1, 2, tzinfo=UTC))
    with pytest.raises(ValueError, match="aware"):
        plan_retention([record], RetentionPolicy(), now=datetime(2026, 1, 2))
    with pytest.raises(ValueError, match="daily"):
        RetentionPolicy(daily=-1)
    with pytest.raises(ValueError, match="time zone"):
        RetentionPolicy(time_zone="Mars/Olympus_Mons")
    with pytest.raises(ValueError, match="time zone"):
        RetentionPolicy(time_zone="../../etc/passwd")


@override_settings(
    BACKUP_KEEP_DAILY=2, BACKUP_KEEP_WEEKLY=1, BACKUP_KEEP_MONTHLY=0, BACKUP_KEEP_PRE_DEPLOY=1, TIME_ZONE="UTC"
)
def test_it_reads_the_policy_from_settings_with_per_environment_overrides():
    policy = RetentionPolicy.from_settings(time_zone="Europe/Madrid")
    assert (policy.daily, policy.weekly, policy.monthly, policy.pre_deploy_keep) == (2, 1, 0, 1)
    assert policy.time_zone == "Europe/Madrid"
    assert RetentionPolicy() == RetentionPolicy(daily=7, weekly=4, monthly=3)


@override_settings(TIME_ZONE="UTC")
def test_it_has_the_same_defaults_in_settings_and_code():
    assert RetentionPolicy.from_settings() == RetentionPolicy()


def test_it_deletes_only_files_no_kept_backup_lists():
    kept = [{"ab/ab1", "cd/cd2"}, ["ef/ef3"]]
    pruned = [{"ab/ab1", "zz/zz9"}, ("ef/ef3", "yy/yy8")]
    assert files_to_delete(kept, pruned) == {"zz/zz9", "yy/yy8"}
    assert files_to_delete([], pruned) == {"ab/ab1", "zz/zz9", "ef/ef3", "yy/yy8"}
    assert files_to_delete(kept, []) == set()


# --- Property-based: random histories --------------------------------------------------------------------------

ZONES = ["UTC", "Europe/Madrid", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu", "America/Sao_Paulo"]
START = datetime(2025, 9, 1, tzinfo=UTC)
RECORD_ZONES = [UTC, MADRID, ZoneInfo("America/New_York")]
# (start, minutes): Madrid's and New York's DST changes in 2026, and the turn of the year.
HOT_WINDOWS = [
    (datetime(2026, 3, 28, 22, tzinfo=UTC), 300),
    (datetime(2026, 10, 24, 23, tzinfo=UTC), 240),
    (datetime(2026, 3, 8, 5, tzinfo=UTC), 240),
    (datetime(2026, 11, 1, 4, tzinfo=UTC), 240),
    (datetime(2025, 12, 31, 20, tzinfo=UTC), 480),
]
SPAN_MINUTES = 500 * 24 * 60  # ~16 months: two of each DST change, a new year, ISO week 53 of 2026


@st.composite
def histories(draw):
    size = draw(st.integers(min_value=0, max_value=60))
    # As many near DST changes and year ends as elsewhere, where buckets are easiest to get wrong.
    moments = draw(
        st.lists(
            st.one_of(
                st.integers(0, SPAN_MINUTES).map(lambda minutes: START + timedelta(minutes=minutes)),
                st.sampled_from(HOT_WINDOWS).flatmap(
                    lambda window: st.integers(0, window[1]).map(lambda minutes: window[0] + timedelta(minutes=minutes))
                ),
            ),
            min_size=size,
            max_size=size,
        )
    )
    records = [
        BackupRecord(
            id=index,
            # Written in a zone of its own sometimes: the repeated autumn hour must still sort by real time.
            taken_at=moment.astimezone(draw(st.sampled_from(RECORD_ZONES))),
            verified=draw(st.booleans()),
            kind=draw(st.sampled_from(list(BackupKind))),
            in_use=draw(st.integers(0, 9)) == 0,
        )
        for index, moment in enumerate(moments)
    ]
    policy = RetentionPolicy(
        daily=draw(st.integers(0, 9)),
        weekly=draw(st.integers(0, 6)),
        monthly=draw(st.integers(0, 5)),
        time_zone=draw(st.sampled_from(ZONES)),
        pre_deploy_keep=draw(st.integers(0, 4)),
        pre_deploy_max_age_days=draw(st.integers(0, 40)),
        unverified_grace_hours=draw(st.integers(0, 72)),
    )
    newest = max((record.taken_at.astimezone(UTC) for record in records), default=START)
    now = newest + timedelta(minutes=draw(st.integers(0, 60 * 24 * 60)))
    return records, policy, now


def local_buckets(moment: datetime, zone: ZoneInfo) -> dict[str, str]:
    """The record's buckets, computed independently of the module's helpers."""
    local = moment.astimezone(zone)
    iso = local.isocalendar()
    return {
        "daily": local.strftime("%Y-%m-%d"),
        "weekly": f"{iso.year}-W{iso.week:02d}",
        "monthly": local.strftime("%Y-%m"),
    }


# No example database: nothing is written into the work tree; a failure prints the example to reproduce it.
HYPOTHESIS = settings(
    max_examples=300, deadline=None, database=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)


@HYPOTHESIS
@given(histories())
def test_it_holds_the_retention_invariants_over_random_histories(case):
    records, policy, now = case
    plan = plan_retention(records, policy, now=now)
    zone = ZoneInfo(policy.time_zone)
    ids = [record.id for record in records]

    # Every backup is either kept (with a reason) or pruned, never both.
    assert set(plan.keep) | set(plan.prune) == set(ids)
    assert not set(plan.keep) & set(plan.prune)
    assert all(plan.keep.values())

    # The newest verified backup and every backup in use are kept.
    verified = [record for record in records if record.verified]
    if verified:
        newest = max(verified, key=lambda record: (record.taken_at.astimezone(UTC), -ids.index(record.id)))
        assert REASON_NEWEST_VERIFIED in plan.reasons(newest.id)
    assert [reason for reasons in plan.keep.values() for reason in reasons].count(REASON_NEWEST_VERIFIED) == (
        1 if verified else 0
    )
    for record in records:
        if record.in_use:
            assert REASON_IN_USE in plan.reasons(record.id)

    # GFS: per tier, exactly min(count, buckets available) slots, one per bucket, each the newest of its bucket
    # among verified scheduled/manual backups, and the buckets are the newest ones.
    candidates = [record for record in verified if record.kind in {BackupKind.SCHEDULED, BackupKind.MANUAL}]
    for tier in ("daily", "weekly", "monthly"):
        newest_in_bucket: dict[str, BackupRecord] = {}
        for record in candidates:
            bucket = local_buckets(record.taken_at, zone)[tier]
            best = newest_in_bucket.get(bucket)
            if best is None or record.taken_at.astimezone(UTC) > best.taken_at.astimezone(UTC):
                newest_in_bucket[bucket] = record
        expected_buckets = sorted(newest_in_bucket, reverse=True)[: getattr(policy, tier)]
        slots = {
            reason.split(" ", 1)[1]: backup_id
            for backup_id, reasons in plan.keep.items()
            for reason in reasons
            if reason.startswith(f"{tier} ")
        }
        slot_count = sum(reason.startswith(f"{tier} ") for reasons in plan.keep.values() for reason in reasons)
        assert slot_count == len(slots) == min(getattr(policy, tier), len(newest_in_bucket))
        assert sorted(slots, reverse=True) == expected_buckets
        for bucket, backup_id in slots.items():
            assert newest_in_bucket[bucket].taken_at == records[backup_id].taken_at
            assert records[backup_id] in candidates

    # Pre-deploy: at most pre_deploy_keep, each verified and younger than the limit, never holding a GFS slot.
    pre_deploy_kept = [
        backup_id for backup_id, reasons in plan.keep.items() if any(r.startswith("pre-deploy ") for r in reasons)
    ]
    assert len(pre_deploy_kept) <= policy.pre_deploy_keep
    for backup_id in pre_deploy_kept:
        record = records[backup_id]
        assert record.verified and record.kind == BackupKind.PRE_DEPLOY
        assert now - record.taken_at < timedelta(days=policy.pre_deploy_max_age_days)

    # A pruned backup has no claim at all: not in use, not within the unverified grace, not newest verified.
    for backup_id in plan.prune:
        record = records[backup_id]
        assert not record.in_use
        assert record.verified or now - record.taken_at >= timedelta(hours=policy.unverified_grace_hours)


@HYPOTHESIS
@given(histories(), st.data())
def test_it_never_deletes_a_file_that_a_kept_backup_lists(case, data):
    records, policy, now = case
    files = [f"{n:02x}/{n:040x}" for n in range(30)]
    manifests = {record.id: data.draw(st.sets(st.sampled_from(files), max_size=12)) for record in records}
    plan = plan_retention(records, policy, now=now)
    deleted = files_to_delete([manifests[i] for i in plan.keep], [manifests[i] for i in plan.prune])
    for backup_id in plan.keep:
        assert not deleted & manifests[backup_id]
    listed_by_pruned = set().union(*(manifests[i] for i in plan.prune)) if plan.prune else set()
    listed_by_kept = set().union(*(manifests[i] for i in plan.keep)) if plan.keep else set()
    # Nothing else is deleted, and nothing that only pruned backups list is left behind.
    assert deleted == listed_by_pruned - listed_by_kept


@HYPOTHESIS
@given(histories())
def test_it_gives_the_same_plan_whatever_the_input_order_of_distinct_times(case):
    records, policy, now = case
    distinct: dict[datetime, BackupRecord] = {}
    for record in records:
        distinct.setdefault(record.taken_at.astimezone(UTC), record)
    unique = list(distinct.values())
    forward = plan_retention(unique, policy, now=now)
    backward = plan_retention(list(reversed(unique)), policy, now=now)
    assert forward.keep == backward.keep
    assert forward.prune == backward.prune
    # Both list the newest first.
    for listed in (list(forward.keep), list(forward.prune)):
        times = [distinct_time(unique, backup_id) for backup_id in listed]
        assert times == sorted(times, reverse=True)


def distinct_time(records, backup_id):
    return next(record.taken_at.astimezone(UTC) for record in records if record.id == backup_id)
