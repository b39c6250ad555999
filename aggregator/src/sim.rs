//! A seeded simulation of the aggregator's exactly-once protocol, run as a
//! unit test: thousands of schedules in seconds, each replayable by its seed
//! (`NOTIFLOW_SIM_SEED=<seed> cargo test -p notiflow-aggregator sim`).
//!
//! The broker log and Redis are in memory; everything else is the product's
//! own code: [`process`] (cursor, decode, dedup, cells), the dedup state
//! ([`notiflow_ingest::dedup`]), the reply parsers of `APPLY` and `LOAD`,
//! and the list of expired generations. The in-memory Redis does what the
//! two Lua scripts do (compare the stored offsets, then write offsets,
//! generations, fingerprints, counters; delete the generations that left
//! the window), so a change to either script must be mirrored here: a
//! second test runs schedules with every call also sent to the real scripts
//! on a real Redis and fails on any difference in replies, stored offsets,
//! generations, fingerprints or roll-ups.
//!
//! Faults, at random per step: batches of random size per partition, stale
//! copies after a seek, fetches that raced a seek (a gap) and seeks that
//! fail, applies whose reply is lost (before or after Redis ran them),
//! rebalances, zombies that keep a revoked partition until a fence tells
//! them, member crashes (the batch in flight applied or not), and Redis
//! losing its writes since a snapshot (AOF `everysec` plus a crash). Every
//! schedule ends with one member catching up with the whole log; then the
//! counters must equal the truth cell by cell: every distinct event once.

use std::collections::{BTreeMap, HashMap};

use notiflow_ingest::sink::{Decoder, RecordView, SchemaRegistry, SourceRecord};
use notiflow_schema::counters::{Counts, DeltaCell, SLOTS, slot_name};
use notiflow_schema::time::{HOUR_MICROS, format_rfc3339, minute_of, parse_rfc3339};

use crate::batch::{Owned, Pending, Retention, process};
use crate::sink::{Applied, parse_apply, parse_load};

/// Dedup window of the simulation, hours: short, so that generations leave
/// it (and their keys are deleted) within one schedule.
const WINDOW: u32 = 2;

/// Whether fault `name` is switched off (`NOTIFLOW_SIM_OFF=gap,crash,…`,
/// to find which fault a failing seed needs).
fn off(name: &str) -> bool {
    std::env::var("NOTIFLOW_SIM_OFF").is_ok_and(|v| v.split(',').any(|f| f == name))
}

/// Prints the schedule's steps (`NOTIFLOW_SIM_TRACE=1`, with one seed).
macro_rules! trace {
    ($($t:tt)*) => {
        if std::env::var("NOTIFLOW_SIM_TRACE").is_ok() {
            eprintln!($($t)*);
        }
    };
}

/// splitmix64: small, seedable, good enough to pick faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// One record of the log.
struct Rec {
    key: Vec<u8>,
    value: Vec<u8>,
    ts: i64,
}

/// The log, per partition, and the counts it must produce.
struct Log {
    parts: Vec<Vec<Rec>>,
    truth: HashMap<(String, i64, &'static str), u64>,
}

/// A log of `n` records over `partitions`: statuses of a few clients, a
/// broker timestamp 1–72 s after the previous record's, and one record in
/// ten a repeat of an event of the same partition first sent within the
/// last hour (a producer retry: same key, same event; always inside the
/// window, which counts from the original's generation).
fn make_log(rng: &mut Rng, partitions: usize, n: usize) -> Log {
    let mut parts: Vec<Vec<Rec>> = (0..partitions).map(|_| Vec::new()).collect();
    let mut events: Vec<Vec<(i64, String, String)>> = vec![Vec::new(); partitions];
    let mut truth = HashMap::new();
    let mut ts = parse_rfc3339("2026-11-20T21:30:00Z").unwrap_or(0);
    for i in 0..n {
        ts += (1 + rng.below(72) as i64) * 1_000_000;
        let p = rng.below(partitions);
        let recent: Vec<&(i64, String, String)> = events[p]
            .iter()
            .rev()
            .take_while(|e| e.0 > ts - HOUR_MICROS)
            .collect();
        let (key, value) = if !recent.is_empty() && rng.chance(0.1) {
            let (_, k, v) = recent[rng.below(recent.len())];
            (k.clone(), v.clone())
        } else {
            let client = format!("c{}", rng.below(3));
            let status = ["sent", "delivered", "read"][rng.below(3)];
            let event_time = ts - rng.below(60) as i64 * 1_000_000;
            let value = format!(
                r#"{{"event_id":"e{i}","message_id":"m{i}","client_id":"{client}","recipient":"+5511999990000","status":"{status}","category":"marketing","billable":true,"country":"BR","template":null,"event_time":"{}","error_code":null}}"#,
                format_rfc3339(event_time)
            );
            // The rule, by hand: a status counts in its slot; a `sent` also
            // in its category's.
            let minute = minute_of(event_time);
            trace!("  event e{i}: {client} {minute} {status}");
            *truth.entry((client.clone(), minute, status)).or_default() += 1;
            if status == "sent" {
                *truth
                    .entry((client.clone(), minute, "sent.marketing"))
                    .or_default() += 1;
            }
            events[p].push((ts, format!("m{i}"), value.clone()));
            (format!("m{i}"), value)
        };
        trace!(
            "log p{p}@{} gen {} {key} {}",
            parts[p].len(),
            ts / HOUR_MICROS,
            &value[..60.min(value.len())]
        );
        parts[p].push(Rec {
            key: key.into_bytes(),
            value: value.into_bytes(),
            ts,
        });
    }
    Log { parts, truth }
}

/// What the two Lua scripts keep, in memory.
#[derive(Clone, Default)]
struct Redis {
    /// Partition → (next offset, newest generation).
    offsets: BTreeMap<i32, (i64, u32)>,
    dedup: BTreeMap<(i32, u32), Vec<u8>>,
    cells: HashMap<(String, i64), Counts>,
}

impl Redis {
    /// `APPLY`: fence on the stored offsets, then write everything.
    fn apply(&mut self, p: &Pending) -> Vec<String> {
        let mut fenced = vec!["fenced".to_string()];
        for (part, u) in &p.offsets {
            let cur = self
                .offsets
                .get(part)
                .map(|(o, _)| o.to_string())
                .unwrap_or_default();
            if cur != u.expected.map(|o| o.to_string()).unwrap_or_default() {
                fenced.push(part.to_string());
                fenced.push(cur);
            }
        }
        if fenced.len() > 1 {
            return fenced;
        }
        for (part, u) in &p.offsets {
            self.offsets.insert(*part, (u.next, u.generation));
        }
        for (k, data) in &p.dedup {
            self.dedup.entry(*k).or_default().extend_from_slice(data);
        }
        for (part, u) in &p.offsets {
            for g in u.expired(WINDOW) {
                self.dedup.remove(&(*part, g));
            }
        }
        for (&(ix, m), counts) in p.minutes.iter().chain(&p.rollup_only) {
            let cell = self
                .cells
                .entry((p.clients[ix as usize].clone(), m))
                .or_insert([0; SLOTS]);
            for (c, n) in cell.iter_mut().zip(counts) {
                *c += n;
            }
        }
        vec!["ok".into(), String::new()]
    }

    /// `LOAD`: the stored offset, generation and the window's fingerprints.
    fn load(&self, part: i32) -> Vec<Vec<u8>> {
        let Some(&(off, g)) = self.offsets.get(&part) else {
            return vec![vec![], vec![], vec![]];
        };
        // (The model keeps no anchors: its log is never replaced.)
        let mut out = vec![
            off.to_string().into_bytes(),
            g.to_string().into_bytes(),
            Vec::new(),
        ];
        for i in g.saturating_sub(WINDOW)..=g {
            if let Some(v) = self.dedup.get(&(part, i)) {
                out.push(i.to_string().into_bytes());
                out.push(v.clone());
            }
        }
        out
    }
}

/// A batch in flight, applied now or when it is settled.
struct Inflight {
    pending: Pending,
    outcome: Option<Applied>,
}

/// A consumer-group member, as the service loop keeps it.
#[derive(Default)]
struct Member {
    owned: Owned,
    fetch: HashMap<i32, i64>,
    /// Partitions sought since their last fetch: a seek that succeeded
    /// purges what was fetched before it, so their next fetch starts there.
    sought: std::collections::HashSet<i32>,
    /// Seeks that failed: `Source` tries them again before each batch.
    failed_seeks: HashMap<i32, i64>,
    inflight: Option<Inflight>,
}

struct Sim<'a> {
    rng: Rng,
    log: &'a Log,
    visible: Vec<usize>,
    redis: Redis,
    snapshot: Redis,
    members: Vec<Member>,
    /// The group's view: partition → member.
    assignment: Vec<usize>,
    decoder: Decoder,
    faults: bool,
    /// What dashboards summed from the deltas stream (entries Redis lost
    /// later included: they were seen live).
    dashboard: HashMap<(String, i64, &'static str), u64>,
    /// The real scripts on a real Redis, run beside the model.
    twin: Option<Twin>,
}

/// The real `APPLY` and `LOAD` on a real Redis (`REDIS_URL`), fed every
/// call the model gets: the model's replies and state must be theirs, so
/// a change to a script that the model does not mirror fails
/// [`the_model_does_what_the_lua_scripts_do`].
struct Twin {
    conn: redis::Connection,
    scripts: crate::sink::Scripts,
    target: crate::sink::Target,
    /// Differences seen, first ones kept.
    diffs: Vec<String>,
}

impl Twin {
    fn open(prefix: &str) -> Twin {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let client = redis::Client::open(url.as_str()).unwrap_or_else(|e| panic!("{url}: {e}"));
        let conn = client
            .get_connection()
            .unwrap_or_else(|e| panic!("a real Redis at {url} (infra/up.sh --for tests): {e}"));
        // Nothing of the schedule may expire while it is compared.
        let century = 100 * 365 * 86_400;
        Twin {
            conn,
            scripts: crate::sink::Scripts::default(),
            target: crate::sink::Target {
                keys: notiflow_schema::counters::Keys::new(prefix),
                group: "sim".into(),
                topic: "t".into(),
                minute_retention_secs: century,
                rollup_retention_secs: century,
                dedup_window: WINDOW,
                delta_stream_len: 100,
            },
            diffs: Vec::new(),
        }
    }

    fn differs(&mut self, what: String) {
        if self.diffs.len() < 5 {
            self.diffs.push(what);
        }
    }

    /// The real APPLY of `pending`, compared with the model's `reply`.
    fn apply(&mut self, pending: &Pending, reply: &[String]) {
        let call = self.scripts.prepare(&self.target, pending, 0);
        let real = self
            .scripts
            .apply_raw_blocking(&mut self.conn, &call)
            .unwrap_or_else(|e| panic!("APPLY: {e}"));
        // The model has no stream: an `ok` names no entry id.
        let same = match (reply.first(), real.first()) {
            (Some(a), Some(b)) if a == "ok" && b == "ok" => true,
            _ => real == reply,
        };
        if !same {
            self.differs(format!("APPLY: model {reply:?}, Lua {real:?}"));
        }
    }

    /// The real LOAD of `part`, compared with the model's `reply`: the
    /// offset, the generation and each generation's fingerprints.
    fn load(&mut self, part: i32, reply: &[Vec<u8>]) {
        let real = self
            .scripts
            .load_raw_blocking(&mut self.conn, &self.target, part)
            .unwrap_or_else(|e| panic!("LOAD: {e}"));
        let sections = |r: &[Vec<u8>]| -> BTreeMap<Vec<u8>, Vec<u64>> {
            r.get(3..)
                .unwrap_or_default()
                .chunks(2)
                .map(|c| {
                    let mut fps: Vec<u64> = c[1]
                        .chunks_exact(8)
                        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
                        .collect();
                    fps.sort_unstable();
                    (c[0].clone(), fps)
                })
                .filter(|(_, fps)| !fps.is_empty())
                .collect()
        };
        let gens = |s: &BTreeMap<Vec<u8>, Vec<u64>>| -> Vec<String> {
            s.keys()
                .map(|g| String::from_utf8_lossy(g).into_owned())
                .collect()
        };
        // (The model keeps no anchors: reply[2] is not compared.)
        if real.get(..2) != reply.get(..2) || sections(&real) != sections(reply) {
            let text = |r: &[Vec<u8>]| {
                r.iter()
                    .take(2)
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .collect::<Vec<_>>()
            };
            self.differs(format!(
                "LOAD p{part}: model {:?} {:?}, Lua {:?} {:?}",
                text(reply),
                gens(&sections(reply)),
                text(&real),
                gens(&sections(&real))
            ));
        }
    }

    /// The hourly roll-ups Redis holds for `client` in UTC hour `h` (the
    /// sum of every cell the scripts counted, minute buckets kept or not).
    fn hour(&mut self, client: &str, h: i64) -> Vec<u64> {
        let key = self.target.keys.hours(client, h * 60);
        (0..SLOTS)
            .map(|slot| {
                let field = notiflow_schema::counters::hour_field(h * 60, slot);
                redis::cmd("HGET")
                    .arg(&key)
                    .arg(field)
                    .query::<Option<u64>>(&mut self.conn)
                    .unwrap_or_else(|e| panic!("HGET: {e}"))
                    .unwrap_or(0)
            })
            .collect()
    }

    /// Deletes every key of the schedule.
    fn clear(&mut self) {
        let pattern = format!("{}:*", self.target.keys.prefix());
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query(&mut self.conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&keys).query(&mut self.conn);
        }
    }
}

impl Sim<'_> {
    /// Runs APPLY, losing replies at random (the service retries the same
    /// call; a reply lost after the write reads as "already applied").
    fn run_apply(&mut self, pending: &Pending) -> Applied {
        let next: BTreeMap<i32, i64> = pending.offsets.iter().map(|(p, u)| (*p, u.next)).collect();
        for attempt in 0.. {
            let faulty = self.faults && attempt < 3;
            if faulty && self.rng.chance(0.05) && !off("lost") {
                continue; // lost before Redis ran it
            }
            let reply = self.redis_apply(pending);
            if faulty && self.rng.chance(0.1) && !off("lost") {
                continue; // ran, reply lost
            }
            return parse_apply(&reply, &next).unwrap_or_else(|e| panic!("{e}"));
        }
        unreachable!()
    }

    /// APPLY, and what a dashboard sees of it when it ran.
    fn redis_apply(&mut self, pending: &Pending) -> Vec<String> {
        let reply = self.redis.apply(pending);
        if let Some(t) = &mut self.twin {
            t.apply(pending, &reply);
        }
        trace!(
            "  APPLY {:?} counted {} -> {:?}",
            pending
                .offsets
                .iter()
                .map(|(p, u)| (p, u.expected, u.next))
                .collect::<Vec<_>>(),
            pending.stats.counted,
            reply
        );
        if reply[0] == "ok" {
            for DeltaCell(client, minute, counts) in pending.delta_cells() {
                for (slot, n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
                    *self
                        .dashboard
                        .entry((client.clone(), minute, slot_name(slot)))
                        .or_default() += n;
                }
            }
        }
        reply
    }

    /// Loads `p` from Redis into member `m` and seeks there.
    fn reload(&mut self, m: usize, p: i32) {
        let reply = self.redis.load(p);
        if let Some(t) = &mut self.twin {
            t.load(p, &reply);
        }
        let st = parse_load(&reply, WINDOW)
            .unwrap_or_else(|e| panic!("{e}"))
            .reloaded(self.members[m].owned.get(&p));
        trace!(
            "  member {m} loads p{p}: applied {:?} replay_upto {:?}",
            st.applied, st.replay_upto
        );
        self.members[m].fetch.insert(p, st.applied.unwrap_or(0));
        self.members[m].sought.insert(p);
        self.members[m].failed_seeks.remove(&p);
        self.members[m].owned.insert(p, st);
    }

    /// The service loop's outcome handling; the partitions to reload.
    fn settle(&mut self, m: usize) -> Option<Vec<i32>> {
        let f = self.members[m].inflight.take()?;
        let outcome = match f.outcome {
            Some(o) => o,
            None => self.run_apply(&f.pending),
        };
        match outcome {
            Applied::Ok(_) | Applied::AlreadyApplied => {
                for (p, u) in &f.pending.offsets {
                    if let Some(s) = self.members[m].owned.get_mut(p) {
                        s.published = s.published.max(Some(u.next));
                    }
                }
                None
            }
            Applied::Fenced(_) => Some(f.pending.offsets.keys().copied().collect()),
        }
    }

    fn resync(&mut self, m: usize, parts: &[i32]) {
        for &p in parts {
            if !self.members[m].owned.contains_key(&p) {
                continue;
            }
            // A zombie learns from the fence that the partition moved.
            if self.assignment[p as usize] != m && self.rng.chance(0.5) {
                self.members[m].owned.remove(&p);
                self.members[m].fetch.remove(&p);
                continue;
            }
            self.reload(m, p);
        }
    }

    /// One turn of member `m`'s loop: fetch, process, settle the batch in
    /// flight, launch this one.
    fn turn(&mut self, m: usize) {
        for (p, o) in std::mem::take(&mut self.members[m].failed_seeks) {
            if self.faults && self.rng.chance(0.3) && !off("seek") {
                self.members[m].failed_seeks.insert(p, o); // failed again
            } else if self.members[m].owned.contains_key(&p) {
                self.members[m].fetch.insert(p, o);
                self.members[m].sought.insert(p);
            }
        }
        let mut recs: Vec<(i32, i64)> = Vec::new();
        let mut parts: Vec<i32> = self.members[m].owned.keys().copied().collect();
        parts.sort_unstable();
        for p in parts {
            let end = self.visible[p as usize] as i64;
            let Some(&pos) = self.members[m].fetch.get(&p) else {
                continue;
            };
            let mut from = pos;
            let sought = self.members[m].sought.contains(&p);
            if self.faults && !sought && pos >= 3 && self.rng.chance(0.05) && !off("stale") {
                from = pos - 3; // copies of records already taken
            } else if self.faults && !sought && self.rng.chance(0.05) && !off("gap") {
                from = pos + 2; // a fetch that raced an assignment
            }
            let to = (from + self.rng.below(12) as i64).min(end);
            if to <= from {
                continue; // nothing fetched: the position stays
            }
            self.members[m].sought.remove(&p);
            for o in from..to {
                recs.push((p, o));
            }
            self.members[m].fetch.insert(p, to.max(pos));
        }
        let log = self.log;
        let records = recs.iter().map(|&(p, o)| {
            let r = &log.parts[p as usize][o as usize];
            SourceRecord {
                partition: p,
                offset: o,
                view: RecordView {
                    key: Some(&r.key),
                    value: Some(&r.value),
                    content_type: None,
                    timestamp: r.ts,
                    clock: r.ts,
                    producer_clock: false,
                },
            }
        });
        trace!("member {m} turn: records {:?}", recs);
        let retention = Retention::new(WINDOW, 48, 400);
        let pending = process(
            records,
            &mut self.members[m].owned,
            &self.decoder,
            retention,
        );
        trace!(
            "  processed: counted {} dups {} stale {} reseek {:?} offsets {:?}",
            pending.stats.counted,
            pending.stats.duplicates,
            pending.stats.stale,
            pending.reseek,
            pending
                .offsets
                .iter()
                .map(|(p, u)| (p, u.expected, u.next))
                .collect::<Vec<_>>()
        );
        for &(p, o) in &pending.reseek {
            if self.faults && self.rng.chance(0.1) && !off("seek") {
                if let Some(s) = self.members[m].owned.get_mut(&p) {
                    s.cursor.seek_failed();
                }
                self.members[m].failed_seeks.insert(p, o);
            } else {
                self.members[m].fetch.insert(p, o);
                self.members[m].sought.insert(p);
            }
        }
        let mut next = (!pending.is_empty()).then_some(pending);
        if let Some(mut parts) = self.settle(m) {
            // The batch processed meanwhile assumed this one applied.
            if let Some(n) = next.take() {
                parts.extend(n.offsets.keys().copied());
            }
            parts.sort_unstable();
            parts.dedup();
            self.resync(m, &parts);
        }
        if let Some(pending) = next {
            for (p, u) in &pending.offsets {
                if let Some(s) = self.members[m].owned.get_mut(p) {
                    s.applied = Some(u.next);
                }
            }
            let outcome = self.rng.chance(0.5).then(|| self.run_apply(&pending));
            self.members[m].inflight = Some(Inflight { pending, outcome });
        }
    }

    /// The idle-partition audit: stored offsets that are not ours.
    fn audit(&mut self, m: usize) {
        if self.members[m].inflight.is_some() {
            return;
        }
        let moved: Vec<i32> = self.members[m]
            .owned
            .iter()
            .filter(|(p, s)| self.redis.offsets.get(p).map(|o| o.0) != s.applied)
            .map(|(p, _)| *p)
            .collect();
        self.resync(m, &moved);
    }

    fn rebalance(&mut self) {
        let p = self.rng.below(self.assignment.len());
        let (from, to) = (self.assignment[p], self.rng.below(self.members.len()));
        trace!("rebalance p{p}: {from} -> {to}");
        self.assignment[p] = to;
        // A zombie keeps the partition until a fence tells it.
        if from != to && !self.rng.chance(0.3) {
            self.members[from].owned.remove(&(p as i32));
            self.members[from].fetch.remove(&(p as i32));
        }
        self.reload(to, p as i32);
    }

    fn crash(&mut self) {
        let m = self.rng.below(self.members.len());
        trace!("crash member {m}");
        if let Some(f) = self.members[m].inflight.take()
            && f.outcome.is_none()
            && self.rng.chance(0.5)
        {
            let _ = self.redis_apply(&f.pending); // Redis ran it, nobody heard
        }
        self.members[m] = Member::default();
        for p in 0..self.assignment.len() {
            if self.assignment[p] == m {
                let to = self.rng.below(self.members.len());
                self.assignment[p] = to;
                self.reload(to, p as i32);
            }
        }
    }
}

/// Runs schedule `seed`; the first difference from the truth, if any.
fn schedule(seed: u64) -> Result<(), String> {
    schedule_with(seed, None)
}

/// [`schedule`], with the real scripts beside the model when `twin` is
/// given (Redis then never loses writes: a real Redis cannot be put back
/// to the model's snapshot).
fn schedule_with(seed: u64, twin: Option<Twin>) -> Result<(), String> {
    let twinned = twin.is_some();
    let mut rng = Rng(seed);
    let partitions = 1 + rng.below(4);
    let members = 1 + rng.below(3);
    // One schedule in three keeps its members (no crash, no rebalance):
    // then the dashboards' sums must be exact too, whatever Redis loses.
    let stable = rng.chance(0.33);
    let records = 300 + rng.below(500);
    let log = make_log(&mut rng, partitions, records);
    let mut sim = Sim {
        rng,
        log: &log,
        visible: vec![0; partitions],
        redis: Redis::default(),
        snapshot: Redis::default(),
        members: (0..members).map(|_| Member::default()).collect(),
        assignment: (0..partitions).map(|p| p % members).collect(),
        decoder: Decoder::new(SchemaRegistry::builtin()),
        faults: true,
        dashboard: HashMap::new(),
        twin,
    };
    for p in 0..partitions {
        sim.reload(p % members, p as i32);
    }
    for _ in 0..600 {
        for p in 0..partitions {
            let grow = sim.rng.below(6);
            sim.visible[p] = (sim.visible[p] + grow).min(log.parts[p].len());
        }
        let m = sim.rng.below(members);
        match sim.rng.below(100) {
            0..=69 => sim.turn(m),
            70..=79 => sim.audit(m),
            80..=89 if stable => sim.turn(m),
            80..=86 if !off("rebalance") => sim.rebalance(),
            87..=89 if !off("crash") => sim.crash(),
            90..=95 => sim.snapshot = sim.redis.clone(),
            96.. if !off("redis") && !twinned => {
                trace!(
                    "redis loses writes: offsets back to {:?}",
                    sim.snapshot.offsets
                );
                sim.redis = sim.snapshot.clone(); // Redis lost its last writes
            }
            _ => sim.turn(m),
        }
    }
    // The end of the day: every member settles and stops; one new member
    // takes every partition and catches up with the whole log, no faults.
    for m in 0..members {
        sim.settle(m);
    }
    sim.faults = false;
    sim.visible = log.parts.iter().map(Vec::len).collect();
    if !stable {
        sim.members = vec![Member::default()];
        sim.assignment = vec![0; partitions];
        for p in 0..partitions {
            sim.reload(0, p as i32);
        }
    }
    for _ in 0..100_000 {
        let done = (0..partitions).all(|p| {
            sim.redis.offsets.get(&(p as i32)).map(|o| o.0) == Some(log.parts[p].len() as i64)
                || log.parts[p].is_empty()
        });
        if done && sim.members.iter().all(|m| m.inflight.is_none()) {
            break;
        }
        for m in 0..sim.members.len() {
            sim.turn(m);
            if let Some(parts) = sim.settle(m) {
                sim.resync(m, &parts);
            }
            sim.audit(m);
        }
    }
    let mut got: HashMap<(String, i64, &'static str), u64> = HashMap::new();
    for ((client, m), counts) in &sim.redis.cells {
        for (slot, &n) in counts.iter().enumerate() {
            if n > 0 {
                got.insert((client.clone(), *m, slot_name(slot)), n);
            }
        }
    }
    if let Some(mut t) = sim.twin.take() {
        let mut hours: BTreeMap<(String, i64), Vec<u64>> = BTreeMap::new();
        for ((client, m), counts) in &sim.redis.cells {
            let h = hours
                .entry((client.clone(), m.div_euclid(60)))
                .or_insert_with(|| vec![0; SLOTS]);
            for (a, n) in h.iter_mut().zip(counts) {
                *a += n;
            }
        }
        for ((client, h), want) in &hours {
            let real = t.hour(client, *h);
            if &real != want {
                t.differs(format!(
                    "hour {h} of {client}: model {want:?}, Lua {real:?}"
                ));
            }
        }
        t.clear();
        if !t.diffs.is_empty() {
            return Err(format!(
                "the model and the Lua scripts differ: {:?}",
                t.diffs
            ));
        }
    }
    if got != log.truth {
        let mut diff: Vec<String> = log
            .truth
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(v))
            .map(|(k, v)| format!("{k:?}: want {v}, got {:?}", got.get(k)))
            .chain(
                got.iter()
                    .filter(|(k, _)| !log.truth.contains_key(*k))
                    .map(|(k, v)| format!("{k:?}: want nothing, got {v}")),
            )
            .collect();
        diff.sort();
        diff.truncate(5);
        return Err(format!("counters differ from the truth: {diff:?}"));
    }
    if stable && sim.dashboard != log.truth {
        let mut diff: Vec<String> = log
            .truth
            .iter()
            .filter(|(k, v)| sim.dashboard.get(*k) != Some(v))
            .map(|(k, v)| format!("{k:?}: want {v}, got {:?}", sim.dashboard.get(k)))
            .collect();
        diff.sort();
        diff.truncate(5);
        return Err(format!(
            "dashboards summed other counts than the truth: {diff:?}"
        ));
    }
    // Dedup state is the window and no more: every key within its
    // partition's newest generation minus the window.
    for &(p, g) in sim.redis.dedup.keys() {
        let newest = sim.redis.offsets.get(&p).map_or(0, |o| o.1);
        if g + WINDOW < newest {
            return Err(format!(
                "dedup key {p}:{g} outlived the window (newest {newest})"
            ));
        }
    }
    let hours = log
        .parts
        .iter()
        .flatten()
        .map(|r| r.ts / HOUR_MICROS)
        .fold((i64::MAX, i64::MIN), |(lo, hi), h| (lo.min(h), hi.max(h)));
    if hours.1 - hours.0 > i64::from(WINDOW) && sim.redis.dedup.is_empty() {
        return Err("no dedup state at all".into());
    }
    Ok(())
}

#[test]
fn every_schedule_counts_each_event_exactly_once() {
    let seeds: Vec<u64> = match std::env::var("NOTIFLOW_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("NOTIFLOW_SIM_SEED is a number")],
        Err(_) => {
            let n = std::env::var("NOTIFLOW_SIM_SCHEDULES")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(1000u64);
            (1..=n).collect()
        }
    };
    let failed: Vec<String> = seeds
        .iter()
        .filter_map(|&s| schedule(s).err().map(|e| format!("seed {s}: {e}")))
        .take(3)
        .collect();
    assert!(
        failed.is_empty(),
        "{} (replay one: NOTIFLOW_SIM_SEED=<seed> cargo test -p notiflow-aggregator sim)",
        failed.join("\n")
    );
}

/// The model is pinned to the real scripts: schedules run with every
/// APPLY and LOAD also sent to a real Redis (`REDIS_URL`), whose replies,
/// stored state and roll-ups must be the model's. Fewer schedules than the
/// model alone runs (each call is a round trip); replay one with
/// `NOTIFLOW_SIM_SEED`.
#[test]
fn the_model_does_what_the_lua_scripts_do() {
    let seeds: Vec<u64> = match std::env::var("NOTIFLOW_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("NOTIFLOW_SIM_SEED is a number")],
        Err(_) => (1..=40).collect(),
    };
    let run = std::process::id();
    let failed: Vec<String> = seeds
        .iter()
        .filter_map(|&s| {
            let twin = Twin::open(&format!("nf-sim-{run}-{s}"));
            schedule_with(s, Some(twin))
                .err()
                .map(|e| format!("seed {s}: {e}"))
        })
        .take(3)
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
