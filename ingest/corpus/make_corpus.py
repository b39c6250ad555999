#!/usr/bin/env python3
"""Writes malformed.jsonl: records that break a rule of SPEC §2, one per line.

Each line: {"name", "expect" (the DLQ reason code), "key" (str or null),
"content_type" (str or null), and "value_text" or "value_hex" (null = no value)}.
Run it again after changing a case; the JSONL is what tests and the generator read.
"""
import json

BASE = {
    "event_id": "corpus-ev", "message_id": "wamid.CORPUS", "client_id": "acme",
    "recipient": "+5511987654321", "status": "delivered", "category": "marketing",
    "billable": True, "country": "BR", "template": "promo",
    "event_time": "2026-11-01T12:00:00Z", "error_code": None,
}
KEY = BASE["message_id"]
cases = []


def case(name, expect, value=None, key=KEY, content_type=None, hex_value=None):
    row = {"name": name, "expect": expect, "key": key, "content_type": content_type}
    if hex_value is not None:
        row["value_hex"] = hex_value
    elif value is None:
        row["value_text"] = None
    else:
        row["value_text"] = value
    cases.append(row)


def js(**changes):
    d = dict(BASE)
    for k, v in changes.items():
        if v is ...:
            d.pop(k)
        else:
            d[k] = v
    return json.dumps(d, ensure_ascii=False)


def zz(n):
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def s(text):
    b = text.encode() if isinstance(text, str) else text
    return zz(len(b)) + b


def avro(schema_id=1, status=2, template_branch=1, tail=b"", event_id=b"corpus-ev"):
    body = (s(event_id) + s("wamid.CORPUS") + s("acme") + s("+5511987654321") + zz(status) + zz(0)
            + b"\x01" + s("BR"))
    body += zz(template_branch) + (s("promo") if template_branch == 1 else b"")
    body += zz(1_793_534_400_000_000) + zz(0)  # 2026-11-01T12:00:00Z, error_code null
    return (b"\x00" + schema_id.to_bytes(4, "big") + body + tail).hex()


case("empty value", "empty_value", "")
case("no value at all (tombstone)", "empty_value", None)
case("not JSON", "json_syntax", "hello, world")
case("truncated JSON", "json_syntax", js()[:-12])
case("trailing garbage after the object", "json_syntax", js() + " x")
case("JSON array instead of object", "json_type", "[1, 2, 3]")
case("JSON number instead of object", "json_type", "42")
case("invalid UTF-8 inside a string", "invalid_utf8", hex_value=js().encode().replace(b"acme", b"ac\xffme").hex())
case("missing event_id", "missing_field", js(event_id=...))
case("missing client_id", "missing_field", js(client_id=...))
case("null status", "missing_field", js(status=None))
case("missing event_time", "missing_field", js(event_time=...))
case("missing billable", "missing_field", js(billable=...))
case("status of the wrong type", "json_type", js(status=3))
case("billable as a string", "json_type", js(billable="true"))
case("error_code as a string", "json_type", js(status="failed", error_code="131026"))
case("duplicate field", "json_type", js()[:-1] + ', "client_id": "other"}')
case("status in upper case", "bad_enum", js(status="DELIVERED"))
case("unknown category", "bad_enum", js(category="promotional"))
case("timestamp in words", "bad_timestamp", js(event_time="yesterday"))
case("timestamp without offset", "bad_timestamp", js(event_time="2026-11-01T12:00:00"))
case("timestamp as epoch number", "json_type", js(event_time=1793534400))
case("impossible date", "bad_timestamp", js(event_time="2026-02-30T12:00:00Z"))
case("event_time far in the future", "future_timestamp", js(event_time="2099-01-01T00:00:00Z"))
case("event_id over 128 chars", "field_length", js(event_id="e" * 129))
case("empty message_id", "field_length", js(message_id=""), key=None)
case("client_id with a space", "bad_client_id", js(client_id="acme corp"))
case("client_id over 64 chars", "field_length", js(client_id="c" * 65))
case("recipient without plus", "bad_recipient", js(recipient="5511987654321"))
case("recipient too short", "bad_recipient", js(recipient="+1234567"))
case("country in lower case", "bad_country", js(country="br"))
case("country not assigned", "bad_country", js(country="XX"))
case("template over 512 chars", "field_length", js(template="t" * 513))
case("error_code without failed status", "error_code_without_failure", js(error_code=131026))
case("no record key", "key_missing", js(), key=None)
case("record key is not the message_id", "key_mismatch", js(), key="wamid.OTHER")
case("content-type neither JSON nor Avro", "unknown_format", js(), content_type="text/plain")
case("Avro truncated mid-record", "avro_truncated", hex_value=avro()[:-14])
case("Avro header only", "avro_truncated", hex_value="000000")
case("Avro unknown schema id", "unknown_schema_id", hex_value=avro(schema_id=999))
case("Avro union branch out of range", "avro_malformed", hex_value=avro(template_branch=5))
case("Avro enum index out of range", "avro_malformed", hex_value=avro(status=9))
case("Avro trailing bytes", "avro_malformed", hex_value=avro(tail=b"\x00\x00"))
case("Avro invalid UTF-8 in a string", "invalid_utf8", hex_value=avro(event_id=b"ev\xfe"))
case("Avro declared as JSON", "invalid_utf8", hex_value=avro(), content_type="application/json")

names = [c["name"] for c in cases]
assert len(set(names)) == len(names)
with open("malformed.jsonl", "w") as f:
    for c in cases:
        f.write(json.dumps(c, ensure_ascii=False) + "\n")
print(len(cases), "cases")
