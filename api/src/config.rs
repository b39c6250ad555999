//! The `[api]` section: where the API listens, who may call it, and the
//! limits that keep one caller from hurting the others. Validated at
//! start-up, each error naming its field.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use utoipa::ToSchema;

/// What a key may do (a key's configured role; `auth` checks it on
/// every request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees one client's counters, stream and detail reports.
    Viewer,
    /// Sees every client; runs and downloads billing.
    Finance,
    /// Everything.
    Admin,
}

/// The HTTP API and the live stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// `host:port` to listen on.
    pub listen: String,
    /// API keys, inline (`[[api.keys]]`).
    pub keys: Vec<KeyConfig>,
    /// A TOML file with more keys as `[[keys]]` (a mounted secret); empty: none.
    pub keys_file: String,
    /// Longest wait for one counter read from Redis, milliseconds; a slower
    /// read counts as a failure of the circuit breaker.
    pub counter_timeout_ms: u64,
    /// Consecutive failed reads that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before one probe read, milliseconds.
    pub breaker_cooldown_ms: u64,
    /// Memory for last known answers (stale reads while Redis is down),
    /// MiB; each answer is weighed by its size.
    pub stale_cache_mib: u64,
    /// A last known answer older than this is forgotten, seconds.
    pub stale_cache_ttl_secs: u64,
    /// An answer this young (milliseconds) is reused for the same request
    /// without asking Redis; 0 turns it off. At most 1000 (counters must be
    /// fresh within a second).
    pub fresh_cache_ms: u64,
    /// Frames queued per live stream; a stream that falls this far behind is dropped.
    pub stream_queue: usize,
    /// Seconds between heartbeats on live streams.
    pub heartbeat_secs: u64,
    /// Most live streams at once; more get 503.
    pub max_streams: usize,
    /// Most live streams of one API key; more get 429.
    pub max_streams_per_key: usize,
    /// Most open connections; more are answered 503 and closed.
    pub max_connections: usize,
    /// A connection must send a request's headers within this long, ms.
    pub header_read_timeout_ms: u64,
    /// A connection that moves no byte either way for this long is closed,
    /// seconds (live streams send heartbeats, so they stay open).
    pub idle_timeout_secs: u64,
    /// Minutes of counters in a live stream's snapshot.
    pub snapshot_minutes: u32,
    /// Widest range of an hourly series, days.
    pub max_hour_range_days: u32,
    /// Widest range of a daily series, days.
    pub max_day_range_days: u32,
    /// On-demand report runs remembered for polling and download.
    pub report_runs_kept: usize,
    /// Report runs one key may have queued or running at once; more get 429.
    pub report_runs_per_key: usize,
    /// A report run taking longer than this fails, seconds.
    pub report_timeout_secs: u64,
}

/// One API key: its sha256 (never the key itself), role and client.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Who holds it (logs, metrics).
    pub name: String,
    /// Lower-case hex sha256 of the key (`notiflow api-key` prints one).
    pub sha256: String,
    /// What it may do.
    pub role: Role,
    /// The one client a `viewer` sees; must be empty for other roles.
    #[serde(default)]
    pub client: Option<String>,
    /// May see recipients unmasked in detail reports.
    #[serde(default)]
    pub pii: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    keys: Vec<KeyConfig>,
}

/// A config value that breaks a rule.
#[derive(Debug, thiserror::Error)]
#[error("config field `{field}`: {why}")]
pub struct FieldError {
    /// Dotted path.
    pub field: String,
    /// What is wrong.
    pub why: String,
}

fn bad(field: impl Into<String>, why: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        why: why.into(),
    }
}

impl ApiConfig {
    /// Every key: inline ones, then those of `keys_file`.
    pub fn all_keys(&self) -> Result<Vec<KeyConfig>, FieldError> {
        let mut keys = self.keys.clone();
        if !self.keys_file.is_empty() {
            let text = std::fs::read_to_string(Path::new(&self.keys_file))
                .map_err(|e| bad("api.keys_file", format!("{}: {e}", self.keys_file)))?;
            let file: KeysFile = toml::from_str(&text)
                .map_err(|e| bad("api.keys_file", format!("{}: {e}", self.keys_file)))?;
            keys.extend(file.keys);
        }
        Ok(keys)
    }

    /// Rules serde cannot check.
    pub fn validate(&self) -> Result<(), FieldError> {
        self.valid_keys().map(|_| ())
    }

    /// Checks every rule and returns the keys (inline and from
    /// `keys_file`, read once).
    pub fn valid_keys(&self) -> Result<Vec<KeyConfig>, FieldError> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(bad(
                "api.listen",
                format!("{:?} is not host:port", self.listen),
            ));
        }
        let positive = [
            ("api.counter_timeout_ms", self.counter_timeout_ms),
            ("api.breaker_failures", u64::from(self.breaker_failures)),
            ("api.breaker_cooldown_ms", self.breaker_cooldown_ms),
            ("api.stale_cache_mib", self.stale_cache_mib),
            ("api.stale_cache_ttl_secs", self.stale_cache_ttl_secs),
            ("api.max_streams_per_key", self.max_streams_per_key as u64),
            ("api.max_connections", self.max_connections as u64),
            ("api.header_read_timeout_ms", self.header_read_timeout_ms),
            ("api.idle_timeout_secs", self.idle_timeout_secs),
            ("api.report_runs_per_key", self.report_runs_per_key as u64),
            ("api.report_timeout_secs", self.report_timeout_secs),
            ("api.stream_queue", self.stream_queue as u64),
            ("api.heartbeat_secs", self.heartbeat_secs),
            ("api.max_streams", self.max_streams as u64),
            ("api.snapshot_minutes", u64::from(self.snapshot_minutes)),
            (
                "api.max_hour_range_days",
                u64::from(self.max_hour_range_days),
            ),
            ("api.max_day_range_days", u64::from(self.max_day_range_days)),
            ("api.report_runs_kept", self.report_runs_kept as u64),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(bad(field, "must be at least 1"));
            }
        }
        if self.fresh_cache_ms > 1000 {
            return Err(bad(
                "api.fresh_cache_ms",
                "at most 1000 (counters must be fresh within a second)",
            ));
        }
        if self.idle_timeout_secs <= 2 * self.heartbeat_secs {
            return Err(bad(
                "api.idle_timeout_secs",
                format!(
                    "must be more than twice api.heartbeat_secs ({}), or live streams are cut \
                     between heartbeats",
                    self.heartbeat_secs
                ),
            ));
        }
        if self.max_streams_per_key > self.max_streams {
            return Err(bad(
                "api.max_streams_per_key",
                format!("at most api.max_streams ({})", self.max_streams),
            ));
        }
        if self.snapshot_minutes > 24 * 60 {
            return Err(bad("api.snapshot_minutes", "at most 1440 (one day)"));
        }
        let mut seen = HashSet::new();
        let keys = self.all_keys()?;
        for (i, k) in keys.iter().enumerate() {
            let field = |f: &str| format!("api.keys[{i}].{f}");
            let hex_ok = k.sha256.len() == 64
                && k.sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex_ok {
                return Err(bad(field("sha256"), "must be 64 lower-case hex digits"));
            }
            if !seen.insert(k.sha256.clone()) {
                return Err(bad(field("sha256"), "the same key is listed twice"));
            }
            match (k.role, &k.client) {
                (Role::Viewer, None) => {
                    return Err(bad(field("client"), "a viewer key needs its client"));
                }
                (Role::Viewer, Some(c)) => notiflow_reports::detail::check_client(c)
                    .map_err(|e| bad(field("client"), e.to_string()))?,
                (_, Some(_)) => {
                    return Err(bad(
                        field("client"),
                        "only viewer keys name a client (finance and admin see all)",
                    ));
                }
                (_, None) => {}
            }
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ApiConfig {
        ApiConfig {
            listen: "127.0.0.1:0".into(),
            keys: vec![],
            keys_file: String::new(),
            counter_timeout_ms: 250,
            breaker_failures: 3,
            breaker_cooldown_ms: 2000,
            stale_cache_mib: 16,
            stale_cache_ttl_secs: 900,
            fresh_cache_ms: 0,
            stream_queue: 64,
            heartbeat_secs: 15,
            max_streams: 10,
            max_streams_per_key: 5,
            max_connections: 100,
            header_read_timeout_ms: 10_000,
            idle_timeout_secs: 60,
            snapshot_minutes: 60,
            max_hour_range_days: 31,
            max_day_range_days: 400,
            report_runs_kept: 10,
            report_runs_per_key: 2,
            report_timeout_secs: 600,
        }
    }

    fn key(role: Role, client: Option<&str>) -> KeyConfig {
        KeyConfig {
            name: "k".into(),
            sha256: "ab".repeat(32),
            role,
            client: client.map(String::from),
            pii: false,
        }
    }

    #[test]
    fn bad_keys_name_their_field() {
        let mut c = cfg();
        c.keys = vec![key(Role::Viewer, None)];
        assert_eq!(c.validate().unwrap_err().field, "api.keys[0].client");
        c.keys = vec![key(Role::Admin, Some("acme"))];
        assert_eq!(c.validate().unwrap_err().field, "api.keys[0].client");
        c.keys = vec![key(Role::Viewer, Some("acme")), key(Role::Finance, None)];
        assert_eq!(c.validate().unwrap_err().field, "api.keys[1].sha256");
        c.keys = vec![KeyConfig {
            sha256: "AB".repeat(32),
            ..key(Role::Admin, None)
        }];
        assert_eq!(c.validate().unwrap_err().field, "api.keys[0].sha256");
        c.keys = vec![key(Role::Viewer, Some("acme"))];
        c.validate().unwrap();
        c.listen = "nowhere".into();
        assert_eq!(c.validate().unwrap_err().field, "api.listen");
    }

    #[test]
    fn limits_that_would_cut_streams_or_be_unreachable_are_refused() {
        let mut c = cfg();
        c.idle_timeout_secs = 30; // heartbeats every 15 s
        assert_eq!(c.validate().unwrap_err().field, "api.idle_timeout_secs");
        let mut c = cfg();
        c.max_streams_per_key = 11;
        assert_eq!(c.validate().unwrap_err().field, "api.max_streams_per_key");
        let mut c = cfg();
        c.report_runs_per_key = 0;
        assert_eq!(c.validate().unwrap_err().field, "api.report_runs_per_key");
    }

    #[test]
    fn keys_file_adds_keys_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        std::fs::write(
            &path,
            format!(
                "[[keys]]\nname = \"f\"\nsha256 = \"{}\"\nrole = \"finance\"\n",
                "cd".repeat(32)
            ),
        )
        .unwrap();
        let mut c = cfg();
        c.keys_file = path.display().to_string();
        assert_eq!(c.all_keys().unwrap().len(), 1);
        std::fs::write(&path, "[[keys]]\nname = 1\n").unwrap();
        assert_eq!(c.validate().unwrap_err().field, "api.keys_file");
    }
}
