"""A deterministic synthetic shop in SQLite, playing the warehouse for the demo.

The shop keeps its own clock (``shop_clock.today``) instead of reading the wall clock, so the
same seed always yields the same customers, orders and segment memberships, and ``advance``
can simulate a week in a second. Segments are SQL views computed RFM-style relative to that
clock: moving the clock alone already moves people between segments, exactly as time does in a
real warehouse.
"""

from __future__ import annotations

import math
import os
import random
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

DEFAULT_PATH = Path(".syncer/demo/shop.db")
DEFAULT_CUSTOMERS = 50_000
DEFAULT_SEED = 20240101
START_DAY = date(2024, 12, 31)
HISTORY_DAYS = 730
"""Orders span the two years before the clock's start."""

SEGMENTS = ("high_value_recent", "lapsed_mid_tier", "inactive")

# RFM thresholds, in one place so the views and the docs cannot disagree.
HIGH_VALUE_LTV = 500
RECENT_DAYS = 60
MID_TIER_LTV = 120
LAPSED_AFTER_DAYS = 90
INACTIVE_AFTER_DAYS = 365
NEW_ACCOUNT_GRACE_DAYS = 90

FIRST_NAMES = (
    "Aaron", "Abigail", "Adam", "Aisha", "Alex", "Alice", "Amelia", "Ana", "Andrea", "Anna",
    "Arjun", "Ava", "Ben", "Bianca", "Carlos", "Caroline", "Charlotte", "Chen", "Chloe",
    "Daniel", "David", "Diego", "Elena", "Eli", "Elif", "Emily", "Emma", "Ethan", "Fatima",
    "Felix", "Finn", "Freya", "Gabriel", "Grace", "Hannah", "Hugo", "Ines", "Isaac", "Isabel",
    "Ivan", "Jack", "Jacob", "James", "Jana", "Javier", "Jonas", "Julia", "Kai", "Karin",
    "Kenji", "Laura", "Leo", "Lena", "Liam", "Lina", "Lucas", "Lucia", "Luka", "Maja", "Marco",
    "Maria", "Mateo", "Maya", "Mia", "Mila", "Mohammed", "Nadia", "Noah", "Nora", "Olivia",
    "Omar", "Oscar", "Paula", "Pedro", "Priya", "Rafael", "Rosa", "Ruby", "Sam", "Sara",
    "Sebastian", "Sofia", "Sophie", "Stefan", "Theo", "Thomas", "Valentina", "Victor",
    "William", "Yara", "Yusuf", "Zoe",
)  # fmt: skip
LAST_NAMES = (
    "Adams", "Ahmed", "Alvarez", "Andersen", "Bauer", "Becker", "Bianchi", "Brown", "Campbell",
    "Chen", "Clarke", "Costa", "Davies", "Dubois", "Eriksson", "Evans", "Fischer", "Fontaine",
    "Garcia", "Gomez", "Green", "Hall", "Hansen", "Hoffmann", "Hughes", "Ito", "Jansen",
    "Johnson", "Jones", "Kaur", "Khan", "Kim", "Klein", "Kowalski", "Lambert", "Larsen", "Lee",
    "Lopez", "Martin", "Meyer", "Miller", "Moreau", "Muller", "Murphy", "Nakamura", "Nguyen",
    "Nielsen", "Novak", "Okafor", "Olsen", "Patel", "Perez", "Petrov", "Popescu", "Ricci",
    "Roberts", "Rossi", "Santos", "Schmidt", "Schneider", "Silva", "Singh", "Smith", "Suzuki",
    "Tanaka", "Taylor", "Thomas", "Torres", "Visser", "Wagner", "Walker", "Wang", "Weber",
    "White", "Wilson", "Wright", "Yilmaz", "Young", "Zhang",
)  # fmt: skip
COUNTRIES = (
    ("US", 30), ("GB", 14), ("DE", 12), ("FR", 9), ("CA", 7), ("AU", 5), ("NL", 5),
    ("ES", 5), ("IT", 5), ("SE", 3), ("IE", 2), ("DK", 2), ("PL", 1),
)  # fmt: skip
EMAIL_DOMAINS = ("example.com", "example.org", "example.net")

_SCHEMA = f"""
CREATE TABLE shop_clock (today DATE NOT NULL);
CREATE TABLE shop_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE customers (
    customer_id INTEGER PRIMARY KEY,
    email       TEXT NOT NULL UNIQUE,
    first_name  TEXT NOT NULL,
    last_name   TEXT NOT NULL,
    country     TEXT NOT NULL,
    created_at  TIMESTAMP NOT NULL,
    deleted_at  TIMESTAMP
);
CREATE TABLE orders (
    order_id    INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers (customer_id),
    ordered_at  TIMESTAMP NOT NULL,
    amount      REAL NOT NULL
);
CREATE INDEX orders_by_customer ON orders (customer_id, ordered_at);

-- Recency / frequency / monetary value per live customer, as of the shop's clock.
CREATE VIEW customer_rfm AS
WITH clock AS (SELECT today FROM shop_clock LIMIT 1),
totals AS (
    SELECT o.customer_id,
           ROUND(SUM(o.amount), 2) AS ltv,
           COUNT(*)                AS orders_count,
           MAX(o.ordered_at)       AS last_order_at
    FROM orders o, clock
    WHERE date(o.ordered_at) <= clock.today
    GROUP BY o.customer_id
)
SELECT c.customer_id, c.email, c.first_name, c.last_name, c.country, c.created_at,
       COALESCE(t.ltv, 0.0)        AS ltv,
       COALESCE(t.orders_count, 0) AS orders_count,
       t.last_order_at,
       CAST(julianday(clock.today) - julianday(date(t.last_order_at)) AS INTEGER)
           AS days_since_order,
       CAST(julianday(clock.today) - julianday(date(c.created_at)) AS INTEGER)
           AS account_age_days
FROM customers c
CROSS JOIN clock
LEFT JOIN totals t ON t.customer_id = c.customer_id
WHERE c.deleted_at IS NULL AND date(c.created_at) <= clock.today;

-- One CASE, so a customer lands in at most one segment (first match wins).
CREATE VIEW customer_segment AS
SELECT r.*,
       CASE
           WHEN r.orders_count > 0 AND r.days_since_order <= {RECENT_DAYS}
                AND r.ltv >= {HIGH_VALUE_LTV}
               THEN 'high_value_recent'
           WHEN r.orders_count > 0 AND r.ltv >= {MID_TIER_LTV} AND r.ltv < {HIGH_VALUE_LTV}
                AND r.days_since_order > {LAPSED_AFTER_DAYS}
                AND r.days_since_order <= {INACTIVE_AFTER_DAYS}
               THEN 'lapsed_mid_tier'
           WHEN (r.orders_count = 0 AND r.account_age_days >= {NEW_ACCOUNT_GRACE_DAYS})
                OR r.days_since_order > {INACTIVE_AFTER_DAYS}
               THEN 'inactive'
       END AS segment
FROM customer_rfm r;
""" + "".join(
    f"""
CREATE VIEW segment_{name} AS
SELECT customer_id, email, first_name, last_name, country, ltv, orders_count, last_order_at
FROM customer_segment
WHERE segment = '{name}';
"""
    for name in SEGMENTS
)


@dataclass(frozen=True, slots=True)
class BuildSummary:
    """What ``build`` produced; ``str()`` is the one-line report the CLI prints."""

    path: Path
    today: date
    customers: int
    orders: int
    never_ordered: int
    segments: dict[str, int]

    def __str__(self) -> str:
        sizes = ", ".join(f"{name} {count:,}" for name, count in self.segments.items())
        return (
            f"built shop {self.path}: {self.customers:,} customers"
            f" ({self.never_ordered:,} never ordered), {self.orders:,} orders,"
            f" clock {self.today.isoformat()}; segments: {sizes}"
        )


@dataclass(frozen=True, slots=True)
class AdvanceSummary:
    """What one ``advance`` changed, including who moved between segments."""

    path: Path
    previous_day: date
    today: date
    orders_added: int
    customers_added: int
    new_customers_with_orders: int
    deleted: int
    renamed: int
    segments: dict[str, int]
    entered: dict[str, int] = field(default_factory=dict)
    left: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        moves = ", ".join(
            f"{name} {count:,} (+{self.entered.get(name, 0)}/-{self.left.get(name, 0)})"
            for name, count in self.segments.items()
        )
        return (
            f"advanced shop clock {self.previous_day.isoformat()} -> {self.today.isoformat()}:"
            f" +{self.orders_added:,} orders, +{self.customers_added:,} customers"
            f" ({self.new_customers_with_orders} ordered), {self.deleted} deleted,"
            f" {self.renamed} renamed; segments: {moves}"
        )


@contextmanager
def _connect(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection in autocommit mode: transactions are explicit ``BEGIN``/``COMMIT``."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        yield conn


def _timestamp(day: date, rng: random.Random) -> str:
    """A time of day during shop hours (skewed to the evening), as SQLite-friendly text."""
    seconds = min(86_399, int(rng.triangular(6 * 3600, 86_399, 20 * 3600)))
    hours, rest = divmod(seconds, 3600)
    return f"{day.isoformat()} {hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def _basket(rng: random.Random, heavy: bool) -> float:
    """Typical order value of one customer: log-normal, heavy buyers spend more per order."""
    return math.exp(rng.gauss(math.log(48.0), 0.5)) * (1.5 if heavy else 1.0)


def _amount(rng: random.Random, basket: float) -> float:
    return round(max(4.99, basket * math.exp(rng.gauss(0.0, 0.3))), 2)


class _People:
    """Draws plausible, unique customers; emails are derived from the drawn name."""

    def __init__(self, rng: random.Random, taken: set[str]) -> None:
        self.rng = rng
        self.taken = taken
        self._countries = [code for code, _ in COUNTRIES]
        self._weights = [weight for _, weight in COUNTRIES]

    def draw(self) -> tuple[str, str, str, str]:
        """(email, first_name, last_name, country)."""
        rng = self.rng
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        country = rng.choices(self._countries, self._weights)[0]
        domain = rng.choice(EMAIL_DOMAINS)
        while True:
            email = f"{first.lower()}.{last.lower()}{rng.randint(1, 9999)}@{domain}"
            if email not in self.taken:
                self.taken.add(email)
                return email, first, last, country


def _history(rng: random.Random, created: date, today: date) -> list[date]:
    """Order days of one customer: many one-time buyers, some heavy, some who never buy."""
    start = max(created, today - timedelta(days=HISTORY_DAYS - 1))
    span = (today - start).days
    kind = rng.random()
    if kind < 0.20:  # never bought
        return []
    if kind < 0.62:  # one-time buyer, usually right after signing up
        offset = rng.randint(0, 14) if rng.random() < 0.6 else rng.randint(0, span)
        return [start + timedelta(days=min(offset, span))]
    heavy = kind >= 0.90
    if heavy:
        count = rng.randint(5, 12) if rng.random() < 0.7 else rng.randint(13, 40)
    else:
        count = rng.randint(2, 4)
    still_active = rng.random() < (0.75 if heavy else 0.45)
    end = span if still_active else rng.randint(0, span)
    return sorted(start + timedelta(days=rng.randint(0, end)) for _ in range(count))


def build(
    path: Path | str = DEFAULT_PATH,
    *,
    customers: int = DEFAULT_CUSTOMERS,
    seed: int = DEFAULT_SEED,
    today: date = START_DAY,
) -> BuildSummary:
    """Create the shop at ``path`` (replacing it); same arguments -> identical database."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"shop:{seed}")
    people = _People(rng, set())
    customer_rows: list[tuple[int, str, str, str, str, str, None]] = []
    order_rows: list[tuple[str, int, float]] = []
    never = 0
    for customer_id in range(1, customers + 1):
        email, first, last, country = people.draw()
        # Signups grow steadily (half uniform, half linearly rising towards today).
        age = rng.uniform(0, 1000) if rng.random() < 0.5 else rng.triangular(0, 1000, 0)
        created = today - timedelta(days=int(age))
        customer_rows.append(
            (customer_id, email, first, last, country, _timestamp(created, rng), None)
        )
        days = _history(rng, created, today)
        never += not days
        basket = _basket(rng, heavy=len(days) >= 5)
        order_rows.extend((_timestamp(d, rng), customer_id, _amount(rng, basket)) for d in days)
    order_rows.sort()  # order ids follow time, as in a real shop

    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with _connect(tmp) as conn:
        conn.executescript(_SCHEMA)
        conn.execute("BEGIN")
        conn.execute("INSERT INTO shop_clock (today) VALUES (?)", (today.isoformat(),))
        conn.execute("INSERT INTO shop_meta (key, value) VALUES ('seed', ?)", (str(seed),))
        conn.executemany("INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?, ?)", customer_rows)
        conn.executemany(
            "INSERT INTO orders (order_id, customer_id, ordered_at, amount) VALUES (?, ?, ?, ?)",
            [(i, cid, at, amount) for i, (at, cid, amount) in enumerate(order_rows, start=1)],
        )
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        sizes = _sizes(conn)
    for suffix in ("-journal", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    os.replace(tmp, path)
    return BuildSummary(path, today, customers, len(order_rows), never, sizes)


def _today(conn: sqlite3.Connection) -> date:
    row = conn.execute("SELECT today FROM shop_clock").fetchone()
    if row is None:
        raise ValueError("not a demo shop: shop_clock is empty")
    return date.fromisoformat(row[0])


def _sizes(conn: sqlite3.Connection) -> dict[str, int]:
    counts = dict(
        conn.execute(
            "SELECT segment, COUNT(*) FROM customer_segment"
            " WHERE segment IS NOT NULL GROUP BY segment"
        ).fetchall()
    )
    return {name: int(counts.get(name, 0)) for name in SEGMENTS}


def _assignments(conn: sqlite3.Connection) -> dict[int, str]:
    rows = conn.execute(
        "SELECT customer_id, segment FROM customer_segment WHERE segment IS NOT NULL"
    ).fetchall()
    return {int(cid): str(segment) for cid, segment in rows}


def _open_existing(path: Path | str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no demo shop at {path}; run `python -m syncer.demo build`")
    return path


def advance(path: Path | str = DEFAULT_PATH, *, days: int = 7) -> AdvanceSummary:
    """Simulate ``days`` of shop life: orders, signups, deletions and renames.

    Seeded from the shop's seed and its current clock, so two shops advanced the same way stay
    identical while each advance of one shop differs from the previous one.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    path = _open_existing(path)
    with _connect(path) as conn:
        previous = _today(conn)
        seed_row = conn.execute("SELECT value FROM shop_meta WHERE key = 'seed'").fetchone()
        rng = random.Random(f"advance:{seed_row[0] if seed_row else ''}:{previous.isoformat()}")
        before = _assignments(conn)
        today = previous + timedelta(days=days)

        # Each customer keeps buying at their pace of the past year (plus a small chance of
        # a comeback), so a simulated week looks like the weeks before it. Orders after the
        # clock (the demo's planted outcomes) are not the past: they do not count.
        live = conn.execute(
            "SELECT r.customer_id, r.orders_count, r.ltv, COUNT(o.order_id)"
            " FROM customer_rfm r LEFT JOIN orders o ON o.customer_id = r.customer_id"
            " AND date(o.ordered_at) > date(?, '-365 days') AND date(o.ordered_at) <= ?"
            " GROUP BY r.customer_id ORDER BY r.customer_id",
            (previous.isoformat(), previous.isoformat()),
        ).fetchall()
        ids = [int(cid) for cid, *_ in live]
        weights = [year + (0.03 if count else 0.01) for _, count, _, year in live]
        per_day = max(1.0, sum(year for *_, year in live) / 365)
        basket = {int(cid): (ltv / count if count else 48.0) for cid, count, ltv, _ in live}

        orders: list[tuple[str, int, float]] = []
        for offset in range(1, days + 1 if ids else 1):
            day = previous + timedelta(days=offset)
            for cid in rng.choices(ids, weights, k=int(per_day * rng.uniform(0.85, 1.15))):
                orders.append((_timestamp(day, rng), cid, _amount(rng, basket[cid])))

        taken = {row[0] for row in conn.execute("SELECT email FROM customers")}
        people = _People(rng, taken)
        next_id = conn.execute("SELECT COALESCE(MAX(customer_id), 0) FROM customers").fetchone()[0]
        weeks = days / 7  # signups, deletions and renames happen at a weekly pace
        signups = max(1, round(len(ids) * 0.006 * weeks * rng.uniform(0.8, 1.2)))
        new_customers = []
        buyers = 0
        for n in range(1, signups + 1):
            email, first, last, country = people.draw()
            created = previous + timedelta(days=rng.randint(1, days))
            cid = next_id + n
            new_customers.append((cid, email, first, last, country, _timestamp(created, rng), None))
            if rng.random() < 0.35:
                buyers += 1
                own_basket = _basket(rng, heavy=False)
                for _ in range(1 if rng.random() < 0.8 else 2):
                    day = created + timedelta(days=rng.randint(0, (today - created).days))
                    orders.append((_timestamp(day, rng), cid, _amount(rng, own_basket)))
        orders.sort()

        # Deletions and renames pick segment members, so the demo shows removes and updates.
        members = sorted(before)
        deletions = max(1, round(len(ids) * 0.0003 * weeks))
        deleted = rng.sample(members, min(len(members), deletions))
        gone = set(deleted)
        renamed = rng.sample(
            [cid for cid in members if cid not in gone],
            min(len(members) - len(deleted), max(1, round(len(ids) * 0.0005 * weeks))),
        )
        current_names = dict(
            conn.execute(
                f"SELECT customer_id, first_name FROM customers"
                f" WHERE customer_id IN ({','.join('?' * len(renamed))})",
                renamed,
            ).fetchall()
        )
        renames = []
        for cid in renamed:
            choices = [name for name in FIRST_NAMES if name != current_names.get(cid)]
            renames.append((rng.choice(choices), cid))

        next_order = conn.execute("SELECT COALESCE(MAX(order_id), 0) FROM orders").fetchone()[0]
        conn.execute("BEGIN")
        conn.execute("UPDATE shop_clock SET today = ?", (today.isoformat(),))
        conn.executemany("INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?, ?)", new_customers)
        conn.executemany(
            "INSERT INTO orders (order_id, customer_id, ordered_at, amount) VALUES (?, ?, ?, ?)",
            [(next_order + i, cid, at, amt) for i, (at, cid, amt) in enumerate(orders, 1)],
        )
        conn.executemany(
            "UPDATE customers SET deleted_at = ? WHERE customer_id = ?",
            [(_timestamp(previous + timedelta(days=rng.randint(1, days)), rng), cid)
             for cid in deleted],
        )  # fmt: skip
        conn.executemany("UPDATE customers SET first_name = ? WHERE customer_id = ?", renames)
        conn.execute("COMMIT")

        after = _assignments(conn)
        sizes = _sizes(conn)
    entered = {name: 0 for name in SEGMENTS}
    left = {name: 0 for name in SEGMENTS}
    for cid, segment in after.items():
        if before.get(cid) != segment:
            entered[segment] += 1
    for cid, segment in before.items():
        if after.get(cid) != segment:
            left[segment] += 1
    return AdvanceSummary(
        path=path,
        previous_day=previous,
        today=today,
        orders_added=len(orders),
        customers_added=len(new_customers),
        new_customers_with_orders=buyers,
        deleted=len(deleted),
        renamed=len(renames),
        segments=sizes,
        entered=entered,
        left=left,
    )


def clock(path: Path | str = DEFAULT_PATH) -> date:
    """The shop's current day."""
    with _connect(_open_existing(path)) as conn:
        return _today(conn)


def segment_sizes(path: Path | str = DEFAULT_PATH) -> dict[str, int]:
    """Members per segment, as the segment views count them right now."""
    with _connect(_open_existing(path)) as conn:
        return _sizes(conn)


def segment_members(path: Path | str = DEFAULT_PATH) -> dict[str, set[str]]:
    """Emails per segment, read through the public ``segment_*`` views."""
    with _connect(_open_existing(path)) as conn:
        return {
            name: {row[0] for row in conn.execute(f"SELECT email FROM segment_{name}")}
            for name in SEGMENTS
        }
