"""No secret and no raw e-mail address ever reaches output, logs or the audit tables.

The destination is hostile: it refuses the credentials once, fails with 500s whose bodies echo
the request (headers included), answers 400 with the request body echoed back, and rejects
records with reasons that quote the address. Everything syncer prints (stdout, stderr at debug
level as JSON logs, `runs --json`, `run show --json`) and every text stored in syncer_runs and
syncer_events is scanned.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tests.fake_destination import SECRET, Fault, Harness, harness, people

TOKEN = "tok_live_Q8vR2mZ5xK7pL3nW"
DOMAIN = "victim-corp.example"
HEADERS = "  headers:\n    Authorization: ${HOOK_TOKEN}\n"  # a secret is exactly one ${VAR}
LOUD = ("--log-level", "debug", "--log-format", "json")


def sync(h: Harness, out: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = h.cli(*LOUD, "sync", "now", h.name, "--json", env=env)
    out += [proc.stdout, proc.stderr]
    assert proc.stdout.strip(), proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def stored_text(state_url: str) -> list[str]:
    """Every value in syncer_runs and syncer_events, as text."""
    engine = sa.create_engine(state_url)
    texts: list[str] = []
    with engine.connect() as conn:
        for table in ("syncer_runs", "syncer_events"):
            for row in conn.execute(sa.text(f"select * from {table}")):
                texts += [str(v) for v in row if v is not None]
    engine.dispose()
    return texts


def test_secrets_and_emails_never_leak(tmp_path: Path) -> None:
    rows = people(24, domain=DOMAIN)
    emails = [r[0] for r in rows]
    env = {"HOOK_TOKEN": f"Bearer {TOKEN}"}
    with harness(tmp_path, batch_size=6, extra=HEADERS, env=env) as h:
        h.segment(rows)
        out: list[str] = []
        unsubscribed, poison = emails[3], emails[14]
        h.dest.reject_keys = {
            unsubscribed: f"{unsubscribed} is unsubscribed; contact {unsubscribed} first"
        }
        h.dest.poison_keys, h.dest.poison_echo = {poison}, True

        h.dest.script(Fault(401))
        doc = sync(h, out)
        assert doc["exit_code"] == 78

        h.dest.script(Fault(500, "0", echo=True), Fault(503, "0", echo=True), Fault(400, echo=True))
        doc = sync(h, out)
        assert doc["exit_code"] == 1

        h.dest.script(*[Fault(502, "0", echo=True)] * 6, Fault(reset=True))
        doc = sync(h, out, env={"SYNCER_RETRY_ATTEMPTS": "2"})
        assert doc["exit_code"] in (1, 75)

        # A run without scripted faults: whichever batches the faults above happened to hit
        # (batches run concurrently), the refused address now gets its quoting answer.
        with h.dest.lock:
            h.dest.faults.clear()
        doc = sync(h, out)
        assert doc["exit_code"] == 1

        runs = h.cli("runs", "--json")
        out += [runs.stdout, runs.stderr]
        run_ids = [r["id"] for r in json.loads(runs.stdout)["runs"]]
        assert len(run_ids) == 4
        audit_keys = []
        for run_id in run_ids:
            shown = h.cli(*LOUD, "run", "show", run_id, "--json")
            assert shown.returncode == 0, shown.stderr
            out += [shown.stdout, shown.stderr]
            audit_keys += [p["key"] for p in json.loads(shown.stdout)["run"]["problems"]]
        out += stored_text(h.state_url)

        # The test means something: the vendor did quote addresses and credentials back,
        # syncer logged at debug level, and the vendor's reason reached the audit (scrubbed).
        assert h.dest.statuses[400] >= 2 and h.dest.statuses[401] == 1
        assert h.dest.statuses[500] + h.dest.statuses[503] + h.dest.statuses[502] >= 3
        text = "\n".join(out)
        assert '"event"' in text or "run.started" in text, "no debug logs were captured"
        assert "is unsubscribed" in text

        assert SECRET not in text
        assert TOKEN not in text
        leaked = sorted(set(re.findall(rf"[\w.+-]+@{re.escape(DOMAIN)}", text)))
        assert leaked == [], f"raw addresses in output or audit: {leaked[:5]}"
        assert not [e for e in emails if e in text]
        audit_keys = [k for k in audit_keys if k]
        assert audit_keys and all(re.fullmatch(r"[0-9a-f]{64}", k) for k in audit_keys)
