"""The connector contract and plugin discovery.

A connector turns a batch of records into one vendor request and the vendor's answer into one
outcome per record. It never sleeps, retries, batches or touches state: the engine owns those.
Built-in and third-party connectors register the same way, in the entry-point group
``syncer.connectors`` (``name = "package.module:ConnectorClass"``).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, ClassVar, Literal, cast, overload

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from syncer.enums import SyncMode
from syncer.errors import ConfigError
from syncer.http import Action
from syncer.ratelimit import RateLimit
from syncer.types import FieldValue

ENTRY_POINT_GROUP = "syncer.connectors"

#: What a batch asks the destination to do with its records.
Operation = Literal["add", "remove", "update"]
#: A sync's mode as a string, as a connector's capabilities name it (a mapping's ``mode:``);
#: :class:`~syncer.enums.SyncMode` is the same words as an enum.
ModeName = Literal["membership", "upsert", "mirror", "update_only"]
#: What happened to one record (see :class:`Outcome`).
OutcomeStatus = Literal["accepted", "rejected", "failed", "pending"]
#: Where a vendor's asynchronous job is (see :class:`JobStatus`).
JobState = Literal["running", "succeeded", "failed"]


#: Classes (``module:qualname``) found in no entry point, so ``name`` does not scan again.
_UNREGISTERED: set[str] = set()


class _RegisteredName:
    """``Connector.name`` of a class that declares none: the name of the entry point that
    registers it (looked up once, then kept on the class), or "" when none does."""

    def __get__(self, instance: object, owner: type) -> str:
        target = f"{owner.__module__}:{owner.__qualname__}"
        if target in _UNREGISTERED:
            return ""
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.value.replace(" ", "") == target:
                owner.name = ep.name  # type: ignore[attr-defined]
                return ep.name
        _UNREGISTERED.add(target)
        return ""


@dataclass(frozen=True, slots=True)
class Record:
    """One member as the destination sees it: identity key plus mapped fields.

    ``key`` is the sync's key (its SHA-256 when ``Capabilities.hashed_keys``); ``fields`` the
    mapped columns, normalised to JSON types; ``destination_id`` what the connector returned
    for this record last time (``BatchResult.accept(..., destination_id=)``), or None.
    """

    key: str
    fields: Mapping[str, FieldValue] = field(default_factory=dict)
    destination_id: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one record of a batch.

    ``accepted`` advances state; ``rejected`` is the destination refusing this record (kept
    with its reason, tried again next run); ``failed`` means the request itself failed;
    ``pending`` means the vendor took it into an asynchronous ``job`` that a later run polls
    (state advances only once the job succeeded).
    """

    key: str
    status: OutcomeStatus
    reason: str | None = None
    destination_id: str | None = None
    job: str | None = None


@dataclass(frozen=True, slots=True)
class JobStatus:
    """What a vendor says about an asynchronous job (see ``Connector.poll_job``).

    ``stats`` are the vendor's counts for the job (matched, received...), kept with the run
    that submitted it; ``reason`` says why a failed job failed.
    """

    state: JobState
    reason: str | None = None
    stats: Mapping[str, int] = field(default_factory=dict)


class AcceptedWhole(Sequence[Outcome]):
    """Outcomes of records all accepted, none with a destination id: only their keys."""

    __slots__ = ("keys",)

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    def __getitem__(self, index: int) -> Outcome: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Outcome]: ...
    def __getitem__(self, index: int | slice) -> Outcome | Sequence[Outcome]:
        if isinstance(index, slice):
            return AcceptedWhole(self.keys[index])
        return Outcome(self.keys[index], "accepted")

    def __iter__(self) -> Iterator[Outcome]:
        return (Outcome(key, "accepted") for key in self.keys)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AcceptedWhole):
            return self.keys == other.keys
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"AcceptedWhole({len(self.keys)} keys)"


def accepted_whole(outcomes: Sequence[Outcome]) -> bool:
    """Whether every outcome is a plain acceptance (state is then written for the batch by
    whole statements: see syncer.ledger)."""
    if isinstance(outcomes, AcceptedWhole):
        return True
    return all(o.status == "accepted" and o.destination_id is None for o in outcomes)


def join_outcomes(first: Sequence[Outcome], second: Sequence[Outcome]) -> Sequence[Outcome]:
    """Two batches' outcomes as one, kept light when both are ``AcceptedWhole``."""
    if isinstance(first, AcceptedWhole) and isinstance(second, AcceptedWhole):
        return AcceptedWhole(first.keys + second.keys)
    return [*first, *second]


class BatchResult:
    """Per-record outcomes of one batch; records not mentioned count as accepted.

    Only keys of the batch may be named (another key is a connector bug: ValueError). The
    last word about a key wins."""

    def __init__(self, records: Sequence[Record]) -> None:
        self._records = records
        self._by_key: dict[str, Outcome] = {}

    def reject(self, key: str, reason: str) -> None:
        """The destination refused this record for its content (an invalid email...): kept
        with ``reason`` in the audit log and sent again next run. ``reason`` must hold no
        secret or record value: build it with ``RestConnector.reason``."""
        self._by_key[key] = Outcome(key, "rejected", reason)

    def fail(self, key: str, reason: str) -> None:
        """The request for this record failed (the vendor says "try later" for it alone):
        state does not advance; the next run sends it again."""
        self._by_key[key] = Outcome(key, "failed", reason)

    def accept(self, key: str, destination_id: str | None = None) -> None:
        """The destination has the record; ``destination_id`` (the vendor's id for it, or
        what removing it later needs) is kept in state and given back in the next batch."""
        self._by_key[key] = Outcome(key, "accepted", None, destination_id)

    def pending(self, key: str, job: str, destination_id: str | None = None) -> None:
        """The record went into asynchronous ``job``; it counts as synced once it succeeded."""
        self._by_key[key] = Outcome(key, "pending", None, destination_id, job)

    def outcomes(self) -> list[Outcome]:
        """One outcome per record of the batch, in its order."""
        return list(self.settled())

    def settled(self) -> Sequence[Outcome]:
        """``outcomes()`` as the engine reads it: a batch nothing was said about is
        ``AcceptedWhole`` (no Outcome object per record, a million on a first run)."""
        if not self._by_key:
            return AcceptedWhole([r.key for r in self._records])
        keys = {r.key for r in self._records}
        extra = [k for k in self._by_key if k not in keys]
        if extra:
            # A vendor answering about records we never sent is a connector bug, not data.
            raise ValueError(f"outcome for {len(extra)} key(s) not in the batch")
        return [self._by_key.get(r.key) or Outcome(r.key, "accepted") for r in self._records]

    @classmethod
    def all_accepted(cls, records: Sequence[Record]) -> BatchResult:
        """Every record accepted, none with a destination id."""
        return cls(records)


@dataclass(frozen=True, slots=True)
class NamedList:
    """A list, tag, segment or audience a sync names instead of giving its id.

    The engine (syncer.destinations) resolves it before the first batch: the id it stored
    for this name before, else the one list the vendor has by that name (``find_list``),
    else, with ``create``, a new one (``create_list``), created exactly once even across
    crashes and replicas. The id then goes into the config field ``id_field`` (appended
    when that field is a list of ids). ``within`` names the part of the account the list
    lives in when the credential reaches several (an ad account, a customer id)."""

    kind: str
    name: str
    id_field: str
    create: bool = False
    within: str = ""


def check_named_list(
    config: BaseModel,
    *,
    id_field: str,
    name_field: str,
    required: dict[str, str] | None = None,
    optional: bool = False,
) -> None:
    """The rules a config naming its list follows (call it from a ``model_validator``): the
    id or the name, not both, and one of them unless the list is ``optional``;
    ``create_if_missing`` only with the name, and then every setting in ``required``
    (field -> the values it takes) set. ValueError says which."""
    given_id = getattr(config, id_field, None)
    name = getattr(config, name_field, None)
    create = bool(getattr(config, "create_if_missing", False))
    if given_id and name is not None:
        raise ValueError(f"set either {id_field} or {name_field}, not both")
    if not given_id and name is None and not optional:
        raise ValueError(
            f"set {id_field}, or {name_field} (with create_if_missing: true to create it)"
        )
    if create and name is None:
        raise ValueError(f"create_if_missing needs {name_field}: the name to find or create")
    if create:
        for field_name, choices in (required or {}).items():
            if getattr(config, field_name, None) is None:
                raise ValueError(
                    f"create_if_missing needs {field_name}, a choice only you can make: {choices}"
                )


class ConnectorConfig(BaseModel):
    """Base for a connector's settings (the ``destination:`` block of a mapping).

    Unknown keys are errors so a typo never silently changes behaviour. Fields typed
    ``SecretStr`` must be given as ``${ENV_VAR}`` references in YAML, never literally.
    """

    model_config = ConfigDict(extra="forbid")

    batch_size: int | None = Field(
        default=None, description="Records per batch, capped at the connector's max batch size."
    )
    # Extra limits for this sync, on top of the connector's published ones: YAML can only
    # make sending stricter (see ``effective_limits``).
    rate_limits: list[RateLimit] | None = Field(
        default=None,
        description="Request windows added to the connector's own, e.g."
        " [{requests: 100, per_seconds: 10}]; every window applies at once.",
    )
    max_concurrency: int | None = Field(
        default=None, ge=1, description="Requests in flight; can only lower the connector's."
    )


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a connector can do; the engine refuses a mapping that asks for more."""

    operations: frozenset[Operation] = frozenset({"add", "remove", "update"})
    modes: frozenset[ModeName] = frozenset({"membership", "upsert", "mirror", "update_only"})
    max_batch_size: int = 500
    #: Keep only the SHA-256 of each key in the state database (ad audiences: the key is
    #: often an email, and raw identifiers must never be stored). Records then carry the
    #: hashed key; what removal needs goes in ``destination_id``.
    hashed_keys: bool = False
    #: The connector returns ``pending`` outcomes and implements ``poll_job``.
    async_jobs: bool = False

    @classmethod
    def ad_audience(cls, max_batch_size: int, *, async_jobs: bool = False) -> Capabilities:
        """An ad platform's audience: members added and removed (``membership``, ``mirror``),
        keyed by the SHA-256 of their identifiers, never the raw key."""
        return cls(
            modes=frozenset({"membership", "mirror"}),
            max_batch_size=max_batch_size,
            hashed_keys=True,
            async_jobs=async_jobs,
        )

    def describe(self) -> dict[str, list[str] | int | bool]:
        return {
            "operations": sorted(self.operations),
            "modes": sorted(self.modes),
            "max_batch_size": self.max_batch_size,
            "hashed_keys": self.hashed_keys,
            "async_jobs": self.async_jobs,
        }


@dataclass(frozen=True, slots=True)
class SyncContext:
    """What a connector may know about the sync it serves: its name, ``mode`` (a
    :class:`~syncer.enums.SyncMode`, equal to its :data:`ModeName` string), the mapped field
    names (check them in ``open()``) and the run id
    (None outside a run, as in ``syncer check``)."""

    sync_name: str
    mode: SyncMode
    field_names: tuple[str, ...]
    run_id: str | None = None


class Connector:
    """Base class for destinations (HTTP APIs: subclass :class:`syncer.rest.RestConnector`).

    Subclasses set ``config_model`` and ``capabilities``; ``name`` comes from the entry point
    in ``syncer.connectors`` (a class that declares one must agree with it).

    What the engine guarantees: one instance per sync and run, built with the validated
    config; ``check()`` alone for ``syncer check``; for a run ``open()``, then any number of
    ``add``/``remove``/``update`` calls (from several threads at once, up to
    ``max_concurrency`` per account) with at most ``batch_size`` records each and only the
    operations ``capabilities`` lists, then ``close(success)``. Requests through ``self.http``
    are paced by the account's limiter, bounded in time and size, never redirected, and
    classified (``classify``); their errors carry no secrets. A batch that failed is sent
    again later with the same records (so every write must be idempotent).

    What the connector must do: turn one batch into the vendor's requests and the answers
    into one outcome per record (``BatchResult``); return normally once the destination
    answered. Raise ``TransientError`` when the request failed (the batch stays unsynced and
    is retried), ``AuthError``/``ConfigError`` when retrying cannot help, ``BatchRejected``
    when the vendor refused the batch as a whole because of its content (the engine halves it
    to find the refused records).

    What it must never do: sleep, retry, re-batch, pace requests or keep state between runs
    (the engine owns retries, batching, rate limits and state; ``self.pause`` is the only
    wait, for vendor jobs); put a secret or a record value in an exception, a reason or a log
    line; catch the syncer errors ``request`` raises to carry on as if answered.
    """

    #: The entry point's name (``connector:`` in a mapping). Leave it out: a class without
    #: one reads it from its entry point in ``syncer.connectors``; one that declares a
    #: different name is refused when loaded.
    name: ClassVar[str] = cast(str, _RegisteredName())
    config_model: ClassVar[type[ConnectorConfig]] = ConnectorConfig
    capabilities: ClassVar[Capabilities] = Capabilities()
    description: ClassVar[str] = ""
    #: The vendor's published limits per account; all windows apply at once.
    rate_limits: ClassVar[tuple[RateLimit, ...]] = ()
    #: Most requests in flight per account.
    max_concurrency: ClassVar[int] = 4

    def __init__(self, config: ConnectorConfig, context: SyncContext, http: httpx.Client) -> None:
        self.config = config
        self.context = context
        self.http = http
        self.stats: dict[str, int] = {}
        """Vendor counts for this run (``report``), stored with the run and shown by
        ``syncer run show``."""
        self._stats_lock = threading.Lock()
        self.pause: Callable[[float], bool] = _plain_pause
        """Wait ``seconds`` between polls of a vendor's async job; False means stop now.

        The engine replaces it with its own clock and stop event, so a connector polling a job
        never sleeps behind the engine's back and tests never wait in real time."""

    @property
    def batch_size(self) -> int:
        wanted = self.config.batch_size or self.capabilities.max_batch_size
        return max(1, min(wanted, self.capabilities.max_batch_size))

    def check(self) -> None:
        """Verify the destination is reachable and the credentials work; raise if not."""

    def open(self) -> None:
        """Prepare for a run (check the mapped fields, open files...). A list the sync names
        is already resolved by then (see ``named_list``): never create lists here."""

    def close(self, success: bool) -> None:
        """Finish a run; ``success`` is False when the run stopped early."""

    def report(self, **counts: int) -> None:
        """Add vendor counts (``num_received=5``...) to this run's stats; batches run on
        several threads, so this sums under a lock."""
        with self._stats_lock:
            for name, value in counts.items():
                self.stats[name] = self.stats.get(name, 0) + int(value)

    def poll_job(self, job: str) -> JobStatus:
        """Ask the vendor about a job a previous run left ``pending``; called by the engine
        at the start of the next run (never from a batch). ``close()`` must start every
        job it handed out before returning: once it returned, those jobs are polled."""
        raise NotImplementedError(f"{self.name} has no asynchronous jobs")

    def write(self, operation: Operation, records: Sequence[Record]) -> BatchResult:
        """One hook for every operation, for destinations where they differ only in a word.

        Override this, or ``add``/``remove``/``update`` one by one.
        """
        raise NotImplementedError(f"{self.name} does not support {operation}")

    def add(self, records: Sequence[Record]) -> BatchResult:
        return self.write("add", records)

    def remove(self, records: Sequence[Record]) -> BatchResult:
        return self.write("remove", records)

    def update(self, records: Sequence[Record]) -> BatchResult:
        return self.write("update", records)

    def expected_destination_id(self, operation: Operation, record: Record) -> str | None:
        """The ``destination_id`` ``record`` will have once ``operation`` is applied, when the
        connector can tell before the answer; None keeps the one state has.

        The engine stores it with the record before the request leaves, because the answer
        may never arrive (a crash, a timeout) while the destination applied it anyway. If the
        member then leaves the segment, the engine removes it with this id. Ad platforms,
        which remove by the hashed identifiers they sent, return those; destinations that
        assign ids (CRM record ids) cannot know them yet, and should be able to remove a
        record with no ``destination_id`` by its key. Must not do I/O.
        """
        return None

    # -- lists created when missing (syncer.destinations) ------------------------------

    def named_list(self) -> NamedList | None:
        """The list the config names instead of giving its id; None when it gives the id (or
        the connector has no list). The engine resolves it before the first batch."""
        return None

    def find_list(self, name: str) -> list[str]:
        """The ids of every list of this kind named exactly ``name`` (two means the name is
        ambiguous: the engine refuses it). A read; may be called any number of times."""
        raise NotImplementedError(f"{self.name} cannot look lists up by name")

    def create_list(self, name: str) -> str:
        """Create the list ``name`` with the config's settings and return its id. The engine
        calls it only after ``find_list`` found none, holding the claim on the name."""
        raise NotImplementedError(f"{self.name} cannot create lists")

    def check_list_name(self) -> bool:
        """``check()``'s part for a list the config names: the vendor has it once, or none and
        the sync may create it (nothing is created). ConfigError otherwise; True when the config
        names its list (the caller then has no id to check), False when it gives the id."""
        wanted = self.named_list()
        if wanted is None:
            return False
        ids = list(dict.fromkeys(self.find_list(wanted.name)))
        if len(ids) > 1:
            raise ConfigError(
                f"{self.name}: {len(ids)} {wanted.kind}s named {wanted.name!r}; rename or delete"
                f" all but one, or give {wanted.id_field} instead of the name"
            )
        if not ids and not wanted.create:
            raise ConfigError(
                f"{self.name}: no {wanted.kind} named {wanted.name!r}; set create_if_missing:"
                f" true to create it, or give {wanted.id_field}"
            )
        return True

    # -- HTTP layer hooks ---------------------------------------------------------------

    def account_key(self) -> str:
        """Which vendor account this sync talks to: syncs with the same key share one rate
        limiter, because vendors count per account and credential, never per list.

        Build it from the account and the credential only (a host, an account or workspace
        id, :func:`credential_digest` of the token), never from list or audience ids, field
        mappings or other per-sync settings: two syncs to two lists of one account must share
        one budget. It must never show a secret. The default is the connector's name and a
        digest of every ``SecretStr`` in the config (no secrets: one limiter per connector);
        override it when the config names the account.
        """
        return f"{self.name}:{credential_digest(*self.secret_values())}"

    def published_limits(self) -> tuple[RateLimit, ...]:
        """The vendor's limits for this account: ``rate_limits`` unless they depend on the
        settings (HubSpot's differ by account tier)."""
        return self.rate_limits

    def classify(self, response: httpx.Response) -> Action | None:
        """How to treat ``response``; None means the HTTP layer's default status table."""
        return None

    def secret_values(self) -> tuple[str, ...]:
        """Every ``SecretStr`` value in the config (also inside dicts, lists and nested
        models), for the HTTP layer to keep out of messages."""
        found: list[str] = []
        _collect_secrets(self.config, found)
        return tuple(dict.fromkeys(s for s in found if s))


def credential_digest(*secrets: str) -> str:
    """A short SHA-256 of credentials, to tell accounts apart in a limiter key without
    showing them ("none" without any)."""
    if not secrets:
        return "none"
    return hashlib.sha256("\0".join(secrets).encode("utf-8")).hexdigest()[:16]


def _plain_pause(seconds: float) -> bool:
    threading.Event().wait(max(0.0, seconds))
    return True


def effective_limits(connector: Connector | type[Connector]) -> tuple[list[RateLimit], int]:
    """Windows and concurrency for a sync: the connector's published limits plus the sync's
    ``rate_limits`` (every window applies, so YAML can only add restrictions) and the lower
    of the two concurrency caps. A class (no config) gives the connector's defaults."""
    if isinstance(connector, type):
        rates = list(connector.rate_limits)
    else:
        rates = list(connector.published_limits())
    concurrency = connector.max_concurrency
    config = getattr(connector, "config", None) if not isinstance(connector, type) else None
    if isinstance(config, ConnectorConfig):
        for rate in config.rate_limits or ():
            if rate not in rates:
                rates.append(rate)
        if config.max_concurrency is not None:
            concurrency = min(concurrency, config.max_concurrency)
    return rates, max(1, concurrency)


def _collect_secrets(value: Any, into: list[str]) -> None:
    if isinstance(value, SecretStr):
        into.append(value.get_secret_value())
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            _collect_secrets(getattr(value, name), into)
    elif isinstance(value, Mapping):
        for item in value.values():
            _collect_secrets(item, into)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            _collect_secrets(item, into)


@dataclass(frozen=True, slots=True)
class ConnectorInfo:
    """An installed connector as found in the entry points, loaded or not."""

    name: str
    target: str
    distribution: str | None
    cls: type[Connector] | None
    error: str | None


def _named(cls: type[Connector], registered: str) -> str | None:
    """Settle the connector's name with its entry point: a class without its own ``name``
    takes the entry point's; one that declares another is refused (the message says so)."""
    own = cls.__dict__.get("name")
    if not own:
        cls.name = registered
        return None
    if own != registered:
        return (
            f"class {cls.__qualname__} declares name {own!r} but is registered as"
            f" {registered!r} in {ENTRY_POINT_GROUP}; make them agree, or drop the class's"
            " name (the entry point names it)"
        )
    return None


def _registered() -> list[EntryPoint]:
    """The ``syncer.connectors`` entry points by name, each (name, target) once: a project
    installed under two distribution names (its old name's metadata left beside the new one,
    as an editable checkout keeps it) registers the same classes twice.

    Reading them imports nothing they point at: names (to list, to tell apart, to refuse an
    unknown one) cost no connector's import, and only the connector a sync uses is loaded."""
    unique = {
        (ep.name, ep.value.replace(" ", "")): ep for ep in entry_points(group=ENTRY_POINT_GROUP)
    }
    return sorted(unique.values(), key=lambda ep: ep.name)


def connector_names() -> list[str]:
    """The name of every registered connector, sorted, without importing any of them."""
    return sorted({ep.name for ep in _registered()})


def _where(ep: EntryPoint) -> str:
    """An entry point as its author wrote it, with the distribution that declares it."""
    dist = f", from {ep.dist.name}" if ep.dist is not None else ""
    return f"'{ep.name} = {ep.value}' in {ENTRY_POINT_GROUP}{dist}"


def _ambiguous(name: str, points: Sequence[EntryPoint]) -> str:
    return (
        f"connector {name!r} is registered more than once: "
        + "; ".join(_where(ep) for ep in points)
        + " (uninstall one of them)"
    )


def _load(ep: EntryPoint) -> ConnectorInfo:
    """Import one entry point's target; what goes wrong is the info's error, not raised."""
    dist = ep.dist.name if ep.dist is not None else None
    try:
        cls = ep.load()
    except Exception as exc:  # a broken plugin must not hide the others
        return ConnectorInfo(ep.name, ep.value, dist, None, f"{type(exc).__name__}: {exc}")
    if not (isinstance(cls, type) and issubclass(cls, Connector)):
        return ConnectorInfo(ep.name, ep.value, dist, None, "not a syncer Connector class")
    mismatch = _named(cls, ep.name)
    if mismatch is not None:
        return ConnectorInfo(ep.name, ep.value, dist, None, mismatch)
    return ConnectorInfo(ep.name, ep.value, dist, cls, None)


def discover() -> list[ConnectorInfo]:
    """Every connector registered in ``syncer.connectors``, each imported, with load errors
    instead of raising (for listings and schemas; a sync loads only its own, with
    :func:`load_connector`).

    The entry point's name is the connector's: a class that declares no ``name`` gets it, one
    that declares another is listed with an error (and refused by :func:`load_connector`), and
    so is a name registered by two different targets."""
    found: list[ConnectorInfo] = []
    _UNREGISTERED.clear()
    points = _registered()
    for ep in points:
        same = [other for other in points if other.name == ep.name]
        if len(same) > 1:
            dist = ep.dist.name if ep.dist is not None else None
            found.append(ConnectorInfo(ep.name, ep.value, dist, None, _ambiguous(ep.name, same)))
            continue
        found.append(_load(ep))
    return found


def load_connector(name: str) -> type[Connector]:
    """The connector class registered under ``name``, importing that one alone; ConfigError
    if no entry point has that name, two do, or its target cannot be loaded (the message
    names the entry point and its distribution)."""
    points = _registered()
    matches = [ep for ep in points if ep.name == name]
    if not matches:
        known = ", ".join(sorted({ep.name for ep in points})) or "none"
        raise ConfigError(f"unknown connector {name!r} (installed: {known})")
    if len(matches) > 1:
        raise ConfigError(_ambiguous(name, matches))
    _UNREGISTERED.clear()
    info = _load(matches[0])
    if info.cls is None:
        raise ConfigError(f"connector {name!r} failed to load ({_where(matches[0])}): {info.error}")
    return info.cls
