//! A key of another type on one client's hour, through the real loop: Redis
//! refuses every batch that writes it. Before, the aggregator stopped on
//! the first refusal, every partition with it, and stopped again on each
//! restart while the key was there. Now only the partitions whose records
//! write that key are held, with an alarm naming it; the others keep
//! counting; removing the key releases them, and nothing is lost.

use std::time::Duration;

use notiflow_aggregator::metrics::Metrics;
use notiflow_aggregator::service;
use notiflow_ingest::SchemaRegistry;
use notiflow_ingest::codec::json;
use notiflow_ingest::kafka::{client_config, ensure_topic};
use notiflow_loadgen::bench::{PARTITIONS, kafka, stamp};
use notiflow_schema::counters::{minute_field, status_slot};
use notiflow_schema::time::minute_of;
use notiflow_schema::{Category, Country, Event, Status};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use crate::beyond::eventually;
use crate::{agg_cfg, delete_prefix, redis_cfg};

/// `n` accepted events of `client` at `t`, all on `partition`, in JSON.
pub(crate) fn produce(
    k: &notiflow_ingest::KafkaConfig,
    client: &str,
    partition: i32,
    n: usize,
    t: i64,
) {
    produce_as(k, client, partition, n, t, None);
}

/// [`produce`], in Avro under `schema_id` when given.
pub(crate) fn produce_as(
    k: &notiflow_ingest::KafkaConfig,
    client: &str,
    partition: i32,
    n: usize,
    t: i64,
    schema_id: Option<u32>,
) {
    let p: BaseProducer = client_config(k).create().unwrap();
    for i in 0..n {
        let message_id = format!("wamid.{client}.{partition}.{i}.{}", stamp());
        let ev = Event {
            event_id: format!("ev.{message_id}").into(),
            message_id: message_id.as_str().into(),
            client_id: client.into(),
            recipient: "+5511987654321".into(),
            status: Status::Accepted,
            category: Category::Utility,
            billable: true,
            country: Country::parse("BR").unwrap(),
            template: None,
            event_time: t,
            error_code: None,
            pricing_type: None,
        };
        let mut value = Vec::new();
        match schema_id {
            None => json::encode(&ev, &mut value),
            Some(id) => notiflow_ingest::codec::avro::encode(&ev, id, &mut value),
        }
        let rec: BaseRecord<'_, str, [u8]> = BaseRecord::to(&k.topic)
            .partition(partition)
            .key(message_id.as_str())
            .payload(value.as_slice());
        p.send(rec).map_err(|(e, _)| e).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_key_holds_only_the_partitions_that_write_it() {
    let k = kafka(&format!("it.refused.{}", stamp()));
    ensure_topic(&k, &k.topic, PARTITIONS).await.unwrap();
    let prefix = format!("it_refused_{}", stamp());
    let rcfg = redis_cfg(&prefix);
    let mut acfg = agg_cfg();
    acfg.group_id = format!("it-refused-{}", stamp());
    let target = service::target(&k, &rcfg, &acfg);
    let shutdown = CancellationToken::new();
    let mut conn = service::connect(&rcfg, &shutdown).await.unwrap();

    // The victim's records are on partitions 0 and 1 only; a bystander's
    // on every partition; all in one minute ten minutes ago.
    let t = notiflow_ingest::source::now_micros() - 600_000_000;
    let m = minute_of(t);
    let foreign = target.keys.minutes("victim", m);
    let _: () = conn.set(&foreign, "not a hash").await.unwrap();
    for p in 0..2 {
        produce(&k, "victim", p, 20, t);
    }
    for p in 0..PARTITIONS {
        produce(&k, "bystander", p, 30, t);
    }

    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry).unwrap();
    let run = crate::spawn_aggregator(
        &k,
        SchemaRegistry::builtin(),
        &rcfg,
        &acfg,
        metrics.clone(),
        &shutdown,
    );
    let stats = target.keys.stats(&target.group, &target.topic);
    let offsets = target.keys.offsets(&target.group, &target.topic);
    let field = minute_field(m, status_slot(Status::Accepted));
    let bystander = target.keys.minutes("bystander", m);
    // Read from the registry (`with_label_values` would create the series).
    let alarm = |p: &str| -> i64 {
        let families = registry.gather();
        let Some(f) = families
            .iter()
            .find(|f| f.name() == "notiflow_aggregator_partition_refused")
        else {
            return 0;
        };
        f.get_metric()
            .iter()
            .find(|m| {
                let l = m.get_label();
                l.iter().any(|l| l.name() == "partition" && l.value() == p)
                    && l.iter().any(|l| l.name() == "key" && l.value() == foreign)
            })
            .map_or(0, |m| m.get_gauge().get_value() as i64)
    };
    let others = 30 * (PARTITIONS as u64 - 2);
    // What a failed wait prints (nextest shows it): the counts, the stored
    // offsets and the alarms as they were each time.
    let mut probe = conn.clone();
    let (stats2, offsets2) = (stats.clone(), offsets.clone());
    let mut status = async move || {
        let counted: Option<u64> = probe.hget(&stats2, "counted").await.unwrap();
        let stored: Vec<(String, String)> = probe.hgetall(&offsets2).await.unwrap();
        eprintln!(
            "counted {counted:?}, alarms 0:{} 1:{}, stored {stored:?}",
            alarm("0"),
            alarm("1")
        );
    };

    // The six partitions without the victim's records are counted; the
    // two with them are held, alarmed with the key, nothing of them taken.
    eventually(
        60,
        "the partitions without the victim counted",
        async || {
            status().await;
            let n: Option<u64> = conn.hget(&stats, "counted").await.unwrap();
            n == Some(others)
        },
    )
    .await;
    eventually(30, "both partitions alarmed", async || {
        status().await;
        alarm("0") == 1 && alarm("1") == 1
    })
    .await;
    assert!(!run.is_finished(), "the aggregator keeps running");
    for p in 0..2 {
        let stored: Option<i64> = conn.hget(&offsets, p.to_string()).await.unwrap();
        assert_eq!(stored, None, "nothing of partition {p} was taken");
    }
    let n: u64 = conn.hget(&bystander, &field).await.unwrap();
    assert_eq!(n, others, "the bystander's six partitions");

    // The others keep counting while the key is there.
    produce(&k, "bystander", 5, 10, t);
    eventually(30, "new records of a free partition counted", async || {
        status().await;
        let n: u64 = conn.hget(&stats, "counted").await.unwrap();
        n == others + 10
    })
    .await;
    assert_eq!(alarm("0"), 1, "still held");

    // The operator removes the foreign key: the held partitions apply
    // within the back-off, every record once.
    let _: () = conn.del(&foreign).await.unwrap();
    let all = others + 10 + 2 * (20 + 30);
    eventually(30, "the held partitions counted", async || {
        status().await;
        let n: u64 = conn.hget(&stats, "counted").await.unwrap();
        n == all
    })
    .await;
    let victim: u64 = conn.hget(&foreign, &field).await.unwrap();
    assert_eq!(victim, 40, "the victim's records, once");
    let n: u64 = conn.hget(&bystander, &field).await.unwrap();
    assert_eq!(n, 30 * PARTITIONS as u64 + 10, "the bystander's, once");
    eventually(10, "the alarms cleared", async || {
        alarm("0") == 0 && alarm("1") == 0
    })
    .await;
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        !text.contains("notiflow_aggregator_partition_refused{"),
        "no refused series left: {text}"
    );
    shutdown.cancel();
    run.await.unwrap().unwrap();
    delete_prefix(&mut conn, &prefix).await;
}
