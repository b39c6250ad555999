"""Reads notiflow.message_events through PyIceberg's SQL catalog (the same
SQLite file the writer commits to) and prints JSON: rows and counts per
client x UTC day x status (or x UTC minute with --by-minute, as
"YYYY-MM-DDTHH:MM:00Z"). Used by the lake interoperability tests and the
differential test.

usage: pyiceberg_read.py [--by-minute] <catalog-sqlite-file> <warehouse-url> [s3-endpoint]
"""
import datetime
import json
import sys

import pyarrow.compute as pc
from pyiceberg.catalog.sql import SqlCatalog

args = sys.argv[1:]
by_minute = bool(args) and args[0] == "--by-minute"
if by_minute:
    args = args[1:]
db, warehouse = args[0], args[1]
props = {"uri": f"sqlite:///{db}", "warehouse": warehouse}
if len(args) > 2:
    props.update({
        "s3.endpoint": args[2],
        "s3.access-key-id": "notiflow",
        "s3.secret-access-key": "notiflow",
        "s3.region": "us-east-1",
    })
catalog = SqlCatalog("notiflow", **props)
table = catalog.load_table("notiflow.message_events")
rows = table.scan(selected_fields=("client_id", "event_time", "status")).to_arrow()
micros = pc.cast(pc.cast(rows["event_time"], "timestamp[us]"), "int64").to_pylist()
epoch = datetime.date(1970, 1, 1)
counts = {}
for client, t, status in zip(rows["client_id"].to_pylist(), micros, rows["status"].to_pylist()):
    day = (epoch + datetime.timedelta(days=t // 86_400_000_000)).isoformat()
    if by_minute:
        minute = (t % 86_400_000_000) // 60_000_000
        day = f"{day}T{minute // 60:02d}:{minute % 60:02d}:00Z"
    key = (client, day, status)
    counts[key] = counts.get(key, 0) + 1
print(json.dumps({
    "rows": rows.num_rows,
    "counts": sorted([c, d, s, n] for (c, d, s), n in counts.items()),
}))
