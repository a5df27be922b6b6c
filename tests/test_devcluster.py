import psycopg

from tests.fixtures.cluster import Database


def test_private_cluster_runs_with_logical_wal_level(db: Database) -> None:
    with psycopg.connect(db.dsn) as conn:
        row = conn.execute("SHOW wal_level").fetchone()
    assert row == ("logical",)
