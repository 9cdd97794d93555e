"""Runs scripts/peers/duckdb.sql on $DATA's NDJSON files, writing Parquet into $OUT, and
prints the billable clicks over all minute rows (for scripts/bench-peers.sh to compare)."""
import os
import pathlib

import duckdb


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


sql = pathlib.Path(__file__).with_name("duckdb.sql").read_text()
for name in ("DATA", "OUT"):
    sql = sql.replace(f"getenv('{name}')", literal(os.environ[name]))
con = duckdb.connect()
con.execute(sql)
(billable,) = con.execute("SELECT sum(clicks) FROM minute_rows").fetchone()
print(f"billable {billable}")
