//! What can go wrong in the aggregator, and whether waiting helps.

use notiflow_ingest::sink::IngestError;

/// Aggregator errors.
#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    /// Redis did not answer or refused a command (an outside system; retry).
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Kafka or decoding set-up failed.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// Redis answered something the scripts never return (a bug or a
    /// foreign writer on our keys; not retryable).
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
    /// Bad configuration (the user's fault; fix and restart).
    #[error("config: {0}")]
    Config(String),
    /// Shutdown was asked for while waiting.
    #[error("shut down")]
    ShutDown,
}

impl AggregatorError {
    /// True if the same operation may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            AggregatorError::Redis(e) => redis_can_heal(e),
            AggregatorError::Ingest(e) => e.is_retryable(),
            AggregatorError::Protocol(_)
            | AggregatorError::Config(_)
            | AggregatorError::ShutDown => false,
        }
    }
}

impl AggregatorError {
    /// The key and the reason when Redis refused a batch because of one
    /// of its keys (`APPLY`'s `NOTIFLOW_REFUSED`, or a `WRONGTYPE`): an
    /// error about that batch's keys, not about the connection or the
    /// deployment, so only the partitions of that batch stop
    /// (`refusal`).
    pub fn refusal(&self) -> Option<(String, String)> {
        let AggregatorError::Redis(e) = self else {
            return None;
        };
        let detail = e.detail().unwrap_or_default();
        match e.code() {
            Some("NOTIFLOW_REFUSED") => Some((
                detail.split_whitespace().next().unwrap_or("?").to_string(),
                detail.to_string(),
            )),
            Some("WRONGTYPE") => Some(("?".into(), format!("WRONGTYPE {detail}"))),
            _ if detail.contains("WRONGTYPE") => Some(("?".into(), detail.to_string())),
            _ => None,
        }
    }
}

/// Whether waiting and retrying can get a Redis command through: a lost or
/// refused connection, a server that is loading, busy, out of memory or
/// failing to persist, a cluster between failovers. Not: an error the
/// command itself causes on every try (a script error, a key of another
/// type, MOVED/ASK/CROSSSLOT on a cluster, READONLY on a replica this
/// connection stays bound to, no such script, bad credentials). Those stop
/// the aggregator with the reason instead of looping while lag grows.
pub fn redis_can_heal(e: &redis::RedisError) -> bool {
    use redis::ErrorKind as K;
    match e.kind() {
        K::IoError
        | K::ClientError
        | K::BusyLoadingError
        | K::TryAgain
        | K::ClusterDown
        | K::MasterDown
        | K::ClusterConnectionNotFound => true,
        K::ExtensionError => matches!(e.code(), Some("OOM" | "BUSY" | "MISCONF" | "LOADING")),
        K::ResponseError => e
            .detail()
            .is_some_and(|d| d.starts_with("max number of clients")),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use redis::{ErrorKind, RedisError, make_extension_error};

    use super::*;

    fn server(code: &str, detail: &str) -> RedisError {
        // As redis-rs parses an error reply: known codes get a kind of
        // their own, others are extension errors with the code kept.
        let kind = match code {
            "ERR" => Some(ErrorKind::ResponseError),
            "MOVED" => Some(ErrorKind::Moved),
            "ASK" => Some(ErrorKind::Ask),
            "CROSSSLOT" => Some(ErrorKind::CrossSlot),
            "READONLY" => Some(ErrorKind::ReadOnly),
            "NOSCRIPT" => Some(ErrorKind::NoScriptError),
            "LOADING" => Some(ErrorKind::BusyLoadingError),
            "TRYAGAIN" => Some(ErrorKind::TryAgain),
            "CLUSTERDOWN" => Some(ErrorKind::ClusterDown),
            "MASTERDOWN" => Some(ErrorKind::MasterDown),
            _ => None,
        };
        match kind {
            Some(k) => RedisError::from((k, "server error", detail.to_string())),
            None => make_extension_error(code.to_string(), Some(detail.to_string())),
        }
    }

    #[test]
    fn what_can_heal_is_retried_and_what_cannot_stops() {
        let heal = [
            ("LOADING", "Redis is loading the dataset in memory"),
            ("OOM", "command not allowed when used memory > 'maxmemory'"),
            ("BUSY", "Redis is busy running a script"),
            (
                "MISCONF",
                "Redis is configured to save RDB snapshots, but it's currently unable to persist",
            ),
            ("TRYAGAIN", "Multiple keys request during rehashing of slot"),
            ("CLUSTERDOWN", "The cluster is down"),
            ("MASTERDOWN", "Link with MASTER is down"),
            ("ERR", "max number of clients reached"),
        ];
        for (code, detail) in heal {
            let e = AggregatorError::Redis(server(code, detail));
            assert!(e.is_retryable(), "{code} {detail}");
        }
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
        assert!(AggregatorError::Redis(RedisError::from(io)).is_retryable());
        let stop = [
            ("CROSSSLOT", "Keys in request don't hash to the same slot"),
            ("MOVED", "3999 127.0.0.1:6381"),
            ("ASK", "3999 127.0.0.1:6381"),
            ("READONLY", "You can't write against a read only replica."),
            ("NOSCRIPT", "No matching script."),
            (
                "ERR",
                "user_script:40: WRONGTYPE Operation against a key holding the wrong kind of value",
            ),
            (
                "WRONGTYPE",
                "Operation against a key holding the wrong kind of value",
            ),
            (
                "NOTIFLOW_REFUSED",
                "nf:m:{acme}:2026112322 holds a string, not a hash",
            ),
            (
                "NOPERM",
                "this user has no permissions to run the 'evalsha' command",
            ),
            ("WRONGPASS", "invalid username-password pair"),
        ];
        for (code, detail) in stop {
            let e = AggregatorError::Redis(server(code, detail));
            assert!(!e.is_retryable(), "{code} {detail}");
            // Only what names the batch's keys stops its partitions alone;
            // the rest (permissions, cluster, scripts) stops the process.
            let about_keys =
                matches!(code, "NOTIFLOW_REFUSED" | "WRONGTYPE") || detail.contains("WRONGTYPE");
            assert_eq!(e.refusal().is_some(), about_keys, "{code} {detail}");
        }
        let e = AggregatorError::Redis(server(
            "NOTIFLOW_REFUSED",
            "nf:m:{acme}:2026112322 holds a string, not a hash",
        ));
        assert_eq!(
            e.refusal().unwrap().0,
            "nf:m:{acme}:2026112322",
            "the key is named"
        );
    }
}
