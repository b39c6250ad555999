//! A seeded simulation of two lake writers on one real table (issue 30's
//! proof, the lake's part): each step of a schedule, drawn from the seed,
//! is what a writer of the service does or suffers — fetch the next
//! records of its partitions into its round (flushing files as it goes),
//! commit, heartbeat or checkpoint a partition, crash (its round and
//! memory lost, state reloaded from the table), lose a partition to the
//! other writer in a rebalance while its round still holds it (a zombie
//! that the fence must stop, or that commits first and fences the new
//! owner), be fenced and resync, or see compaction and snapshot expiry
//! run beside it. The writers run the real round, commit, fence and
//! dedup restore against a local warehouse and SQLite catalog; only the
//! log and the member loop are simulated. At the end one writer takes
//! every partition and drains the log. The table must then hold exactly
//! the first occurrence (lowest offset) of every valid event of the log,
//! once: the rule written out from the log alone. A failing seed replays
//! with `NOTIFLOW_LAKE_SIM_SEED=<seed>`; `NOTIFLOW_LAKE_SIM_SEEDS=<n>` runs
//! seeds 1 to n (100 by default, about 20 s). Without the fence seed 6
//! writes records twice; with an empty dedup restore seed 1 writes later
//! duplicates.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use futures::TryStreamExt;

use crate::*;

/// Partitions' logs, by partition, in offset order.
struct Log(Vec<Vec<OwnedRecord>>);

impl Log {
    fn new(seed: u64, n: usize) -> Log {
        let shape = Shape {
            seed,
            clients: 20,
            rate: 0.2,
            start: notiflow_ingest::source::now_micros() - 6 * 3_600_000_000,
            avro_share: 0.3,
            content_type_share: 0.0,
            duplicate_share: 0.15,
            malformed_share: 0.02,
        };
        let mut parts: Vec<Vec<OwnedRecord>> = (0..PARTITIONS).map(|_| Vec::new()).collect();
        for r in RecordStream::new(shape, PARTITIONS).take(n) {
            parts[r.partition as usize].push(r);
        }
        Log(parts)
    }

    /// Index of the first record of `p` at or after `offset`.
    fn index(&self, p: i32, offset: Option<i64>) -> usize {
        let o = offset.unwrap_or(0);
        self.0[p as usize].partition_point(|r| r.offset < o)
    }
}

/// The rule: per event id, its first record in its partition's log (a
/// duplicate has its original's key, so its partition), if valid.
fn expected(log: &Log, decoder: &Decoder) -> BTreeSet<(i32, i64)> {
    let mut first: HashMap<String, (i32, i64)> = HashMap::new();
    for part in &log.0 {
        for r in part {
            if let Ok(e) = decoder.decode(&r.view()) {
                first
                    .entry(e.event_id.to_string())
                    .or_insert((r.partition, r.offset));
            }
        }
    }
    first.into_values().collect()
}

/// One writer: the partitions it owns, where it fetches each from, its
/// open round, and the partition changes of rebalances it has not taken
/// in yet (the service takes them in at its next turn: it commits its
/// round first, then reloads what it was given that its commit moved on).
struct Member {
    owned: Owned,
    pos: BTreeMap<i32, usize>,
    round: Option<Round>,
    changes: Vec<Change>,
}

/// A partition change as the member's consumer context hands it over: an
/// assignment comes with the state loaded from the table when it happened.
enum Change {
    Assigned(i32, PartState),
    Revoked(i32),
}

impl Member {
    /// Takes `parts` over from the table (an assignment, a restart, a
    /// resync after a fence).
    async fn load(&mut self, lake: &Lake, log: &Log, parts: &[i32]) {
        let table = lake.load().await.unwrap();
        let offsets = topic_offsets(table.metadata(), "t").unwrap();
        let mut dedups = notiflow_lake::dedup_log::restore(&table, "t", parts, 24)
            .await
            .unwrap();
        for &p in parts {
            let committed = offsets.get(&p).copied();
            self.owned
                .insert(p, PartState::loaded(committed, dedups.remove(&p).unwrap()));
            self.pos.insert(p, log.index(p, committed));
        }
    }

    fn parts(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self.owned.keys().copied().collect();
        v.sort_unstable();
        v
    }

    fn new() -> Member {
        Member {
            owned: Owned::new(),
            pos: BTreeMap::new(),
            round: None,
            changes: Vec::new(),
        }
    }

    /// The state of partition `p` as an assignment loads it now.
    async fn assigned(lake: &Lake, p: i32) -> PartState {
        let table = lake.load().await.unwrap();
        let committed = topic_offsets(table.metadata(), "t")
            .unwrap()
            .get(&p)
            .copied();
        let mut d = notiflow_lake::dedup_log::restore(&table, "t", &[p], 24)
            .await
            .unwrap();
        PartState::loaded(committed, d.remove(&p).unwrap())
    }

    /// Takes in the pending changes as the service does: commits the
    /// round, then applies them, reloading an assigned partition the
    /// commit moved on (its state was loaded before it). True when the
    /// commit was fenced.
    async fn take_changes(&mut self, lake: &Lake, log: &Log) -> bool {
        if self.changes.is_empty() {
            return false;
        }
        let touched: Vec<i32> = self
            .round
            .as_ref()
            .map(|r| r.next.keys().copied().collect())
            .unwrap_or_default();
        let fenced = self.commit(lake, log).await;
        let mut reload = Vec::new();
        for c in std::mem::take(&mut self.changes) {
            match c {
                Change::Assigned(p, st) => {
                    if touched.contains(&p) {
                        reload.push(p);
                    }
                    self.pos.insert(p, log.index(p, st.committed));
                    self.owned.insert(p, st);
                }
                Change::Revoked(p) => {
                    self.owned.remove(&p);
                    self.pos.remove(&p);
                }
            }
        }
        self.load(lake, log, &reload).await;
        fenced
    }

    async fn round(&mut self, lake: &Lake, cfg: &LakeConfig) -> &mut Round {
        if self.round.is_none() {
            let table = lake.load().await.unwrap();
            self.round = Some(Round::new(
                arrow_schema(table.metadata().current_schema()).unwrap(),
                cfg,
            ));
        }
        self.round.as_mut().unwrap()
    }

    /// Fetches up to `n` records of each owned partition into the round.
    async fn fetch(
        &mut self,
        lake: &Lake,
        cfg: &LakeConfig,
        log: &Log,
        decoder: &mut Decoder,
        n: usize,
    ) {
        let mut batch: Vec<&OwnedRecord> = Vec::new();
        for (&p, i) in &self.pos {
            let part = &log.0[p as usize];
            batch.extend(&part[(*i).min(part.len())..(*i + n).min(part.len())]);
        }
        if batch.is_empty() {
            return;
        }
        let views: Vec<_> = batch.iter().map(|r| r.view()).collect();
        decoder.prepare(&views).await.unwrap();
        for r in &batch {
            *self.pos.get_mut(&r.partition).unwrap() += 1;
        }
        let mut owned = std::mem::take(&mut self.owned);
        let round = self.round(lake, cfg).await;
        let took = round.take(batch.iter().map(|r| r.source()), &mut owned, decoder);
        let flush = round.buffered() >= cfg.flush_rows;
        if flush {
            let table = lake.load().await.unwrap();
            round.flush(&table).await.unwrap();
        }
        self.owned = owned;
        // As the service does: a partition the cursor sends back is
        // fetched again from there.
        for (p, offset) in took.reseek {
            self.pos.insert(p, log.index(p, Some(offset)));
        }
        assert!(took.held.is_empty(), "a partition held: {:?}", took.held);
    }

    /// Commits the round; true when it was fenced (the member then
    /// resyncs every partition it owns, as the service does).
    async fn commit(&mut self, lake: &Lake, log: &Log) -> bool {
        let Some(mut round) = self.round.take() else {
            return false;
        };
        let table = lake.load().await.unwrap();
        let files = round.close_files(&table).await.unwrap();
        match round.commit(lake, "t", &table, files, || {}).await.unwrap() {
            Outcome::Committed { .. } => {
                for (p, n) in &round.next {
                    if let Some(st) = self.owned.get_mut(p) {
                        st.committed = Some(*n);
                    }
                }
                false
            }
            Outcome::Fenced { .. } => {
                let parts = self.parts();
                self.load(lake, log, &parts).await;
                true
            }
        }
    }
}

/// What one schedule did, to tell that the seeds cover every step.
#[derive(Default, Debug)]
struct Seen {
    commits: u32,
    fenced: u32,
    crashes: u32,
    moves: u32,
    zombie_commits: u32,
    compactions: u32,
}

impl Seen {
    fn add(&mut self, s: &Seen) {
        self.commits += s.commits;
        self.fenced += s.fenced;
        self.crashes += s.crashes;
        self.moves += s.moves;
        self.zombie_commits += s.zombie_commits;
        self.compactions += s.compactions;
    }
}

async fn schedule(seed: u64) -> Seen {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LakeConfig {
        flush_rows: 150,
        ..cfg(dir.path())
    };
    let lake = Lake::open(&cfg).await.unwrap();
    let mut rng = notiflow_loadgen::rng::Rng::new(seed);
    let log = Log::new(seed, 1200);
    let mut decoder = Decoder::new(SchemaRegistry::builtin());
    let mut members = [Member::new(), Member::new()];
    members[0].load(&lake, &log, &[0, 1]).await;
    members[1].load(&lake, &log, &[2, 3]).await;
    let mut seen = Seen::default();
    // Partitions each member's open round took while it owned them.
    let mut zombie: [BTreeSet<i32>; 2] = Default::default();
    let trace = std::env::var("NOTIFLOW_LAKE_SIM_SEED").is_ok();
    for step in 0..40 {
        let w = rng.below(2) as usize;
        let what = rng.below(20);
        if trace {
            let r = members[w]
                .round
                .as_ref()
                .map(|r| (r.expected.clone(), r.next.clone()));
            eprintln!(
                "step {step}: member {w} does {what}; owns {:?} at {:?}; round {r:?}",
                members[w].parts(),
                members[w]
                    .owned
                    .iter()
                    .map(|(p, s)| (*p, s.committed))
                    .collect::<BTreeMap<_, _>>()
            );
        }
        // The member's turn starts with the changes handed to it.
        let zombie_round = !zombie[w].is_empty();
        if members[w].take_changes(&lake, &log).await {
            seen.fenced += 1;
        } else if zombie_round {
            seen.zombie_commits += 1;
        }
        zombie[w].clear();
        match what {
            0..=7 => {
                let n = 1 + rng.below(120) as usize;
                members[w].fetch(&lake, &cfg, &log, &mut decoder, n).await;
            }
            8..=11 => {
                let zombie_round = !zombie[w].is_empty();
                let fenced = members[w].commit(&lake, &log).await;
                seen.commits += u32::from(!fenced);
                seen.fenced += u32::from(fenced);
                seen.zombie_commits += u32::from(zombie_round && !fenced);
                zombie[w].clear();
            }
            12 => {
                // A quiet partition's heartbeat or checkpoint.
                let parts = members[w].parts();
                if let Some(&p) = parts.get(rng.below(parts.len().max(1) as u64) as usize) {
                    let st = members[w].owned[&p].clone();
                    let checkpoint = rng.below(2) == 0;
                    let round = members[w].round(&lake, &cfg).await;
                    if checkpoint {
                        round.checkpoint(p, st.committed, &st.dedup);
                    } else {
                        round.heartbeat(
                            p,
                            st.committed,
                            notiflow_ingest::source::now_micros() / 1000,
                        );
                    }
                }
            }
            13 | 14 => {
                // A crash: the round and the memory are gone.
                let parts = members[w].parts();
                members[w].round = None;
                zombie[w].clear();
                members[w].owned.clear();
                members[w].pos.clear();
                members[w].load(&lake, &log, &parts).await;
                seen.crashes += 1;
            }
            15..=17 => {
                // A rebalance moves one of w's partitions to the other
                // member, each told at its next turn; until then w may
                // fetch and commit it (a zombie the fence must stop).
                let leaving = |m: &Member, p: i32| {
                    m.changes
                        .iter()
                        .any(|c| matches!(c, Change::Revoked(q) if *q == p))
                };
                let parts: Vec<i32> = members[w]
                    .parts()
                    .into_iter()
                    .filter(|&p| !leaving(&members[w], p))
                    .collect();
                if parts.len() > 1 {
                    let p = parts[rng.below(parts.len() as u64) as usize];
                    if members[w]
                        .round
                        .as_ref()
                        .is_some_and(|r| r.next.contains_key(&p))
                    {
                        zombie[w].insert(p);
                    }
                    members[w].changes.push(Change::Revoked(p));
                    let st = Member::assigned(&lake, p).await;
                    members[1 - w].changes.push(Change::Assigned(p, st));
                    seen.moves += 1;
                }
            }
            18 => {
                maintenance::compact(&lake, &cfg).await.unwrap();
                seen.compactions += 1;
            }
            _ => {
                // Snapshot expiry as if eight days had passed: what a
                // restore needs must stay.
                let later = SystemTime::now() + Duration::from_secs(8 * 86_400);
                maintenance::expire(&lake, &cfg, later).await.unwrap();
            }
        }
    }
    // The other member goes away; one takes everything and drains the log.
    let mut last = Member::new();
    last.load(&lake, &log, &(0..PARTITIONS).collect::<Vec<_>>())
        .await;
    loop {
        last.fetch(&lake, &cfg, &log, &mut decoder, 10_000).await;
        assert!(
            !last.commit(&lake, &log).await,
            "seed {seed}: the last member was fenced"
        );
        if last.pos.iter().all(|(p, i)| *i >= log.0[*p as usize].len()) {
            break;
        }
    }
    // Every valid event's first record, once; nothing else.
    let table = lake.load().await.unwrap();
    let mut got: Vec<(i32, i64)> = Vec::new();
    let mut rows = table
        .scan()
        .select(["kafka_partition", "kafka_offset"])
        .build()
        .unwrap()
        .to_arrow()
        .await
        .unwrap();
    while let Some(b) = rows.try_next().await.unwrap() {
        use arrow::array::AsArray;
        use arrow::datatypes::{Int32Type, Int64Type};
        let (p, o) = (
            b.column(0).as_primitive::<Int32Type>(),
            b.column(1).as_primitive::<Int64Type>(),
        );
        got.extend((0..b.num_rows()).map(|i| (p.value(i), o.value(i))));
    }
    got.sort_unstable();
    let want: Vec<(i32, i64)> = expected(&log, &decoder).into_iter().collect();
    let twice: Vec<_> = got
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .take(5)
        .collect();
    assert!(
        twice.is_empty(),
        "seed {seed}: records written twice: {twice:?} ({seen:?})"
    );
    let lost: Vec<_> = want
        .iter()
        .filter(|k| got.binary_search(k).is_err())
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .iter()
        .filter(|k| want.binary_search(k).is_err())
        .take(5)
        .collect();
    assert!(
        lost.is_empty() && extra.is_empty() && got.len() == want.len(),
        "seed {seed}: lost {lost:?}, not first occurrences {extra:?}; {} rows for {} events ({seen:?})",
        got.len(),
        want.len()
    );
    // The table's offsets are the log's ends.
    let offsets = topic_offsets(table.metadata(), "t").unwrap();
    for (p, part) in log.0.iter().enumerate() {
        if let Some(r) = part.last() {
            assert_eq!(
                offsets.get(&(p as i32)),
                Some(&(r.offset + 1)),
                "seed {seed}"
            );
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_crashing_fenced_and_rebalanced_write_every_event_once() {
    let seeds: Vec<u64> = match (
        std::env::var("NOTIFLOW_LAKE_SIM_SEED"),
        std::env::var("NOTIFLOW_LAKE_SIM_SEEDS"),
    ) {
        (Ok(s), _) => vec![s.parse().unwrap()],
        (_, Ok(n)) => (1..=n.parse().unwrap()).collect(),
        _ => (1..=100).collect(),
    };
    let mut total = Seen::default();
    for seed in seeds.iter().copied() {
        total.add(&schedule(seed).await);
    }
    eprintln!("{} schedules: {total:?}", seeds.len());
    if seeds.len() > 1 {
        assert!(
            total.fenced > 0
                && total.crashes > 0
                && total.moves > 0
                && total.zombie_commits > 0
                && total.compactions > 0,
            "the seeds do not cover every step: {total:?}"
        );
    }
}
