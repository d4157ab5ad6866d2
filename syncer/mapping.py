"""Sync definitions: one YAML file per sync in the mappings directory.

The YAML shape is the public interface. Validation errors name the file and the dotted field;
``${NAME}`` pulls a value from the environment (or ``.env``), and is the only way a secret may
enter a mapping: a connector setting typed ``SecretStr`` given literally is refused.
"""

from __future__ import annotations

import os
import re
import types
import typing
from collections.abc import Mapping as MappingABC
from pathlib import Path
from typing import Any, Literal

import yaml
from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from syncer.connector import Connector, ConnectorConfig, Operation, load_connector
from syncer.errors import ConfigError

Mode = Literal["membership", "upsert", "mirror", "update_only"]
FieldType = Literal[
    "auto", "string", "email", "phone", "number", "integer", "boolean", "date", "datetime"
]
KeyType = Literal["string", "email", "phone", "integer"]

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FieldSpec(_Strict):
    """A destination field read from a source column, converted to ``type``."""

    column: str
    type: FieldType = "auto"
    region: str | None = Field(
        default=None, description="Default country (ISO 3166 alpha-2) for phone numbers."
    )


class Source(_Strict):
    """Where members come from: a query on a named warehouse and its identity column."""

    warehouse: str = "default"
    query: str = Field(min_length=1)
    key: str = Field(min_length=1, description="Identity column: one row per member.")
    key_type: KeyType = "string"
    key_region: str | None = Field(default=None, description="Default region for phone keys.")


class Guards(_Strict):
    """Safety rails against a broken upstream query wiping a destination."""

    max_remove_pct: float = Field(default=50, ge=0, le=100)


class Destination(BaseModel):
    """``connector`` picks the entry point; every other key is that connector's setting."""

    model_config = ConfigDict(extra="allow")

    connector: str = Field(min_length=1)

    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SyncDefinition(_Strict):
    """One sync, as written in ``mappings/<name>.yaml``."""

    name: str
    description: str | None = None
    source: Source
    mode: Mode = "membership"
    fields: dict[str, str | FieldSpec] = Field(default_factory=dict)
    destination: Destination
    schedule: str | None = None
    guards: Guards = Field(default_factory=Guards)

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


def _format_loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _errors_text(path: Path, exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = _format_loc(tuple(err["loc"]))
        where = f"{prefix}{loc}" if prefix else loc
        lines.append(f"{path}: {where}: {err['msg']}")
    return "\n".join(lines)


def _environment(env_file: Path | None = None) -> dict[str, str]:
    """The variables ``${NAME}`` may use: the process environment over the env file."""
    env = {k: v for k, v in dotenv_values(env_file or ".env").items() if v is not None}
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
            k: _interpolate(v, env, path, f"{loc}.{k}" if loc else str(k)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_interpolate(v, env, path, f"{loc}[{i}]") for i, v in enumerate(value)]
    return value


def _is_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, dict, list, tuple):
        return any(_is_secret(arg) for arg in typing.get_args(annotation))
    return False


def _refuse_literal_secrets(raw: dict[str, Any], model: type[ConnectorConfig], path: Path) -> None:
    for name, info in model.model_fields.items():
        if name not in raw or not _is_secret(info.annotation):
            continue
        value = raw[name]
        items = (
            [(f"{name}.{key}", v) for key, v in value.items()]
            if isinstance(value, dict)
            else [(name, value)]
        )
        for where, value in items:
            if value is not None and not (isinstance(value, str) and _VAR.search(value)):
                raise ConfigError(
                    f"{path}: destination.{where}: secrets must come from the environment;"
                    f" write ${{SOME_VARIABLE}} and set it in the environment or .env"
                )


_MODE_OPERATIONS: dict[str, frozenset[Operation]] = {
    "membership": frozenset({"add", "remove"}),
    "upsert": frozenset({"add", "update"}),
    "mirror": frozenset({"add", "update", "remove"}),
    "update_only": frozenset({"update"}),
}


def load_file(path: Path, env_file: Path | None = None) -> LoadedSync:
    """Parse and validate one mapping file; every problem is a ConfigError naming the file.

    ``env_file`` is read (under the process environment) to resolve ``${NAME}``; default .env.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}:{where}: broken YAML: {problem}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys (name, source, destination...)")
    raw.setdefault("name", path.stem)
    raw_destination = raw.get("destination") if isinstance(raw.get("destination"), dict) else None
    env = _environment(env_file)
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
        _refuse_literal_secrets(raw_destination, model, path)
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
    return LoadedSync(definition, path, connector_cls, connector_config)


def mapping_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise ConfigError(f"mappings directory {directory} does not exist (SYNCER_MAPPINGS_DIR)")
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def _load_each(directory: Path, env_file: Path | None) -> tuple[list[LoadedSync], list[str]]:
    loaded: list[LoadedSync] = []
    problems: list[str] = []
    for path in mapping_files(directory):
        try:
            loaded.append(load_file(path, env_file))
        except ConfigError as exc:
            problems.append(str(exc))
    seen: dict[str, Path] = {}
    for sync in loaded:
        if sync.name in seen:
            problems.append(
                f"{sync.path}: name: sync {sync.name!r} is already defined in {seen[sync.name]}"
            )
        seen[sync.name] = sync.path
    return loaded, problems


def load_all(directory: Path, env_file: Path | None = None) -> list[LoadedSync]:
    """Every sync in ``directory``; all problems reported together, then raised."""
    loaded, problems = _load_each(directory, env_file)
    if problems:
        raise ConfigError("\n".join(problems))
    return loaded


def load_named(directory: Path, names: list[str], env_file: Path | None = None) -> list[LoadedSync]:
    """The named syncs. A file named after the sync is read alone, so others cannot break it."""
    found: dict[str, LoadedSync] = {}
    missing: list[str] = []
    for name in names:
        for suffix in (".yaml", ".yml"):
            candidate = directory / f"{name}{suffix}"
            if candidate.is_file():
                sync = load_file(candidate, env_file)
                if sync.name == name:
                    found[name] = sync
                break
        if name not in found:
            missing.append(name)
    if missing:
        loaded, problems = _load_each(directory, env_file)
        everything = {s.name: s for s in loaded}
        for name in missing:
            if name in everything:
                found[name] = everything[name]
                continue
            known = ", ".join(sorted(everything)) or "none"
            detail = f"; {len(problems)} file(s) could not be read:\n" + "\n".join(problems)
            raise ConfigError(
                f"no sync named {name!r} in {directory} (defined: {known})"
                + (detail if problems else "")
            )
    return [found[name] for name in names]


def json_schema() -> dict[str, Any]:
    """JSON Schema of a mapping file, for editors (``syncer schema``)."""
    schema = SyncDefinition.model_json_schema()
    schema["title"] = "syncer sync definition"
    # load_file defaults the name to the file's stem, so a file may leave it out.
    schema["required"] = [field for field in schema.get("required", []) if field != "name"]
    schema["properties"]["name"]["description"] = "Defaults to the file name without .yaml."
    return schema
