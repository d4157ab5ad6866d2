"""The docs: generated pages equal a fresh generation, the site builds strictly, the README's
front door works, and the mapping JSON Schema checks connector settings."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from syncer import docgen
from syncer.mapping import json_schema, load_file

REPO = Path(__file__).resolve().parents[1]


def test_generated_docs_and_schema_match_the_code() -> None:
    # In a fresh process, as a developer runs it: nothing another test did to this worker's
    # imported modules (click commands, settings, registered connectors) can leak in.
    check = subprocess.run(
        [sys.executable, "-m", "syncer.docgen", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0, (
        f"{check.stdout}{check.stderr}stale generated files: regenerate them with"
        f" `.venv/bin/python -m syncer.docgen` (or `make docs`) and commit the result"
    )


def test_docgen_check_names_a_stale_file_and_how_to_regenerate(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(docgen, "ROOT", tmp_path)  # nothing generated there yet: all stale
    assert docgen.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert "stale: docs/reference/cli.md" in out and "python -m syncer.docgen" in out
    assert docgen.main([]) == 0
    assert (tmp_path / "mappings" / "schema.json").exists()
    assert docgen.main(["--check"]) == 0


def test_the_configuration_reference_lists_every_setting_and_mapping_key() -> None:
    from syncer.mapping import Source, SyncDefinition
    from syncer.settings import Settings

    page = (REPO / "docs" / "reference" / "configuration.md").read_text(encoding="utf-8")
    for name in Settings.model_fields:
        assert f"`SYNCER_{name.upper()}" in page
    for model in (SyncDefinition, Source):
        for name in model.model_fields:
            assert f"| `{name}` |" in page


def test_the_cli_reference_lists_every_command() -> None:
    from syncer.cli import cli

    page = (REPO / "docs" / "reference" / "cli.md").read_text(encoding="utf-8")
    for name in cli.commands:
        assert f"## `syncer {name}" in page


def test_the_docs_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    mkdocs = Path(sys.executable).with_name("mkdocs")
    command = [str(mkdocs)] if mkdocs.exists() else [sys.executable, "-m", "mkdocs"]
    result = subprocess.run(
        [
            *command,
            "build",
            "--strict",
            "--config-file",
            str(REPO / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    warnings = [line for line in result.stderr.splitlines() if not line.startswith("INFO")]
    assert result.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(warnings)
    assert (tmp_path / "site" / "reference" / "configuration" / "index.html").exists()


# -- the README --------------------------------------------------------------------------------


def test_readme_links_point_at_docs_pages_that_exist() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        if "://" not in link:
            assert (REPO / link).exists(), f"README links to {link}, which does not exist"


def test_readme_example_mapping_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("```yaml\n") + len("```yaml\n")
    text = readme[start : readme.index("\n```", start)]
    path = tmp_path / "vip_customers.yaml"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setenv("HUBSPOT_TOKEN", "pat-na1-example")
    monkeypatch.chdir(tmp_path)
    sync = load_file(path)
    assert (sync.name, sync.definition.mode, sync.connector_cls.name) == (
        "vip_customers",
        "mirror",
        "hubspot",
    )
    jsonschema.validate(yaml.safe_load(text), json_schema())


# -- the mapping JSON Schema -------------------------------------------------------------------


def _validator() -> jsonschema.Validator:
    schema = json.loads((REPO / "mappings" / "schema.json").read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)  # type: ignore[no-any-return]


def _errors(document: Any) -> list[str]:
    return [error.message for error in _validator().iter_errors(document)]


def _hubspot() -> dict[str, Any]:
    raw = yaml.safe_load((REPO / "mappings" / "examples" / "hubspot.yaml").read_text())
    assert isinstance(raw, dict)
    return raw


@pytest.mark.parametrize(
    "path",
    sorted((REPO / "mappings").glob("*.yaml"))
    + sorted((REPO / "mappings").glob("examples/*.yaml")),
    ids=lambda p: p.name,
)
def test_every_shipped_mapping_passes_the_schema(path: Path) -> None:
    assert _errors(yaml.safe_load(path.read_text(encoding="utf-8"))) == []


def test_schema_refuses_a_misspelt_connector_setting() -> None:
    document = _hubspot()
    document["destination"]["lst_id"] = document["destination"].pop("list_id")
    assert any("'lst_id' was unexpected" in message for message in _errors(document))


def test_schema_refuses_a_wrong_value_and_a_missing_required_setting() -> None:
    wrong = _hubspot()
    wrong["destination"]["tier"] = "platinum"
    assert _errors(wrong)
    google = REPO / "mappings" / "examples" / "google_ads.yaml"
    missing = yaml.safe_load(google.read_text(encoding="utf-8"))
    del missing["destination"]["customer_id"]
    assert any("'customer_id' is a required property" in m for m in _errors(missing))
    # A destination with no credentials at all: neither the static token nor refresh ones.
    bare = _hubspot()
    del bare["destination"]["token"]
    assert any("is not valid under any of the given schemas" in m for m in _errors(bare))
    bare["destination"].update(client_id="app", client_secret="${S}", refresh_token="${R}")
    assert _errors(bare) == []


def test_schema_checks_each_connector_by_its_own_settings() -> None:
    document = _hubspot()
    document["destination"]["connector"] = "webhook"  # hubspot's settings are not webhook's
    assert any("unexpected" in message for message in _errors(document))
    document["destination"] = {"connector": "webhook", "url": "https://hooks.example.com/x"}
    assert _errors(document) == []


def test_schema_describes_connector_settings_for_editors() -> None:
    destination = json_schema()["$defs"]["Destination"]
    rules = {
        rule["if"]["properties"]["connector"]["const"]: rule["then"]
        for rule in destination["allOf"]
    }
    assert {"file", "webhook", "hubspot", "tiktok"} <= set(rules)
    assert "list_id" in rules["hubspot"]["properties"]
    assert "webhook" in destination["properties"]["connector"]["anyOf"][0]["enum"]


def test_make_schema_output_equals_the_committed_file() -> None:
    syncer = shutil.which("syncer", path=str(Path(sys.executable).parent))
    assert syncer is not None
    printed = subprocess.run([syncer, "schema"], capture_output=True, text=True, check=True)
    assert printed.stdout == (REPO / "mappings" / "schema.json").read_text(encoding="utf-8")


# -- connector pages -------------------------------------------------------------------------


def _settings_table(page: str) -> set[str]:
    """The setting names in the first column of a page's first table with a default column."""
    lines = page.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|") and "efault" in line)
    names: set[str] = set()
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        names |= set(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
    return names


def test_each_connector_page_documents_exactly_its_settings() -> None:
    """The hand-written settings tables cannot drift from the config models either."""
    from syncer.connector import ConnectorConfig, discover

    common = set(ConnectorConfig.model_fields)
    index = (REPO / "docs" / "connectors" / "index.md").read_text(encoding="utf-8")
    shared = set(re.findall(r"^- `([a-z_]+)`", index, flags=re.MULTILINE))  # all vendors have
    for info in discover():
        if info.cls is None or not info.target.startswith("connectors."):
            continue
        page = REPO / "docs" / "connectors" / f"{info.name}.md"
        assert page.exists(), f"connector {info.name} has no page at {page.relative_to(REPO)}"
        documented = _settings_table(page.read_text(encoding="utf-8"))
        fields = set(info.cls.config_model.model_fields)
        missing = fields - documented - common - shared
        assert not missing, f"{page.relative_to(REPO)} does not document {sorted(missing)}"
        unknown = documented - fields
        assert not unknown, f"{page.relative_to(REPO)} documents unknown {sorted(unknown)}"
