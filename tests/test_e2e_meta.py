"""Meta end to end: ``syncer sync now`` against a local stateful Meta audience over a first
run (with a throttle sent Meta's way, as HTTP 400 code 80003, and a record with a bad email),
a churn run (joins, leavers, changed identifiers; Meta refuses the removal because the
audience would get too small) and a run that finally removes the leavers. The audience is
compared with hashes computed here with hashlib, independently of the connector."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

from tests.fake_meta import FakeMeta, Row, throttled, too_small
from tests.vendor_emulator import SyncRun

TOKEN = "EAAB-e2e-system-user-token-0123456789"
AUDIENCE = "23850000000000042"
BAD = "c-bad"

MAPPING = """
name: meta_vip
source:
  query: select customer_id, email, phone, first_name, country from segment
  key: customer_id
mode: mirror
fields:
  email: email
  phone: phone
  first_name: first_name
  country: country
destination:
  connector: meta
  access_token: ${{META_ACCESS_TOKEN}}
  audience_id: "{audience}"
  base_url: {url}
  region: US
  batch_size: 10
"""

COLUMNS = ("customer_id", "email", "phone", "first_name", "country")
NAMES = ("Ann", "Bob-Ray", "Cy", "Dee", "Élodie")


def person(n: int, name: str | None = None, email: str | None = None) -> tuple[str, ...]:
    return (
        f"c-{n:02}",
        email or f" Person{n:02}@Example.com",
        f"(650) 253-{n:04}",
        name or NAMES[n % len(NAMES)],
        "us",
    )


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def hashed(rows: list[tuple[str, ...]]) -> set[Row]:
    """Meta's rows for the segment, computed here: trimmed lowercase email, phone digits
    with the country code, first name letters only, lowercase country code; all SHA-256."""
    out: set[Row] = set()
    for _, email, phone, name, country in rows:
        digits = "1" + "".join(c for c in phone if c.isdigit())
        letters = "".join(c for c in name.lower() if c.isalpha())
        row = {
            "EMAIL": sha(email.strip().lower()),
            "PHONE": sha(digits),
            "FN": sha(letters),
            "COUNTRY": sha(country.lower()),
        }
        out.add(frozenset(row.items()))
    return out


def test_churn_through_the_cli(tmp_path: Path) -> None:
    with FakeMeta(TOKEN, AUDIENCE) as vendor:
        assert isinstance(vendor, FakeMeta)
        run = SyncRun(
            tmp_path,
            MAPPING.format(audience=AUDIENCE, url=vendor.url),
            "meta_vip",
            env={"META_ACCESS_TOKEN": TOKEN},
        )
        first = [person(n) for n in range(24)]
        run.segment(COLUMNS, [*first, (BAD, "not-an-email", "", "Zed", "us")])
        vendor.fail_next(r"/users$", throttled(), method="POST")

        code, doc = run.sync()
        summary = doc["runs"][0]
        assert code == 1, doc
        assert (summary["added"], summary["rejected"]) == (24, 1)
        assert vendor.statuses[400] == 1 and vendor.pending_faults() == 0
        assert vendor.audience() == hashed(first)
        adds = vendor.requests_to(r"/users$", "POST")
        assert len(adds) == 4  # 3 batches of at most 10, one of them sent twice (throttle)
        assert vendor.versions == {"v24.0"}
        shown = run.cli("run", "show", summary["run_id"], "--json")
        assert shown.returncode == 0, shown.stderr
        assert "email: not a valid email address" in shown.stdout
        stats = json.loads(shown.stdout)["run"]["stats"]
        assert stats == {"num_received": 24, "num_invalid_entries": 0}
        outputs = [shown.stdout, shown.stderr, json.dumps(doc)]

        # Churn: 3 leave, 3 join, 4 change their first name, 1 changes email.
        churn = [
            *[person(n) for n in range(3, 10)],
            *[person(n, name=f"Renamed-{chr(97 + n)}") for n in range(10, 14)],
            person(14, email="new.address14@example.com"),
            *[person(n) for n in range(15, 24)],
            *[person(n) for n in (30, 31, 32)],
        ]
        run.segment(COLUMNS, [*churn, (BAD, "not-an-email", "", "Zed", "us")])
        vendor.fail_next(r"/users$", too_small(), method="DELETE")
        before = len(vendor.requests)
        code, doc = run.sync()
        summary = doc["runs"][0]
        assert code == 1, doc
        assert (summary["added"], summary["updated"], summary["removed"]) == (3, 5, 0)
        assert summary["rejected"] == 4  # the 3 refused removals and the bad email
        leavers = [person(n) for n in range(3)]
        assert vendor.audience() == hashed(churn) | hashed(leavers)
        shown = run.cli("run", "show", summary["run_id"], "--json")
        assert "meta refused the change: Audience Size too low" in shown.stdout
        outputs += [shown.stdout, shown.stderr, json.dumps(doc)]
        churn_deletes = vendor.requests_to(r"/users$", "DELETE")
        assert len(churn_deletes) == 1 and len(vendor.requests) - before == 3  # 2 adds, 1 remove

        # Meta takes the removal now; the bad record left the segment.
        run.segment(COLUMNS, churn)
        code, doc = run.sync()
        summary = doc["runs"][0]
        assert code == 0, doc
        assert (summary["added"], summary["removed"], summary["rejected"]) == (0, 3, 0)
        assert vendor.audience() == hashed(churn)
        removal = json.loads(vendor.requests_to(r"/users$", "DELETE")[-1].body)["payload"]
        assert removal["schema"] == ["EMAIL", "PHONE", "FN", "COUNTRY"]
        assert {frozenset((k, v) for k, v in zip(removal["schema"], row, strict=True))
                for row in removal["data"]} == hashed(leavers)  # fmt: skip
        outputs += [json.dumps(doc)]

        # No raw identifier anywhere: state database (with its audit log) and CLI output.
        raw = [v for row in [*first, *churn] for v in (row[1].strip(), row[2])]
        raw += [row[1].strip().lower() for row in [*first, *churn]]
        raw += ["1" + "".join(c for c in row[2] if c.isdigit()) for row in [*first, *churn]]
        with sqlite3.connect(tmp_path / "state.db") as db:
            tables = [r[0] for r in db.execute("select name from sqlite_master where type='table'")]
            dump = "\n".join(str(db.execute(f"select * from {t}").fetchall()) for t in tables)
        blob = (tmp_path / "state.db").read_bytes().decode("latin-1") + dump + "".join(outputs)
        leaked = [value for value in raw if value in blob]
        assert leaked == []
        assert TOKEN not in blob
