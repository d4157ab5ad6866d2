"""The demo as a user meets it: a reproducible shop, believable segment churn, a strict receiver."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from syncer.demo import shop
from syncer.demo.receiver import ReceiverServer, start_receiver
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parents[1]
CUSTOMERS = 2000
SECRET = "demo-secret"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small shop per module; tests copy it before changing it."""
    path = tmp_path_factory.mktemp("shop") / "shop.db"
    shop.build(path, customers=CUSTOMERS)
    return path


@pytest.fixture
def shop_copy(built: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy.db"
    shutil.copy(built, target)
    return target


def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


# -- the shop ---------------------------------------------------------------------------------


def test_same_seed_builds_the_same_segments(built: Path, tmp_path: Path) -> None:
    again = shop.build(tmp_path / "again.db", customers=CUSTOMERS)
    other = shop.build(tmp_path / "other.db", customers=CUSTOMERS, seed=7)
    assert shop.segment_members(again.path) == shop.segment_members(built)
    assert shop.segment_members(other.path) != shop.segment_members(built)


def test_build_replaces_an_existing_shop(tmp_path: Path) -> None:
    path = tmp_path / "shop.db"
    shop.build(path, customers=300)
    summary = shop.build(path, customers=200)
    assert query(path, "SELECT COUNT(*) FROM customers") == [(200,)]
    assert summary.customers == 200


def test_segments_are_disjoint_non_empty_and_sized_like_a_shop(built: Path) -> None:
    members = shop.segment_members(built)
    assert set(members) == {"high_value_recent", "lapsed_mid_tier", "inactive"}
    for name, emails in members.items():
        assert len(emails) >= CUSTOMERS // 40, name  # thousands at the default 50,000
    names = list(members)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert not members[first] & members[second], (first, second)
    everyone = sum(len(emails) for emails in members.values())
    assert everyone < CUSTOMERS  # some customers belong to no segment at all


def test_segment_views_carry_the_promised_columns(built: Path) -> None:
    for name in shop.SEGMENTS:
        with closing(sqlite3.connect(built)) as conn:
            cursor = conn.execute(f"SELECT * FROM segment_{name}")
            columns_in_order = [d[0] for d in cursor.description]
            columns = set(columns_in_order)
            rows = [dict(zip(columns_in_order, r, strict=True)) for r in cursor]
        assert {"email", "first_name", "last_name", "country", "ltv", "orders_count"} <= columns
        assert "last_order_at" in columns
        for row in rows:
            assert row["email"] == row["email"].lower() and "@example." in row["email"]
            assert round(row["ltv"], 2) == row["ltv"]


def test_segments_follow_their_rfm_definitions(built: Path) -> None:
    today = shop.clock(built)
    recent = (today - timedelta(days=shop.RECENT_DAYS)).isoformat()
    rows = query(built, "SELECT ltv, last_order_at FROM segment_high_value_recent")
    assert all(ltv >= shop.HIGH_VALUE_LTV and last[:10] >= recent for ltv, last in rows)
    rows = query(built, "SELECT ltv, last_order_at FROM segment_lapsed_mid_tier")
    mid_tier = range(shop.MID_TIER_LTV, shop.HIGH_VALUE_LTV)
    assert all(int(ltv) in mid_tier and last[:10] < recent for ltv, last in rows)
    never = query(built, "SELECT COUNT(*) FROM segment_inactive WHERE orders_count = 0")[0][0]
    lapsed = query(built, "SELECT COUNT(*) FROM segment_inactive WHERE orders_count > 0")[0][0]
    assert never and lapsed  # both kinds of inactive: never bought, and bought long ago


def test_order_history_is_skewed_like_a_real_shop(built: Path) -> None:
    counts = dict(
        query(
            built,
            "SELECT CASE WHEN n = 0 THEN 'never' WHEN n = 1 THEN 'once' WHEN n < 5 THEN 'some'"
            " ELSE 'heavy' END, COUNT(*) FROM (SELECT c.customer_id, COUNT(o.order_id) AS n"
            " FROM customers c LEFT JOIN orders o USING (customer_id) GROUP BY 1) GROUP BY 1",
        )
    )
    assert counts["once"] > counts["some"] > counts["heavy"] > 0
    assert counts["never"] > 0


# -- advancing the clock ----------------------------------------------------------------------


def test_advance_moves_members_between_segments(shop_copy: Path) -> None:
    before = shop.segment_members(shop_copy)
    summary = shop.advance(shop_copy, days=7)
    after = shop.segment_members(shop_copy)
    assert shop.clock(shop_copy) == shop.START_DAY + timedelta(days=7)
    entered = sum(len(after[s] - before[s]) for s in shop.SEGMENTS)
    left = sum(len(before[s] - after[s]) for s in shop.SEGMENTS)
    assert entered > 0 and left > 0
    assert sum(summary.entered.values()) == entered
    assert sum(summary.left.values()) == left
    assert summary.orders_added > 0 and summary.customers_added > 0
    # Weekly churn stays far below the mappings' guard (max_remove_pct: 25).
    for name in shop.SEGMENTS:
        assert len(before[name] - after[name]) < 0.25 * len(before[name]), name


def test_advance_is_reproducible_but_each_week_differs(built: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a.db", tmp_path / "b.db"
    shutil.copy(built, first)
    shutil.copy(built, second)
    week_a = shop.advance(first)
    week_b = shop.advance(second)
    assert shop.segment_members(first) == shop.segment_members(second)
    assert str(week_a) == str(week_b)
    dump = "SELECT * FROM customers ORDER BY customer_id"
    assert query(first, dump) == query(second, dump)
    next_week = shop.advance(first)
    assert next_week.today == date(2025, 1, 14)
    new_this_week = query(first, "SELECT email FROM customers WHERE created_at > '2025-01-07'")
    new_last_week = query(
        first, "SELECT email FROM customers WHERE created_at BETWEEN '2025-01-01' AND '2025-01-07'"
    )
    assert new_this_week and set(new_this_week) != set(new_last_week)


def test_deleted_customers_leave_every_segment(shop_copy: Path) -> None:
    before = shop.segment_members(shop_copy)
    summary = shop.advance(shop_copy)
    gone = query(shop_copy, "SELECT email FROM customers WHERE deleted_at IS NOT NULL")
    deleted = {email for (email,) in gone}
    assert len(deleted) == summary.deleted > 0
    assert deleted <= set().union(*before.values())  # they were members, so removes show up
    assert not deleted & set().union(*shop.segment_members(shop_copy).values())


def test_advance_renames_some_members(shop_copy: Path) -> None:
    sql = "SELECT email, first_name FROM customer_segment WHERE segment IS NOT NULL"
    before = dict(query(shop_copy, sql))
    summary = shop.advance(shop_copy)
    after = dict(query(shop_copy, sql))
    renamed = [email for email, name in after.items() if email in before and before[email] != name]
    assert len(renamed) == summary.renamed > 0


def test_emails_stay_unique_and_plausible(shop_copy: Path) -> None:
    shop.advance(shop_copy, days=14)
    emails = [row[0] for row in query(shop_copy, "SELECT email FROM customers")]
    assert len(emails) == len(set(emails))
    for email in emails[:: max(1, len(emails) // 200)]:
        local, _, domain = email.partition("@")
        assert domain in shop.EMAIL_DOMAINS and local == local.lower() and "." in local


def test_advance_on_a_missing_shop_says_how_to_build_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"python -m syncer\.demo build"):
        shop.advance(tmp_path / "nope.db")


def test_command_line_build_and_advance_print_a_summary(tmp_path: Path) -> None:
    path = tmp_path / "cli.db"

    def demo(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "syncer.demo", *args, "--path", str(path)],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        assert len(done.stdout.strip().splitlines()) == 1
        return done.stdout

    assert "500 customers" in demo("build", "--customers", "500")
    assert "2024-12-31 -> 2025-01-03" in demo("advance", "--days", "3")


# -- the webhook receiver ---------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[tuple[ReceiverServer, str, list[str]]]:
    log: list[str] = []
    server, port = start_receiver(SECRET, log=log.append)
    yield server, f"http://127.0.0.1:{port}/hook", log
    server.shutdown()
    server.server_close()


def post(url: str, payload: dict[str, Any], secret: str | None = SECRET) -> httpx.Response:
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if secret is not None:  # signed as the README says: "<timestamp>.<key>.<body>"
        stamp, key = str(int(time.time())), uuid.uuid4().hex
        signed = f"{stamp}.{key}.".encode() + body
        digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        headers["X-Syncer-Timestamp"], headers["Idempotency-Key"] = stamp, key
        headers["X-Syncer-Signature"] = f"sha256={digest}"
    return httpx.post(url, content=body, headers=headers, trust_env=False)


def batch(operation: str, *records: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "sync": "lapsed",
        "operation": operation,
        "records": [{"key": key, "fields": fields} for key, fields in records],
    }


def test_receiver_tracks_adds_removes_and_updates(
    receiver: tuple[ReceiverServer, str, list[str]],
) -> None:
    server, url, _ = receiver
    ada, bob = "ada@example.com", "bob@example.com"
    response = post(url, batch("add", (ada, {"first_name": "Ada"}), (bob, {"first_name": "Bob"})))
    assert response.status_code == 200 and response.json() == {"rejected": []}
    assert post(url, batch("update", (ada, {"first_name": "Adeline"}))).status_code == 200
    assert post(url, batch("remove", (bob, {}))).status_code == 200
    # An update for someone never added does not make them a member (a CRM would 404).
    assert post(url, batch("update", ("carol@example.com", {"first_name": "C"}))).status_code == 200
    assert server.receiver.members("lapsed") == {ada: {"first_name": "Adeline"}}
    assert server.receiver.unknown_updates["lapsed"] == 1
    assert httpx.get(url, trust_env=False).json() == {"members": {"lapsed": 1}}


def test_receiver_refuses_wrong_or_missing_signatures(
    receiver: tuple[ReceiverServer, str, list[str]],
) -> None:
    server, url, _ = receiver
    add = batch("add", ("eve@example.com", {}))
    assert post(url, add, secret="not-the-secret").status_code == 401
    assert post(url, add, secret=None).status_code == 401
    assert server.receiver.members("lapsed") == {}


def test_receiver_rejects_malformed_batches(
    receiver: tuple[ReceiverServer, str, list[str]],
) -> None:
    _, url, _ = receiver
    assert post(url, {"sync": "lapsed", "operation": "drop", "records": []}).status_code == 400
    assert post(url, {"sync": "lapsed", "operation": "add", "records": [{}]}).status_code == 400


def test_receiver_never_logs_emails(receiver: tuple[ReceiverServer, str, list[str]]) -> None:
    _, url, log = receiver
    post(url, batch("add", ("zoe.smith12@example.com", {"email": "zoe.smith12@example.com"})))
    post(url, batch("add", ("zoe.smith12@example.com", {})), secret="wrong")
    assert log and not any("@" in line or "zoe" in line for line in log)


def test_receiver_understands_the_webhook_connector(
    receiver: tuple[ReceiverServer, str, list[str]],
) -> None:
    """The connector the demo mapping uses and the receiver agree on body and signature."""
    from connectors.webhook import WebhookConfig, WebhookConnector
    from syncer.connector import Record, SyncContext
    from syncer.errors import AuthError

    server, url, _ = receiver
    context = SyncContext(sync_name="lapsed", mode="mirror", field_names=("first_name",))
    with httpx.Client(trust_env=False) as http:
        good = WebhookConnector(WebhookConfig(url=url, secret=SecretStr(SECRET)), context, http)
        result = good.add([Record("ada@example.com", {"first_name": "Ada"})])
        assert [o.status for o in result.outcomes()] == ["accepted"]
        bad = WebhookConnector(WebhookConfig(url=url, secret=SecretStr("nope")), context, http)
        with pytest.raises(AuthError):
            bad.remove([Record("ada@example.com")])
    assert server.receiver.members("lapsed") == {"ada@example.com": {"first_name": "Ada"}}


# -- the whole demo ---------------------------------------------------------------------------


def test_closing_check_catches_a_destination_that_drifted(built: Path, tmp_path: Path) -> None:
    """The demo's own verdict must fail when a destination lost or gained members."""
    from syncer.demo.run import load_syncs, verify

    csv_path = tmp_path / "out.csv"
    mapping = tmp_path / "mappings"
    mapping.mkdir()
    (mapping / "hv.yaml").write_text(
        "source:\n"
        "  query: select email, first_name from segment_high_value_recent\n"
        "  key: email\n"
        "mode: membership\n"
        f"destination: {{connector: file, path: '{csv_path}'}}\n"
    )
    (sync,) = load_syncs(mapping, {})
    members = sorted(shop.segment_members(built)["high_value_recent"])
    server, _ = start_receiver()
    try:
        csv_path.write_text("key\n" + "".join(f"{m}\n" for m in members))
        assert verify(sync, built, server, "", set()).ok
        csv_path.write_text("key\nstranger@example.com\n" + "".join(f"{m}\n" for m in members[1:]))
        verdict = verify(sync, built, server, "", set())
    finally:
        server.shutdown()
        server.server_close()
    assert not verdict.ok
    assert verdict.note == "MISMATCH: 1 missing, 1 unexpected"


def test_full_demo_ends_with_destinations_equal_to_the_warehouse(tmp_path: Path) -> None:
    """What `make demo` runs, on a small shop: two real CLI syncs and the closing check."""
    done = subprocess.run(
        [sys.executable, "-m", "syncer.demo", "run", "--dir", ".syncer/demo",
         "--customers", "1500", "--mappings", str(REPO / "mappings")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All destinations match their warehouse segments." in done.stdout
    out = tmp_path / ".syncer/demo/out"
    assert (out / "high_value_recent.csv").is_file()
    assert (out / "inactive_contacts.jsonl").is_file()
    commands = ("  .", "  /")  # the next steps: a long path to the venv in a test
    tables = [line for line in done.stdout.splitlines() if not line.startswith(commands)]
    assert [line for line in tables if len(line.rstrip()) > 80] == []

    # The README's next steps, exactly as written there, with nothing exported: the demo's
    # .env is what points them at the shop (and sets the webhook mapping's variables).
    steps = readme_next_steps()
    assert len(steps) == 3 and steps[:2] == ["check", "sync now --all"]
    printed = done.stdout.split("Try next:\n", 1)[1].splitlines()
    commands = [line.split("#")[0].split() for line in printed]
    assert [words[1:] for words in commands] == [step.split() for step in steps]
    assert all(words[0].endswith("/bin/syncer") for words in commands)  # the demo's venv
    for step in steps:
        proc = run_cli(*step.split(), cwd=tmp_path, env={"COLUMNS": "80"})
        assert proc.returncode == 0, f"syncer {step}: {proc.stdout}{proc.stderr}"
        assert all(len(line.rstrip()) <= 80 for line in proc.stdout.splitlines()), proc.stdout
        if step == "sync now --all":
            assert "lapsed_mid_tier" in proc.stdout and "succeeded" in proc.stdout


def readme_next_steps() -> list[str]:
    """The commands after "After `make demo`" in the README, without `.venv/bin/syncer`."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("After `make demo`", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [
        line.split("#")[0].strip().removeprefix(".venv/bin/syncer ")
        for line in block.splitlines()
        if line.strip()
    ]


def test_the_demo_never_overwrites_a_dotenv_of_your_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from syncer.demo.run import ENV_MARK, next_steps, write_env

    monkeypatch.chdir(tmp_path)
    demo = tmp_path / ".syncer/demo"
    demo.mkdir(parents=True)
    args = (demo, demo / "shop.db", demo / "state.db", tmp_path / "mappings", "s3cret")

    assert write_env(*args) == Path(".env")  # none there: the demo's own
    first = Path(".env").read_text()
    assert (
        first.startswith(ENV_MARK)
        and "SYNCER_WAREHOUSE_URL=sqlite:///.syncer/demo/shop.db" in first
    )
    assert (Path(".env").stat().st_mode & 0o777) == 0o600  # it holds the webhook secret
    assert write_env(*args) == Path(".env")  # a .env the demo wrote is replaced

    Path(".env").write_text("SYNCER_LOG_LEVEL=debug\n")
    used = write_env(*args)
    assert used == demo / "demo.env" and Path(".env").read_text() == "SYNCER_LOG_LEVEL=debug\n"
    assert "DEMO_WEBHOOK_SECRET=s3cret" in used.read_text()
    assert all("--env-file .syncer/demo/demo.env " in line for line in next_steps(used))


def test_the_receiver_takes_the_secret_the_demo_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m syncer.demo receiver` after the demo checks the signatures the .env makes."""
    from syncer.demo.__main__ import _demo_secret

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DEMO_WEBHOOK_SECRET", raising=False)
    assert _demo_secret() is None
    Path(".env").write_text("DEMO_WEBHOOK_SECRET=from-dotenv\n")
    assert _demo_secret() == "from-dotenv"
    monkeypatch.setenv("DEMO_WEBHOOK_SECRET", "from-environment")
    assert _demo_secret() == "from-environment"
