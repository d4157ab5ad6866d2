"""Mapping files as a user writes them: what loads, and what each mistake is reported as."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from syncer.errors import ConfigError
from syncer.mapping import MappingScan, json_schema, load_all, load_file, load_named
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parents[1]

VALID = textwrap.dedent(
    """\
    description: VIP customers
    source:
      query: select email, first_name from customers
      key: email
      key_type: email
    mode: upsert
    fields:
      first_name: first_name
      email: {column: email, type: email}
    destination:
      connector: file
      path: out/vip.csv
    """
)


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_file(path)
    return str(info.value)


def webhook(query: str = "select 1 as k", **settings: object) -> str:
    """A webhook mapping; ``settings`` go into ``destination:`` as given."""
    destination = {"connector": "webhook", **settings}
    return yaml.safe_dump({"source": {"query": query, "key": "k"}, "destination": destination})


# -- what loads ----------------------------------------------------------------------------------


def test_valid_mapping_loads_with_name_from_file_stem(tmp_path: Path) -> None:
    sync = load_file(write(tmp_path / "mappings", "vip.yaml", VALID))

    assert sync.name == "vip"
    assert sync.definition.mode == "upsert"
    assert sync.definition.source.key == "email"
    assert sync.connector_cls.name == "file"
    assert sync.connector_config.model_dump()["path"] == "out/vip.csv"
    assert sorted(sync.definition.field_specs()) == ["email", "first_name"]
    assert sync.definition.field_specs()["email"].type == "email"


def test_explicit_name_wins_over_file_stem(tmp_path: Path) -> None:
    sync = load_file(write(tmp_path, "vip.yaml", "name: vip_customers\n" + VALID))
    assert sync.name == "vip_customers"


# -- what each mistake says ----------------------------------------------------------------------


def test_broken_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "vip.yaml",
        """\
        source:
          query: select 1
          key: [email
        destination: {connector: file, path: x.csv}
        """,
    )
    message = error_of(path)
    assert str(path) in message
    assert "line 4" in message
    assert "YAML" in message


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (VALID + "colour: red\n", "colour"),
        (VALID.replace("mode: upsert", "mode: sometimes"), "mode"),
        (VALID.replace("  key: email\n", ""), "source.key"),
        (VALID.replace("type: email", "type: shoe_size"), "fields.email"),
    ],
    ids=["unknown-top-level-key", "wrong-mode", "missing-source-key", "wrong-field-type"],
)
def test_validation_errors_name_file_and_dotted_field(
    tmp_path: Path, text: str, field: str
) -> None:
    path = write(tmp_path, "vip.yaml", text)
    message = error_of(path)
    assert f"{path}: {field}" in message


def test_unknown_connector_names_field_and_lists_installed(tmp_path: Path) -> None:
    path = write(tmp_path, "vip.yaml", VALID.replace("connector: file", "connector: salesfarce"))
    message = error_of(path)
    assert f"{path}: destination.connector" in message
    assert "salesfarce" in message
    assert "file" in message.split("salesfarce", 1)[1]
    assert "webhook" in message


def test_connector_setting_errors_are_prefixed_with_destination(tmp_path: Path) -> None:
    text = VALID.replace("path: out/vip.csv", "path: out/vip.csv\n  colour: red\n  batch_size: 0")
    path = write(tmp_path, "vip.yaml", text)
    message = error_of(path)
    assert f"{path}: destination.colour" in message
    assert f"{path}: destination.batch_size" in message


def test_connector_missing_setting_is_prefixed_with_destination(tmp_path: Path) -> None:
    path = write(tmp_path, "vip.yaml", VALID.replace("  path: out/vip.csv\n", ""))
    assert f"{path}: destination.path" in error_of(path)


# -- ${VAR} interpolation and secrets ------------------------------------------------------------


def test_variables_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_URL", "https://hooks.example.com/in")
    monkeypatch.setenv("HOOK_SECRET", "s3cret-from-env")
    monkeypatch.setenv("TABLE", "vip_customers")
    text = webhook("select k from ${TABLE}", url="${HOOK_URL}", secret="${HOOK_SECRET}")
    sync = load_file(write(tmp_path, "hook.yaml", text))

    config = sync.connector_config.model_dump()
    assert config["url"] == "https://hooks.example.com/in"
    assert config["secret"].get_secret_value() == "s3cret-from-env"
    assert sync.definition.source.query == "select k from vip_customers"
    assert "s3cret-from-env" not in repr(sync.connector_config)


def test_variables_come_from_dotenv_in_working_directory(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HOOK_URL", raising=False)
    monkeypatch.delenv("HOOK_SECRET", raising=False)
    (isolated / ".env").write_text(
        "HOOK_URL=https://hooks.example.com/dotenv\nHOOK_SECRET=from-dotenv\n", encoding="utf-8"
    )
    text = webhook(url="${HOOK_URL}", secret="${HOOK_SECRET}")
    sync = load_file(write(isolated, "hook.yaml", text))
    config = sync.connector_config.model_dump()
    assert config["url"] == "https://hooks.example.com/dotenv"
    assert config["secret"].get_secret_value() == "from-dotenv"


def test_environment_wins_over_dotenv(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (isolated / ".env").write_text("HOOK_URL=https://dotenv.example.com/h\n", encoding="utf-8")
    monkeypatch.setenv("HOOK_URL", "https://env.example.com/h")
    sync = load_file(write(isolated, "hook.yaml", webhook(url="${HOOK_URL}")))
    assert sync.connector_config.model_dump()["url"] == "https://env.example.com/h"


def test_missing_variable_names_file_field_and_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SYNCER_TEST_UNSET_VARIABLE", raising=False)
    path = write(
        tmp_path,
        "hook.yaml",
        webhook(url="https://hooks.example.com/in", secret="${SYNCER_TEST_UNSET_VARIABLE}"),
    )
    message = error_of(path)
    assert f"{path}: destination.secret" in message
    assert "SYNCER_TEST_UNSET_VARIABLE" in message


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"secret": "hunter2"}, "destination.secret"),
        ({"secret": 2222}, "destination.secret"),
        ({"headers": {"Authorization": "hunter2"}}, "destination.headers.Authorization"),
    ],
    ids=["secret", "numeric-secret", "header"],
)
def test_literal_secret_is_refused_without_echoing_it(
    tmp_path: Path, settings: dict[str, object], field: str
) -> None:
    text = webhook(url="https://hooks.example.com/in", **settings)
    path = write(tmp_path, "hook.yaml", text)
    message = error_of(path)
    assert f"{path}: {field}" in message
    assert "${" in message  # tells how to do it instead
    assert "hunter2" not in message
    assert "2222" not in message


def test_literal_secret_refused_even_when_other_settings_are_wrong(tmp_path: Path) -> None:
    path = write(tmp_path, "hook.yaml", webhook(url="not-a-url", secret="hunter2"))
    message = error_of(path)
    assert "hunter2" not in message
    assert str(path) in message


def test_secret_header_from_variable_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The whole header value comes from the variable: "Bearer ${HOOK_TOKEN}" is refused.
    monkeypatch.setenv("HOOK_TOKEN", "Bearer tok-123")
    path = write(
        tmp_path,
        "hook.yaml",
        webhook(url="https://hooks.example.com/in", headers={"Authorization": "${HOOK_TOKEN}"}),
    )
    headers = load_file(path).connector_config.model_dump()["headers"]
    assert headers["Authorization"].get_secret_value() == "Bearer tok-123"


# -- directories: load_all, load_named -----------------------------------------------------------


def test_duplicate_sync_names_name_both_files(tmp_path: Path) -> None:
    directory = tmp_path / "mappings"
    first = write(directory, "a.yaml", "name: vip\n" + VALID)
    second = write(directory, "b.yaml", "name: vip\n" + VALID)
    with pytest.raises(ConfigError) as info:
        load_all(directory)
    message = str(info.value)
    assert str(first) in message
    assert str(second) in message
    assert "vip" in message


def test_load_all_reports_every_broken_file_at_once(tmp_path: Path) -> None:
    directory = tmp_path / "mappings"
    write(directory, "good.yaml", VALID)
    broken_yaml = write(directory, "broken.yaml", "source: [\n")
    bad_mode = write(directory, "mode.yaml", VALID.replace("mode: upsert", "mode: sometimes"))
    unknown = VALID.replace("connector: file", "connector: nope")
    bad_connector = write(directory, "conn.yml", unknown)
    with pytest.raises(ConfigError) as info:
        load_all(directory)
    message = str(info.value)
    for path in (broken_yaml, bad_mode, bad_connector):
        assert str(path) in message
    assert "good.yaml" not in message


def test_load_all_returns_every_sync(tmp_path: Path) -> None:
    directory = tmp_path / "mappings"
    write(directory, "a.yaml", VALID)
    write(directory, "b.yml", VALID)
    (directory / "notes.txt").write_text("not a mapping", encoding="utf-8")
    assert sorted(s.name for s in load_all(directory)) == ["a", "b"]


def test_load_named_reads_its_own_file_despite_a_broken_neighbour(tmp_path: Path) -> None:
    directory = tmp_path / "mappings"
    write(directory, "vip.yaml", VALID)
    write(directory, "broken.yaml", "source: [\n")
    (sync,) = load_named(directory, ["vip"])
    assert sync.name == "vip"


def test_load_named_finds_a_sync_whose_file_has_another_name(tmp_path: Path) -> None:
    directory = tmp_path / "mappings"
    write(directory, "customers.yaml", "name: vip\n" + VALID)
    (sync,) = load_named(directory, ["vip"])
    assert sync.path.name == "customers.yaml"


def test_load_named_unknown_sync_lists_the_defined_ones(tmp_path: Path) -> None:
    directory = tmp_path / "mappings"
    write(directory, "vip.yaml", VALID)
    with pytest.raises(ConfigError) as info:
        load_named(directory, ["nope"])
    assert "nope" in str(info.value)
    assert "vip" in str(info.value)


def test_a_scan_reads_names_tags_and_connectors_without_validating(tmp_path: Path) -> None:
    """What selectors look at; a broken file is still listed, under its file name."""
    directory = tmp_path / "mappings"
    write(directory, "customers.yaml", "name: vip\ntags: [nightly, crm]\n" + VALID)
    write(directory, "broken.yaml", "source: [\n")
    scan = MappingScan(directory)
    entries = {e.name: e for e in scan.entries}
    assert entries["vip"].tags == ("nightly", "crm") and entries["vip"].connector == "file"
    assert entries["broken"].problem == "cannot be read" and entries["broken"].tags == ()
    (sync,) = scan.load_strict([entries["vip"]])
    assert sync.definition.tags == ["nightly", "crm"]
    with pytest.raises(ConfigError, match=r"broken\.yaml"):
        scan.load_strict([entries["broken"]])


@pytest.mark.parametrize(
    ("tags", "problem"),
    [
        ("[nightly, 'a b']", "tags: tag 2: use letters, digits"),
        ("[crm, crm]", "tags: tag 2 is listed twice"),
        ("nightly", "tags: Input should be a valid list"),
    ],
)
def test_tags_are_names_each_listed_once(tmp_path: Path, tags: str, problem: str) -> None:
    path = write(tmp_path, "vip.yaml", f"tags: {tags}\n" + VALID)
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert problem in str(info.value)


def test_missing_mappings_directory_says_which_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SYNCER_MAPPINGS_DIR"):
        load_all(tmp_path / "nowhere")


# -- the real CLI --------------------------------------------------------------------------------


def test_cli_plan_with_broken_yaml_exits_78_naming_the_file(isolated: Path) -> None:
    write(isolated / "mappings", "vip.yaml", "source:\n  query: [select\n")
    result = run_cli("plan", "vip")
    assert result.returncode == 78, result.stderr
    assert "vip.yaml" in result.stderr
    assert "line" in result.stderr


def test_cli_plan_with_unknown_connector_exits_78_naming_the_file(isolated: Path) -> None:
    write(isolated / "mappings", "vip.yaml", VALID.replace("connector: file", "connector: nope"))
    result = run_cli("plan", "vip")
    assert result.returncode == 78, result.stderr
    assert "vip.yaml" in result.stderr
    assert "destination.connector" in result.stderr
    assert "webhook" in result.stderr


def test_cli_sync_all_with_a_bad_file_exits_78_naming_it(isolated: Path) -> None:
    directory = isolated / "mappings"
    write(directory, "vip.yaml", VALID)
    write(directory, "lapsed.yaml", VALID.replace("mode: upsert", "mode: sometimes"))
    result = run_cli("sync", "now", "--all", env={"SYNCER_WAREHOUSE_URL": "sqlite:///wh.db"})
    assert result.returncode == 78, result.stderr
    assert "lapsed.yaml" in result.stderr
    assert not (isolated / "out").exists()  # nothing ran


# -- mappings/schema.json ------------------------------------------------------------------------


def test_committed_schema_matches_the_models() -> None:
    committed = json.loads((REPO / "mappings" / "schema.json").read_text(encoding="utf-8"))
    assert committed == json_schema(), "mappings/schema.json is stale: run `make schema`"


def test_schema_lets_a_file_leave_out_its_name() -> None:
    schema = json_schema()
    assert "name" not in schema["required"]
    assert {"source", "destination"} <= set(schema["required"])
