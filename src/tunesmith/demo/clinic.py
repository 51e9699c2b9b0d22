"""The demo clinic database: patients, doctors, visits and prescriptions in sqlite.

Built deterministically from a seed (same seed, same rows, byte for byte) and small
(~200 patients, 25 doctors, ~1000 visits, ~1500 prescriptions) so that a fresh in-memory
copy costs well under a millisecond via ``sqlite3.Connection.backup``.
"""

from __future__ import annotations

import datetime as dt
import random
import sqlite3
import threading

SCHEMA_SQL = """
CREATE TABLE patients (
    id INTEGER PRIMARY KEY,
    first_name TEXT NOT NULL,
    last_name TEXT NOT NULL,
    birth_date TEXT NOT NULL,
    sex TEXT NOT NULL CHECK (sex IN ('F', 'M')),
    city TEXT NOT NULL,
    insurance TEXT NOT NULL
);
CREATE TABLE doctors (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    specialty TEXT NOT NULL,
    city TEXT NOT NULL,
    hired_on TEXT NOT NULL
);
CREATE TABLE visits (
    id INTEGER PRIMARY KEY,
    patient_id INTEGER NOT NULL REFERENCES patients (id),
    doctor_id INTEGER NOT NULL REFERENCES doctors (id),
    visit_date TEXT NOT NULL,
    reason TEXT NOT NULL,
    cost REAL NOT NULL
);
CREATE TABLE prescriptions (
    id INTEGER PRIMARY KEY,
    visit_id INTEGER NOT NULL REFERENCES visits (id),
    drug TEXT NOT NULL,
    dose_mg INTEGER NOT NULL,
    days INTEGER NOT NULL
);
"""

N_PATIENTS = 200
N_DOCTORS = 25
N_VISITS = 1000
N_PRESCRIPTIONS = 1500

FIRST_NAMES_F = (
    "Emma", "Olivia", "Ava", "Sophia", "Mia", "Amelia", "Harper", "Evelyn", "Abigail", "Emily",
    "Ella", "Grace", "Chloe", "Nora", "Lily", "Hannah", "Zoe", "Leah", "Aria", "Maya",
)  # fmt: skip
FIRST_NAMES_M = (
    "Liam", "Noah", "Oliver", "Elijah", "James", "William", "Benjamin", "Lucas", "Henry", "Mason",
    "Ethan", "Daniel", "Jacob", "Logan", "Jackson", "Samuel", "David", "Joseph", "Carter", "Owen",
)  # fmt: skip
LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson",
    "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Clark", "Lewis", "Robinson", "Walker",
    "Young", "Allen", "King", "Wright", "Scott", "Green", "Baker", "Adams", "Nelson", "Hill",
)  # fmt: skip
CITIES = (
    "Boston", "Denver", "Austin", "Seattle", "Chicago", "Portland", "Phoenix", "Atlanta",
)  # fmt: skip
INSURANCES = ("Medicare", "Medicaid", "Aetna", "Cigna", "BlueCross", "self-pay")
SPECIALTIES = (
    "cardiology", "dermatology", "pediatrics", "neurology", "orthopedics",
    "oncology", "psychiatry", "general practice",
)  # fmt: skip
REASONS = (
    "annual checkup", "flu symptoms", "back pain", "headache", "skin rash", "chest pain",
    "follow-up", "vaccination", "knee injury", "anxiety", "high blood pressure", "allergy",
)  # fmt: skip
# Plausible dose strengths per drug, so ``dose_mg`` filters behave like real data.
DRUG_DOSES: dict[str, tuple[int, ...]] = {
    "ibuprofen": (200, 400, 600, 800),
    "amoxicillin": (250, 500, 875),
    "lisinopril": (5, 10, 20, 40),
    "metformin": (500, 850, 1000),
    "atorvastatin": (10, 20, 40, 80),
    "omeprazole": (20, 40),
    "sertraline": (25, 50, 100),
    "amlodipine": (5, 10),
    "prednisone": (5, 10, 20),
    "cetirizine": (5, 10),
    "gabapentin": (100, 300, 600),
    "levothyroxine": (25, 50, 100),
}
COURSE_DAYS = (3, 5, 7, 10, 14, 30, 60, 90)
VISIT_YEARS = (2019, 2020, 2021, 2022, 2023, 2024)
# Typical fee per specialty in dollars; a visit costs this times a random factor.
_BASE_FEE = dict(zip(SPECIALTIES, (220, 140, 110, 240, 190, 300, 160, 90), strict=True))


def _day(rng: random.Random, start: dt.date, end: dt.date) -> str:
    return (start + dt.timedelta(days=rng.randrange((end - start).days + 1))).isoformat()


def _rows(seed: int) -> dict[str, list[tuple]]:
    """All table rows for ``seed``; one ``random.Random`` stream makes them reproducible."""
    rng = random.Random(seed)
    patients = []
    for pid in range(1, N_PATIENTS + 1):
        sex = rng.choice("FM")
        first = rng.choice(FIRST_NAMES_F if sex == "F" else FIRST_NAMES_M)
        birth = _day(rng, dt.date(1940, 1, 1), dt.date(2015, 12, 31))
        row = (pid, first, rng.choice(LAST_NAMES), birth, sex, rng.choice(CITIES))
        patients.append((*row, rng.choice(INSURANCES)))
    doctors, used = [], set()
    for did in range(1, N_DOCTORS + 1):
        name = None
        while name is None or name in used:  # doctor names are unique: questions cite them
            name = f"Dr. {rng.choice(FIRST_NAMES_F + FIRST_NAMES_M)} {rng.choice(LAST_NAMES)}"
        used.add(name)
        # Cycle through specialties first so each one has at least three doctors.
        specialty = SPECIALTIES[(did - 1) % len(SPECIALTIES)]
        hired = _day(rng, dt.date(1995, 1, 1), dt.date(2023, 12, 31))
        doctors.append((did, name, specialty, rng.choice(CITIES), hired))
    visits = []
    for vid in range(1, N_VISITS + 1):
        doctor = rng.choice(doctors)
        date = _day(rng, dt.date(VISIT_YEARS[0], 1, 1), dt.date(VISIT_YEARS[-1], 12, 31))
        cost = round(_BASE_FEE[doctor[2]] * rng.uniform(0.6, 1.8), 2)
        visits.append((vid, rng.randint(1, N_PATIENTS), doctor[0], date, rng.choice(REASONS), cost))
    prescriptions = []
    for rid in range(1, N_PRESCRIPTIONS + 1):
        drug = rng.choice(list(DRUG_DOSES))
        dose = rng.choice(DRUG_DOSES[drug])
        prescriptions.append((rid, rng.randint(1, N_VISITS), drug, dose, rng.choice(COURSE_DAYS)))
    return {
        "patients": patients,
        "doctors": doctors,
        "visits": visits,
        "prescriptions": prescriptions,
    }


def build_database(seed: int = 0) -> sqlite3.Connection:
    """Build a new in-memory clinic database for ``seed``.

    Args:
        seed: Seed of the row generator; equal seeds give identical databases.

    Returns:
        An open in-memory connection (writable; callers that run untrusted SQL should use
        :func:`fresh_copy` instead, which never touches the cached master).
    """
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    conn.executescript(SCHEMA_SQL)
    for table, rows in _rows(seed).items():
        marks = ", ".join("?" * len(rows[0]))
        conn.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
    conn.commit()
    return conn


_MASTERS: dict[int, sqlite3.Connection] = {}
_LOCK = threading.Lock()


def master(seed: int = 0) -> sqlite3.Connection:
    """The cached, build-once database for ``seed``. Treat it as read-only."""
    with _LOCK:
        if seed not in _MASTERS:
            _MASTERS[seed] = build_database(seed)
        return _MASTERS[seed]


def fresh_copy(seed: int = 0) -> sqlite3.Connection:
    """A new in-memory copy of the database for ``seed``; whatever runs on it stays there."""
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    src = master(seed)
    with _LOCK:
        src.backup(conn)
    return conn


def dump(conn: sqlite3.Connection) -> str:
    """The database as SQL text: a stable fingerprint for determinism checks."""
    return "\n".join(conn.iterdump())
