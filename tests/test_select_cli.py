"""Choosing syncs through the real CLI: `sync now`, `plan` and `check` with selectors.

Four syncs on one SQLite warehouse: two to HubSpot (only planned and checked here, so no
request is ever made) and two to files (also run). `plan --json` shows what was chosen
without sending anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli, write_table

SYNCS = {
    "crm_contacts": ("[nightly, crm]", "hubspot"),
    "crm_leads": ("[crm]", "hubspot"),
    "newsletter": ("[nightly]", "file"),
    "vip_export": (None, "file"),
}


def mapping(name: str, tags: str | None, connector: str) -> str:
    destination = (
        "  connector: hubspot\n  token: ${HUBSPOT_TOKEN}\n  list_id: '1'\n"
        if connector == "hubspot"
        else f"  connector: file\n  path: out/{name}.csv\n"
    )
    return (
        f"name: {name}\n"
        + (f"tags: {tags}\n" if tags else "")
        + "source:\n  query: select email, first_name from people\n  key: email\n"
        "  key_type: email\n"
        "fields:\n  email: {column: email, type: email}\n  firstname: first_name\n"
        f"destination:\n{destination}"
    )


class Project:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.mappings = root / "mappings"
        self.mappings.mkdir()
        warehouse = f"sqlite:///{root / 'shop.db'}"
        write_table(
            warehouse,
            "people",
            ("email", "first_name"),
            [(f"p{i}@example.com", f"P{i}") for i in range(5)],
        )
        for name, (tags, connector) in SYNCS.items():
            (self.mappings / f"{name}.yaml").write_text(mapping(name, tags, connector))
        self.env = {
            "SYNCER_WAREHOUSE_URL": warehouse,
            "SYNCER_STATE_URL": f"sqlite:///{root / 'state.db'}",
            "SYNCER_MAPPINGS_DIR": str(self.mappings),
            "HUBSPOT_TOKEN": "pat-na1-not-a-real-token",
        }

    def cli(self, *args: str) -> tuple[int, str, str]:
        proc = run_cli(*args, env=self.env, cwd=self.root)
        return proc.returncode, proc.stdout, proc.stderr

    def planned(self, *args: str) -> list[str]:
        code, out, err = self.cli("plan", *args, "--json")
        assert code == 0, err
        return [p["sync"] for p in json.loads(out)["plans"]]

    def ran(self, *args: str) -> list[str]:
        code, out, err = self.cli("sync", "now", *args, "--json")
        assert code == 0, err
        return [r["sync"] for r in json.loads(out)["runs"]]

    def runs(self) -> list[dict[str, Any]]:
        code, out, err = self.cli("runs", "--json")
        assert code == 0, err
        runs: list[dict[str, Any]] = json.loads(out)["runs"]
        return runs


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


def test_sync_now_name_is_unchanged(project: Project) -> None:
    code, out, err = project.cli("sync", "now", "newsletter")
    assert code == 0, err
    assert "newsletter" in out and "succeeded" in out and "vip_export" not in out
    assert (project.root / "out/newsletter.csv").is_file()
    assert not (project.root / "out/vip_export.csv").exists()


def test_plan_of_one_name_keeps_its_single_document(project: Project) -> None:
    code, out, err = project.cli("plan", "crm_leads", "--json")
    assert code == 0, err
    document = json.loads(out)
    assert document["sync"] == "crm_leads" and document["add"] == 5 and "plans" not in document


def test_glob_tag_and_connector_choose_syncs(project: Project) -> None:
    assert project.planned("crm_*") == ["crm_contacts", "crm_leads"]
    assert project.planned("tag:nightly") == ["crm_contacts", "newsletter"]
    assert project.planned("connector:hubspot") == ["crm_contacts", "crm_leads"]
    assert project.planned("tag:nightly,connector:file") == ["newsletter"]


def test_selectors_add_up_and_exclude_takes_them_away(project: Project) -> None:
    assert project.planned("vip_export", "tag:crm") == ["vip_export", "crm_contacts", "crm_leads"]
    assert project.planned("--all", "--exclude", "tag:crm") == ["newsletter", "vip_export"]
    assert project.ran("tag:nightly", "connector:file", "--exclude", "connector:hubspot") == [
        "newsletter",
        "vip_export",
    ]
    assert sorted(r["sync"] for r in project.runs()) == ["newsletter", "vip_export"]


def test_all_still_runs_everything(project: Project) -> None:
    for name in ("crm_contacts", "crm_leads"):
        (project.mappings / f"{name}.yaml").unlink()
    assert project.ran("--all") == ["newsletter", "vip_export"]
    assert project.planned("--all") == ["newsletter", "vip_export"]


def test_a_misspelled_name_is_a_usage_error_naming_the_nearest(project: Project) -> None:
    code, _, err = project.cli("sync", "now", "newsleter")
    assert code == 2, err
    assert "no sync matches 'newsleter'; did you mean: newsletter?" in err
    assert project.runs() == [] and not (project.root / "out").exists()


@pytest.mark.parametrize(
    ("command", "selector", "near"),
    [
        (("plan",), "tag:nigthly", "did you mean: tag:nightly?"),
        (("check",), "connector:hubspt", "did you mean: connector:hubspot?"),
        (("sync", "now"), "crm_*x", "(syncs: crm_contacts, crm_leads, newsletter, vip_export)"),
        (("sync", "now", "--all", "--exclude"), "vip_exprot", "did you mean: vip_export?"),
    ],
)
def test_a_selector_matching_nothing_is_exit_2_everywhere(
    project: Project, command: tuple[str, ...], selector: str, near: str
) -> None:
    code, out, err = project.cli(*command, selector)
    assert code == 2, out + err
    assert f"'{selector}'" in err and near in err
    assert project.runs() == []


def test_no_match_with_json_is_one_error_document(project: Project) -> None:
    code, out, _ = project.cli("sync", "now", "tag:weekly", "--json")
    document = json.loads(out)
    assert code == 2 and document["exit_code"] == 2 and document["status"] == "error"
    assert "tags in use: crm, nightly" in document["error"]


def test_check_takes_selectors(project: Project) -> None:
    code, out, err = project.cli("check", "tag:nightly", "--exclude", "connector:hubspot", "--json")
    assert code == 0, err
    assert [c["sync"] for c in json.loads(out)["checks"]] == ["(state database)", "newsletter"]


def test_a_broken_neighbour_stops_neither_names_nor_tags(project: Project) -> None:
    (project.mappings / "broken.yaml").write_text("name: [unclosed\n")
    assert project.ran("newsletter") == ["newsletter"]
    code, out, err = project.cli("plan", "tag:nightly", "--json")
    assert code == 0, err
    assert [p["sync"] for p in json.loads(out)["plans"]] == ["crm_contacts", "newsletter"]
    assert "broken.yaml: cannot be read, so tag: and connector: selectors do not see it" in err
    code, _, err = project.cli("sync", "now", "broken")  # chosen by its name: its error, 78
    assert code == 78 and "broken.yaml" in err


def test_tags_are_validated(project: Project) -> None:
    path = project.mappings / "newsletter.yaml"
    path.write_text(path.read_text().replace("[nightly]", "[nightly, 'two words', nightly]"))
    code, out, err = project.cli("check", "newsletter")
    assert code == 78
    shown = " ".join(out.split())  # the message may fold inside its column
    assert "tags: tag 2: use letters, digits" in shown and "two words" not in out + err


def test_plan_of_several_reports_each_and_a_failing_one_does_not_hide_the_others(
    project: Project,
) -> None:
    path = project.mappings / "vip_export.yaml"
    path.write_text(path.read_text().replace("from people", "from nowhere"))
    code, out, err = project.cli("plan", "connector:file")
    assert code == 78
    assert "plan for newsletter" in out and "error: vip_export:" in err
    code, out, _ = project.cli("plan", "connector:file", "--json")
    document = json.loads(out)
    assert code == 78 and document["exit_code"] == 78
    assert [p["sync"] for p in document["plans"]] == ["newsletter", "vip_export"]
    assert "error" in document["plans"][1]
