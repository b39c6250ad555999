//! Where Avro writer schemas come from, by schema id.
//!
//! By default a local map of schema id → `.avsc` (notiflow's own schema is id
//! 1); in production a Confluent-compatible Schema Registry over HTTP
//! (`GET {url}/schemas/ids/{id}`). Answers are cached by the decoder, so the
//! registry is asked once per id per process.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::IngestError;

/// Schema id under which notiflow's own `.avsc` is known when no file map says otherwise.
pub const BUILTIN_SCHEMA_ID: u32 = 1;

/// Schema id of notiflow's own `.avsc` with `pricing_type` (v2).
pub const BUILTIN_SCHEMA_ID_V2: u32 = 2;

/// notiflow's own schemas, by id.
fn builtins() -> BTreeMap<u32, String> {
    BTreeMap::from([
        (BUILTIN_SCHEMA_ID, notiflow_schema::AVRO_SCHEMA.to_string()),
        (
            BUILTIN_SCHEMA_ID_V2,
            notiflow_schema::AVRO_SCHEMA_V2.to_string(),
        ),
    ])
}

/// A source of writer schemas.
#[derive(Debug, Clone)]
pub enum SchemaRegistry {
    /// Schemas held in memory, loaded from files at start-up.
    Local(BTreeMap<u32, String>),
    /// A Confluent-compatible registry.
    Http {
        /// Base URL, without a trailing slash.
        base: String,
        /// Shared HTTP client (timeouts set).
        client: reqwest::Client,
        /// How long an id it does not know holds its records' partitions
        /// before they are dead letters ([`SchemaRegistry::unknown_id_grace`]).
        grace: Duration,
    },
}

/// How long a registry may not know an id before its records are dead
/// letters, unless configured (`schema_registry.unknown_id_grace_secs`).
pub const UNKNOWN_ID_GRACE: Duration = Duration::from_secs(60);

impl SchemaRegistry {
    /// Only notiflow's built-in schemas, as ids [`BUILTIN_SCHEMA_ID`] and
    /// [`BUILTIN_SCHEMA_ID_V2`].
    pub fn builtin() -> Self {
        SchemaRegistry::Local(builtins())
    }

    /// Loads `.avsc` files (id → path) plus the built-in schemas unless a file takes their id.
    pub fn from_files(files: &BTreeMap<u32, PathBuf>) -> Result<Self, IngestError> {
        let mut map = builtins();
        for (id, path) in files {
            let text = std::fs::read_to_string(path).map_err(|e| IngestError::SchemaFile {
                path: path.display().to_string(),
                why: e.to_string(),
            })?;
            crate::codec::avro_schema::parse(&text).map_err(|why| IngestError::SchemaFile {
                path: path.display().to_string(),
                why,
            })?;
            map.insert(*id, text);
        }
        Ok(SchemaRegistry::Local(map))
    }

    /// A Confluent-compatible registry at `url`.
    pub fn http(url: &str, timeout: Duration) -> Result<Self, IngestError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| IngestError::Config(format!("schema registry client: {e}")))?;
        Ok(SchemaRegistry::Http {
            base: url.trim_end_matches('/').to_string(),
            client,
            grace: UNKNOWN_ID_GRACE,
        })
    }

    /// The same registry, holding unknown ids for `grace`.
    pub fn with_unknown_id_grace(mut self, d: Duration) -> Self {
        if let SchemaRegistry::Http { grace, .. } = &mut self {
            *grace = d;
        }
        self
    }

    /// How long a record whose schema id the registry does not know holds
    /// its partition (asked again meanwhile) before it is a dead letter:
    /// a registry learns ids late (replicas lag), and both consumer groups
    /// must reach the same verdict. Zero for local schemas, which never
    /// change while the process runs.
    pub fn unknown_id_grace(&self) -> Duration {
        match self {
            SchemaRegistry::Local(_) => Duration::ZERO,
            SchemaRegistry::Http { grace, .. } => *grace,
        }
    }

    /// The schema text for `id`; `None` when the registry says it has no such id.
    pub async fn fetch(&self, id: u32) -> Result<Option<String>, IngestError> {
        match self {
            SchemaRegistry::Local(map) => Ok(map.get(&id).cloned()),
            SchemaRegistry::Http { base, client, .. } => {
                #[derive(serde::Deserialize)]
                struct Answer {
                    schema: String,
                }
                let url = format!("{base}/schemas/ids/{id}");
                let resp = client
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| IngestError::Registry(format!("{url}: {e}")))?;
                if resp.status() == reqwest::StatusCode::NOT_FOUND {
                    return Ok(None);
                }
                let resp = resp
                    .error_for_status()
                    .map_err(|e| IngestError::Registry(format!("{url}: {e}")))?;
                let answer: Answer = resp
                    .json()
                    .await
                    .map_err(|e| IngestError::Registry(format!("{url}: bad answer: {e}")))?;
                Ok(Some(answer.schema))
            }
        }
    }
}
