//! The differential test: one log, both sinks, a worst realistic day in
//! simulated time. The generator's ground truth, Redis (the aggregator's
//! counters) and the lake (read back through PyIceberg) must agree exactly,
//! per client × minute × status and in total, after a schedule that has:
//!
//! - an aggregator outage and a lake writer outage of four simulated hours
//!   each while producers go on, with a compaction during the outage;
//! - a producer whose clock is 6 minutes slow (a replayed stretch 6 minutes
//!   behind the others, and records whose events are 6 minutes ahead of
//!   their stamps: valid), one record stamped a year ahead by its producer
//!   (a hostile CreateTime, its event valid) and one whose stamp and event
//!   are both a year ahead (a future event: rejected by both);
//! - a second aggregator and a second lake writer joining during catch-up
//!   and leaving again, and Redis killed -9 during catch-up with
//!   `appendfsync everysec` (its last second of writes lost);
//! - Redis restarted from its files of a moment before (acknowledged writes
//!   lost for real);
//! - a second outage of both, a compaction with snapshot expiry on a host a
//!   day ahead, then duplicates of events 23 hours old.
//!
//! And, on its own, a schema id the registry learns between the two
//! groups' reads: both count its records, once.
//!
//! Time is simulated in the records: the generator replays stretches of the
//! past day (`gen --start … --stamp`: each record stamped with its simulated
//! arrival, as its broker would have), and the test's own records carry
//! their timestamps; dedup generations, the future rule and lateness all
//! follow the records. The sinks run on the wall clock: under libfaketime
//! with a negative offset a librdkafka client spins (measured: a generator
//! at 100% system CPU, minutes for 8,000 records; likely its timed waits on
//! absolute CLOCK_REALTIME deadlines). The maintenance runs on a host whose
//! clock is hours ahead (libfaketime, no Kafka client), which also tests
//! that snapshot timestamps never go backwards. Redis keeps the real clock (it cannot run
//! under libfaketime); none of its dedup state depends on it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use notiflow_ingest::codec::json;
use notiflow_ingest::kafka::client_config;
use notiflow_loadgen::GroundTruth;
use notiflow_schema::counters::{sent_category_slot, slot_of, status_slot};
use notiflow_schema::time::{format_rfc3339, minute_of, parse_rfc3339};
use notiflow_schema::{Category, Country, Event, Status};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use crate::aggregator::{Setup, redis_url, start_redis};
use crate::assert_same_cells;
use crate::lake::{faketime, lake_action, pyiceberg_read, wait_committed};
use crate::procs::{Proc, free_port, signal, sigterm_and_wait};

const PARTITIONS: i32 = 8;
const HOUR_MS: i64 = 3_600_000;

/// A cell: (client, minute since the epoch, counter slot).
type Cells = HashMap<(String, i64, usize), u64>;

/// A record as the test reads or writes it.
#[derive(Clone)]
struct Raw {
    partition: i32,
    key: Vec<u8>,
    value: Vec<u8>,
    headers: Option<OwnedHeaders>,
    /// Timestamp (ms) to produce it with.
    ts: i64,
}

/// The test's processes and files around the aggregator's [`Setup`].
struct Day {
    s: Setup,
    redis_port: u16,
    lake_dir: tempfile::TempDir,
    truths: Vec<PathBuf>,
}

impl Day {
    fn new() -> Day {
        Day::on(crate::brokers())
    }

    /// A day on the broker at `brokers`.
    fn on(brokers: String) -> Day {
        let lake_dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let lake = format!(
            r#"
[lake]
group_id = "lake-{{prefix}}"
warehouse = "{warehouse}"
catalog_uri = "sqlite://{catalog}"
catalog_name = "notiflow"
commit_interval_ms = 1000
flush_rows = 4096
"#,
            warehouse = lake_dir.path().join("warehouse").display(),
            catalog = lake_dir.path().join("catalog.db").display(),
        );
        // A member gone without leaving (kill -9) holds up a rebalance for
        // the rebalance timeout (max.poll.interval.ms, 5 min by default):
        // tansu 0.6 does not always expire its session.
        let properties = r#""max.poll.interval.ms" = "15000""#;
        let s = Setup::with_sections_on(
            brokers,
            "diff",
            format!("redis://127.0.0.1:{port}"),
            "",
            properties,
            &lake,
        );
        Day {
            s,
            redis_port: port,
            lake_dir,
            truths: Vec::new(),
        }
    }

    /// Runs the generator with `seed`, its records stamped from
    /// `minutes_ago` on, to the end.
    fn generate(&mut self, seed: u64, events: u64, minutes_ago: i64) {
        let mut g = self.spawn_generator(seed, events, None, minutes_ago);
        assert!(g.wait().unwrap().success(), "generator {seed}");
    }

    fn spawn_generator(
        &mut self,
        seed: u64,
        events: u64,
        rate: Option<&str>,
        minutes_ago: i64,
    ) -> Proc {
        let truth = self.s.dir.path().join(format!("truth-{seed}.json"));
        let start = format_rfc3339((now_ms() - minutes_ago * 60_000) * 1000);
        let mut c = crate::gen_command(&self.s.config, &truth, events, rate, seed);
        c.args(["--start", &start, "--stamp"]);
        self.truths.push(truth);
        Proc(c.spawn().unwrap())
    }

    /// Starts `notiflow run lake`, its log in `<dir>/lake-<n>.log`.
    fn writer(&self, n: usize) -> Proc {
        self.writer_with(n, &[])
    }

    /// [`Day::writer`] with more environment.
    fn writer_with(&self, n: usize, env: &[(&str, &str)]) -> Proc {
        let log = std::fs::File::create(self.s.dir.path().join(format!("lake-{n}.log"))).unwrap();
        let mut c = self.s.command();
        c.args(["run", "lake"]).stdout(Stdio::null()).stderr(log);
        for (k, v) in env {
            c.env(k, v);
        }
        Proc(c.spawn().unwrap())
    }

    fn lake_log(&self, n: usize) -> String {
        std::fs::read_to_string(self.s.dir.path().join(format!("lake-{n}.log"))).unwrap_or_default()
    }

    /// `notiflow lake <action>`, on a clock `offset` ahead if given; its stdout.
    fn lake(&self, action: &str, offset: Option<&'static str>) -> String {
        match offset {
            Some(o) => lake_action(&self.s.config, action, &faketime(o)),
            None => lake_action(&self.s.config, action, &[]),
        }
    }

    /// Both sinks hold every partition up to its high watermark.
    fn wait_drained(&self, timeout: Duration) {
        self.s.wait_drained(timeout);
        wait_committed(&self.s.config, &self.s.kafka, timeout, || self.lake_log(1));
    }

    fn producer(&self) -> BaseProducer {
        client_config(&self.s.kafka).create().unwrap()
    }

    /// Produces `records` and checks the log grew by exactly that many on
    /// each partition.
    fn produce(&self, records: &[Raw]) {
        let before = self.s.highs();
        let p = self.producer();
        for r in records {
            let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.s.kafka.topic)
                .partition(r.partition)
                .key(r.key.as_slice())
                .payload(r.value.as_slice())
                .timestamp(r.ts);
            if let Some(h) = &r.headers {
                rec = rec.headers(h.clone());
            }
            loop {
                match p.send(rec) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        rec = r;
                        p.poll(Duration::from_millis(10));
                    }
                }
            }
        }
        p.flush(Duration::from_secs(60)).unwrap();
        let after = self.s.highs();
        let mut want = before.clone();
        for r in records {
            want[r.partition as usize] += 1;
        }
        assert_eq!(after, want, "records produced");
    }

    /// The first `n` records of every partition, as they are in the log
    /// (with their timestamps).
    fn first_records(&self, n: i64) -> Vec<Raw> {
        let c: BaseConsumer = client_config(&self.s.kafka)
            .set("group.id", "differential-reader")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(&self.s.kafka.topic, p, Offset::Offset(0))
                .unwrap();
        }
        c.assign(&tpl).unwrap();
        let mut got: BTreeMap<i32, Vec<Raw>> = BTreeMap::new();
        let give_up = Instant::now() + Duration::from_secs(60);
        while got.len() < PARTITIONS as usize || got.values().any(|v| (v.len() as i64) < n) {
            assert!(Instant::now() < give_up, "could not read the first records");
            let Some(m) = c.poll(Duration::from_millis(200)) else {
                continue;
            };
            let m = m.unwrap();
            if m.offset() >= n {
                continue;
            }
            got.entry(m.partition()).or_default().push(Raw {
                partition: m.partition(),
                key: m.key().unwrap_or_default().to_vec(),
                value: m.payload().unwrap_or_default().to_vec(),
                headers: m.headers().map(|h| h.detach()),
                ts: m.timestamp().to_millis().unwrap_or(0),
            });
        }
        got.into_values()
            .flat_map(|v| v.into_iter().take(n as usize))
            .collect()
    }

    /// The ground truth of every generator run, summed.
    fn truth(&self) -> (Cells, u64, u64, u64) {
        let mut cells = Cells::new();
        let (mut valid, mut dups, mut rejected) = (0, 0, 0);
        for path in &self.truths {
            let t = GroundTruth::read(path).unwrap();
            valid += t.valid_events;
            dups += t.duplicates;
            rejected += t.dlq_by_reason.values().sum::<u64>();
            for c in &t.minute_counts {
                let m = minute_of(parse_rfc3339(&c.minute).unwrap());
                *cells
                    .entry((c.client_id.clone(), m, status_slot(c.status)))
                    .or_default() += c.count;
            }
            for c in &t.sent_by_category {
                let m = minute_of(parse_rfc3339(&c.minute).unwrap());
                *cells
                    .entry((c.client_id.clone(), m, sent_category_slot(c.category)))
                    .or_default() += c.count;
            }
        }
        (cells, valid, dups, rejected)
    }

    /// The lake's rows per client × minute × status, read by PyIceberg.
    fn lake_cells(&self) -> (Cells, u64) {
        let v = pyiceberg_read(
            &self.lake_dir.path().join("catalog.db"),
            &self.lake_dir.path().join("warehouse").display().to_string(),
            None,
            true,
        );
        let mut cells = Cells::new();
        for r in v["counts"].as_array().unwrap() {
            let minute = minute_of(parse_rfc3339(r[1].as_str().unwrap()).unwrap());
            let slot = slot_of(r[2].as_str().unwrap()).unwrap();
            cells.insert(
                (r[0].as_str().unwrap().to_string(), minute, slot),
                r[3].as_u64().unwrap(),
            );
        }
        (cells, v["rows"].as_u64().unwrap())
    }
}

impl Drop for Day {
    /// On a failure, the processes' logs go to stderr before their folder goes.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut logs: Vec<_> = std::fs::read_dir(self.s.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for path in logs {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().filter(|l| !l.contains("CONFWARN")).collect();
            eprintln!("==== {} (last 80 lines)", path.display());
            for l in &lines[lines.len().saturating_sub(80)..] {
                eprintln!("{l}");
            }
        }
    }
}

/// Stops both sinks for an outage. SIGTERM, not kill -9: tansu 0.6 keeps a
/// member killed -9 in its group (measured: a restarted member got no
/// partition in 60 s, and one joining later was handed half of them next to
/// a ghost), which would test the broker, not notiflow; the kill tests of
/// each sink cover crashes at random moments.
/// `n` names their logs.
fn stop(agg: &mut Proc, lake: &mut Proc, day: &Day, n: usize) {
    assert!(sigterm_and_wait(agg).success(), "{}", day.s.log(n));
    assert!(sigterm_and_wait(lake).success(), "{}", day.lake_log(n));
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn redis_the_lake_and_the_truth_agree_after_a_worst_day() {
    let mut day = Day::new();
    let redis_dir = tempfile::tempdir().unwrap();
    let port = day.redis_port;
    let mut redis = start_redis(redis_dir.path(), port);

    // 26 h ago: both sinks keep up with the first traffic.
    let mut agg = day.s.aggregator(0, &[]);
    let mut lake = day.writer(0);
    day.generate(101, 20_000, 26 * 60);
    day.wait_drained(Duration::from_secs(180));
    let originals = day.first_records(40);

    // Both sinks stop; producers go on for four hours (one of them with a
    // clock 6 minutes slow), a compaction runs during the outage on a host
    // two hours ahead, and one producer stamps a record a year ahead.
    stop(&mut agg, &mut lake, &day, 0);
    day.generate(102, 8_000, 25 * 60);
    day.generate(103, 8_000, 24 * 60);
    let mut slow = day.spawn_generator(105, 4_000, None, 23 * 60 + 6);
    day.generate(104, 8_000, 23 * 60);
    assert!(slow.wait().unwrap().success());
    eprintln!(
        "compaction during the outage: {}",
        day.lake("compact", Some("+2h"))
    );
    let real = now_ms();
    let hostile_time = real - 22 * HOUR_MS - 30 * 60_000;
    let year_ahead = real + 365 * 24 * HOUR_MS;
    // One record stamped a year ahead by its producer (its event is valid);
    // one stamped and happening a year ahead (a future event: rejected);
    // and a producer whose clock is 6 minutes slow: its events are 6
    // minutes ahead of their stamps, valid on a producer's clock.
    let mut raws = vec![event_raw(
        "diff-hostile-create-time",
        "client-hostile",
        hostile_time,
        year_ahead,
        0,
    )];
    raws.push(event_raw(
        "diff-far-future",
        "client-hostile",
        year_ahead,
        year_ahead,
        1,
    ));
    let slow_time = real - 22 * HOUR_MS - 40 * 60_000;
    for i in 0..SLOW_EVENTS {
        raws.push(event_raw(
            &format!("diff-slow-{i}"),
            "client-slow",
            slow_time + i * 1000,
            slow_time + i * 1000 - 6 * 60_000,
            (i % i64::from(PARTITIONS)) as i32,
        ));
    }
    day.produce(&raws);

    // 22 h ago: both restart and catch up while traffic flows; a second
    // member of each joins and leaves, and Redis crashes mid-catch-up.
    let mut agg = day.s.aggregator(1, &[]);
    let mut lake = day.writer(1);
    let mut live = day.spawn_generator(106, 30_000, Some("3000/s"), 22 * 60);
    // The second members join once the first have their partitions.
    let give_up = Instant::now() + Duration::from_secs(60);
    while !(day.s.log(1).contains("partition assigned")
        && day.lake_log(1).contains("partition assigned"))
    {
        assert!(Instant::now() < give_up, "no assignment:\n{}", day.s.log(1));
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut agg2 = day.s.aggregator(2, &[]);
    let mut lake2 = day.writer(2);
    // They take partitions over (a rebalance mid-catch-up), then leave.
    let give_up = Instant::now() + Duration::from_secs(60);
    while !(day.s.log(2).contains("partition assigned")
        && day.lake_log(2).contains("partition assigned"))
    {
        assert!(
            Instant::now() < give_up,
            "the second members got nothing:\n{}",
            day.s.log(2)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // They leave cleanly, a scale-down (see `stop` for why not kill -9).
    assert!(sigterm_and_wait(&mut agg2).success(), "{}", day.s.log(2));
    assert!(
        sigterm_and_wait(&mut lake2).success(),
        "{}",
        day.lake_log(2)
    );
    // The member left has its partitions back (every partition moves, or
    // is already at its log end: on a slow run the live traffic can be
    // over by now) before Redis crashes.
    let before = day.s.stored_offsets();
    let give_up = Instant::now() + Duration::from_secs(60);
    while day
        .s
        .stored_offsets()
        .iter()
        .zip(&before)
        .zip(day.s.highs())
        .any(|((now, then), high)| now <= then && *now < high)
    {
        assert!(
            Instant::now() < give_up,
            "partitions without an owner after the member left: {before:?} → {:?}\n{}",
            day.s.stored_offsets(),
            day.s.log(1)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Redis crashes with traffic flowing: the live generator may be done by
    // now on a busy machine (how long the rebalances took is not ours to
    // guess), so a second one starts right before the kill and the
    // aggregator has records to apply into the outage (the loop below
    // waits for a failed apply).
    let mut during = day.spawn_generator(110, 9_000, Some("3000/s"), 22 * 60 - 1);
    signal(&redis, "-KILL");
    redis.wait().unwrap();
    let down = Instant::now();
    while !day.s.log(1).contains("redis apply failed") || down.elapsed() < Duration::from_secs(3) {
        assert!(
            down.elapsed() < Duration::from_secs(90),
            "no apply ran into the Redis outage:\n{}",
            day.s.log(1)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    redis = start_redis(redis_dir.path(), port);
    assert!(live.wait().unwrap().success());
    assert!(during.wait().unwrap().success());
    day.wait_drained(Duration::from_secs(240));

    // Redis loses its last second of acknowledged writes: it comes back
    // from its files as they were a moment before (a kill -9 alone loses
    // nothing: the page cache keeps the AOF). Its stored offsets are then
    // behind what the aggregator applied and published: it must apply
    // those records again, once (their deltas not twice).
    let mut flowing = day.spawn_generator(111, 6_000, Some("2000/s"), 21 * 60);
    let sum = |o: Vec<i64>| o.iter().sum::<i64>();
    let start = sum(day.s.stored_offsets());
    let give_up = Instant::now() + Duration::from_secs(60);
    while sum(day.s.stored_offsets()) <= start {
        assert!(
            Instant::now() < give_up,
            "nothing applied:\n{}",
            day.s.log(1)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let moment_before = tempfile::tempdir().unwrap();
    copy_dir(redis_dir.path(), moment_before.path());
    let at_copy = sum(day.s.stored_offsets());
    let give_up = Instant::now() + Duration::from_secs(60);
    while sum(day.s.stored_offsets()) < at_copy + 200 {
        assert!(Instant::now() < give_up, "nothing applied after the copy");
        std::thread::sleep(Duration::from_millis(20));
    }
    let acknowledged = sum(day.s.stored_offsets());
    signal(&redis, "-KILL");
    redis.wait().unwrap();
    std::fs::remove_dir_all(redis_dir.path()).unwrap();
    std::fs::create_dir_all(redis_dir.path()).unwrap();
    copy_dir(moment_before.path(), redis_dir.path());
    redis = start_redis(redis_dir.path(), port);
    let restored = sum(day.s.stored_offsets());
    assert!(
        restored < acknowledged,
        "Redis came back with every write ({restored} ≥ {acknowledged}): nothing was lost"
    );
    eprintln!(
        "Redis lost {} acknowledged offsets",
        acknowledged - restored
    );
    assert!(flowing.wait().unwrap().success());
    day.wait_drained(Duration::from_secs(240));

    // The day goes on: traffic 16, 10 and 5 hours ago moves every
    // partition's generation (one hour per record at most).
    day.generate(107, 3_000, 16 * 60);
    day.generate(108, 3_000, 10 * 60);
    day.generate(109, 3_000, 5 * 60);
    day.wait_drained(Duration::from_secs(180));

    // A second outage of both; webhook retries of the first traffic (23 h
    // old on the broker's clock) arrive meanwhile, and a compaction with
    // snapshot expiry runs on a host a day ahead: a restore anchored on the
    // snapshot's time instead of the partitions' own generations would
    // forget the first traffic's fingerprints.
    stop(&mut agg, &mut lake, &day, 1);
    let retry_ts = now_ms() - 3 * HOUR_MS;
    let retries: Vec<_> = originals
        .iter()
        .map(|r| Raw {
            ts: retry_ts,
            ..r.clone()
        })
        .collect();
    day.produce(&retries);
    eprintln!(
        "compaction after the outage: {}",
        day.lake("compact", Some("+25h"))
    );
    let mut agg = day.s.aggregator(3, &[]);
    let mut lake = day.writer(3);
    day.wait_drained(Duration::from_secs(180));
    assert!(sigterm_and_wait(&mut agg).success(), "{}", day.s.log(3));
    assert!(sigterm_and_wait(&mut lake).success(), "{}", day.lake_log(3));

    // The rule, by hand: every generator's distinct events once, plus the
    // hostile record's event in its own minute and each slow producer's
    // event in its own; the far-future event nowhere; retries add nothing.
    let (mut want, valid, dups, rejected) = day.truth();
    let hand: Vec<(&str, i64)> = std::iter::once(("client-hostile", hostile_time))
        .chain((0..SLOW_EVENTS).map(|i| ("client-slow", slow_time + i * 1000)))
        .collect();
    for (client, t) in &hand {
        for slot in [
            status_slot(Status::Sent),
            sent_category_slot(Category::Marketing),
        ] {
            *want
                .entry((client.to_string(), minute_of(t * 1000), slot))
                .or_default() += 1;
        }
    }
    let hand = hand.len() as u64;
    let redis_cells = day.s.minute_counters();
    let status_cells: Cells = redis_cells
        .iter()
        .filter(|((_, _, slot), _)| *slot < 5)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let (lake_cells, lake_rows) = day.lake_cells();
    assert_same_cells(&status_cells, &lake_cells, "Redis vs the lake (PyIceberg)");
    assert_same_cells(&want, &redis_cells, "truth vs Redis");
    let want_status: Cells = want
        .iter()
        .filter(|((_, _, slot), _)| *slot < 5)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_same_cells(&want_status, &lake_cells, "truth vs the lake (PyIceberg)");

    let stats = day.s.stats();
    assert_eq!(stats.get("counted"), Some(&(valid + hand)), "{stats:?}");
    assert_eq!(
        stats.get("duplicates").copied().unwrap_or(0) + stats.get("rejected").copied().unwrap_or(0),
        dups + rejected + 1 + retries.len() as u64,
        "each retry is a duplicate or a reject again: {stats:?}"
    );
    assert_eq!(lake_rows, valid + hand);
    let lake_stats: Value = serde_json::from_str(&day.lake("stats", None)).unwrap();
    assert_eq!(lake_stats["rows"].as_u64(), Some(valid + hand));
    assert_eq!(
        lake_stats["distinct_offsets"], lake_stats["rows"],
        "a record written twice"
    );
    let _ = redis.kill();
    let _ = redis.wait();
}

/// Events of the producer whose clock is 6 minutes slow.
const SLOW_EVENTS: i64 = 40;

/// A sent marketing event `event_id` of `client` at `event_time_ms`, on
/// `partition`, stamped `ts_ms` by its producer.
fn event_raw(event_id: &str, client: &str, event_time_ms: i64, ts_ms: i64, partition: i32) -> Raw {
    let message_id = format!("wamid.{event_id}");
    let ev = Event {
        event_id: event_id.into(),
        message_id: message_id.as_str().into(),
        client_id: client.into(),
        recipient: "+5511987654321".into(),
        status: Status::Sent,
        category: Category::Marketing,
        billable: true,
        country: Country::parse("BR").unwrap(),
        template: None,
        event_time: event_time_ms * 1000,
        error_code: None,
        pricing_type: None,
    };
    let mut value = Vec::new();
    json::encode(&ev, &mut value);
    Raw {
        partition,
        key: message_id.into_bytes(),
        value,
        headers: None,
        ts: ts_ms,
    }
}

/// Copies the files of `from` into `to` (`cp -a`): Redis' data directory
/// as it is at this moment.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(from.join("."))
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

/// `notiflow_<sink>_partition_held` of every partition, from a metrics page.
fn held(metrics: &str, sink: &str) -> Vec<u8> {
    (0..PARTITIONS)
        .map(|p| {
            let series = format!("notiflow_{sink}_partition_held{{partition=\"{p}\"}} ");
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
                .unwrap_or(0)
        })
        .collect()
}

/// A broker of the test's own (tansu, as `infra/up.sh` runs it, at
/// `TANSU_BIN`), whose log the test can wipe: deleting a topic of the
/// shared broker instead panics tansu 0.6's storage (measured: "more or
/// less than one row", then every request fails).
struct OwnBroker {
    dir: tempfile::TempDir,
    port: u16,
    proc: Option<Proc>,
}

impl OwnBroker {
    fn start() -> OwnBroker {
        let mut b = OwnBroker {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            proc: None,
        };
        b.run();
        b
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn run(&mut self) {
        let bin = std::env::var("TANSU_BIN").unwrap_or_else(|_| {
            format!(
                "{}/.cache/notiflow/tools/bin/tansu",
                std::env::var("HOME").unwrap()
            )
        });
        assert!(
            std::path::Path::new(&bin).exists(),
            "no tansu at {bin} (infra/up.sh --for tests installs it and sets TANSU_BIN)"
        );
        let url = format!("tcp://{}", self.addr());
        let log = std::fs::File::create(self.dir.path().join("tansu.log")).unwrap();
        let child = std::process::Command::new(bin)
            .current_dir(self.dir.path())
            .args(["broker", "--cluster-id", "notiflow-replaced"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.proc = Some(Proc(child));
        let probe: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.addr())
            .create()
            .unwrap();
        let give_up = Instant::now() + Duration::from_secs(60);
        while probe.fetch_metadata(None, Duration::from_secs(2)).is_err() {
            assert!(Instant::now() < give_up, "own tansu did not answer");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the broker, deletes its log, starts it again, empty.
    fn wipe(&mut self) {
        if let Some(mut p) = self.proc.take() {
            // (How tansu exits on SIGTERM is its own business.)
            let _ = sigterm_and_wait(&mut p.0);
        }
        for e in std::fs::read_dir(self.dir.path()).unwrap() {
            let path = e.unwrap().path();
            if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("tansu.db")
            {
                std::fs::remove_file(path).unwrap();
            }
        }
        self.run();
    }
}

/// The broker loses its log while both sinks are down (a broker restored
/// from nothing: what a second `infra/demo.sh` met when the broker's state
/// was gone but Redis kept its offsets), and the new log grows past the
/// offsets the sinks stored for the old one. Before,
/// each sink dropped the new log's records below its old offsets as copies
/// already taken and went on above them: counts lost in both. Now each
/// sees that the record before its stored offset is not the one it took
/// there, holds every partition (nothing taken, nothing dropped, an alarm
/// gauge), and goes on only after the operator's explicit accept-gap from
/// offset 0; then truth = Redis = lake, cell by cell.
#[test]
fn a_replaced_log_holds_both_sinks_until_an_operator_accepts_the_gap() {
    let mut broker = OwnBroker::start();
    let mut day = Day::on(broker.addr());
    let redis_dir = tempfile::tempdir().unwrap();
    let _redis = start_redis(redis_dir.path(), day.redis_port);
    let mut agg = day.s.aggregator(0, &[]);
    let mut lake = day.writer(0);
    day.generate(201, 4_000, 90);
    day.wait_drained(Duration::from_secs(180));
    stop(&mut agg, &mut lake, &day, 0);
    let old = day.s.stored_offsets();
    let old_lake = day.lake("offsets", None);

    broker.wipe();
    day.generate(202, 12_000, 60);
    let highs = day.s.highs();
    assert!(
        highs.iter().zip(&old).all(|(h, o)| h > o),
        "the new log is past the old offsets on every partition: {highs:?} vs {old:?}"
    );

    let (agg_listen, lake_listen) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut agg = day
        .s
        .aggregator(1, &[("NOTIFLOW__METRICS__LISTEN", agg_listen.as_str())]);
    let mut lake = day.writer_with(1, &[("NOTIFLOW__METRICS__LISTEN", lake_listen.as_str())]);
    let all_held = vec![1; PARTITIONS as usize];
    let give_up = Instant::now() + Duration::from_secs(120);
    loop {
        let a = held(
            &crate::http_get_or_empty(&agg_listen, "/metrics"),
            "aggregator",
        );
        let l = held(&crate::http_get_or_empty(&lake_listen, "/metrics"), "lake");
        if a == all_held && l == all_held {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "not every partition held: aggregator {a:?}, lake {l:?}\n{}",
            day.s.log(1)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // Held means nothing taken: once each sink has looked at every record
    // of the new log from the anchor's offset on (and dropped each as
    // stale), its stored offsets are still the old ones.
    let past_anchor: i64 = highs.iter().zip(&old).map(|(h, o)| h - (o - 1)).sum();
    let stale = |listen: &str, sink: &str| -> i64 {
        let series = format!("notiflow_{sink}_events_total{{outcome=\"stale\"}} ");
        crate::http_get_or_empty(listen, "/metrics")
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as i64
    };
    let give_up = Instant::now() + Duration::from_secs(120);
    while stale(&agg_listen, "aggregator") < past_anchor
        || stale(&lake_listen, "lake") < past_anchor
    {
        assert!(
            Instant::now() < give_up,
            "the held sinks did not read the new log through: {} / {} of {past_anchor}",
            stale(&agg_listen, "aggregator"),
            stale(&lake_listen, "lake")
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(day.s.stored_offsets(), old, "Redis took nothing");
    assert_eq!(day.lake("offsets", None), old_lake, "the lake took nothing");
    assert!(
        day.s.log(1).contains("partition held"),
        "the hold is logged:\n{}",
        day.s.log(1)
    );

    // The operator accepts the gap: the new log is new from offset 0.
    for p in 0..PARTITIONS {
        for sink in ["aggregator", "lake"] {
            let out = day
                .s
                .command()
                .args([
                    sink,
                    "accept-gap",
                    "--partition",
                    &p.to_string(),
                    "--offset",
                    "0",
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{sink} accept-gap: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // The aggregator goes on by itself; the lake writers are restarted
    // (docs/operations.md).
    assert!(sigterm_and_wait(&mut lake).success(), "{}", day.lake_log(1));
    let mut lake = day.writer(2);
    day.wait_drained(Duration::from_secs(180));
    stop(&mut agg, &mut lake, &day, 2);

    let (want, valid, _, _) = day.truth();
    let redis_cells = day.s.minute_counters();
    assert_same_cells(&want, &redis_cells, "truth vs Redis");
    let status_cells: Cells = redis_cells
        .into_iter()
        .filter(|((_, _, slot), _)| *slot < 5)
        .collect();
    let (lake_cells, lake_rows) = day.lake_cells();
    assert_same_cells(&status_cells, &lake_cells, "Redis vs the lake (PyIceberg)");
    assert_eq!(day.s.stats().get("counted"), Some(&valid));
    assert_eq!(lake_rows, valid);
}

/// A loopback schema registry: notiflow's schema as id 44 once `published`,
/// 404 for anything else.
fn late_registry(
    published: std::sync::Arc<std::sync::atomic::AtomicBool>,
    asked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(mut sock) = sock else { return };
            let (published, asked) = (published.clone(), asked.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let n = sock.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let path = req.split_whitespace().nth(1).unwrap_or("");
                if path == "/schemas/ids/44" {
                    asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                let known = path == "/schemas/ids/44"
                    && published.load(std::sync::atomic::Ordering::SeqCst);
                let (status, body) = if known {
                    (
                        "200 OK",
                        serde_json::json!({ "schema": notiflow_schema::AVRO_SCHEMA }).to_string(),
                    )
                } else {
                    ("404 Not Found", r#"{"error_code":40403}"#.to_string())
                };
                let _ = write!(
                    sock,
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    url
}

/// One group reads Avro records while the registry does not know their
/// schema id yet, the other after it learned it: both count them, once.
/// Before, the first group dead-lettered them at its first 404 and the
/// second decoded them, and Redis and the lake disagreed for good.
#[test]
fn both_sinks_count_what_the_registry_learns_late() {
    let published = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let url = late_registry(published.clone(), asked.clone());
    let lake_dir = tempfile::tempdir().unwrap();
    let sections = format!(
        r#"
[schema_registry]
url = "{url}"
unknown_id_grace_secs = 300

[lake]
group_id = "lake-{{prefix}}"
warehouse = "{warehouse}"
catalog_uri = "sqlite://{catalog}"
catalog_name = "notiflow"
commit_interval_ms = 1000
"#,
        warehouse = lake_dir.path().join("warehouse").display(),
        catalog = lake_dir.path().join("catalog.db").display(),
    );
    let s = Setup::with_sections_on(
        crate::brokers(),
        "schema-late",
        redis_url(),
        "",
        "",
        &sections,
    );
    notiflow_loadgen::bench::runtime()
        .block_on(notiflow_ingest::kafka::ensure_topics(&s.kafka))
        .unwrap();
    // Partition 0: 20 Avro events under id 44; the others: 10 JSON events each.
    let t = (now_ms() - 10 * 60_000) * 1000;
    let event = |i: usize| Event {
        event_id: format!("late-{i}").into(),
        message_id: format!("wamid.late-{i}").into(),
        client_id: "client-late".into(),
        recipient: "+5511987654321".into(),
        status: Status::Delivered,
        category: Category::Utility,
        billable: true,
        country: Country::parse("BR").unwrap(),
        template: None,
        event_time: t,
        error_code: None,
        pricing_type: None,
    };
    let p: BaseProducer = client_config(&s.kafka).create().unwrap();
    let send = |partition: i32, ev: &Event<'_>, avro: bool| {
        let mut value = Vec::new();
        if avro {
            notiflow_ingest::codec::avro::encode(ev, 44, &mut value);
        } else {
            json::encode(ev, &mut value);
        }
        let rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&s.kafka.topic)
            .partition(partition)
            .key(ev.message_id.as_bytes())
            .payload(value.as_slice());
        p.send(rec).map_err(|(e, _)| e).unwrap();
    };
    for i in 0..20 {
        send(0, &event(i), true);
    }
    let mut json_events = 0;
    for partition in 1..PARTITIONS {
        for i in 0..10 {
            send(partition, &event(1000 * partition as usize + i), false);
            json_events += 1;
        }
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let all = json_events + 20;

    // The aggregator reads them while the registry does not know id 44.
    let mut agg = s.aggregator(0, &[]);
    let counted = |s: &Setup| s.stats().get("counted").copied().unwrap_or(0);
    let give_up = Instant::now() + Duration::from_secs(90);
    while counted(&s) < json_events {
        assert!(Instant::now() < give_up, "JSON not counted:\n{}", s.log(0));
        std::thread::sleep(Duration::from_millis(200));
    }
    // Its first batch asks three times; each later ask is a recheck of the
    // held id: wait until two rechecks were answered 404 too.
    let asked_before = asked.load(std::sync::atomic::Ordering::SeqCst);
    let give_up = Instant::now() + Duration::from_secs(30);
    while asked.load(std::sync::atomic::Ordering::SeqCst) < asked_before.max(3) + 2 {
        assert!(Instant::now() < give_up, "the held id was not asked again");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        s.stats().get("rejected").copied().unwrap_or(0),
        0,
        "the aggregator dead-lettered what the registry did not know yet:\n{}",
        s.log(0)
    );
    assert_eq!(counted(&s), json_events, "partition 0 waits");

    // The registry learns it; the lake writer starts only now.
    published.store(true, std::sync::atomic::Ordering::SeqCst);
    let give_up = Instant::now() + Duration::from_secs(60);
    while counted(&s) < all {
        assert!(Instant::now() < give_up, "id 44 not counted:\n{}", s.log(0));
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = std::fs::File::create(s.dir.path().join("lake.log")).unwrap();
    let mut lake = Proc(
        s.command()
            .args(["run", "lake"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let lake_log = || std::fs::read_to_string(s.dir.path().join("lake.log")).unwrap_or_default();
    wait_committed(&s.config, &s.kafka, Duration::from_secs(120), lake_log);
    assert!(sigterm_and_wait(&mut lake).success(), "{}", lake_log());
    assert!(sigterm_and_wait(&mut agg).success(), "{}", s.log(0));

    // Both sinks hold every event once.
    assert_eq!(counted(&s), all);
    assert_eq!(s.stats().get("rejected").copied().unwrap_or(0), 0);
    let stats: Value = serde_json::from_str(&lake_action(&s.config, "stats", &[])).unwrap();
    assert_eq!(stats["rows"].as_u64(), Some(all), "{stats}");
}
