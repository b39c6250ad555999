//! The dedup state across an outage of hours: it must follow the
//! partition's log, never Redis' wall clock. Redis cannot be run under
//! libfaketime (its jemalloc recurses into clock_gettime at start-up), so
//! the test moves Redis' clock for the keys of its own prefix the way a
//! clock jump would: every key whose time to live is shorter than the jump
//! goes, the others live that much less.

use notiflow_aggregator::batch::{Owned, Pending, Retention, process};
use notiflow_aggregator::service;
use notiflow_aggregator::sink::{Applied, Scripts, Target};
use notiflow_ingest::dedup::generation;
use notiflow_ingest::source::SourceRecord;
use notiflow_ingest::{Decoder, RecordView, SchemaRegistry};
use notiflow_loadgen::bench::{kafka, stamp};
use notiflow_schema::Micros;
use notiflow_schema::time::{HOUR_MICROS, format_rfc3339, parse_rfc3339};
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use crate::{agg_cfg, delete_prefix, redis_cfg};

/// What `hours` more on Redis' clock do to the keys under `prefix`.
async fn advance_clock(conn: &mut redis::aio::ConnectionManager, prefix: &str, hours: i64) {
    let keys: Vec<String> = conn.keys(format!("{prefix}:*")).await.unwrap();
    let jump_ms = hours * 3_600_000;
    for k in keys {
        let ttl: i64 = redis::cmd("PTTL").arg(&k).query_async(conn).await.unwrap();
        if ttl < 0 {
            continue; // no expiry
        }
        if ttl <= jump_ms {
            let _: () = conn.del(&k).await.unwrap();
        } else {
            let _: () = conn.pexpire(&k, ttl - jump_ms).await.unwrap();
        }
    }
}

/// One record of partition 0: event `id` (`sent`, client `acme`), stamped
/// `ts` by the broker, its event time a second earlier.
struct Rec {
    offset: i64,
    key: Vec<u8>,
    value: Vec<u8>,
    ts: Micros,
}

fn rec(offset: i64, id: &str, ts: Micros) -> Rec {
    let value = format!(
        r#"{{"event_id":"{id}","message_id":"m-{id}","client_id":"acme","recipient":"+5511999990000","status":"sent","category":"marketing","billable":true,"country":"BR","template":null,"event_time":"{}","error_code":null}}"#,
        format_rfc3339(ts - 1_000_000)
    );
    Rec {
        offset,
        key: format!("m-{id}").into_bytes(),
        value: value.into_bytes(),
        ts,
    }
}

fn batch(recs: &[Rec], owned: &mut Owned) -> Pending {
    let decoder = Decoder::new(SchemaRegistry::builtin());
    let records = recs.iter().map(|r| SourceRecord {
        partition: 0,
        offset: r.offset,
        view: RecordView {
            key: Some(&r.key),
            value: Some(&r.value),
            content_type: None,
            timestamp: r.ts,
            clock: r.ts,
            producer_clock: false,
        },
    });
    process(records, owned, &decoder, Retention::new(24, 48, 400))
}

/// Applies a batch as the service does (the next CAS expects its offsets).
async fn apply(
    scripts: &Scripts,
    conn: &mut redis::aio::ConnectionManager,
    target: &Target,
    owned: &mut Owned,
    pending: &Pending,
) {
    let call = scripts.prepare(target, pending, 0);
    let applied = scripts.apply(conn, &call).await.unwrap();
    assert!(matches!(applied, Applied::Ok(_)), "{applied:?}");
    for (p, u) in &pending.offsets {
        owned.get_mut(p).unwrap().applied = Some(u.next);
    }
}

/// Redis keys the dedup strings of the oldest generations with a TTL of
/// `window + 2` hours after their last write, while the stored offsets
/// never expire. An aggregator down for 3 hours reloads its partition
/// after the oldest generations' keys expired, and counts a duplicate of
/// an event of 24 hours before a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_hours_keeps_the_whole_dedup_window() {
    let prefix = format!("it_outage_{}", stamp());
    let rcfg = redis_cfg(&prefix);
    let target = service::target(&kafka("it.outage"), &rcfg, &agg_cfg());
    let shutdown = CancellationToken::new();
    let mut conn = service::connect(&rcfg, &shutdown).await.unwrap();
    let scripts = Scripts::default();
    let t0 = parse_rfc3339("2026-11-20T10:15:00Z").unwrap();
    let g0 = generation(t0);

    // Day 1, 10:15: event `first`. Then an event every hour for a day,
    // applied as they come (Redis' clock moves with them).
    let mut owned: Owned = Owned::new();
    owned.insert(0, scripts.load(&mut conn, &target, 0).await.unwrap());
    let p = batch(&[rec(0, "first", t0)], &mut owned);
    apply(&scripts, &mut conn, &target, &mut owned, &p).await;
    for h in 1..=24u32 {
        advance_clock(&mut conn, &prefix, 1).await;
        let ts = t0 + i64::from(h) * HOUR_MICROS;
        let p = batch(&[rec(i64::from(h), &format!("hour-{h}"), ts)], &mut owned);
        apply(&scripts, &mut conn, &target, &mut owned, &p).await;
    }
    assert_eq!(owned[&0].dedup.newest(), g0 + 24);

    // The aggregator is down for three hours; then a new member loads the
    // partition and meets a duplicate of `first` that the producer had
    // written before the outage (broker hour g0 + 24: inside the window).
    advance_clock(&mut conn, &prefix, 3).await;
    let first_key = target.keys.dedup(&target.group, &target.topic, 0, g0);
    let ttl: i64 = conn.ttl(&first_key).await.unwrap();
    assert_eq!(
        ttl, -1,
        "{first_key}: no expiry on Redis' clock (TTL {ttl})"
    );
    let mut owned: Owned = Owned::new();
    owned.insert(0, scripts.load(&mut conn, &target, 0).await.unwrap());
    let dup = t0 + 24 * HOUR_MICROS + 30 * 60 * 1_000_000;
    let p = batch(&[rec(25, "first", dup), rec(26, "third", dup)], &mut owned);
    assert_eq!(
        (p.stats.counted, p.stats.duplicates),
        (1, 1),
        "the duplicate of `first` (generation {g0}, newest {}) was counted again",
        generation(dup)
    );
    apply(&scripts, &mut conn, &target, &mut owned, &p).await;

    // The window moves with the log: the next generation's batch deletes
    // generation g0's key in the same step, whatever Redis' clock says.
    let p = batch(&[rec(27, "fourth", t0 + 25 * HOUR_MICROS)], &mut owned);
    apply(&scripts, &mut conn, &target, &mut owned, &p).await;
    assert!(
        !conn.exists::<_, bool>(&first_key).await.unwrap(),
        "{first_key} left the window and stays"
    );
    let kept = target.keys.dedup(&target.group, &target.topic, 0, g0 + 1);
    assert!(conn.exists::<_, bool>(&kept).await.unwrap(), "{kept}");
    let stats = target.keys.stats(&target.group, &target.topic);
    let counted: u64 = conn.hget(&stats, "counted").await.unwrap();
    assert_eq!(
        counted,
        1 + 24 + 2,
        "first, the hourly ones, third, fourth: once each"
    );
    delete_prefix(&mut conn, &prefix).await;
}
