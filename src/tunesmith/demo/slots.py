"""Question templates' building blocks: the ``Template`` type and the slot domains.

A slot ranges over the database's own values (its cities, insurers, doctors, ...), so every
question asks about something that exists; :func:`each` takes the cartesian product of
per-slot domains and :func:`derive` adds slots computed from others (display words, SQL
codes, date bounds).
"""

from __future__ import annotations

import calendar
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from itertools import product
from typing import NamedTuple

from tunesmith.demo import clinic

Slots = dict[str, object]


class Example(NamedTuple):
    """One generated question and its gold SQL."""

    question: str
    sql: str
    template: str
    phrasing: int  # index into the template's phrasings


@dataclass(frozen=True)
class Template:
    """A question family: phrasings and SQL share the slot names in ``{braces}``."""

    name: str
    phrasings: tuple[str, ...]
    sql: str
    slots: Callable[[sqlite3.Connection], list[Slots]]

    def render(self, slots: Slots, phrasing: int) -> Example:
        return Example(
            self.phrasings[phrasing].format(**slots), self.sql.format(**slots), self.name, phrasing
        )


def values(conn: sqlite3.Connection, sql: str) -> list:
    return [row[0] for row in conn.execute(sql)]


def each(**domains: Callable[[sqlite3.Connection], list] | list) -> Callable[..., list[Slots]]:
    """Slot enumerator: the cartesian product of per-slot value lists (lists or db queries)."""

    def enumerate_slots(conn: sqlite3.Connection) -> list[Slots]:
        lists = [d(conn) if callable(d) else list(d) for d in domains.values()]
        return [dict(zip(domains, combo, strict=True)) for combo in product(*lists)]

    return enumerate_slots


def derive(base: Callable[..., list[Slots]], **derived: Callable[[Slots], object]):
    """Add slots computed from others (display words, SQL codes, date bounds)."""

    def enumerate_slots(conn: sqlite3.Connection) -> list[Slots]:
        out = []
        for s in base(conn):
            s = dict(s)
            for key, fn in derived.items():
                s[key] = fn(s)
            out.append(s)
        return out

    return enumerate_slots


def cities(conn):
    return values(conn, "SELECT DISTINCT city FROM patients ORDER BY city")


def insurers(conn):
    # "self-pay" reads badly as "insured by self-pay"; questions use the real insurers.
    return values(
        conn,
        "SELECT DISTINCT insurance FROM patients WHERE insurance != 'self-pay' ORDER BY insurance",
    )


def specialties(conn):
    return values(conn, "SELECT DISTINCT specialty FROM doctors ORDER BY specialty")


def doctors(conn):
    return values(conn, "SELECT name FROM doctors ORDER BY id")


def reasons(conn):
    return values(conn, "SELECT DISTINCT reason FROM visits ORDER BY reason")


def drugs(conn):
    return values(conn, "SELECT DISTINCT drug FROM prescriptions ORDER BY drug")


def birth_years(conn):
    return values(conn, "SELECT DISTINCT strftime('%Y', birth_date) FROM patients ORDER BY 1")


def patient_names(conn) -> list[Slots]:
    # Only unambiguous full names, so "how much did X pay" has one patient behind it.
    rows = conn.execute(
        "SELECT first_name, last_name FROM patients GROUP BY first_name, last_name "
        "HAVING COUNT(*) = 1 ORDER BY last_name, first_name"
    )
    return [{"first": f, "last": la} for f, la in rows]


YEARS = [str(y) for y in clinic.VISIT_YEARS]
SEX = {"F": ("female", "women"), "M": ("male", "men")}
MONTHS = list(calendar.month_name)[1:]


def month_range(s: Slots) -> tuple[str, str]:
    y, m1, m2 = int(s["year"]), s["m1"], s["m2"]
    last = calendar.monthrange(y, m2)[1]
    return f"{y}-{m1:02d}-01", f"{y}-{m2:02d}-{last:02d}"


def month_pairs(conn) -> list[tuple[int, int]]:
    return [(a, b) for a in range(1, 13) for b in range(a + 1, 13)]
