"""Sync definitions: one YAML file per sync in the mappings directory.

The YAML shape is the public interface. Validation errors name the file and the dotted field;
``${NAME}`` pulls a value from the environment (or ``.env``), and is the only way a secret may
enter a mapping: a connector setting typed ``SecretStr`` must be exactly one ``${NAME}``.

Mapping files are treated as hostile input: they are read only if they are regular UTF-8
files of at most ``MAX_CONFIG_BYTES``; YAML that would expand (aliases), nest or tag its way
past the bounds below is refused before it is built; a key given twice is refused; and no
error quotes more of a file than the offending key (see ``_errors_text``).
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import types
import typing
from collections.abc import Mapping as MappingABC
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from dotenv import dotenv_values
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    WithJsonSchema,
    field_validator,
)
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from pydantic_core import ErrorDetails

from syncer.connector import Connector, ConnectorConfig, Operation, discover, load_connector
from syncer.enums import SyncMode
from syncer.errors import ConfigError
from syncer.http import scrub
from syncer.settings import default_env_file, read_config_text

#: A mapping's ``mode:``, validated into a SyncMode; its schema stays the plain string enum.
Mode = Annotated[
    SyncMode,
    WithJsonSchema({"enum": [m.value for m in SyncMode], "title": "Mode", "type": "string"}),
]
FieldType = Literal[
    "auto", "string", "email", "phone", "number", "integer", "boolean", "date", "datetime"
]
KeyType = Literal["string", "email", "phone", "integer"]

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ONE_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}\Z")

#: Most values (mappings, lists and scalars) a mapping file may hold once its ``*aliases`` are
#: expanded; a real one has a few dozen. A "billion laughs" file is refused before it is built.
MAX_NODES = 20_000
#: Most characters its scalars may add up to, aliases expanded.
MAX_CHARS = 4 * 1024 * 1024
#: Deepest nesting of mappings and lists; a real mapping is four or five levels deep.
MAX_DEPTH = 32
#: Longest integer literal, in characters (Python refuses to parse past 4300 digits anyway).
MAX_INT_CHARS = 64
#: Explicit YAML tags a mapping may use: the plain types. Anything else (``!!binary``,
#: ``!!python/...``, ``!include``) is refused.
_PLAIN_TAGS = frozenset(
    {None, "!"}
    | {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq")}
)
#: Most problems listed for one file: a file that is not a mapping at all stops here.
_MAX_PROBLEMS = 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FieldSpec(_Strict):
    """A destination field read from a source column, converted to ``type``."""

    column: str = Field(
        description="Source column (matched exactly first, then case-insensitively)."
    )
    type: FieldType = Field(
        default="auto", description="How the value is converted and checked before it is sent."
    )
    region: str | None = Field(
        default=None,
        description="Default country (ISO 3166 alpha-2) for phone numbers without +<code>.",
    )


class Source(_Strict):
    """Where members come from: a query on a named warehouse and its identity column."""

    warehouse: str = Field(
        default="default",
        description="`default` is SYNCER_WAREHOUSE_URL; any other name is"
        " SYNCER_WAREHOUSES__<NAME> (case-insensitive).",
    )
    query: str = Field(
        min_length=1,
        description="One query that only reads (SELECT, WITH, VALUES, TABLE or FROM);"
        " trailing semicolons and comments are ignored.",
    )
    key: str = Field(min_length=1, description="Identity column: one row per member.")
    key_type: KeyType = Field(
        default="string", description="How the key is normalized; keys are always sent as text."
    )
    key_region: str | None = Field(
        default=None,
        description="Default country (ISO 3166 alpha-2) for phone keys without +<code>.",
    )

    @field_validator("query")
    @classmethod
    def _one_reading_query(cls, value: str) -> str:
        """Checked at load time, so ``check``, ``plan``, ``sync now`` and the daemon accept and
        refuse exactly the same queries, with the same message."""
        return normalize_query(value)


class Guards(_Strict):
    """Safety rails against a broken upstream query wiping a destination."""

    max_remove_pct: float = Field(
        default=50,
        ge=0,
        le=100,
        description="Block a run that would remove more than this percentage of the members"
        " synced so far (`--force` overrides it once). An empty source is always blocked.",
    )
    max_rejected_pct: float = Field(
        default=0,
        ge=0,
        le=100,
        description="Records the destination may reject in a run, as a percentage of the rows"
        " the query returned, before the run counts as a problem (status `partial`, exit 1)."
        " Within it the run succeeds (exit 0) and still reports and audits every rejection."
        " 0, the default, tolerates none.",
    )
    max_invalid_pct: float = Field(
        default=0,
        ge=0,
        le=100,
        description="Invalid rows (null, empty or duplicate key, a value that cannot be sent),"
        " as a percentage of the rows the query returned, before the run counts as a problem"
        " (status `partial`, exit 1). Within it the run succeeds and still reports them. 0,"
        " the default, tolerates none.",
    )


class RejectPolicy(_Strict):
    """When syncer stops sending a record the destination (or the normaliser) keeps refusing.

    Unset (the default), nothing is parked: a refused record is tried on every run, as it
    always was. Set, a record refused on that many runs, or for that many days, is *parked*:
    left out of the sends (and of the rejected and invalid counts) until its source row
    changes, a `--full-resync` tries it, or it leaves the segment. See `syncer rejects`.
    """

    park_after_runs: int | None = Field(
        default=None,
        ge=1,
        description="Park a record once it was refused on this many runs in a row with the"
        " same payload. Unset: never, by runs.",
    )
    park_after_days: float | None = Field(
        default=None,
        gt=0,
        description="Park a record refused again this many days (or more) after it was first"
        " refused with the same payload. Unset: never, by days.",
    )

    @property
    def parks(self) -> bool:
        return self.park_after_runs is not None or self.park_after_days is not None


class Experiment(_Strict):
    """A holdout: a share of the segment that is never sent, to measure what sending earns.

    A member's group is a hash of (salt, phase, key): see Measuring lift in the README.
    """

    holdout_percent: float = Field(
        description="Share of the segment held out, 0.1 to 50 (steps of 0.01)."
    )
    salt: str | None = Field(
        default=None,
        min_length=1,
        description="Hash salt; defaults to the sync's name, so each sync holds out other people.",
    )
    phase: int = Field(
        default=1,
        ge=1,
        description="Bump it to change the percent or salt: each phase is a fresh comparison,"
        " never pooled with another. Phases only move forward.",
    )

    @field_validator("holdout_percent")
    @classmethod
    def _percent(cls, value: float) -> float:
        from syncer.holdout import require_valid_percent

        return require_valid_percent(value)


class Measurement(_Strict):
    """What a member's outcome is, for `syncer report lift`."""

    outcomes: str = Field(
        min_length=1,
        description="A query on the sync's warehouse returning `member_key`, `event_at` and"
        " `revenue` (one row per conversion event); it runs inside the warehouse, only"
        " per-group totals come out.",
    )
    window_days: int = Field(
        default=30, ge=1, description="Days after a member's entry that their outcomes count."
    )
    min_holdout_members: int = Field(
        default=100,
        ge=1,
        description="Below this many held-out members the report says not enough data yet.",
    )
    min_holdout_conversions: int = Field(
        default=10,
        ge=0,
        description="Below this many held-out conversions the report says not enough data yet.",
    )

    @field_validator("outcomes")
    @classmethod
    def _one_reading_query(cls, value: str) -> str:
        return normalize_query(value)


class Writeback(_Strict):
    """Runs, membership changes and audit outcomes appended to the warehouse after each run."""

    enabled: bool = Field(default=True, description="`false` turns it off for this sync.")
    schema_: str | None = Field(
        default=None,
        alias="schema",
        min_length=1,
        description="Warehouse schema of the tables; default SYNCER_WRITEBACK_SCHEMA"
        " (`syncer`). Ignored on SQLite.",
    )


class Destination(BaseModel):
    """``connector`` picks the entry point; every other key is that connector's setting."""

    model_config = ConfigDict(extra="allow")

    connector: str = Field(
        min_length=1,
        description="An installed connector (see `syncer connectors`); every other key of"
        " `destination` is one of its settings.",
    )

    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SyncDefinition(_Strict):
    """One sync, as written in ``mappings/<name>.yaml``."""

    name: str = Field(
        description="Letters, digits, _ - . only; unique across all files. Defaults to the"
        " file name without .yaml."
    )
    description: str | None = Field(default=None, description="Free text.")
    tags: list[str] = Field(
        default_factory=list,
        description="Labels for choosing syncs on the command line (`syncer sync now"
        " tag:nightly`): letters, digits, _ - . only, each at most once.",
    )
    source: Source = Field(description="Where the members come from.")
    mode: Mode = Field(
        default=SyncMode.MEMBERSHIP,
        description="Which changes are sent: membership, upsert, mirror or update_only.",
    )
    fields: dict[str, str | FieldSpec] = Field(
        default_factory=dict,
        description="Destination field name -> source column (type auto), or a field spec."
        " Empty: records carry only their key.",
    )
    destination: Destination = Field(description="The connector and its settings.")
    schedule: str | None = Field(
        default=None,
        description="When `syncer daemon` runs the sync: cron in UTC (`*/15 * * * *`) or"
        " `every 10m`. None: only `sync now` runs it.",
    )
    guards: Guards = Field(
        default_factory=Guards, description="Safety rails against removing too much."
    )
    rejects: RejectPolicy = Field(
        default_factory=RejectPolicy,
        description="When to stop retrying a record refused again and again (park it)."
        " Unset: retry forever.",
    )

    experiment: Experiment | None = Field(
        default=None,
        description="A holdout group kept from the destination, to measure lift.",
    )
    measurement: Measurement | None = Field(
        default=None, description="The outcomes `syncer report lift` compares."
    )
    writeback: Writeback | None = Field(
        default=None,
        description="Write runs, membership and outcomes back to the warehouse after each run.",
    )

    @field_validator("schedule")
    @classmethod
    def _schedule_shape(cls, value: str | None) -> str | None:
        """Refused at load time, so ``syncer check`` and ``sync now`` catch it too, not only
        the daemon."""
        if value is None:
            return None
        from syncer.schedules import ScheduleError, parse_schedule

        try:
            parse_schedule(value)
        except ScheduleError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("tags")
    @classmethod
    def _tags_shape(cls, value: list[str]) -> list[str]:
        for i, tag in enumerate(value):  # by position: a file's values are not quoted back
            if not _NAME.match(tag):
                raise ValueError(f"tag {i + 1}: use letters, digits, '_', '-' and '.' only")
            if tag in value[:i]:
                raise ValueError(f"tag {i + 1} is listed twice")
        return value

    @field_validator("name")
    @classmethod
    def _name_shape(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("use letters, digits, '_', '-' and '.' only")
        return value

    def field_specs(self) -> dict[str, FieldSpec]:
        return {
            dest: spec if isinstance(spec, FieldSpec) else FieldSpec(column=spec)
            for dest, spec in self.fields.items()
        }


_TOP_LEVEL_KEYS = frozenset(SyncDefinition.model_fields)


class LoadedSync:
    """A validated sync definition with its resolved connector class and settings."""

    def __init__(
        self,
        definition: SyncDefinition,
        path: Path,
        connector_cls: type[Connector],
        connector_config: ConnectorConfig,
    ) -> None:
        self.definition = definition
        self.path = path
        self.connector_cls = connector_cls
        self.connector_config = connector_config

    @property
    def name(self) -> str:
        return self.definition.name

    def __repr__(self) -> str:
        # Never the settings: they hold the connector's secrets.
        return (
            f"LoadedSync({self.name!r}, {str(self.path)!r}, connector={self.connector_cls.name!r})"
        )


# -- the query -------------------------------------------------------------------------------

#: First words of a statement that only reads. DuckDB also takes ``FROM t SELECT ...``.
_READING = frozenset({"select", "with", "values", "table", "from"})
_WORD = re.compile(r"\w+")
_DOLLAR_QUOTE = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")


def normalize_query(sql: str) -> str:
    """``sql`` without trailing comments, semicolons and whitespace; ValueError unless it is
    one statement that starts like a query that only reads.

    One lexer pass that knows quotes ('' "" ``), E'' strings, $$ dollar quotes, -- and /* */
    comments, so a ``;`` or ``--`` inside a string is not mistaken for the end. Writing
    statements are refused here (a source query that drops a table would do so on every run,
    and ``check`` would run it too); the warehouse connection is also read-only where the
    database allows (see ``syncer.warehouse``).
    """
    i, n, end = 0, len(sql), 0
    first: str | None = None
    ended = False
    while i < n:
        char = sql[i]
        if char.isspace():
            i += 1
            continue
        if sql.startswith("--", i):
            newline = sql.find("\n", i)
            i = n if newline < 0 else newline + 1
            continue
        if sql.startswith("/*", i):
            close = sql.find("*/", i + 2)
            i = n if close < 0 else close + 2
            continue
        if char == ";":
            ended = first is not None
            i += 1
            continue
        if ended:
            raise ValueError("holds more than one statement; give one query (a ; may only end it)")
        if char in "'\"`":
            i = _past_quote(sql, i, backslash=False)
        elif char == "$" and (dollar := _DOLLAR_QUOTE.match(sql, i)):
            close = sql.find(dollar.group(0), dollar.end())
            i = n if close < 0 else close + len(dollar.group(0))
        elif char.isalpha() or char == "_":
            word = _WORD.match(sql, i)
            assert word is not None
            i = word.end()
            if first is None:
                first = word.group(0).lower()
            if word.group(0) in ("E", "e") and sql.startswith("'", i):
                i = _past_quote(sql, i, backslash=True)
        else:
            i += 1
            if first is None and char != "(":
                first = char
        end = i
    if first is None:
        raise ValueError("is empty (only comments and semicolons)")
    if first not in _READING:
        shown = first.upper() if first.isidentifier() and len(first) <= 20 else "something else"
        raise ValueError(
            f"must be one query that only reads (SELECT, WITH, VALUES, TABLE or FROM);"
            f" this one starts with {shown}"
        )
    return sql[:end].strip()


def _past_quote(sql: str, start: int, *, backslash: bool) -> int:
    """Index just past the quoted text opening at ``start`` (doubled quotes escape)."""
    quote, i, n = sql[start], start + 1, len(sql)
    while i < n:
        char = sql[i]
        if backslash and char == "\\":
            i += 2
            continue
        if char == quote:
            if i + 1 < n and sql[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    return n


# -- reading YAML safely ---------------------------------------------------------------------


class _Refused(yaml.YAMLError):
    """A YAML file refused by syncer's own rules, at a place in the file."""

    def __init__(self, message: str, mark: Any = None) -> None:
        super().__init__(message)
        self.message, self.mark = message, mark


# libyaml's parser when PyYAML was built with it: some twenty times faster on a large file.
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[valid-type,misc]
    """SafeLoader that refuses a key given twice in one mapping (YAML keeps the last one
    silently) and values Python cannot build (``2020-13-45``, a 5000-digit number)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                key: Any = "<<"
            elif isinstance(key_node, yaml.ScalarNode):
                key = self.construct_object(key_node)
            else:
                continue  # a complex key: the constructor refuses it as unhashable
            try:
                first = seen.get(key)
            except TypeError:
                continue
            if first is not None:
                raise _Refused(
                    f"key {_show_key(key)} is given twice (first on line {first});"
                    " YAML would silently keep only the last",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    if len(node.value) > MAX_INT_CHARS:
        raise _Refused(f"a number longer than {MAX_INT_CHARS} characters", node.start_mark)
    return int(loader.construct_yaml_int(node))


def _construct_timestamp(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    try:
        return loader.construct_yaml_timestamp(node)
    except ValueError:
        raise _Refused(
            "not a valid date or time (quote it if it is meant as text)", node.start_mark
        ) from None


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)


def _precheck(text: str) -> None:
    """Walk the YAML events (no objects built) and refuse what would cost too much to build:
    aliases expanding past ``MAX_NODES``/``MAX_CHARS``, an alias inside its own anchor (a
    loop), nesting past ``MAX_DEPTH``, and tags that are not plain types."""
    nodes = chars = 0
    anchors: dict[str, tuple[int, int]] = {}
    open_: list[tuple[str | None, int, int]] = []
    for event in yaml.parse(text, Loader=_BaseLoader):
        if isinstance(event, yaml.CollectionStartEvent | yaml.ScalarEvent):
            tag = event.tag
            if tag not in _PLAIN_TAGS:
                raise _Refused(
                    f"the YAML tag {_show_tag(tag)} is not allowed (only plain values,"
                    " lists and mappings)",
                    event.start_mark,
                )
        if isinstance(event, yaml.CollectionStartEvent):
            nodes += 1
            open_.append((event.anchor, nodes - 1, chars))
            if len(open_) > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, nodes_before, chars_before = open_.pop()
            if anchor is not None:
                anchors[anchor] = (nodes - nodes_before, chars - chars_before)
        elif isinstance(event, yaml.ScalarEvent):
            nodes += 1
            chars += len(event.value)
            if event.anchor is not None:
                anchors[event.anchor] = (1, len(event.value))
        elif isinstance(event, yaml.AliasEvent):
            if any(anchor == event.anchor for anchor, _, _ in open_):
                raise _Refused(
                    "an alias refers to a mapping or list it is inside of (a loop)",
                    event.start_mark,
                )
            size = anchors.get(event.anchor or "")
            if size is not None:  # an undefined alias is the parser's error, reported later
                nodes += size[0]
                chars += size[1]
        if nodes > MAX_NODES or chars > MAX_CHARS:
            raise _Refused(
                f"expands to more than {MAX_NODES} values or {MAX_CHARS // (1024 * 1024)} MiB"
                " of text (through & anchors and * aliases); a sync definition is far smaller",
                event.start_mark,
            )


def _parse_yaml(text: str, path: Path) -> Any:
    try:
        _precheck(text)
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except _Refused as exc:
        raise ConfigError(f"{_at(path, exc.mark)}: {exc.message}") from None
    except yaml.MarkedYAMLError as exc:
        problem = _quiet(exc.problem or exc.context or "invalid YAML")
        raise ConfigError(f"{_at(path, exc.problem_mark)}: broken YAML: {problem}") from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        code = f" (#x{exc.character:04x})" if isinstance(exc.character, int) else ""
        raise ConfigError(
            f"{path}: line {line}: broken YAML: a control character{code} YAML does not allow"
        ) from None
    except yaml.YAMLError:
        raise ConfigError(f"{path}: broken YAML") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # a limit above missed something
        raise ConfigError(f"{path}: cannot be read as YAML ({type(exc).__name__})") from None


def _at(path: Path, mark: Any) -> str:
    return (
        f"{path}: line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
    )


_QUOTED = re.compile(r"'([^']*)'")


def _quiet(problem: str) -> str:
    """PyYAML's problem text without what it quotes from the file (an alias name, a token),
    keeping single characters ('\\t', ':') and token kinds ('<block end>')."""

    def keep(match: re.Match[str]) -> str:
        inner = match.group(1)
        shown = len(inner) <= 2 or (inner.startswith("<") and inner.endswith(">"))
        return match.group(0) if shown else "'…'"

    return _QUOTED.sub(keep, problem)


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_. -]{0,63}\Z")


def _show_key(key: Any) -> str:
    """A key as errors quote it: as written if it looks like a key, else not at all."""
    if isinstance(key, bool | int):
        return str(key)
    text = str(key)
    return repr(text) if _PLAIN_KEY.match(text) else "(a key that is not a plain name)"


def _show_tag(tag: str | None) -> str:
    text = str(tag).replace("tag:yaml.org,2002:", "!!")
    return text if re.fullmatch(r"[!\w:/.,-]{1,40}", text) else "(unnamed)"


def _read_raw(path: Path) -> dict[str, Any]:
    """The YAML mapping in ``path``: every way it can fail is a ConfigError naming it."""
    raw = _parse_yaml(read_config_text(path, "mapping file"), path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys (name, source, destination...)")
    if not any(isinstance(key, str) and key in _TOP_LEVEL_KEYS for key in raw):
        # Not a sync definition at all (a symlink to a system file, say): its keys are not
        # listed, since they may be whole lines of it.
        raise ConfigError(
            f"{path}: not a sync definition: it has none of the keys"
            f" {', '.join(sorted(_TOP_LEVEL_KEYS))}"
        )
    return raw


# -- validation messages ---------------------------------------------------------------------


def _format_loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) if isinstance(p, int) else _loc_part(p) for p in loc) or "(top level)"


def _loc_part(part: Any) -> str:
    text = str(part)
    return text if _PLAIN_KEY.match(text) else "(a key that is not a plain name)"


def _message(err: ErrorDetails) -> str:
    """Pydantic's message without the value it was given (which may be a secret or a line
    of a file that is not a mapping): a key is quoted, a value never."""
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if isinstance(value, str) and value:
        msg = msg.replace(repr(value), "the value")
        if len(value) >= 8:  # shorter ones would match words of the message itself
            msg = msg.replace(value, "the value")
    return scrub(msg, limit=300)


def _errors_text(path: Path, exc: ValidationError, prefix: str = "") -> str:
    errors = exc.errors()
    lines = []
    for err in errors[:_MAX_PROBLEMS]:
        loc = _format_loc(tuple(err["loc"]))
        where = f"{prefix}{loc}" if prefix else loc
        lines.append(f"{path}: {where}: {_message(err)}")
    if len(errors) > _MAX_PROBLEMS:
        lines.append(f"{path}: ... and {len(errors) - _MAX_PROBLEMS} more problems")
    return "\n".join(lines)


# -- ${VAR} and secrets ----------------------------------------------------------------------


def _environment(env_file: Path | None = None) -> dict[str, str]:
    """The variables ``${NAME}`` may use: the process environment over the env file
    (``env_file``, else ``./.env`` if present; unreadable or not UTF-8 is a ConfigError)."""
    source = default_env_file(env_file)
    values: dict[str, str | None] = {}
    if source is not None:
        values = dotenv_values(stream=io.StringIO(read_config_text(source, "env file")))
    env = {k: v for k, v in values.items() if v is not None}
    env.update(os.environ)
    return env


def _interpolate(value: Any, env: MappingABC[str, str], path: Path, loc: str) -> Any:
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                raise ConfigError(f"{path}: {loc}: environment variable {name} is not set")
            return env[name]

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {
            k: _interpolate(v, env, path, f"{loc}.{_loc_part(k)}" if loc else _loc_part(k))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_interpolate(v, env, path, f"{loc}[{i}]") for i, v in enumerate(value)]
    return value


def _is_secret(annotation: Any, seen: frozenset[type] = frozenset()) -> bool:
    """Whether a value of this type holds a SecretStr anywhere (unions, containers, models)."""
    if annotation is SecretStr:
        return True
    origin = typing.get_origin(annotation)
    if origin is not None:
        return any(_is_secret(arg, seen) for arg in typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation in seen:
            return False
        return any(
            _is_secret(info.annotation, seen | {annotation})
            for info in annotation.model_fields.values()
        )
    return False


def _refuse_literal_secrets(
    value: Any, annotation: Any, where: str, path: Path, env: MappingABC[str, str]
) -> None:
    """Walk the raw (not yet interpolated) ``value`` along its type: every place typed
    SecretStr, however deep, must be exactly one ``${NAME}`` whose variable is not empty."""
    if value is None or not _is_secret(annotation):
        return
    if annotation is SecretStr:
        match = _ONE_VAR.match(value) if isinstance(value, str) else None
        if match is None:
            raise ConfigError(
                f"{path}: {where}: secrets must come from the environment; write exactly"
                " ${SOME_VARIABLE} (nothing before or after it) and set it in the environment"
                " or .env"
            )
        if not env.get(match.group(1), "").strip():
            raise ConfigError(
                f"{path}: {where}: environment variable {match.group(1)} is empty;"
                " a secret needs a value"
            )
        return
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        arm = next(arg for arg in args if _is_secret(arg))
        _refuse_literal_secrets(value, arm, where, path, env)
    elif origin is typing.Annotated:
        _refuse_literal_secrets(value, args[0], where, path, env)
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if isinstance(value, dict):
            _refuse_model_secrets(value, annotation, f"{where}.", path, env)
        else:  # a scalar where a model of secrets belongs: refused as a literal all the same
            _refuse_literal_secrets(value, SecretStr, where, path, env)
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_literal_secrets(
                item, args[-1] if args else SecretStr, f"{where}.{key}", path, env
            )
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _refuse_literal_secrets(
                item, args[0] if args else SecretStr, f"{where}[{i}]", path, env
            )
    else:  # a scalar where a container of secrets belongs
        _refuse_literal_secrets(value, SecretStr, where, path, env)


def _refuse_model_secrets(
    raw: dict[str, Any],
    model: type[BaseModel],
    prefix: str,
    path: Path,
    env: MappingABC[str, str],
) -> None:
    for name, info in model.model_fields.items():
        key = info.alias if info.alias is not None and info.alias in raw else name
        if key in raw:
            _refuse_literal_secrets(raw[key], info.annotation, f"{prefix}{key}", path, env)


# -- loading ---------------------------------------------------------------------------------

_MODE_OPERATIONS: dict[SyncMode, frozenset[Operation]] = {
    SyncMode.MEMBERSHIP: frozenset({"add", "remove"}),
    SyncMode.UPSERT: frozenset({"add", "update"}),
    SyncMode.MIRROR: frozenset({"add", "update", "remove"}),
    SyncMode.UPDATE_ONLY: frozenset({"update"}),
}


def load_file(path: Path, env_file: Path | None = None) -> LoadedSync:
    """Parse and validate one mapping file; every problem is a ConfigError naming the file.

    ``env_file`` is read (under the process environment) to resolve ``${NAME}``; default .env.
    """
    return _load(path, _environment(env_file))


def _load(path: Path, env: MappingABC[str, str], raw: dict[str, Any] | None = None) -> LoadedSync:
    raw = dict(_read_raw(path) if raw is None else raw)
    raw.setdefault("name", path.stem)
    raw_destination = raw.get("destination") if isinstance(raw.get("destination"), dict) else None
    try:
        definition = SyncDefinition.model_validate(_interpolate(raw, env, path, ""))
    except ValidationError as exc:
        raise ConfigError(_errors_text(path, exc)) from None
    try:
        connector_cls = load_connector(definition.destination.connector)
    except ConfigError as exc:
        raise ConfigError(f"{path}: destination.connector: {exc}") from None
    model = connector_cls.config_model
    if raw_destination is not None:
        _refuse_model_secrets(raw_destination, model, "destination.", path, env)
    try:
        connector_config = model.model_validate(definition.destination.settings())
    except ValidationError as exc:
        raise ConfigError(_errors_text(path, exc, prefix="destination.")) from None
    modes = connector_cls.capabilities.modes
    if definition.mode not in modes:
        raise ConfigError(
            f"{path}: mode: connector {connector_cls.name!r} does not support mode"
            f" {definition.mode!r} (supports: {', '.join(sorted(modes))})"
        )
    lacking = _MODE_OPERATIONS[definition.mode] - connector_cls.capabilities.operations
    if lacking:
        raise ConfigError(
            f"{path}: mode: mode {definition.mode!r} needs {', '.join(sorted(lacking))},"
            f" which connector {connector_cls.name!r} does not support"
        )
    # The definition keeps the settings as the connector typed them, so its repr (and any
    # dump) shows SecretStr('**********') where the YAML had a ${VAR}, never the value.
    destination = Destination.model_validate(
        {
            "connector": definition.destination.connector,
            **connector_config.model_dump(exclude_unset=True),
        }
    )
    definition = definition.model_copy(update={"destination": destination})
    return LoadedSync(definition, path, connector_cls, connector_config)


def mapping_files(directory: Path) -> list[Path]:
    """Every ``*.yaml``/``*.yml`` entry of ``directory`` whose name does not start with a dot
    (editor lock files, Kubernetes' ``..data``), whatever it is: a broken link, a loop or a
    directory is returned too, so loading it reports it instead of skipping it."""
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        raise ConfigError(
            f"mappings directory {directory} does not exist (SYNCER_MAPPINGS_DIR)"
        ) from None
    except NotADirectoryError:
        raise ConfigError(
            f"mappings directory {directory} is not a directory (SYNCER_MAPPINGS_DIR)"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"mappings directory {directory} cannot be read: {exc.strerror or exc}"
            " (SYNCER_MAPPINGS_DIR)"
        ) from None
    return sorted(
        p for p in entries if p.suffix in (".yaml", ".yml") and not p.name.startswith(".")
    )


def _scan(directory: Path) -> list[tuple[Path, dict[str, Any] | ConfigError]]:
    """Each mapping file with its parsed YAML, or the problem reading it."""
    found: list[tuple[Path, dict[str, Any] | ConfigError]] = []
    for path in mapping_files(directory):
        try:
            found.append((path, _read_raw(path)))
        except ConfigError as exc:
            found.append((path, exc))
    return found


def _declared_name(path: Path, raw: dict[str, Any] | ConfigError, env: MappingABC[str, str]) -> str:
    """The sync name a file declares; a file that cannot be read counts as its stem."""
    if isinstance(raw, ConfigError):
        return path.stem
    name = raw.get("name", path.stem)
    if not isinstance(name, str):
        return path.stem
    try:
        return str(_interpolate(name, env, path, "name"))
    except ConfigError:
        return path.stem


def load_directory(
    directory: Path, env_file: Path | None = None
) -> list[tuple[Path, LoadedSync | ConfigError]]:
    """Every mapping file with its sync, or the ConfigError it is refused with. A sync name
    declared by more than one file is refused in each of them."""
    env = _environment(env_file)
    results: list[tuple[Path, LoadedSync | ConfigError]] = []
    for path, raw in _scan(directory):
        if isinstance(raw, ConfigError):
            results.append((path, raw))
            continue
        try:
            results.append((path, _load(path, env, raw)))
        except ConfigError as exc:
            results.append((path, exc))
    files_of: dict[str, list[Path]] = {}
    for path, item in results:
        if isinstance(item, LoadedSync):
            files_of.setdefault(item.name, []).append(path)
    for i, (path, item) in enumerate(results):
        if isinstance(item, LoadedSync) and len(files_of[item.name]) > 1:
            others = ", ".join(str(p) for p in files_of[item.name] if p != path)
            results[i] = (
                path,
                ConfigError(f"{path}: name: sync {item.name!r} is also defined in {others}"),
            )
    return results


def load_all(directory: Path, env_file: Path | None = None) -> list[LoadedSync]:
    """Every sync in ``directory``; all problems reported together, then raised."""
    results = load_directory(directory, env_file)
    problems = [str(item) for _, item in results if isinstance(item, ConfigError)]
    if problems:
        raise ConfigError("\n".join(problems))
    return [item for _, item in results if isinstance(item, LoadedSync)]


def load_named(directory: Path, names: list[str], env_file: Path | None = None) -> list[LoadedSync]:
    """The named syncs. Other files are only parsed to learn the names they declare, so a
    broken neighbour cannot stop these; a name declared by two files is refused."""
    env = _environment(env_file)
    scanned = _scan(directory)
    files_of: dict[str, list[tuple[Path, dict[str, Any] | ConfigError]]] = {}
    for path, raw in scanned:
        files_of.setdefault(_declared_name(path, raw, env), []).append((path, raw))
    found: list[LoadedSync] = []
    for name in names:
        entries = files_of.get(name, [])
        if len(entries) > 1:
            files = ", ".join(str(path) for path, _ in entries)
            raise ConfigError(
                f"sync {name!r} is defined in {len(entries)} files ({files}); a sync name must"
                " be unique, so none of them is run until one is renamed"
            )
        if not entries:
            raise ConfigError(_not_found(directory, name, scanned, env))
        path, raw = entries[0]
        if isinstance(raw, ConfigError):
            raise raw
        found.append(_load(path, env, raw))
    return found


def declared_names(directory: Path, env_file: Path | None = None) -> dict[str, list[Path]]:
    """The sync name each mapping file declares, with its files, without loading connectors
    or requiring their variables (a file that cannot be read counts as its stem)."""
    return MappingScan(directory, env_file).files_of()


def valid_name(name: str) -> bool:
    """Whether ``name`` is a sync name a mapping file may declare."""
    return bool(_NAME.match(name))


@dataclasses.dataclass(frozen=True, slots=True)
class MappingEntry:
    """One mapping file as command-line selection sees it: read, not yet validated, so a
    broken neighbour cannot stop the syncs chosen (see syncer.selection)."""

    name: str
    path: Path
    tags: tuple[str, ...]
    connector: str | None
    problem: str | None
    """Why the file's tags and connector are unknown (it cannot be read), else None."""
    raw: dict[str, Any] | ConfigError = dataclasses.field(repr=False, compare=False)


class MappingScan:
    """Every mapping file of a directory with what selecting among them needs; ``load``
    validates only the chosen ones."""

    def __init__(self, directory: Path, env_file: Path | None = None) -> None:
        self.directory = directory
        self._env = _environment(env_file)
        self.entries = [self._entry(path, raw) for path, raw in _scan(directory)]

    def _entry(self, path: Path, raw: dict[str, Any] | ConfigError) -> MappingEntry:
        name = _declared_name(path, raw, self._env)
        if isinstance(raw, ConfigError):
            return MappingEntry(name, path, (), None, "cannot be read", raw)
        tags = raw.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            return MappingEntry(name, path, (), None, "tags: not a list of names", raw)
        destination = raw.get("destination")
        connector = destination.get("connector") if isinstance(destination, dict) else None
        if isinstance(connector, str):
            try:
                connector = str(_interpolate(connector, self._env, path, "connector"))
            except ConfigError:
                connector = None
        return MappingEntry(
            name, path, tuple(tags), connector if isinstance(connector, str) else None, None, raw
        )

    def files_of(self) -> dict[str, list[Path]]:
        """Each declared sync name with the files declaring it (more than one: a conflict)."""
        names: dict[str, list[Path]] = {}
        for entry in self.entries:
            names.setdefault(entry.name, []).append(entry.path)
        return names

    def load(self, chosen: list[MappingEntry]) -> list[tuple[Path, LoadedSync | ConfigError]]:
        """Each chosen file validated, or the ConfigError it is refused with; a name that
        more than one file declares is refused, as in ``load_named``."""
        files_of = self.files_of()
        results: list[tuple[Path, LoadedSync | ConfigError]] = []
        for entry in chosen:
            paths = files_of.get(entry.name, [])
            if len(paths) > 1:
                others = ", ".join(str(p) for p in paths if p != entry.path)
                results.append(
                    (
                        entry.path,
                        ConfigError(
                            f"{entry.path}: name: sync {entry.name!r} is also defined in"
                            f" {others}; a sync name must be unique"
                        ),
                    )
                )
            elif isinstance(entry.raw, ConfigError):
                results.append((entry.path, entry.raw))
            else:
                try:
                    results.append((entry.path, _load(entry.path, self._env, entry.raw)))
                except ConfigError as exc:
                    results.append((entry.path, exc))
        return results

    def load_strict(self, chosen: list[MappingEntry]) -> list[LoadedSync]:
        """The chosen syncs; all their problems reported together, then raised."""
        results = self.load(chosen)
        problems = [str(item) for _, item in results if isinstance(item, ConfigError)]
        if problems:
            raise ConfigError("\n".join(problems))
        return [item for _, item in results if isinstance(item, LoadedSync)]


def _not_found(
    directory: Path,
    name: str,
    scanned: list[tuple[Path, dict[str, Any] | ConfigError]],
    env: MappingABC[str, str],
) -> str:
    known: list[str] = []
    problems: list[str] = []
    for path, raw in scanned:
        try:
            if isinstance(raw, ConfigError):
                raise raw
            known.append(_load(path, env, raw).name)
        except ConfigError as exc:
            problems.append(str(exc))
    defined = ", ".join(sorted(set(known))) or "none"
    message = f"no sync named {name!r} in {directory} (defined: {defined})"
    if problems:
        message += f"; {len(problems)} file(s) could not be read:\n" + "\n".join(problems)
    return message


def json_schema(
    connectors: MappingABC[str, type[ConnectorConfig]] | None = None,
) -> dict[str, Any]:
    """JSON Schema of a mapping file, for editors (``syncer schema``).

    ``destination`` is checked against the settings of the connector it names: one
    ``if connector == NAME then NAME's settings`` per connector (default: every installed one
    that loads), so an editor completes and checks the block. A connector not listed is left to
    ``syncer check``.
    """
    if connectors is None:
        connectors = {
            info.name: info.cls.config_model for info in discover() if info.cls is not None
        }
    names = sorted(connectors)
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(SyncDefinition, "validation")]
    models += [(connectors[name], "validation") for name in names]
    refs, combined = models_json_schema(models)
    defs: dict[str, Any] = combined.get("$defs", {})
    schema = defs.pop(_def_name(refs[(SyncDefinition, "validation")]["$ref"]))
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "title": "syncer sync definition",
    }
    # load_file defaults the name to the file's stem, so a file may leave it out.
    schema["required"] = [field for field in schema.get("required", []) if field != "name"]
    destination = defs["Destination"]
    destination["properties"]["connector"]["anyOf"] = [{"enum": names}, {"type": "string"}]
    destination["required"] = ["connector"]
    rules = []
    for name in names:
        config = defs.pop(_def_name(refs[(connectors[name], "validation")]["$ref"]))
        then: dict[str, Any] = {
            "description": config.get("description", ""),
            "properties": {"connector": {"const": name}, **config.get("properties", {})},
            "additionalProperties": False,
        }
        if config.get("required"):
            then["required"] = config["required"]
        if config.get("anyOf"):  # alternative credentials (syncer.oauth.RefreshCredentials)
            then["anyOf"] = config["anyOf"]
        rules.append({"if": {"properties": {"connector": {"const": name}}}, "then": then})
    if rules:
        destination["allOf"] = rules
    schema["$defs"] = defs
    return schema


def _def_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]
