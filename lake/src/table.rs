//! The Iceberg table: opening the catalog, creating the table, and
//! committing snapshots with a compare-and-swap the writer controls.
//!
//! iceberg-rust 0.10's `Transaction::commit` reloads the table and re-applies
//! its actions when the catalog reports a conflict. That is right for a plain
//! append, but it would let a fenced commit (SPEC §4) slip through after the
//! check, and it has no action that removes files (compaction). So notiflow
//! stages its snapshots itself ([`stage`]: manifests, manifest list, new
//! metadata) and swaps the metadata pointer in the SQL catalog's own table
//! with `UPDATE … WHERE metadata_location = <the one we read>` ([`Lake::swap`]):
//! a commit lands exactly on the table state its checks were made against,
//! or not at all.
//!
//! Snapshot summaries carry `notiflow.offsets` (the next Kafka offset of
//! every partition, per topic), `notiflow.watermarks` (per partition, the
//! broker time up to which everything is committed: what billing waits
//! for, [`complete_until`]) and `notiflow.dedup-file` (the dedup
//! fingerprints of the rows the snapshot added; see [`crate::dedup_log`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use iceberg::spec::{
    DataFile, MAIN_BRANCH, ManifestListWriter, ManifestWriterBuilder, Operation, Snapshot,
    SnapshotReference, SnapshotRetention, Summary, TableMetadata,
};
use iceberg::table::Table;
use iceberg::{
    Catalog, CatalogBuilder, MetadataLocation, NamespaceIdent, TableCreation, TableIdent,
    TableUpdate,
};
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalog, SqlCatalogBuilder};
use iceberg_storage_opendal::OpenDalResolvingStorageFactory;
use sqlx::AnyPool;
use uuid::Uuid;

use crate::config::LakeConfig;
use crate::error::LakeError;
use crate::rows::{partition_spec, sort_order, table_schema};

/// Summary property: `{"<topic>": {"<partition>": <next offset>}}`.
pub const OFFSETS_PROP: &str = "notiflow.offsets";
/// Summary property: path of the dedup file of the rows a snapshot added.
pub const DEDUP_PROP: &str = "notiflow.dedup-file";
/// Summary property: `{"<topic>": {"<partition>": <newest dedup generation>}}`,
/// written and carried with the offsets: the dedup window of a partition
/// is anchored on it, never on a commit time.
pub const GENERATIONS_PROP: &str = "notiflow.generations";
/// Summary property of a snapshot with a dedup file: the newest generation
/// in that file (a restore skips files wholly older than the window).
pub const DEDUP_MAX_GEN_PROP: &str = "notiflow.dedup-max-generation";

/// Summary property of a snapshot (not carried): `{"<topic>": [<partition>, …]}`,
/// the partitions whose *whole* dedup window the snapshot's dedup file
/// holds (a checkpoint, `round::Round::checkpoint`). A restore of such a
/// partition reads no older file, and snapshot expiry keeps nothing older
/// for it: a partition gone quiet would otherwise pin every snapshot since
/// its last event.
pub const DEDUP_WHOLE_PROP: &str = "notiflow.dedup-whole";

/// Summary property: `{"<topic>": {"<partition>": "<anchor, 16 hex>"}}`,
/// written and carried with the offsets: the fingerprint of the last record
/// taken before each partition's next offset (`ingest::cursor`), so a
/// writer can tell the log it resumes in is the same one. An operator's
/// `accept-gap` removes the partition's entry.
pub const ANCHORS_PROP: &str = "notiflow.anchors";

/// Summary property: `{"<topic>": {"<partition>": <broker time, ms>}}`,
/// written and carried with the offsets: every record of the partition
/// appended up to that broker time is committed (its newest committed
/// record's LogAppendTime, bounded by the partition's dedup generation;
/// or, for a partition the writer had caught up with, the time it checked).
pub const WATERMARKS_PROP: &str = "notiflow.watermarks";

/// Summary property: `{"<topic>": <partitions>}`, written and carried with
/// the offsets: how many partitions the topic had when a writer last looked
/// (its metadata). Completeness counts every one of them, not only those
/// that ever committed: a partition no writer committed yet holds billing
/// back instead of being left out.
pub const PARTITIONS_PROP: &str = "notiflow.partitions";

/// Summary property: `["<topic>", …]`, carried forward: topics retired by
/// `notiflow lake retire-topic` (no writer reads them any more). Their
/// offsets and watermarks stay, but completeness no longer waits for them;
/// a writer committing a retired topic again takes it off the list.
pub const RETIRED_PROP: &str = "notiflow.retired-topics";

/// Next offsets per topic, then partition.
pub type TopicOffsets = BTreeMap<String, BTreeMap<i32, i64>>;
/// Completeness watermarks (broker time, ms) per topic, then partition.
pub type TopicWatermarks = BTreeMap<String, BTreeMap<i32, i64>>;
/// Newest dedup generation per topic, then partition.
pub type TopicGenerations = BTreeMap<String, BTreeMap<i32, u32>>;
/// Per topic, per partition: an anchor, as 16 hex digits.
pub type TopicAnchors = BTreeMap<String, BTreeMap<i32, String>>;

/// An open catalog and the notiflow table in it.
pub struct Lake {
    catalog: SqlCatalog,
    pool: AnyPool,
    dollar: bool,
    catalog_name: String,
    ident: TableIdent,
}

/// What a table is made of when it is created: schema, partition spec and
/// sort order.
pub struct Layout {
    /// Schema.
    pub schema: iceberg::spec::Schema,
    /// Partition spec.
    pub spec: iceberg::spec::UnboundPartitionSpec,
    /// Sort order.
    pub sort: iceberg::spec::SortOrder,
}

impl Lake {
    /// Connects to the catalog and creates the namespace and the table if
    /// they do not exist yet.
    pub async fn open(cfg: &LakeConfig) -> Result<Lake, LakeError> {
        let layout = Layout {
            schema: table_schema()?,
            spec: partition_spec()?,
            sort: sort_order(),
        };
        let lake = Lake::open_table(cfg, &cfg.table, layout).await?;
        lake.add_missing_columns().await?;
        Ok(lake)
    }

    /// Adds the columns a table created by an earlier version lacks
    /// (`pricing_type`), by schema evolution: a new current schema with the
    /// optional field, fenced like a commit (another process adding it
    /// first is fine). Older data files read the column as null.
    async fn add_missing_columns(&self) -> Result<(), LakeError> {
        use iceberg::spec::TableMetadataBuilder;
        loop {
            let table = self.load().await?;
            let md = table.metadata();
            let current = md.current_schema();
            if current
                .field_by_id(crate::rows::field::PRICING_TYPE)
                .is_some()
            {
                return Ok(());
            }
            let mut fields: Vec<_> = current.as_struct().fields().to_vec();
            fields.push(crate::rows::pricing_type_field());
            let schema = iceberg::spec::Schema::builder()
                .with_schema_id(current.schema_id() + 1)
                .with_identifier_field_ids(current.identifier_field_ids())
                .with_fields(fields)
                .build()?;
            let next = TableMetadataBuilder::new_from_metadata(
                md.clone(),
                table.metadata_location().map(str::to_string),
            )
            .add_current_schema(schema)?
            .build()?
            .metadata;
            if self.swap(&table, next).await? {
                tracing::info!(table = %self.ident, "added column pricing_type");
                return Ok(());
            }
        }
    }

    /// [`Lake::open`] of another table `name` of the lake's namespace,
    /// created with `layout` if it does not exist (the reports' ledger of
    /// billed messages).
    pub async fn open_table(
        cfg: &LakeConfig,
        name: &str,
        layout: Layout,
    ) -> Result<Lake, LakeError> {
        let uri = catalog_uri(&cfg.catalog_uri)?;
        let dollar = !uri.starts_with("sqlite:");
        let mut props = cfg.storage_props();
        props.insert("uri".into(), uri.clone());
        props.insert("warehouse".into(), cfg.warehouse_url());
        let catalog = SqlCatalogBuilder::default()
            .sql_bind_style(if dollar {
                SqlBindStyle::DollarNumeric
            } else {
                SqlBindStyle::QMark
            })
            .with_storage_factory(Arc::new(OpenDalResolvingStorageFactory::new()))
            .load(cfg.catalog_name.clone(), props)
            .await?;
        sqlx::any::install_default_drivers();
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(2)
            .connect(&uri)
            .await?;
        let ns = NamespaceIdent::new(cfg.namespace.clone());
        let ident = TableIdent::new(ns.clone(), name.to_string());
        let lake = Lake {
            catalog,
            pool,
            dollar,
            catalog_name: cfg.catalog_name.clone(),
            ident,
        };
        lake.ensure_table(&ns, layout).await?;
        Ok(lake)
    }

    async fn ensure_table(&self, ns: &NamespaceIdent, layout: Layout) -> Result<(), LakeError> {
        if !self.catalog.namespace_exists(ns).await? {
            // Another writer may create it at the same moment.
            if let Err(e) = self.catalog.create_namespace(ns, HashMap::new()).await
                && !self.catalog.namespace_exists(ns).await?
            {
                return Err(e.into());
            }
        }
        if self.catalog.table_exists(&self.ident).await? {
            return Ok(());
        }
        let creation = TableCreation::builder()
            .name(self.ident.name().to_string())
            .schema(layout.schema)
            .partition_spec(layout.spec)
            .sort_order(layout.sort)
            .properties([
                ("write.format.default".to_string(), "parquet".to_string()),
                (
                    "write.parquet.compression-codec".to_string(),
                    "zstd".to_string(),
                ),
            ])
            .build();
        match self.catalog.create_table(ns, creation).await {
            Ok(t) => {
                tracing::info!(table = %self.ident, location = t.metadata().location(), "created table");
                Ok(())
            }
            Err(e) if self.catalog.table_exists(&self.ident).await? => {
                tracing::debug!(error = %e, "table created by another writer meanwhile");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The table as the catalog has it now.
    pub async fn load(&self) -> Result<Table, LakeError> {
        Ok(self.catalog.load_table(&self.ident).await?)
    }

    /// The catalog (for engines and maintenance actions).
    pub fn catalog(&self) -> &SqlCatalog {
        &self.catalog
    }

    /// The table's identifier.
    pub fn ident(&self) -> &TableIdent {
        &self.ident
    }

    /// Writes `metadata` as the table's next metadata file and makes it
    /// current if, and only if, the catalog still points at `base`'s. False
    /// on a conflict (someone else committed first: reload and decide again).
    pub async fn swap(&self, base: &Table, metadata: TableMetadata) -> Result<bool, LakeError> {
        let current = base.metadata_location_result()?;
        let next = MetadataLocation::from_str(current)?
            .with_next_version()
            .with_new_metadata(&metadata);
        metadata.write_to(base.file_io(), &next).await?;
        let next = next.to_string();
        let sql = "UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ? \
                   WHERE catalog_name = ? AND table_namespace = ? AND table_name = ? \
                   AND metadata_location = ?";
        let sql = if self.dollar {
            dollar(sql)
        } else {
            sql.to_string()
        };
        let done = sqlx::query(&sql)
            .bind(next.as_str())
            .bind(current)
            .bind(self.catalog_name.as_str())
            .bind(self.ident.namespace().join("."))
            .bind(self.ident.name())
            .bind(current)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// The sqlx URI of a configured catalog: SQLite files are created when
/// missing (with their folder). The run ledger of the reports opens the
/// same database with it.
pub fn catalog_uri(configured: &str) -> Result<String, LakeError> {
    let Some(path) = configured.strip_prefix("sqlite://") else {
        return Ok(configured.to_string());
    };
    if path.contains('?') || path.starts_with(":memory:") {
        return Ok(configured.to_string());
    }
    if let Some(dir) = std::path::Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| LakeError::Table(format!("cannot create {}: {e}", dir.display())))?;
    }
    Ok(format!("sqlite://{path}?mode=rwc"))
}

/// `?` placeholders as `$1, $2, …` (PostgreSQL).
pub fn dollar(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// The offsets of the latest snapshot that records them (compaction copies
/// them forward, so this is normally the current one).
pub fn committed_offsets(md: &TableMetadata) -> Result<TopicOffsets, LakeError> {
    carried(md, OFFSETS_PROP)
}

/// The newest dedup generations, as [`committed_offsets`] (tables written
/// before they were recorded have none: their partitions restore from
/// the fingerprints alone).
pub fn committed_generations(md: &TableMetadata) -> Result<TopicGenerations, LakeError> {
    carried(md, GENERATIONS_PROP)
}

/// The anchors, as [`committed_offsets`] (tables written before they were
/// recorded have none).
pub fn committed_anchors(md: &TableMetadata) -> Result<TopicAnchors, LakeError> {
    carried(md, ANCHORS_PROP)
}

/// The partition count of each topic, as [`committed_offsets`] (tables
/// written before it was recorded have none).
pub fn committed_partition_counts(md: &TableMetadata) -> Result<BTreeMap<String, i32>, LakeError> {
    carried(md, PARTITIONS_PROP)
}

/// The retired topics, as [`committed_offsets`].
pub fn retired_topics(md: &TableMetadata) -> Result<std::collections::BTreeSet<String>, LakeError> {
    carried(md, RETIRED_PROP)
}

/// The completeness watermarks, as [`committed_offsets`] (tables written
/// before they were recorded have none).
pub fn committed_watermarks(md: &TableMetadata) -> Result<TopicWatermarks, LakeError> {
    carried(md, WATERMARKS_PROP)
}

/// How complete the table is: the broker time up to which every partition
/// of every topic is committed (each partition the topic has, by its
/// recorded count, or else each that has committed offsets), and the
/// partition that holds it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completeness {
    /// No writer ever committed offsets (a table loaded in bulk only):
    /// there is nothing to wait for.
    Unrecorded,
    /// Everything up to `until_ms` is committed; `topic`/`partition` is
    /// the one furthest behind (`until_ms` = `i64::MIN` when it has no
    /// watermark yet: nothing of it committed, or written before
    /// watermarks were recorded).
    Until {
        /// Broker time, ms.
        until_ms: i64,
        /// Topic of the partition furthest behind.
        topic: String,
        /// That partition.
        partition: i32,
    },
}

/// The table's [`Completeness`] as of its current snapshot.
pub fn complete_until(md: &TableMetadata) -> Result<Completeness, LakeError> {
    let offsets = committed_offsets(md)?;
    let marks = committed_watermarks(md)?;
    let counts = committed_partition_counts(md)?;
    let retired = retired_topics(md)?;
    let mut worst: Option<Completeness> = None;
    for (topic, parts) in offsets.iter().filter(|(t, _)| !retired.contains(*t)) {
        let mut all: Vec<i32> = parts.keys().copied().collect();
        all.extend(0..counts.get(topic).copied().unwrap_or(0));
        all.sort_unstable();
        all.dedup();
        for p in &all {
            let until_ms = marks
                .get(topic)
                .and_then(|m| m.get(p))
                .copied()
                .unwrap_or(i64::MIN);
            let behind = match &worst {
                Some(Completeness::Until { until_ms: w, .. }) => until_ms < *w,
                _ => true,
            };
            if behind {
                worst = Some(Completeness::Until {
                    until_ms,
                    topic: topic.clone(),
                    partition: *p,
                });
            }
        }
    }
    Ok(worst.unwrap_or(Completeness::Unrecorded))
}

/// A JSON summary property of the latest snapshot that has it.
fn carried<T: serde::de::DeserializeOwned + Default>(
    md: &TableMetadata,
    prop: &str,
) -> Result<T, LakeError> {
    let mut snap = md.current_snapshot();
    while let Some(s) = snap {
        if let Some(v) = s.summary().additional_properties.get(prop) {
            return serde_json::from_str(v).map_err(|e| {
                LakeError::Table(format!("bad {prop} in snapshot {}: {e}", s.snapshot_id()))
            });
        }
        snap = s.parent_snapshot_id().and_then(|id| md.snapshot_by_id(id));
    }
    Ok(T::default())
}

/// Writes the carried JSON properties (offsets, generations, watermarks) of `md`'s
/// latest snapshots into `properties`, unchanged.
fn carry_forward(
    md: &TableMetadata,
    properties: &mut HashMap<String, String>,
) -> Result<(), LakeError> {
    let offsets = committed_offsets(md)?;
    if !offsets.is_empty() {
        properties.insert(OFFSETS_PROP.into(), to_json(&offsets)?);
    }
    let generations = committed_generations(md)?;
    if !generations.is_empty() {
        properties.insert(GENERATIONS_PROP.into(), to_json(&generations)?);
    }
    let counts = committed_partition_counts(md)?;
    if !counts.is_empty() {
        properties.insert(PARTITIONS_PROP.into(), to_json(&counts)?);
    }
    let retired = retired_topics(md)?;
    if !retired.is_empty() {
        properties.insert(RETIRED_PROP.into(), to_json(&retired)?);
    }
    let watermarks = committed_watermarks(md)?;
    if !watermarks.is_empty() {
        properties.insert(WATERMARKS_PROP.into(), to_json(&watermarks)?);
    }
    let anchors = committed_anchors(md)?;
    if !anchors.is_empty() {
        properties.insert(ANCHORS_PROP.into(), to_json(&anchors)?);
    }
    Ok(())
}

/// A summary property's JSON.
pub fn to_json(v: &impl serde::Serialize) -> Result<String, LakeError> {
    serde_json::to_string(v).map_err(|e| LakeError::Table(format!("summary property: {e}")))
}

/// The offsets of `topic`.
pub fn topic_offsets(md: &TableMetadata, topic: &str) -> Result<BTreeMap<i32, i64>, LakeError> {
    Ok(committed_offsets(md)?.remove(topic).unwrap_or_default())
}

/// What a snapshot changes.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// Data files it adds.
    pub added: Vec<DataFile>,
    /// Paths of data files it removes (compaction).
    pub removed: HashSet<String>,
    /// Properties stored in its summary.
    pub properties: HashMap<String, String>,
}

/// Commits `change` on top of whatever is current, carrying the writers'
/// offsets and dedup generations forward unchanged (compaction, bulk loads: snapshots that are
/// not a writer's round); the new snapshot's id and the number of conflicts
/// it staged again after.
pub async fn commit_carrying_offsets(
    lake: &Lake,
    change: &mut Change,
    operation: &str,
) -> Result<(i64, u64), LakeError> {
    let mut conflicts = 0;
    loop {
        let table = lake.load().await?;
        change.properties.clear();
        carry_forward(table.metadata(), &mut change.properties)?;
        change
            .properties
            .insert("notiflow.operation".into(), operation.into());
        let id = new_snapshot_id(table.metadata());
        let staged = stage(&table, id, change).await?;
        if lake.swap(&table, staged).await? {
            return Ok((id, conflicts));
        }
        conflicts += 1;
        tracing::info!(operation, "commit conflicted with another; staging again");
    }
}

/// Sets the next offset of `topic`'s partition `p` to `offset` in a
/// commit of its own (an operator accepting a gap in the log, see
/// docs/operations.md), without an anchor (the operator vouches for the
/// offset: the first record at or past it is taken); the offset it had,
/// and the new snapshot's id.
pub async fn set_offset(
    lake: &Lake,
    topic: &str,
    p: i32,
    offset: i64,
) -> Result<(Option<i64>, i64), LakeError> {
    let (from, id) = set_carried(lake, OFFSETS_PROP, "accept-gap", topic, p, offset).await?;
    tracing::warn!(
        topic,
        partition = p,
        ?from,
        to = offset,
        "next offset set by an operator"
    );
    Ok((from, id))
}

/// Sets the completeness watermark of `topic`'s partition `p` to `ms`
/// (broker time) in a commit of its own: an operator declaring a
/// partition that will receive nothing more complete (a topic being
/// retired), so that billing does not wait for it; the watermark it had,
/// and the new snapshot's id.
pub async fn set_watermark(
    lake: &Lake,
    topic: &str,
    p: i32,
    ms: i64,
) -> Result<(Option<i64>, i64), LakeError> {
    let (from, id) = set_carried(lake, WATERMARKS_PROP, "set-watermark", topic, p, ms).await?;
    tracing::warn!(
        topic,
        partition = p,
        ?from,
        to = ms,
        "completeness watermark set by an operator"
    );
    Ok((from, id))
}

/// Sets one partition's value of the carried map `prop` in a commit of its
/// own, carrying the rest; the value it had and the snapshot id.
async fn set_carried(
    lake: &Lake,
    prop: &str,
    operation: &str,
    topic: &str,
    p: i32,
    value: i64,
) -> Result<(Option<i64>, i64), LakeError> {
    loop {
        let table = lake.load().await?;
        let mut change = Change::default();
        carry_forward(table.metadata(), &mut change.properties)?;
        let mut map: BTreeMap<String, BTreeMap<i32, i64>> = carried(table.metadata(), prop)?;
        let from = map.entry(topic.to_string()).or_default().insert(p, value);
        change.properties.insert(prop.into(), to_json(&map)?);
        if prop == OFFSETS_PROP {
            // A new offset has no anchor: the old one names another record.
            let mut anchors = committed_anchors(table.metadata())?;
            if let Some(a) = anchors.get_mut(topic) {
                a.remove(&p);
            }
            change
                .properties
                .insert(ANCHORS_PROP.into(), to_json(&anchors)?);
        }
        change
            .properties
            .insert("notiflow.operation".into(), operation.into());
        let id = new_snapshot_id(table.metadata());
        let staged = stage(&table, id, &change).await?;
        if lake.swap(&table, staged).await? {
            return Ok((from, id));
        }
    }
}

/// Takes `topic` out of the dedup generations and anchors, in a commit of
/// its own: a topic no writer reads any more (retired after a migration to
/// another topic) no longer makes snapshot expiry keep the dedup files its
/// partitions' windows needed, for ever. Its offsets and completeness
/// watermarks stay (what was read, and the billing gate). Whether the
/// topic had generations, and the new snapshot's id.
pub async fn retire_topic(lake: &Lake, topic: &str) -> Result<(bool, i64), LakeError> {
    loop {
        let table = lake.load().await?;
        let md = table.metadata();
        let mut change = Change::default();
        carry_forward(md, &mut change.properties)?;
        // Written even when empty: a snapshot without the property would
        // let readers find an older snapshot's map, topic included.
        let mut generations = committed_generations(md)?;
        let had = generations.remove(topic).is_some();
        change
            .properties
            .insert(GENERATIONS_PROP.into(), to_json(&generations)?);
        let mut anchors = committed_anchors(md)?;
        anchors.remove(topic);
        change
            .properties
            .insert(ANCHORS_PROP.into(), to_json(&anchors)?);
        let mut retired = retired_topics(md)?;
        retired.insert(topic.to_string());
        change
            .properties
            .insert(RETIRED_PROP.into(), to_json(&retired)?);
        change
            .properties
            .insert("notiflow.operation".into(), "retire-topic".into());
        let id = new_snapshot_id(md);
        let staged = stage(&table, id, &change).await?;
        if lake.swap(&table, staged).await? {
            tracing::warn!(
                topic,
                had,
                "topic retired: its dedup windows no longer hold snapshots back, nor does it hold \
                 completeness (billing)"
            );
            return Ok((had, id));
        }
    }
}

/// Tags `snapshot_id` as `name`, an Iceberg tag kept `max_ref_age_ms`
/// after the snapshot was committed: expiry keeps a live tag's snapshot,
/// and orphan removal its files (a billing run pins the snapshot it read
/// for the dispute period, so that it can be reproduced exactly). Any
/// Iceberg engine reads it as `VERSION AS OF '<name>'`.
pub async fn tag_snapshot(
    lake: &Lake,
    name: &str,
    snapshot_id: i64,
    max_ref_age_ms: i64,
) -> Result<(), LakeError> {
    loop {
        let table = lake.load().await?;
        let md = table.metadata();
        if md.snapshot_by_id(snapshot_id).is_none() {
            return Err(LakeError::Table(format!(
                "snapshot {snapshot_id} is not in the table (expired?): cannot tag it {name}"
            )));
        }
        if md
            .snapshot_for_ref(name)
            .is_some_and(|s| s.snapshot_id() == snapshot_id)
        {
            return Ok(());
        }
        let reference = SnapshotReference {
            snapshot_id,
            retention: SnapshotRetention::Tag {
                max_ref_age_ms: Some(max_ref_age_ms),
            },
        };
        let next = md
            .clone()
            .into_builder(table.metadata_location().map(str::to_string))
            .set_ref(name, reference)?
            .build()?
            .metadata;
        if lake.swap(&table, next).await? {
            return Ok(());
        }
    }
}

/// A new snapshot id not used by `md`.
pub fn new_snapshot_id(md: &TableMetadata) -> i64 {
    loop {
        let (hi, lo) = Uuid::new_v4().as_u64_pair();
        let id = ((hi ^ lo) & (i64::MAX as u64)) as i64;
        if id != 0 && md.snapshot_by_id(id).is_none() {
            return id;
        }
    }
}

/// Writes the manifests and manifest list of a snapshot that applies
/// `change` on top of `base`'s current snapshot, and returns the table
/// metadata that makes it current. Nothing is visible until [`Lake::swap`].
pub async fn stage(
    base: &Table,
    snapshot_id: i64,
    change: &Change,
) -> Result<TableMetadata, LakeError> {
    stage_at(
        base,
        snapshot_id,
        change,
        chrono::Utc::now().timestamp_millis(),
    )
    .await
}

/// The timestamp of a snapshot staged at wall-clock `now_ms` on `md`: never
/// before the table's last update or last snapshot. Iceberg refuses a
/// snapshot more than a minute older than those, so a writer whose clock is
/// behind another committer's (a maintenance host running fast, say) would
/// otherwise be refused on every try.
pub fn snapshot_time_ms(md: &TableMetadata, now_ms: i64) -> i64 {
    let last = md.history().last().map_or(md.last_updated_ms(), |l| {
        l.timestamp_ms.max(md.last_updated_ms())
    });
    now_ms.max(last.saturating_add(1))
}

/// [`stage`] with the committer's clock given: `now_ms`.
pub async fn stage_at(
    base: &Table,
    snapshot_id: i64,
    change: &Change,
    now_ms: i64,
) -> Result<TableMetadata, LakeError> {
    let md = base.metadata();
    let io = base.file_io();
    let parent = md.current_snapshot();
    let seq = md.next_sequence_number();
    let schema = md.current_schema().clone();
    let spec = md.default_partition_spec().as_ref().clone();
    let attempt = Uuid::new_v4();
    let meta = format!("{}/metadata", md.location());
    let mut manifests = Vec::new();
    let mut removed_found = 0usize;
    let (mut del_rows, mut del_size) = (0u64, 0u64);
    if let Some(parent) = parent {
        let list = base.manifest_list_reader(parent).load().await?;
        // The surviving entries of every manifest that lists a removed file
        // go into one new manifest, so compaction also merges the small
        // manifests that 60-s appends leave behind.
        let mut rewritten = None;
        for mf in list.entries() {
            if change.removed.is_empty() {
                manifests.push(mf.clone());
                continue;
            }
            let manifest = mf.load_manifest(io).await?;
            let touched = manifest
                .entries()
                .iter()
                .any(|e| e.is_alive() && change.removed.contains(e.file_path()));
            if !touched {
                manifests.push(mf.clone());
                continue;
            }
            let w = match rewritten.as_mut() {
                Some(w) => w,
                None => {
                    let out = io.new_output(format!("{meta}/{attempt}-r.avro"))?;
                    rewritten.insert(
                        ManifestWriterBuilder::new(
                            out,
                            Some(snapshot_id),
                            schema.clone(),
                            spec.clone(),
                        )
                        .build_v2_data(),
                    )
                }
            };
            for e in manifest.entries() {
                if !e.is_alive() {
                    continue;
                }
                let seq_n = e.sequence_number().unwrap_or(0);
                if change.removed.contains(e.file_path()) {
                    removed_found += 1;
                    del_rows += e.record_count();
                    del_size += e.file_size_in_bytes();
                    w.add_delete_file(e.data_file().clone(), seq_n, e.file_sequence_number)?;
                } else {
                    w.add_existing_file(
                        e.data_file().clone(),
                        e.snapshot_id().unwrap_or(snapshot_id),
                        seq_n,
                        e.file_sequence_number,
                    )?;
                }
            }
        }
        if let Some(w) = rewritten {
            manifests.push(w.write_manifest_file().await?);
        }
    }
    if removed_found != change.removed.len() {
        return Err(LakeError::Table(format!(
            "{} of the {} files to remove are no longer in the table",
            change.removed.len() - removed_found,
            change.removed.len()
        )));
    }
    let (mut add_rows, mut add_size) = (0u64, 0u64);
    if !change.added.is_empty() {
        let out = io.new_output(format!("{meta}/{attempt}-a.avro"))?;
        let mut w =
            ManifestWriterBuilder::new(out, Some(snapshot_id), schema.clone(), spec.clone())
                .build_v2_data();
        for f in &change.added {
            add_rows += f.record_count();
            add_size += f.file_size_in_bytes();
            // A negative sequence number: inherited from the manifest list.
            w.add_file(f.clone(), -1)?;
        }
        manifests.push(w.write_manifest_file().await?);
    }
    let list_path = format!("{meta}/snap-{snapshot_id}-{attempt}.avro");
    let mut list = ManifestListWriter::v2(
        io.new_output(&list_path)?.writer().await?,
        snapshot_id,
        parent.map(|p| p.snapshot_id()),
        seq,
    );
    list.add_manifests(manifests.into_iter())?;
    list.close().await?;

    let prev = parent.map(|p| &p.summary().additional_properties);
    let total = |key: &str| -> u64 {
        prev.and_then(|p| p.get(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let mut props = change.properties.clone();
    let mut set = |k: &str, v: u64| {
        props.insert(k.to_string(), v.to_string());
    };
    set("added-data-files", change.added.len() as u64);
    set("added-records", add_rows);
    set("added-files-size", add_size);
    set("deleted-data-files", removed_found as u64);
    set("deleted-records", del_rows);
    set("removed-files-size", del_size);
    set(
        "total-data-files",
        (total("total-data-files") + change.added.len() as u64)
            .saturating_sub(removed_found as u64),
    );
    set(
        "total-records",
        (total("total-records") + add_rows).saturating_sub(del_rows),
    );
    set(
        "total-files-size",
        (total("total-files-size") + add_size).saturating_sub(del_size),
    );
    set("total-delete-files", 0);
    set("total-position-deletes", 0);
    set("total-equality-deletes", 0);
    let operation = if change.removed.is_empty() {
        Operation::Append
    } else {
        Operation::Replace
    };
    let snapshot = Snapshot::builder()
        .with_snapshot_id(snapshot_id)
        .with_parent_snapshot_id(parent.map(|p| p.snapshot_id()))
        .with_sequence_number(seq)
        .with_timestamp_ms(snapshot_time_ms(md, now_ms))
        .with_manifest_list(list_path)
        .with_summary(Summary {
            operation,
            additional_properties: props,
        })
        .with_schema_id(md.current_schema_id())
        .build();
    let mut builder = md
        .clone()
        .into_builder(Some(base.metadata_location_result()?.to_string()));
    builder = TableUpdate::AddSnapshot { snapshot }.apply(builder)?;
    builder = TableUpdate::SetSnapshotRef {
        ref_name: MAIN_BRANCH.to_string(),
        reference: SnapshotReference::new(snapshot_id, SnapshotRetention::branch(None, None, None)),
    }
    .apply(builder)?;
    Ok(builder.build()?.metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_numbered() {
        assert_eq!(dollar("a = ? AND b = ?"), "a = $1 AND b = $2");
    }

    #[test]
    fn sqlite_catalogs_are_created_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/catalog.db");
        let uri = catalog_uri(&format!("sqlite://{}", path.display())).unwrap();
        assert!(uri.ends_with("?mode=rwc"));
        assert!(path.parent().unwrap().is_dir());
        assert_eq!(catalog_uri("postgres://h/db").unwrap(), "postgres://h/db");
    }
}
