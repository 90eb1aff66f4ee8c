"""Grandfather-father-son retention: which backups of one environment to keep and which to prune.

Pure functions over plain records, so the retention job (and its property-based tests) need no database.

The policy, in the words the README uses:

- **GFS slots.** Only *verified* backups of kind ``scheduled`` or ``manual`` fill slots. The days, ISO weeks and
  months are those of the policy's time zone (a backup taken at 00:30 in Madrid belongs to that Madrid day even
  though it is still the previous day in UTC). Each tier keeps the newest backup of each of its newest ``count``
  buckets that have one: ``daily=7`` keeps the newest backup of each of the 7 most recent days that have a
  verified backup (days without one are skipped, not counted). The tiers are independent, like restic's
  ``--keep-daily/--keep-weekly/--keep-monthly``: one backup can hold a daily and a weekly slot at once.
- **Pre-deploy backups** (the dump a production deploy takes before the update) have their own short retention:
  a verified pre-deploy backup is kept while it is one of the newest ``pre_deploy_keep`` verified pre-deploy
  backups *and* younger than ``pre_deploy_max_age_days``. Both bounds hold at once, so frequent deploys cannot
  pile them up and an old one does not linger after deploys stop (the GFS slots cover the long term). They never
  fill a GFS slot: a burst of deploys must not push a scheduled backup out of its day.
- **Pre-restore backups** (the safety backup a restore takes of its target) likewise: kept while one of the newest
  ``pre_restore_keep`` verified ones *and* younger than ``pre_restore_max_age_days``; never a GFS slot.
- **Imported backups** (an Odoo dump zip someone brought in) are never pruned: retention only removes what the
  panel took by itself.
- **Always kept:** the newest verified backup (of any kind) and every backup that a restore is using.
- **Unverified backups** (failed, interrupted, not yet verified) never fill a slot. One younger than
  ``unverified_grace_hours`` is kept (its verification may still be running); older ones are pruned.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class BackupKind(enum.StrEnum):
    """Why a backup was taken."""

    SCHEDULED = "scheduled"
    MANUAL = "manual"
    PRE_DEPLOY = "pre-deploy"
    PRE_RESTORE = "pre-restore"
    IMPORTED = "imported"


#: Kinds whose verified backups fill GFS slots.
GFS_KINDS = frozenset({BackupKind.SCHEDULED, BackupKind.MANUAL})

REASON_NEWEST_VERIFIED = "newest verified"
REASON_IN_USE = "in use"
REASON_AWAITING_VERIFICATION = "awaiting verification"
REASON_IMPORTED = "imported"


@dataclass(frozen=True)
class BackupRecord:
    """What retention needs to know about one backup.

    ``taken_at`` must be time-zone aware. ``in_use`` is true while a restore (or a download, a test restore) reads
    it. ``kind`` is a :class:`BackupKind` or its value.
    """

    id: Hashable
    taken_at: datetime
    verified: bool
    kind: BackupKind | str = BackupKind.SCHEDULED
    in_use: bool = False

    def __post_init__(self) -> None:
        if self.taken_at.tzinfo is None or self.taken_at.utcoffset() is None:
            raise ValueError(f"Backup {self.id!r}: taken_at must be time-zone aware, not {self.taken_at!r}.")
        object.__setattr__(self, "kind", BackupKind(self.kind))


@dataclass(frozen=True)
class RetentionPolicy:
    """How many backups of each tier to keep, in which time zone; see the module docstring."""

    daily: int = 7
    weekly: int = 4
    monthly: int = 3
    time_zone: str = "UTC"
    pre_deploy_keep: int = 3
    pre_deploy_max_age_days: int = 14
    pre_restore_keep: int = 3
    pre_restore_max_age_days: int = 14
    unverified_grace_hours: int = 24

    def __post_init__(self) -> None:
        for name in (
            "daily", "weekly", "monthly", "pre_deploy_keep", "pre_deploy_max_age_days", "pre_restore_keep",
            "pre_restore_max_age_days",
        ):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"Retention {name} must be a whole number of 0 or more, not {value!r}.")
        if not isinstance(self.unverified_grace_hours, int) or self.unverified_grace_hours < 0:
            raise ValueError(
                f"Retention unverified_grace_hours must be 0 or more, not {self.unverified_grace_hours!r}."
            )
        try:
            ZoneInfo(self.time_zone)
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
            raise ValueError(f"Retention time zone {self.time_zone!r} is not an IANA time zone.") from exc

    @property
    def zone(self) -> ZoneInfo:
        """The policy's time zone."""
        return ZoneInfo(self.time_zone)

    @classmethod
    def from_settings(cls, **overrides: object) -> RetentionPolicy:
        """The policy of the BACKUP_KEEP_* settings, with per-environment ``overrides`` (e.g. ``time_zone``)."""
        from django.conf import settings

        values: dict[str, object] = {
            "daily": settings.BACKUP_KEEP_DAILY,
            "weekly": settings.BACKUP_KEEP_WEEKLY,
            "monthly": settings.BACKUP_KEEP_MONTHLY,
            "pre_deploy_keep": settings.BACKUP_KEEP_PRE_DEPLOY,
            "pre_deploy_max_age_days": settings.BACKUP_KEEP_PRE_DEPLOY_DAYS,
            "pre_restore_keep": settings.BACKUP_KEEP_PRE_RESTORE,
            "pre_restore_max_age_days": settings.BACKUP_KEEP_PRE_RESTORE_DAYS,
            "unverified_grace_hours": settings.BACKUP_KEEP_UNVERIFIED_HOURS,
            "time_zone": settings.TIME_ZONE,
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RetentionPlan:
    """The outcome: ``keep`` maps each kept backup's id to its reasons (in tier order), ``prune`` lists the rest.

    Both follow the input's order from the newest backup to the oldest.
    """

    keep: dict[Hashable, tuple[str, ...]] = field(default_factory=dict)
    prune: tuple[Hashable, ...] = ()

    def reasons(self, backup_id: Hashable) -> tuple[str, ...]:
        """The reasons a backup is kept (empty when it is pruned)."""
        return self.keep.get(backup_id, ())


def day_bucket(moment: datetime, zone: ZoneInfo) -> str:
    """The daily bucket of ``moment``: its local date in ``zone``, e.g. ``2026-11-30``."""
    return moment.astimezone(zone).date().isoformat()


def week_bucket(moment: datetime, zone: ZoneInfo) -> str:
    """The weekly bucket of ``moment``: its local ISO week in ``zone``, e.g. ``2026-W48``."""
    year, week, _ = moment.astimezone(zone).isocalendar()
    return f"{year}-W{week:02d}"


def month_bucket(moment: datetime, zone: ZoneInfo) -> str:
    """The monthly bucket of ``moment``: its local month in ``zone``, e.g. ``2026-11``."""
    local: date = moment.astimezone(zone).date()
    return f"{local.year}-{local.month:02d}"


#: The GFS tiers: name, the policy attribute with its count, the bucket function.
TIERS: tuple[tuple[str, str, Callable[[datetime, ZoneInfo], str]], ...] = (
    ("daily", "daily", day_bucket),
    ("weekly", "weekly", week_bucket),
    ("monthly", "monthly", month_bucket),
)


def plan_retention(backups: Iterable[BackupRecord], policy: RetentionPolicy, *, now: datetime) -> RetentionPlan:
    """Decide which of one environment's backups to keep (with the reasons) and which to prune.

    ``now`` (aware) dates the pre-deploy and unverified age limits. Ties on ``taken_at`` are broken by the input
    order (earlier in the input counts as newer), so the result is deterministic. See the module docstring for
    the policy; whatever it says, the newest verified backup and every backup in use are kept.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be time-zone aware.")
    records = list(backups)
    ids = [record.id for record in records]
    if len(set(ids)) != len(ids):
        raise ValueError("Backup ids must be unique.")
    # Newest first; sorted() is stable, so equal times keep the input order. Compared in UTC: aware datetimes of one
    # zone compare by wall clock in Python, which gets the repeated autumn hour wrong.
    ordered = sorted(records, key=lambda record: record.taken_at.astimezone(UTC), reverse=True)
    now = now.astimezone(UTC)
    reasons: dict[Hashable, list[str]] = {record.id: [] for record in ordered}
    zone = policy.zone

    verified = [record for record in ordered if record.verified]
    if verified:
        reasons[verified[0].id].append(REASON_NEWEST_VERIFIED)

    slot_candidates = [record for record in verified if record.kind in GFS_KINDS]
    for tier, attribute, bucket_of in TIERS:
        for bucket, record in _newest_per_bucket(slot_candidates, zone, bucket_of)[: getattr(policy, attribute)]:
            reasons[record.id].append(f"{tier} {bucket}")

    for kind, count, max_age_days in (
        (BackupKind.PRE_DEPLOY, policy.pre_deploy_keep, policy.pre_deploy_max_age_days),
        (BackupKind.PRE_RESTORE, policy.pre_restore_keep, policy.pre_restore_max_age_days),
    ):
        max_age = timedelta(days=max_age_days)
        of_kind = [record for record in verified if record.kind == kind]
        for position, record in enumerate(of_kind[:count], start=1):
            if now - record.taken_at.astimezone(UTC) < max_age:
                reasons[record.id].append(f"{kind.value} {position} of {count}")

    grace = timedelta(hours=policy.unverified_grace_hours)
    for record in ordered:
        if not record.verified and now - record.taken_at.astimezone(UTC) < grace:
            reasons[record.id].append(REASON_AWAITING_VERIFICATION)
        if record.in_use:
            reasons[record.id].append(REASON_IN_USE)
        if record.kind == BackupKind.IMPORTED:
            reasons[record.id].append(REASON_IMPORTED)

    keep = {record.id: tuple(reasons[record.id]) for record in ordered if reasons[record.id]}
    prune = tuple(record.id for record in ordered if not reasons[record.id])
    return RetentionPlan(keep=keep, prune=prune)


def _newest_per_bucket(
    ordered: Sequence[BackupRecord], zone: ZoneInfo, bucket_of: Callable[[datetime, ZoneInfo], str]
) -> list[tuple[str, BackupRecord]]:
    """The newest record of each bucket, newest bucket first (``ordered`` is newest first)."""
    seen: dict[str, BackupRecord] = {}
    for record in ordered:
        seen.setdefault(bucket_of(record.taken_at, zone), record)
    # Newest bucket first by the bucket's own name (ISO dates, weeks and months sort as strings), not by its newest
    # record: where a zone turned its clocks back across midnight, a later instant can fall in an earlier day.
    return sorted(seen.items(), key=lambda item: item[0], reverse=True)


def files_to_delete(kept_manifests: Iterable[Iterable[str]], pruned_manifests: Iterable[Iterable[str]]) -> set[str]:
    """The deduplicated objects (filestore files) that pruning may delete.

    Each manifest is the collection of object keys one backup lists. An object listed by any kept backup is never
    returned, whatever the pruned ones list. The caller must count backups that are still running (or hold the
    environment's backup lock while it prunes): a running backup may already rely on an existing object without
    having a manifest yet.
    """
    kept: set[str] = set()
    for manifest in kept_manifests:
        kept.update(manifest)
    candidates: set[str] = set()
    for manifest in pruned_manifests:
        candidates.update(manifest)
    return candidates - kept
