//! The aggregator as its own process against the real broker and a real
//! Redis: reconciliation with the generator's ground truth, kill -9 at
//! random moments, two members with one killed and one paused past its
//! session (a zombie), and a Redis crash with persistence on.
//!
//! Each test uses a fresh topic, consumer group and Redis key prefix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use notiflow_ingest::KafkaConfig;
use notiflow_loadgen::GroundTruth;
use notiflow_schema::counters::{Keys, parse_field, sent_category_slot, status_slot};
use notiflow_schema::time::{minute_of, parse_rfc3339};

use crate::procs::{Jitter, Proc, free_port, signal, sigterm_and_wait, wait_timeout};
use crate::{brokers, fresh_topic, http_get, notiflow};

const PARTITIONS: i32 = 8;

pub(crate) fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// One test's topic, group, key prefix, config file and logs.
pub(crate) struct Setup {
    pub(crate) kafka: KafkaConfig,
    pub(crate) prefix: String,
    group: String,
    redis_url: String,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) config: PathBuf,
}

impl Setup {
    pub(crate) fn new(tag: &str, redis_url: String) -> Setup {
        Setup::with_metrics(tag, redis_url, "")
    }

    /// Like `new`, serving `/metrics` on `metrics_listen` (empty: none).
    fn with_metrics(tag: &str, redis_url: String, metrics_listen: &str) -> Setup {
        Setup::with_sections(tag, redis_url, metrics_listen, "", "")
    }

    /// Like `with_metrics`, with more consumer properties (TOML lines of
    /// `[kafka.properties]`) and `extra` (more TOML sections, `{topic}` and
    /// `{prefix}` replaced) appended to the config file: the lake's, say.
    pub(crate) fn with_sections(
        tag: &str,
        redis_url: String,
        metrics_listen: &str,
        properties: &str,
        extra: &str,
    ) -> Setup {
        Setup::with_sections_on(brokers(), tag, redis_url, metrics_listen, properties, extra)
    }

    /// Like `with_sections`, on the broker at `brokers`.
    pub(crate) fn with_sections_on(
        brokers: String,
        tag: &str,
        redis_url: String,
        metrics_listen: &str,
        properties: &str,
        extra: &str,
    ) -> Setup {
        let topic = fresh_topic(tag);
        let dir = tempfile::tempdir().unwrap();
        let prefix = topic.replace('.', "_");
        let group = format!("agg-{prefix}");
        let config = dir.path().join("notiflow.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[kafka]
brokers = "{brokers}"
topic = "{topic}"
dlq_topic = "{topic}.dlq"
partitions = {PARTITIONS}

[kafka.properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
{properties}

[redis]
url = "{redis_url}"
key_prefix = "{prefix}"
timeout_ms = 1000

[aggregator]
group_id = "{group}"

[metrics]
listen = "{metrics_listen}"
{extra}
"#,
                brokers = brokers,
                extra = extra
                    .replace("{topic}", &topic)
                    .replace("{prefix}", &prefix),
            ),
        )
        .unwrap();
        Setup {
            kafka: KafkaConfig {
                brokers,
                topic: topic.clone(),
                dlq_topic: format!("{topic}.dlq"),
                partitions: PARTITIONS,
                properties: Default::default(),
            },
            prefix,
            group,
            redis_url,
            dir,
            config,
        }
    }

    pub(crate) fn truth_path(&self) -> PathBuf {
        self.dir.path().join("truth.json")
    }

    pub(crate) fn command(&self) -> Command {
        let mut c = notiflow();
        c.arg("--config").arg(&self.config);
        c
    }

    /// Starts `notiflow run aggregator`, its log in `<dir>/agg-<n>.log`.
    pub(crate) fn aggregator(&self, n: usize, env: &[(&str, &str)]) -> Proc {
        let log = std::fs::File::create(self.dir.path().join(format!("agg-{n}.log"))).unwrap();
        let mut c = self.command();
        c.args(["run", "aggregator"])
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            c.env(k, v);
        }
        Proc(c.spawn().unwrap())
    }

    /// Starts the generator: `events` records at `rate` (or as fast as the
    /// broker takes them), 1% malformed, with a ground-truth file.
    pub(crate) fn generator(&self, events: u64, rate: Option<&str>) -> Proc {
        crate::generator(&self.config, &self.truth_path(), events, rate)
    }

    /// The last lines of every aggregator's log, for a failure message.
    pub(crate) fn log_tails(&self) -> String {
        (0..8)
            .map(|n| self.log(n))
            .enumerate()
            .filter(|(_, l)| !l.is_empty())
            .map(|(n, l)| {
                let lines: Vec<&str> = l.lines().collect();
                let tail = lines[lines.len().saturating_sub(60)..].join("\n");
                format!("--- agg-{n}.log (last 60 lines) ---\n{tail}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub(crate) fn log(&self, n: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("agg-{n}.log"))).unwrap_or_default()
    }

    pub(crate) fn redis(&self) -> redis::Connection {
        redis::Client::open(self.redis_url.as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// High watermark of every partition.
    pub(crate) fn highs(&self) -> Vec<i64> {
        crate::highs(&self.kafka)
    }

    /// Waits until Redis holds, for every partition, the high watermark as
    /// next offset (everything applied).
    pub(crate) fn wait_drained(&self, timeout: Duration) {
        let highs = self.highs();
        let give_up = Instant::now() + timeout;
        loop {
            let stored = self.stored_offsets();
            if stored == highs {
                return;
            }
            assert!(
                Instant::now() < give_up,
                "not drained: stored {stored:?}, highs {highs:?}\n{}",
                self.log_tails()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The next offset stored in Redis per partition (0 when none yet).
    pub(crate) fn stored_offsets(&self) -> Vec<i64> {
        let key = Keys::new(&self.prefix).offsets(&self.group, &self.kafka.topic);
        let stored: Vec<Option<i64>> = redis::cmd("HMGET")
            .arg(&key)
            .arg((0..PARTITIONS).collect::<Vec<_>>())
            .query(&mut self.redis())
            .unwrap();
        stored.into_iter().map(|o| o.unwrap_or(0)).collect()
    }

    /// Every minute counter under the prefix: (client, minute, slot) → count.
    pub(crate) fn minute_counters(&self) -> HashMap<(String, i64, usize), u64> {
        let mut conn = self.redis();
        let pattern = format!("{}:m:*", self.prefix);
        let keys: Vec<String> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter(&mut conn)
            .unwrap()
            .collect();
        let mut out = HashMap::new();
        for key in keys {
            // <prefix>:m:{client}:YYYYMMDDHH
            let rest = key.strip_prefix(&format!("{}:m:{{", self.prefix)).unwrap();
            let (client, hour) = rest.split_once("}:").unwrap();
            let hour_start = parse_rfc3339(&format!(
                "{}-{}-{}T{}:00:00Z",
                &hour[0..4],
                &hour[4..6],
                &hour[6..8],
                &hour[8..10]
            ))
            .unwrap();
            let fields: HashMap<String, u64> =
                redis::cmd("HGETALL").arg(&key).query(&mut conn).unwrap();
            for (f, n) in fields {
                let (mm, slot) = parse_field(&f).unwrap();
                let prev = out.insert((client.to_string(), minute_of(hour_start) + mm, slot), n);
                assert!(prev.is_none());
            }
        }
        out
    }

    pub(crate) fn stats(&self) -> HashMap<String, u64> {
        let key = Keys::new(&self.prefix).stats(&self.group, &self.kafka.topic);
        redis::cmd("HGETALL")
            .arg(key)
            .query(&mut self.redis())
            .unwrap()
    }

    /// Redis equals the ground truth, cell for cell, and the exact totals agree.
    fn assert_matches_truth(&self) {
        let truth = GroundTruth::read(&self.truth_path()).unwrap();
        let mut want: HashMap<(String, i64, usize), u64> = HashMap::new();
        for c in &truth.minute_counts {
            let m = minute_of(parse_rfc3339(&c.minute).unwrap());
            want.insert((c.client_id.clone(), m, status_slot(c.status)), c.count);
        }
        for c in &truth.sent_by_category {
            let m = minute_of(parse_rfc3339(&c.minute).unwrap());
            want.insert(
                (c.client_id.clone(), m, sent_category_slot(c.category)),
                c.count,
            );
        }
        let got = self.minute_counters();
        crate::assert_same_cells(&want, &got, "Redis vs the ground truth");
        assert!(truth.valid_events > 0 && truth.duplicates > 0);
        let stats = self.stats();
        assert_eq!(stats.get("counted"), Some(&truth.valid_events));
        assert_eq!(stats.get("duplicates"), Some(&truth.duplicates));
        assert_eq!(
            stats.get("rejected"),
            Some(&truth.dlq_by_reason.values().sum::<u64>())
        );
    }
}

#[test]
fn counters_reconcile_with_the_ground_truth() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let s = Setup::with_metrics("agg-reconcile", redis_url(), &metrics);
    let mut agg = s.aggregator(0, &[]);
    let status = s.generator(150_000, None).wait().unwrap();
    assert!(status.success());
    s.wait_drained(Duration::from_secs(120));
    // The Prometheus endpoint agrees with the ground truth.
    let truth = GroundTruth::read(&s.truth_path()).unwrap();
    let page = http_get(&metrics, "/metrics");
    for series in [
        "notiflow_aggregator_records_total",
        "notiflow_aggregator_batch_apply_seconds_bucket",
        "notiflow_aggregator_event_to_redis_seconds_bucket",
        "notiflow_aggregator_consumer_lag{partition=",
        "notiflow_aggregator_late_dropped_total",
        "notiflow_aggregator_fenced_batches_total",
    ] {
        assert!(
            page.contains(series),
            "{series} missing from /metrics:\n{page}"
        );
    }
    let expect = [
        (
            "notiflow_aggregator_events_total{outcome=\"counted\"}",
            truth.valid_events,
        ),
        ("notiflow_aggregator_dedup_hits_total", truth.duplicates),
    ];
    for (series, want) in expect {
        let got = page
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<u64>().ok());
        assert_eq!(got, Some(want), "{series}");
    }
    // Re-fetched copies after a rebalance would count as records too.
    let records = page.lines().find_map(|l| {
        l.strip_prefix("notiflow_aggregator_records_total ")?
            .trim()
            .parse::<u64>()
            .ok()
    });
    assert!(records >= Some(truth.records), "{records:?}");
    let exit = sigterm_and_wait(&mut agg);
    assert!(exit.success(), "SIGTERM exit {exit:?}\n{}", s.log(0));
    s.assert_matches_truth();
    // The deltas stream carries what was applied.
    let deltas: u64 = redis::cmd("XLEN")
        .arg(Keys::new(&s.prefix).deltas())
        .query(&mut s.redis())
        .unwrap();
    assert!(deltas > 0);
}

#[test]
fn kill_9_at_random_moments_neither_loses_nor_doubles() {
    let s = Setup::new("agg-crash", redis_url());
    let mut generator = s.generator(240_000, Some("12000/s"));
    let mut jitter = Jitter::new();
    let mut kills = 0;
    // First life: the process aborts itself right after its 3rd apply.
    let mut agg = s.aggregator(0, &[("NOTIFLOW_FAILPOINT", "aggregator.after_apply:3")]);
    let status = wait_timeout(&mut agg, Duration::from_secs(60));
    assert!(!status.success(), "the failpoint should abort: {status:?}");
    assert!(s.log(0).contains("failpoint reached: aborting"));
    kills += 1;
    while kills < 6 || generator.try_wait().unwrap().is_none() {
        let mut agg = s.aggregator(kills, &[]);
        let life = jitter.millis(300, 2500);
        eprintln!("life {kills}: kill -9 after {life:?}");
        std::thread::sleep(life);
        signal(&agg, "-KILL");
        agg.wait().unwrap();
        kills += 1;
    }
    assert!(generator.wait().unwrap().success());
    // tansu 0.6 drops a dead member from the group only at a rebalance that
    // happens after its session timed out (6 s); joining sooner would hand
    // the last victim's share of partitions back to it, and nothing would
    // consume them.
    std::thread::sleep(Duration::from_secs(7));
    let mut last = s.aggregator(kills, &[]);
    s.wait_drained(Duration::from_secs(120));
    assert!(sigterm_and_wait(&mut last).success());
    eprintln!("{kills} kills");
    s.assert_matches_truth();
}

#[test]
fn a_killed_member_and_a_zombie_change_nothing() {
    let s = Setup::new("agg-group", redis_url());
    let mut generator = s.generator(300_000, Some("12000/s"));
    // b stops itself (SIGSTOP) with its 5th batch in hand, before applying it.
    let mut b = s.aggregator(
        1,
        &[("NOTIFLOW_FAILPOINT", "aggregator.stop_before_apply:5")],
    );
    let mut a = s.aggregator(0, &[]);
    let give_up = Instant::now() + Duration::from_secs(90);
    while !s.log(1).contains("failpoint reached: stopping") {
        assert!(
            Instant::now() < give_up,
            "b never reached its failpoint:\n{}",
            s.log(1)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // b holds a batch built on the offsets stored now: nobody else owns its
    // partitions yet. Then a dies mid-run.
    let snapshot = s.stored_offsets();
    std::thread::sleep(Duration::from_secs(1));
    signal(&a, "-KILL");
    a.wait().unwrap();
    // Past the session timeout (6 s) the partitions of a and b must move.
    // tansu 0.6 evicts silent members only when the group next rebalances,
    // so new members join to make that happen. Once every partition has
    // been applied past the snapshot, b's batch is stale.
    std::thread::sleep(Duration::from_secs(7));
    let mut a2 = s.aggregator(2, &[]);
    let mut c = s.aggregator(3, &[]);
    let give_up = Instant::now() + Duration::from_secs(90);
    loop {
        let now = s.stored_offsets();
        if now.iter().zip(&snapshot).all(|(n, was)| n > was) {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "partitions never moved on: {snapshot:?} → {now:?}\n{}\n{}",
            s.log(2),
            s.log(3)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    signal(&b, "-CONT");
    assert!(generator.wait().unwrap().success());
    s.wait_drained(Duration::from_secs(180));
    for (n, p) in [(2, &mut a2), (1, &mut b), (3, &mut c)] {
        assert!(sigterm_and_wait(p).success(), "{}", s.log(n));
    }
    // Its stale batch wrote nothing: fenced, or, when the others had
    // applied exactly its records (the generator was done before b built
    // its batch, so both reached the log end), found already applied.
    let zombie = s.log(1);
    assert!(
        zombie.contains("batch fenced") || zombie.contains("batch already applied"),
        "the zombie's batch was neither fenced nor found applied:\n{zombie}"
    );
    s.assert_matches_truth();
}

/// A private redis-server with an append-only file in `dir`.
pub(crate) fn start_redis(dir: &Path, port: u16) -> Proc {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("redis://127.0.0.1:{port}");
    let give_up = Instant::now() + Duration::from_secs(20);
    while redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        .is_err()
    {
        assert!(Instant::now() < give_up, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Proc(child)
}

#[test]
fn a_redis_crash_with_persistence_changes_nothing() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut redis_server = start_redis(data.path(), port);
    let s = Setup::new("agg-redis", format!("redis://127.0.0.1:{port}"));
    // The aggregator owns every partition before traffic starts: on a
    // loaded machine its group join took longer than the generator's run,
    // and the crash came after the traffic (the test decides by that
    // condition, not by how fast the machine is).
    let mut agg = s.aggregator(0, &[]);
    let give_up = Instant::now() + Duration::from_secs(60);
    while s.log(0).matches("partition assigned").count() < 8 {
        assert!(Instant::now() < give_up, "not assigned:\n{}", s.log(0));
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut generator = s.generator(200_000, Some("12000/s"));
    // Mid-run: the aggregator has applied batches and traffic still flows.
    let give_up = Instant::now() + Duration::from_secs(60);
    while s.stored_offsets().iter().sum::<i64>() < 2_000 {
        assert!(Instant::now() < give_up, "nothing applied:\n{}", s.log(0));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        generator.try_wait().unwrap().is_none(),
        "crash must be mid-run"
    );
    // A hard crash: the last second of writes may be lost with everysec.
    signal(&redis_server, "-KILL");
    redis_server.wait().unwrap();
    // The outage lasts until a batch apply has run into it (traffic still
    // flows, so one will), and at least three seconds: the aggregator must
    // pause and retry rather than drop the batch in hand.
    let down_since = Instant::now();
    let give_up = down_since + Duration::from_secs(90);
    while !s.log(0).contains("redis apply failed") || down_since.elapsed() < Duration::from_secs(3)
    {
        assert!(
            Instant::now() < give_up,
            "no apply ran into the outage:\n{}",
            s.log(0)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    redis_server = start_redis(data.path(), port);
    assert!(generator.wait().unwrap().success());
    s.wait_drained(Duration::from_secs(120));
    assert!(sigterm_and_wait(&mut agg).success(), "{}", s.log(0));
    s.assert_matches_truth();
    let _ = redis_server.kill();
    let _ = redis_server.wait();
}
