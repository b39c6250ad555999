//! The one atomic Redis step per batch, and the load of a partition's state.
//!
//! `APPLY` (a Lua script, so Redis runs it as one step) first compares the
//! stored next offset of every partition in the batch with the offset the
//! batch started from. If any differs, the batch is *fenced*: nothing is
//! written and the stored offsets are returned, so the caller reloads. Then
//! it checks what could make a write fail (a key holding another type, a
//! dedup string past Redis' 512 MB limit) and, if anything would, answers
//! an error (`NOTIFLOW_REFUSED …`) having written nothing: Lua does not roll
//! back, so nothing may fail after the first write. Else it writes, in this
//! order: the new offsets and dedup
//! generations, the batch's new dedup fingerprints (and the deletion of the
//! generations that left the window: dedup state follows the partition's
//! log, never Redis' clock, so an outage of any length keeps it), the minute/hour/day
//! counters with their expiry, the top-clients sets, the set of known
//! clients (the API tells an unknown client from a quiet one with it), the
//! exact totals, and one entry on the deltas stream for live dashboards.
//!
//! `LOAD` reads, also as one step, a partition's next offset and the dedup
//! fingerprints of its window, so state and offset always match.

use std::collections::{BTreeMap, HashMap};

use notiflow_ingest::sink::{Anchor, Dedup};
use notiflow_schema::counters::{Counts, Delta, Keys, SLOTS, hour_field, minute_field};
use redis::Script;

use crate::batch::{PartitionState, Pending};
use crate::error::AggregatorError;

const APPLY: &str = r#"
local a = 1
local function arg() local v = ARGV[a]; a = a + 1; return v end
local np = tonumber(arg())
local fenced = {'fenced'}
local parts = {}
for i = 1, np do
  local p, exp, nxt, gen, anchor = arg(), arg(), arg(), arg(), arg()
  local cur = redis.call('HGET', KEYS[1], p)
  if (cur or '') ~= exp then
    fenced[#fenced + 1] = p
    fenced[#fenced + 1] = cur or ''
  end
  parts[i] = {p, nxt, gen, anchor}
end
if #fenced > 1 then return fenced end
-- Lua does not roll back: whatever can fail is checked before the first
-- write (a key of another type, a dedup string past Redis' 512 MB limit),
-- so an error reply always means nothing of the batch was written.
local problem = nil
local function check(key, want)
  if problem then return end
  local have = redis.call('TYPE', key)['ok']
  if have ~= 'none' and have ~= want then
    problem = key .. ' holds a ' .. have .. ', not a ' .. want
  end
end
check(KEYS[1], 'hash')
check(KEYS[2], 'hash')
check(KEYS[3], 'stream')
check(KEYS[4], 'set')
local start = a
local function walk(write)
  a = start
  local k = 5
  local nd = tonumber(arg())
  for i = 1, nd do
    local v = arg()
    if write then
      -- No expiry on Redis' clock: a generation's key goes when the
      -- partition's newest generation leaves it behind (below).
      redis.call('APPEND', KEYS[k], v)
      redis.call('PERSIST', KEYS[k])
    else
      check(KEYS[k], 'string')
      if not problem and redis.call('STRLEN', KEYS[k]) + #v > 536870912 then
        problem = KEYS[k] .. ' would pass the 512 MB string limit'
      end
    end
    k = k + 1
  end
  -- The dedup keys of generations that left the window, after the appends
  -- (a batch may append to a generation it then leaves behind).
  local nx = tonumber(arg())
  for i = 1, nx do
    if write then redis.call('DEL', KEYS[k]) end
    k = k + 1
  end
  -- The counter hashes, then the top-clients sorted sets: per key its
  -- expiry, a count and that many argument pairs of the command
  -- (HINCRBY: field, increment; ZINCRBY: increment, member).
  for _, c in ipairs({{'HINCRBY', 'hash'}, {'ZINCRBY', 'zset'}}) do
    local n = tonumber(arg())
    for i = 1, n do
      local at, m = arg(), tonumber(arg())
      if write then
        for j = 1, m do redis.call(c[1], KEYS[k], arg(), arg()) end
        redis.call('EXPIREAT', KEYS[k], at)
      else
        check(KEYS[k], c[2])
        a = a + 2 * m
      end
      k = k + 1
    end
  end
  local ncl = tonumber(arg())
  if write then
    for i = 1, ncl do redis.call('SADD', KEYS[4], arg()) end
  else
    a = a + ncl
  end
end
walk(false)
if problem then return redis.error_reply('NOTIFLOW_REFUSED ' .. problem) end
for _, x in ipairs(parts) do
  redis.call('HSET', KEYS[1], x[1], x[2], x[1] .. ':gen', x[3])
  if x[4] ~= '' then
    redis.call('HSET', KEYS[1], x[1] .. ':anchor', x[4])
  else
    redis.call('HDEL', KEYS[1], x[1] .. ':anchor')
  end
end
walk(true)
local counted, dups, late, rejected = arg(), arg(), arg(), arg()
redis.call('HINCRBY', KEYS[2], 'counted', counted)
redis.call('HINCRBY', KEYS[2], 'duplicates', dups)
redis.call('HINCRBY', KEYS[2], 'late_dropped', late)
redis.call('HINCRBY', KEYS[2], 'rejected', rejected)
local payload, maxlen = arg(), arg()
local id = ''
if payload ~= '' then
  id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', maxlen, '*', 'd', payload)
end
return {'ok', id}
"#;

const LOAD: &str = r#"
local off = redis.call('HGET', KEYS[1], ARGV[1])
local gen = redis.call('HGET', KEYS[1], ARGV[1] .. ':gen')
local anchor = redis.call('HGET', KEYS[1], ARGV[1] .. ':anchor')
local out = {off or '', gen or '', anchor or ''}
if gen then
  local g, w = tonumber(gen), tonumber(ARGV[2])
  for i = math.max(g - w, 0), g do
    local v = redis.call('GET', ARGV[3] .. i)
    if v then
      out[#out + 1] = tostring(i)
      out[#out + 1] = v
    end
  end
end
return out
"#;

/// Where one consumer group's counters and state go.
#[derive(Debug, Clone)]
pub struct Target {
    /// Key names.
    pub keys: Keys,
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Minute bucket retention, seconds.
    pub minute_retention_secs: i64,
    /// Roll-up retention, seconds.
    pub rollup_retention_secs: i64,
    /// Dedup window, generations.
    pub dedup_window: u32,
    /// Deltas stream length.
    pub delta_stream_len: u64,
}

/// Outcome of one apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Written; the id of the delta on the stream (empty when nothing changed).
    Ok(String),
    /// Already written by an earlier attempt whose reply was lost.
    AlreadyApplied,
    /// Refused: these partitions' stored offsets are not what the batch expected.
    Fenced(Vec<(i32, Option<i64>)>),
}

/// A prepared APPLY invocation (built once, retried as is).
pub struct Invocation<'a> {
    inv: redis::ScriptInvocation<'a>,
    next: BTreeMap<i32, i64>,
}

/// The scripts, loaded once per process.
pub struct Scripts {
    apply: Script,
    load: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            apply: Script::new(APPLY),
            load: Script::new(LOAD),
        }
    }
}

impl Scripts {
    /// Builds the APPLY call for `pending`, published at `now_ms`.
    pub fn prepare(&self, target: &Target, pending: &Pending, now_ms: i64) -> Invocation<'_> {
        let t = target;
        let mut inv = self.apply.prepare_invoke();
        inv.key(t.keys.offsets(&t.group, &t.topic))
            .key(t.keys.stats(&t.group, &t.topic))
            .key(t.keys.deltas())
            .key(t.keys.clients());
        inv.arg(pending.offsets.len());
        for (p, u) in &pending.offsets {
            inv.arg(p)
                .arg(u.expected.map(|o| o.to_string()).unwrap_or_default())
                .arg(u.next)
                .arg(u.generation)
                .arg(u.anchor.map(Anchor::to_hex).unwrap_or_default());
        }
        inv.arg(pending.dedup.len());
        for ((p, g), data) in &pending.dedup {
            inv.key(t.keys.dedup(&t.group, &t.topic, *p, *g));
            inv.arg(data.as_slice());
        }
        let expired: Vec<String> = pending
            .offsets
            .iter()
            .flat_map(|(p, u)| {
                u.expired(t.dedup_window)
                    .map(move |g| t.keys.dedup(&t.group, &t.topic, *p, g))
            })
            .collect();
        inv.arg(expired.len());
        for key in &expired {
            inv.key(key);
        }
        let hashes = hash_increments(t, pending);
        inv.arg(hashes.len());
        for (key, at, fields) in &hashes {
            inv.key(key);
            inv.arg(at).arg(fields.len());
            for (f, n) in fields {
                inv.arg(f).arg(n);
            }
        }
        let tops = top_increments(t, pending);
        inv.arg(tops.len());
        for (key, (at, members)) in &tops {
            inv.key(key);
            inv.arg(at).arg(members.len());
            for (m, n) in members {
                inv.arg(n).arg(m);
            }
        }
        inv.arg(pending.clients.len());
        for c in &pending.clients {
            inv.arg(c);
        }
        let s = &pending.stats;
        inv.arg(s.counted)
            .arg(s.duplicates)
            .arg(s.late_dropped)
            .arg(s.rejected.values().sum::<u64>());
        inv.arg(delta_payload(pending, now_ms))
            .arg(t.delta_stream_len);
        Invocation {
            inv,
            next: pending.offsets.iter().map(|(p, u)| (*p, u.next)).collect(),
        }
    }

    /// Runs a prepared APPLY.
    pub async fn apply(
        &self,
        conn: &mut redis::aio::ConnectionManager,
        call: &Invocation<'_>,
    ) -> Result<Applied, AggregatorError> {
        let reply: Vec<String> = call.inv.invoke_async(conn).await?;
        parse_apply(&reply, &call.next)
    }

    /// Loads partition `p`'s stored offset and dedup window (blocking; used
    /// from the rebalance callback, which runs on the consumer's poll).
    pub fn load_blocking(
        &self,
        conn: &mut redis::Connection,
        target: &Target,
        p: i32,
    ) -> Result<PartitionState, AggregatorError> {
        let reply: Vec<Vec<u8>> = self.load_call(target, p).invoke(conn)?;
        parse_load(&reply, target.dedup_window)
    }

    /// Loads partition `p`'s stored offset and dedup window.
    pub async fn load(
        &self,
        conn: &mut redis::aio::ConnectionManager,
        target: &Target,
        p: i32,
    ) -> Result<PartitionState, AggregatorError> {
        let reply: Vec<Vec<u8>> = self.load_call(target, p).invoke_async(conn).await?;
        parse_load(&reply, target.dedup_window)
    }

    /// The stored next offsets of `parts` with their anchors, in order.
    pub async fn stored_offsets(
        &self,
        conn: &mut redis::aio::ConnectionManager,
        target: &Target,
        parts: &[i32],
    ) -> Result<Vec<(Option<i64>, Option<Anchor>)>, AggregatorError> {
        let key = target.keys.offsets(&target.group, &target.topic);
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(key);
        for p in parts {
            cmd.arg(p).arg(format!("{p}:anchor"));
        }
        let flat: Vec<Option<String>> = cmd.query_async(conn).await?;
        Ok(flat
            .chunks(2)
            .map(|c| {
                let offset = c[0].as_deref().and_then(|o| o.parse().ok());
                let anchor = c
                    .get(1)
                    .and_then(|a| a.as_deref().and_then(Anchor::from_hex));
                (offset, anchor)
            })
            .collect())
    }

    /// Sets partition `p`'s next offset to `offset` and removes its anchor,
    /// in one step: an operator accepting a gap in the log
    /// (docs/operations.md). The offset it had. A running member picks the
    /// change up within its audit interval.
    pub async fn accept_gap(
        &self,
        conn: &mut redis::aio::ConnectionManager,
        target: &Target,
        p: i32,
        offset: i64,
    ) -> Result<Option<i64>, AggregatorError> {
        let key = target.keys.offsets(&target.group, &target.topic);
        let (from,): (Option<i64>,) = redis::pipe()
            .atomic()
            .hget(&key, p)
            .hset(&key, p, offset)
            .ignore()
            .hdel(&key, format!("{p}:anchor"))
            .ignore()
            .query_async(conn)
            .await?;
        tracing::warn!(topic = %target.topic, partition = p, ?from, to = offset, "next offset set by an operator");
        Ok(from)
    }

    /// The raw replies of a prepared APPLY and of LOAD, blocking: the
    /// simulation checks its model of the scripts against them (`sim`).
    #[cfg(test)]
    pub(crate) fn apply_raw_blocking(
        &self,
        conn: &mut redis::Connection,
        call: &Invocation<'_>,
    ) -> redis::RedisResult<Vec<String>> {
        call.inv.invoke(conn)
    }

    /// See [`Scripts::apply_raw_blocking`].
    #[cfg(test)]
    pub(crate) fn load_raw_blocking(
        &self,
        conn: &mut redis::Connection,
        target: &Target,
        p: i32,
    ) -> redis::RedisResult<Vec<Vec<u8>>> {
        self.load_call(target, p).invoke(conn)
    }

    fn load_call(&self, t: &Target, p: i32) -> redis::ScriptInvocation<'_> {
        let dedup_prefix = t.keys.dedup(&t.group, &t.topic, p, 0);
        let dedup_prefix = &dedup_prefix[..dedup_prefix.len() - 1];
        let mut inv = self.load.prepare_invoke();
        inv.key(t.keys.offsets(&t.group, &t.topic))
            .arg(p)
            .arg(t.dedup_window)
            .arg(dedup_prefix);
        inv
    }
}

pub(crate) fn parse_apply(
    reply: &[String],
    next: &BTreeMap<i32, i64>,
) -> Result<Applied, AggregatorError> {
    match reply.first().map(String::as_str) {
        Some("ok") => Ok(Applied::Ok(reply.get(1).cloned().unwrap_or_default())),
        Some("fenced") => {
            let mut stored = Vec::new();
            for pair in reply[1..].chunks(2) {
                let p: i32 = pair[0]
                    .parse()
                    .map_err(|_| AggregatorError::Protocol(format!("bad partition {pair:?}")))?;
                let o = pair.get(1).and_then(|s| s.parse::<i64>().ok());
                stored.push((p, o));
            }
            let ours = stored.len() == next.len()
                && stored.iter().all(|(p, o)| next.get(p).copied() == *o);
            Ok(if ours {
                Applied::AlreadyApplied
            } else {
                Applied::Fenced(stored)
            })
        }
        _ => Err(AggregatorError::Protocol(format!(
            "unexpected APPLY reply {reply:?}"
        ))),
    }
}

pub(crate) fn parse_load(
    reply: &[Vec<u8>],
    window: u32,
) -> Result<PartitionState, AggregatorError> {
    let num = |b: &[u8]| -> Result<Option<i64>, AggregatorError> {
        if b.is_empty() {
            return Ok(None);
        }
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| AggregatorError::Protocol(format!("bad number in LOAD: {b:?}")))
    };
    if reply.len() < 3 || !(reply.len() - 3).is_multiple_of(2) {
        return Err(AggregatorError::Protocol("short LOAD reply".into()));
    }
    let applied = num(&reply[0])?;
    let anchor = match reply[2].as_slice() {
        [] => None,
        b => Some(
            std::str::from_utf8(b)
                .ok()
                .and_then(Anchor::from_hex)
                .ok_or_else(|| AggregatorError::Protocol(format!("bad anchor in LOAD: {b:?}")))?,
        ),
    };
    let mut dedup = Dedup::new(window);
    // The stored newest generation, even when it added no fingerprint (a
    // batch of duplicates): the window is anchored on it, as it was live.
    if let Some(g) = num(&reply[1])? {
        dedup.advance_to(g.clamp(0, i64::from(u32::MAX)) as u32);
    }
    for pair in reply[3..].chunks(2) {
        let g = num(&pair[0])?.unwrap_or(0);
        dedup.restore_packed(g.clamp(0, i64::from(u32::MAX)) as u32, &pair[1]);
    }
    let mut state = PartitionState::loaded(applied, dedup);
    state.anchor = anchor;
    Ok(state)
}

type HashOps = Vec<(String, i64, Vec<(String, u64)>)>;

/// Minute hashes from the minute cells; the hour hash of each UTC day (the
/// hourly roll-up, and summed, the daily one) from all cells. Cells are
/// grouped with integer keys first so each key name is formatted once.
fn hash_increments(t: &Target, p: &Pending) -> HashOps {
    let mut minute_keys: HashMap<(u32, i64), Vec<(String, u64)>> = HashMap::new();
    let mut hours: HashMap<(u32, i64), Counts> = HashMap::new();
    for (cells, minute_level) in [(&p.minutes, true), (&p.rollup_only, false)] {
        for (&(ix, m), counts) in cells {
            let hour = hours.entry((ix, m.div_euclid(60))).or_insert([0; SLOTS]);
            add_counts(hour, counts);
            if minute_level {
                let fields = minute_keys.entry((ix, m.div_euclid(60))).or_default();
                for (slot, &n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
                    fields.push((minute_field(m, slot), n));
                }
            }
        }
    }
    let mut out = Vec::with_capacity(minute_keys.len() + hours.len());
    for ((ix, h), fields) in minute_keys {
        let client = &p.clients[ix as usize];
        out.push((
            t.keys.minutes(client, h * 60),
            hour_end_secs(h * 60) + t.minute_retention_secs,
            fields,
        ));
    }
    let mut day_keys: HashMap<(u32, i64), Vec<(String, u64)>> = HashMap::new();
    for ((ix, h), counts) in hours {
        let fields = day_keys.entry((ix, h.div_euclid(24))).or_default();
        for (slot, &n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
            fields.push((hour_field(h * 60, slot), n));
        }
    }
    for ((ix, d), fields) in day_keys {
        let client = &p.clients[ix as usize];
        out.push((
            t.keys.hours(client, d * 1440),
            day_end_secs(d * 1440) + t.rollup_retention_secs,
            fields,
        ));
    }
    out
}

type TopOps = BTreeMap<String, (i64, Vec<(String, u64)>)>;

fn top_increments(t: &Target, p: &Pending) -> TopOps {
    let mut out: TopOps = BTreeMap::new();
    for (&(ix, m), counts) in &p.minutes {
        let events: u64 = counts[..5].iter().sum();
        out.entry(t.keys.top(m))
            .or_insert_with(|| ((m + 1) * 60 + t.minute_retention_secs, vec![]))
            .1
            .push((p.clients[ix as usize].clone(), events));
    }
    out
}

fn delta_payload(p: &Pending, now_ms: i64) -> String {
    if p.minutes.is_empty() {
        return String::new();
    }
    let c = p.delta_cells();
    if c.is_empty() {
        return String::new(); // all of it published before (a replay)
    }
    serde_json::to_string(&Delta { t: now_ms, c }).unwrap_or_default()
}

fn hour_end_secs(m: i64) -> i64 {
    (m.div_euclid(60) + 1) * 3600
}

fn day_end_secs(m: i64) -> i64 {
    (m.div_euclid(1440) + 1) * 86_400
}

/// Adds `b` into `a`, slot by slot.
fn add_counts(a: &mut Counts, b: &Counts) {
    for i in 0..SLOTS {
        a[i] += b[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_of_calendar_units() {
        use notiflow_schema::time::days_from_civil;
        // 2026-12-31T23:59 → the day and the hour end at 2027-01-01.
        let m = days_from_civil(2026, 12, 31) * 1440 + 23 * 60 + 59;
        assert_eq!(day_end_secs(m), days_from_civil(2027, 1, 1) * 86_400);
        assert_eq!(hour_end_secs(m), days_from_civil(2027, 1, 1) * 86_400);
        assert_eq!(hour_end_secs(60), 7200);
    }

    #[test]
    fn a_lost_reply_is_recognised_as_applied_not_fenced() {
        let next = BTreeMap::from([(0, 10), (1, 20)]);
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_apply(&r(&["fenced", "0", "10", "1", "20"]), &next).unwrap(),
            Applied::AlreadyApplied
        );
        assert_eq!(
            parse_apply(&r(&["fenced", "1", "25"]), &next).unwrap(),
            Applied::Fenced(vec![(1, Some(25))])
        );
        assert_eq!(
            parse_apply(&r(&["fenced", "0", ""]), &BTreeMap::from([(0, 10)])).unwrap(),
            Applied::Fenced(vec![(0, None)])
        );
        assert_eq!(
            parse_apply(&r(&["ok", "1-0"]), &next).unwrap(),
            Applied::Ok("1-0".into())
        );
    }

    #[test]
    fn load_reply_restores_offset_and_window() {
        let mut packed = Vec::new();
        notiflow_ingest::sink::pack(77, &mut packed);
        let st = parse_load(
            &[
                b"42".to_vec(),
                b"10".to_vec(),
                b"00000000000000ff".to_vec(),
                b"10".to_vec(),
                packed,
            ],
            24,
        )
        .unwrap();
        assert_eq!(st.applied, Some(42));
        assert_eq!(st.anchor, Some(Anchor(255)));
        assert_eq!(st.cursor.next(), Some(42));
        let assigned = st.clone().assigned();
        assert_eq!(assigned.cursor.fetch_from(), Some(41), "at the anchor");
        let mut d = st.dedup;
        assert!(!d.insert(77, 10));
        let empty = parse_load(&[vec![], vec![], vec![]], 24).unwrap();
        assert_eq!(empty.applied, None);
        assert_eq!(empty.anchor, None);
        assert!(parse_load(&[b"1".to_vec(), vec![], b"zz".to_vec()], 24).is_err());
    }
}
