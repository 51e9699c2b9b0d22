"""The clinic database: deterministic per seed, sized as documented, copies are isolated."""

from __future__ import annotations

from tunesmith.demo import clinic


def test_same_seed_same_database_different_seed_different():
    a, b, c = clinic.build_database(0), clinic.build_database(0), clinic.build_database(1)
    assert clinic.dump(a) == clinic.dump(b)
    assert clinic.dump(a) != clinic.dump(c)


def test_table_sizes_and_referential_integrity():
    conn = clinic.build_database(3)
    counts = {
        t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
        for t in ("patients", "doctors", "visits", "prescriptions")
    }
    assert counts == {"patients": 200, "doctors": 25, "visits": 1000, "prescriptions": 1500}
    orphans = conn.execute(
        "SELECT COUNT(*) FROM visits v LEFT JOIN patients p ON v.patient_id = p.id "
        "LEFT JOIN doctors d ON v.doctor_id = d.id WHERE p.id IS NULL OR d.id IS NULL"
    ).fetchone()[0]
    assert orphans == 0
    # Doctor names are unique (questions name them) and every specialty is staffed.
    assert conn.execute("SELECT COUNT(DISTINCT name) FROM doctors").fetchone()[0] == 25
    staffed = conn.execute("SELECT COUNT(DISTINCT specialty) FROM doctors").fetchone()[0]
    assert staffed == len(clinic.SPECIALTIES)


def test_fresh_copy_is_isolated_from_master_and_other_copies():
    first = clinic.fresh_copy(0)
    first.execute("DROP TABLE visits")
    second = clinic.fresh_copy(0)
    assert second.execute("SELECT COUNT(*) FROM visits").fetchone()[0] == 1000
    assert clinic.dump(clinic.master(0)) == clinic.dump(clinic.build_database(0))
