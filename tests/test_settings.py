"""Settings from SYNCER_* variables and .env, and .env.example kept in step with them."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from pydantic import SecretStr

from syncer.errors import ConfigError
from syncer.settings import DEFAULT_STATE_URL, Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
ENV_EXAMPLE = REPO / ".env.example"


def test_defaults_with_nothing_set() -> None:
    settings = load_settings()
    assert settings.warehouse_url is None
    assert settings.warehouses == {}
    assert settings.state_url.get_secret_value() == DEFAULT_STATE_URL
    assert settings.mappings_dir == Path("mappings")
    assert settings.audit_plain_keys is False
    assert settings.read_batch_size == 10_000
    assert settings.log_level == "warning"
    assert settings.log_format == "auto"
    assert settings.http_timeout == 30.0


def test_no_default_warehouse_says_which_variable_to_set() -> None:
    with pytest.raises(ConfigError, match="SYNCER_WAREHOUSE_URL"):
        load_settings().warehouse("default")


def test_warehouse_url_is_the_default_warehouse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCER_WAREHOUSE_URL", "sqlite:///shop.db")
    assert load_settings().warehouse("default") == "sqlite:///shop.db"


def test_named_warehouses_resolve_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCER_WAREHOUSES__ANALYTICS", "sqlite:///a.db")
    monkeypatch.setenv("SYNCER_WAREHOUSES__CRM", "sqlite:///crm.db")
    settings = load_settings()
    assert settings.warehouse("analytics") == "sqlite:///a.db"
    assert settings.warehouse("ANALYTICS") == "sqlite:///a.db"
    assert settings.warehouse("crm") == "sqlite:///crm.db"


def test_unknown_warehouse_tells_which_variable_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCER_WAREHOUSES__ANALYTICS", "sqlite:///a.db")
    with pytest.raises(ConfigError) as info:
        load_settings().warehouse("sales")
    assert "SYNCER_WAREHOUSES__SALES" in str(info.value)


def test_dotenv_in_working_directory_is_read(isolated: Path) -> None:
    (isolated / ".env").write_text(
        "SYNCER_WAREHOUSE_URL=sqlite:///from-dotenv.db\n"
        "SYNCER_WAREHOUSES__ANALYTICS=sqlite:///analytics.db\n"
        "SYNCER_READ_BATCH_SIZE=500\n"
        "DEMO_WEBHOOK_SECRET=not-a-setting\n",
        encoding="utf-8",
    )
    settings = load_settings()
    assert settings.warehouse("default") == "sqlite:///from-dotenv.db"
    assert settings.warehouse("analytics") == "sqlite:///analytics.db"
    assert settings.read_batch_size == 500


def test_environment_wins_over_dotenv(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (isolated / ".env").write_text("SYNCER_LOG_LEVEL=debug\n", encoding="utf-8")
    monkeypatch.setenv("SYNCER_LOG_LEVEL", "error")
    assert load_settings().log_level == "error"


def test_explicit_env_file_is_read(isolated: Path) -> None:
    env_file = isolated / "prod.env"
    env_file.write_text("SYNCER_HTTP_TIMEOUT=5\n", encoding="utf-8")
    assert load_settings(env_file).http_timeout == 5.0


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SYNCER_READ_BATCH_SIZE", "5"),
        ("SYNCER_READ_BATCH_SIZE", "lots"),
        ("SYNCER_LOG_LEVEL", "loud"),
        ("SYNCER_LOG_FORMAT", "xml"),
        ("SYNCER_HTTP_TIMEOUT", "0"),
        ("SYNCER_AUDIT_PLAIN_KEYS", "perhaps"),
        ("SYNCER_WAREHOUSES", "sqlite:///not-how-to-set-it.db"),
    ],
)
def test_invalid_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert variable in str(info.value)


def test_urls_are_secret_and_hidden_from_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCER_WAREHOUSE_URL", "postgresql://etl:pw-warehouse@db/shop")
    monkeypatch.setenv("SYNCER_WAREHOUSES__ANALYTICS", "postgresql://etl:pw-analytics@db/a")
    monkeypatch.setenv("SYNCER_STATE_URL", "postgresql://etl:pw-state@db/state")
    settings = load_settings()
    assert isinstance(settings.warehouse_url, SecretStr)
    assert isinstance(settings.state_url, SecretStr)
    assert all(isinstance(url, SecretStr) for url in settings.warehouses.values())
    for shown in (repr(settings), str(settings)):
        assert "pw-" not in shown
    assert settings.warehouse("analytics") == "postgresql://etl:pw-analytics@db/a"


def test_invalid_value_error_does_not_echo_a_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCER_WAREHOUSE_URL", "postgresql://etl:pw-warehouse@db/shop")
    monkeypatch.setenv("SYNCER_READ_BATCH_SIZE", "1")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "pw-warehouse" not in str(info.value)


# -- .env.example drift --------------------------------------------------------------------------


def _example_names() -> set[str]:
    """Every variable name in .env.example, commented-out examples included."""
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))


def _expected_names() -> dict[str, str]:
    """Setting field -> the variable(s) .env.example must show for it."""
    expected = {}
    for field, info in Settings.model_fields.items():
        is_dict = typing.get_origin(info.annotation) is dict
        expected[field] = f"SYNCER_{field.upper()}__" if is_dict else f"SYNCER_{field.upper()}"
    return expected


def test_env_example_documents_every_setting() -> None:
    names = _example_names()
    for field, variable in _expected_names().items():
        if variable.endswith("__"):  # a dict: SYNCER_WAREHOUSES__<NAME>
            assert any(n.startswith(variable) and len(n) > len(variable) for n in names), (
                f"Settings.{field} is missing from .env.example (as {variable}<NAME>=...)"
            )
        else:
            assert variable in names, f"Settings.{field} is missing from .env.example ({variable})"


def test_env_example_names_only_real_settings() -> None:
    expected = _expected_names().values()
    for name in sorted(n for n in _example_names() if n.startswith("SYNCER_")):
        known = name in expected or any(v.endswith("__") and name.startswith(v) for v in expected)
        assert known, f"{name} in .env.example is not a setting in syncer/settings.py"


def test_env_example_comments_every_variable_with_default_and_secrecy() -> None:
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if not re.match(r"^#?\s*[A-Z][A-Z0-9_]*=", line):
            continue
        comment = []
        for previous in reversed(lines[:number]):
            if not previous.startswith("#") or re.match(r"^#\s*[A-Z][A-Z0-9_]*=", previous):
                break
            comment.append(previous)
        text = " ".join(comment).lower()
        name = line.lstrip("# ").split("=", 1)[0]
        assert comment, f"{name} in .env.example has no comment"
        assert "secret" in text, f"{name} in .env.example does not say whether it is secret"
        if name.startswith("SYNCER_"):
            assert "default" in text, f"{name} in .env.example does not give its default"


def test_env_example_notes_the_demo_mapping_variables() -> None:
    names = _example_names()
    assert {"DEMO_WEBHOOK_URL", "DEMO_WEBHOOK_SECRET"} <= names
    for name in ("DEMO_WEBHOOK_URL", "DEMO_WEBHOOK_SECRET"):
        assert "${" + name + "}" in (REPO / "mappings" / "lapsed_mid_tier.yaml").read_text()


def test_env_example_loads_as_valid_settings(isolated: Path) -> None:
    """Uncommenting every SYNCER_ line of .env.example gives valid settings."""
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    active = [line.lstrip("# ") for line in lines if re.match(r"^#\s*SYNCER_[A-Z0-9_]*=", line)]
    env_file = isolated / "example.env"
    env_file.write_text("\n".join(active) + "\n", encoding="utf-8")
    settings = load_settings(env_file)
    assert settings.warehouse("analytics").startswith("duckdb://")
    assert settings.warehouse("default").startswith("postgresql")
