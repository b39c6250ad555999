#!/usr/bin/env python3
"""Kafka checks for infra/up.sh, using librdkafka (confluent-kafka), which is
the same client library the Rust crates use (rdkafka).

  kafka_probe.py metadata BROKERS   exit 0 when the broker answers a Metadata request
  kafka_probe.py smoke BROKERS      create a topic, produce, consume, resume a group
                                    (leaves its uniquely named topic behind)

`smoke` checks what matters for notiflow: every record comes back in order,
and a consumer group resuming from a committed offset in the middle of a
record batch gets exactly the rest (the bug tansu's memory:// engine has).
"""
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def metadata(brokers: str) -> int:
    admin = AdminClient({"bootstrap.servers": brokers, "socket.timeout.ms": 3000})
    md = admin.list_topics(timeout=5)
    print(f"metadata ok: cluster_id={md.cluster_id} brokers="
          f"{[f'{b.host}:{b.port}' for b in md.brokers.values()]} topics={len(md.topics)}")
    return 0


def consume(brokers, topic, group, want, timeout=30.0, commit_after=None):
    c = Consumer({
        "bootstrap.servers": brokers,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    c.subscribe([topic])
    got = []
    deadline = time.time() + timeout
    try:
        while len(got) < want and time.time() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                raise RuntimeError(f"consume error: {m.error()}")
            got.append((m.partition(), m.offset(), m.value().decode()))
            if commit_after is not None and len(got) == commit_after:
                c.commit(message=m, asynchronous=False)
                break
    finally:
        c.close()
    return got


def smoke(brokers: str, n: int = 100) -> int:
    topic = f"notiflow-smoke-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": brokers})
    t0 = time.time()
    for fut in admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)]).values():
        fut.result(timeout=10)
    md = admin.list_topics(topic=topic, timeout=5)
    assert topic in md.topics and not md.topics[topic].error, md.topics.get(topic)
    print(f"created topic {topic} ({len(md.topics[topic].partitions)} partition)")

    # linger so the records go out as a few large batches: the resume check
    # below then starts a fetch in the middle of a batch.
    p = Producer({"bootstrap.servers": brokers, "linger.ms": 50, "acks": "all"})
    errors = []
    for i in range(n):
        p.produce(topic, key=str(i).encode(), value=f"msg-{i}".encode(),
                  on_delivery=lambda err, _m: err and errors.append(err))
    left = p.flush(15)
    assert left == 0 and not errors, (left, errors)
    print(f"produced {n} messages")

    group = f"smoke-{uuid.uuid4().hex[:8]}"
    all_ = consume(brokers, topic, f"{group}-all", n)
    values = [v for _, _, v in all_]
    assert values == [f"msg-{i}" for i in range(n)], f"got {len(values)}: {values[:5]}..."
    print(f"consumed {len(all_)} messages in order (offsets {all_[0][1]}..{all_[-1][1]})")

    half = n // 2 + 7  # an odd place, inside a batch
    first = consume(brokers, topic, group, n, commit_after=half)
    rest = consume(brokers, topic, group, n - half)
    vals = [v for _, _, v in first + rest]
    assert vals == [f"msg-{i}" for i in range(n)], \
        f"resume lost/duplicated records: first={len(first)} rest={len(rest)} rest[0]={rest[:1]}"
    print(f"group resumed at offset {rest[0][1]} after committing {half}: "
          f"{len(rest)} more, none lost or duplicated")

    c = Consumer({"bootstrap.servers": brokers, "group.id": group})
    committed = c.committed([TopicPartition(topic, 0)], timeout=10)
    c.close()
    print(f"committed offset read back: {committed[0].offset}")
    # The topic is deliberately NOT deleted: tansu 0.6.0's SQLite engine
    # deletes every topic of the cluster on any DeleteTopics request
    # (topic_delete_by.sql filters on the cluster only). See infra/README.md.
    print(f"smoke ok in {time.time() - t0:.1f}s")
    return 0


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] not in ("metadata", "smoke"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        return {"metadata": metadata, "smoke": smoke}[sys.argv[1]](sys.argv[2])
    except Exception as e:
        print(f"kafka_probe {sys.argv[1]} failed: {e!r}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
