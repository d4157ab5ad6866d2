"""Every example in mappings/examples/ loads as a user would copy it: valid YAML, a known
connector, settings its connector accepts, and secrets only as ${VARIABLE}s."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from syncer.connector import discover
from syncer.mapping import load_file

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "mappings" / "examples").glob("*.yaml"))


def test_there_is_an_example_per_vendor_connector() -> None:
    vendors = {i.name for i in discover()} - {"file", "webhook"}
    assert {p.stem for p in EXAMPLES} == vendors


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_loads_with_its_variables_set(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = path.read_text(encoding="utf-8")
    variables = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)\}", text))
    assert variables, f"{path.name} names no ${{VARIABLE}} for its credentials"
    for name in variables:
        # URLs need a URL's shape, Mailchimp keys their data-centre suffix.
        value = "https://example.test" if name.endswith("_URL") else "x-example-value-us21"
        monkeypatch.setenv(name, value)
    sync = load_file(path)  # the test runs in an empty directory: no .env
    assert sync.connector_cls.name == path.stem
    assert sync.definition.mode in sync.connector_cls.capabilities.modes
