//! Producer clocks through the real loop, on a fresh partition: its first
//! record stamped a year ahead used to set the partition's dedup
//! generation a year ahead, so every later duplicate was counted again; an
//! event stamped and dated a year ahead passed the future rule; a producer
//! six minutes slow had its valid events dead-lettered. A record's clock is
//! now bounded by the reader's (plus an hour), and a producer's stamp gets
//! the producer clock slack (docs/events.md).

use std::time::Duration;

use notiflow_aggregator::metrics::Metrics;
use notiflow_aggregator::service;
use notiflow_ingest::SchemaRegistry;
use notiflow_ingest::codec::json;
use notiflow_ingest::kafka::{client_config, ensure_topic};
use notiflow_loadgen::bench::{PARTITIONS, kafka, stamp};
use notiflow_schema::{Category, Country, Event, Status};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use crate::beyond::eventually;
use crate::{agg_cfg, redis_cfg};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_clocks_neither_switch_dedup_off_nor_let_future_events_in() {
    let k = kafka(&format!("it.clocks.{}", stamp()));
    ensure_topic(&k, &k.topic, PARTITIONS).await.unwrap();
    let prefix = format!("it_clocks_{}", stamp());
    let rcfg = redis_cfg(&prefix);
    let mut acfg = agg_cfg();
    acfg.group_id = format!("it-clocks-{}", stamp());
    let target = service::target(&k, &rcfg, &acfg);
    let shutdown = CancellationToken::new();
    let mut conn = service::connect(&rcfg, &shutdown).await.unwrap();

    let now = notiflow_ingest::source::now_micros() / 1000;
    let (minute, hour, year) = (60_000, 3_600_000, 365 * 24 * 3_600_000);
    // (event, event time, stamp), all on partition 0, in this order.
    let records = [
        // The partition's first record: stamped a year ahead, valid.
        ("first", now - hour, now + year),
        // An event and its retry, stamped honestly.
        ("b", now - 10 * minute, now),
        ("b", now - 10 * minute, now + 1),
        // Stamped and dated a year ahead: a future event.
        ("future", now + year, now + year),
        // A producer six minutes slow: its event is six minutes ahead of
        // its stamp.
        ("slow", now, now - 6 * minute),
    ];
    let p: BaseProducer = client_config(&k).create().unwrap();
    for (id, t, ts) in records {
        let message_id = format!("wamid.clocks.{id}");
        let ev = Event {
            event_id: format!("ev.{id}").into(),
            message_id: message_id.as_str().into(),
            client_id: "clocks".into(),
            recipient: "+5511987654321".into(),
            status: Status::Sent,
            category: Category::Utility,
            billable: true,
            country: Country::parse("BR").unwrap(),
            template: None,
            event_time: t * 1000,
            error_code: None,
            pricing_type: None,
        };
        let mut value = Vec::new();
        json::encode(&ev, &mut value);
        let rec: BaseRecord<'_, str, [u8]> = BaseRecord::to(&k.topic)
            .partition(0)
            .key(message_id.as_str())
            .payload(value.as_slice())
            .timestamp(ts);
        p.send(rec).map_err(|(e, _)| e).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();

    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry).unwrap();
    let run = crate::spawn_aggregator(
        &k,
        SchemaRegistry::builtin(),
        &rcfg,
        &acfg,
        metrics,
        &shutdown,
    );
    let stats = target.keys.stats(&target.group, &target.topic);
    let offsets = target.keys.offsets(&target.group, &target.topic);
    eventually(60, "partition 0 applied to its end", async || {
        let stored: Option<i64> = conn.hget(&offsets, "0").await.unwrap();
        stored == Some(records.len() as i64)
    })
    .await;
    let got: std::collections::HashMap<String, u64> = conn.hgetall(&stats).await.unwrap();
    let of = |k: &str| got.get(k).copied().unwrap_or(0);
    // By hand: first, b and slow counted; b's retry a duplicate; the
    // future event rejected.
    assert_eq!(
        (of("counted"), of("duplicates"), of("rejected")),
        (3, 1, 1),
        "{got:?}"
    );
    shutdown.cancel();
    run.await.unwrap().unwrap();
    crate::delete_prefix(&mut conn, &prefix).await;
}
