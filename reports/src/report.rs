//! One report run end to end: pin the lake snapshot, let the engine count
//! or stream rows, price or mask them, write every requested format in one
//! pass, then the manifest.

use arrow::compute::BatchCoalescer;
use chrono::NaiveDate;
use chrono_tz::Tz;
use notiflow_lake::table::{Completeness, complete_until, tag_snapshot};
use notiflow_lake::{Lake, LakeConfig};
use notiflow_schema::Micros;
use notiflow_schema::time::format_rfc3339;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::billed::Billed;
use crate::billing::{self, Window};
use crate::config::{EngineKind, Format, ReportsConfig};
use crate::detail::{self, DetailQuery};
use crate::engine::{self, Limits, Source};
use crate::error::ReportError;
use crate::invoices::{self, Invoice, Invoices, Issue};
use crate::metrics::Metrics;
use crate::output::{FileSink, Manifest, Output, run_dir};
use crate::ratecard::RateCard;

/// How often a billing run starts again after another run issued while
/// it ran (`ReportError::LedgerMoved`).
const LEDGER_RETRIES: u32 = 8;

/// Rows per batch handed to the encoders.
const OUT_BATCH_ROWS: usize = 8192;

/// A daily billing report to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingRequest {
    /// The billing day (in the billing zone).
    pub day: NaiveDate,
    /// Engine (None: the configured default).
    pub engine: Option<EngineKind>,
    /// Formats to write.
    pub formats: Vec<Format>,
    /// Snapshot to read (None: the current one).
    pub snapshot_id: Option<i64>,
    /// A correction of the issued day (`invoices`): the difference between
    /// the day read from this snapshot and the day as its invoice (or last
    /// correction) read it, in a file and manifest of its own.
    pub correction: bool,
}

/// A detailed report to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetailRequest {
    /// Rows and masking.
    pub query: DetailQuery,
    /// Engine (None: the configured default).
    pub engine: Option<EngineKind>,
    /// Formats to write.
    pub formats: Vec<Format>,
    /// Snapshot to read (None: the current one).
    pub snapshot_id: Option<i64>,
}

/// Progress of a run: rows written so far.
pub type Progress<'a> = &'a (dyn Fn(u64) + Send + Sync);

/// Everything a report needs: the lake, the output store, the rate card.
pub struct Reports {
    cfg: ReportsConfig,
    lake_cfg: LakeConfig,
    lake: Lake,
    out: Output,
    card: RateCard,
    tz: Tz,
    invoices: Invoices,
    billed: Billed,
    metrics: Option<Metrics>,
}

/// What a billing run does to its day.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Issues the day's invoice.
    Issue,
    /// Reproduces the issued invoice (its ledger version): issues nothing.
    Reproduce(i64),
    /// Issues the day's `n`-th correction.
    Correct(i64),
}

/// A scheduled run's hold on its slot in the run ledger (see
/// [`Reports::billing_leased`]).
#[derive(Clone, Copy)]
pub struct Lease<'a> {
    /// The ledger.
    pub ledger: &'a crate::ledger::Ledger,
    /// The job.
    pub job: &'a str,
    /// The slot, UTC micros.
    pub slot: Micros,
    /// This process.
    pub owner: &'a str,
}

impl Lease<'_> {
    /// An error unless the lease is still held now.
    pub async fn check(&self) -> Result<(), ReportError> {
        let now = chrono::Utc::now().timestamp_micros();
        if self
            .ledger
            .holds(self.job, self.slot, self.owner, now)
            .await?
        {
            return Ok(());
        }
        Err(ReportError::Other(format!(
            "lost the lease of {} at {} to another process before publishing: nothing \
             published (that process's run is the one recorded)",
            self.job,
            notiflow_schema::time::format_rfc3339(self.slot)
        )))
    }
}

impl Reports {
    /// Validates `cfg`, loads the rate card, opens the lake and the store.
    pub async fn open(cfg: &ReportsConfig, lake_cfg: &LakeConfig) -> Result<Reports, ReportError> {
        cfg.validate()?;
        let card = RateCard::configured(&cfg.rate_card)?;
        let lake = Lake::open(lake_cfg).await?;
        let out = Output::open(&cfg.output, &lake_cfg.s3)?;
        let invoices = Invoices::open(&lake_cfg.catalog_uri).await?;
        let billed = Billed::open(lake_cfg).await?;
        Ok(Reports {
            tz: cfg.tz()?,
            invoices,
            billed,
            cfg: cfg.clone(),
            lake_cfg: lake_cfg.clone(),
            lake,
            out,
            card,
            metrics: None,
        })
    }

    /// Records every run's duration and rows in `metrics` from now on.
    pub fn with_metrics(mut self, metrics: Metrics) -> Reports {
        self.metrics = Some(metrics);
        self
    }

    /// The series runs are recorded in, if any.
    pub fn metrics(&self) -> Option<&Metrics> {
        self.metrics.as_ref()
    }

    /// Awaits one run and records its duration, engine and outcome.
    async fn observed(
        &self,
        kind: &str,
        engine: EngineKind,
        run: impl Future<Output = Result<Manifest, ReportError>>,
    ) -> Result<Manifest, ReportError> {
        let started = std::time::Instant::now();
        let span = tracing::info_span!("report.run", kind, engine = engine.as_str());
        let result = tracing::Instrument::instrument(run, span).await;
        if let Some(m) = &self.metrics {
            let rows = result.as_ref().ok().map(|m| m.rows);
            m.observe(kind, engine.as_str(), started.elapsed().as_secs_f64(), rows);
        }
        result
    }

    /// The configuration.
    pub fn config(&self) -> &ReportsConfig {
        &self.cfg
    }

    /// The billed-messages ledger.
    pub fn billed(&self) -> &Billed {
        &self.billed
    }

    /// The output store.
    pub fn output(&self) -> &Output {
        &self.out
    }

    /// The billing zone.
    pub fn tz(&self) -> Tz {
        self.tz
    }

    fn limits(&self) -> Limits {
        Limits::from(&self.cfg)
    }

    fn billing_limits(&self) -> Limits {
        Limits {
            memory_bytes: self.cfg.billing_memory_limit_mib * 1024 * 1024,
            ..self.limits()
        }
    }

    /// Runs the daily billing report for `req.day`.
    pub async fn billing(
        &self,
        req: &BillingRequest,
        now: Micros,
    ) -> Result<Manifest, ReportError> {
        self.billing_leased(req, now, None).await
    }

    /// [`Reports::billing`] of a scheduled slot held under `lease`: checked
    /// again just before the manifest is published, so a run that lost its
    /// lease to another process (a stall longer than the lease) publishes
    /// nothing (its files are removed) instead of a second invoice.
    pub async fn billing_leased(
        &self,
        req: &BillingRequest,
        now: Micros,
        lease: Option<Lease<'_>>,
    ) -> Result<Manifest, ReportError> {
        let engine = req.engine.unwrap_or(self.cfg.engine);
        self.observed("billing", engine, async {
            // A run that read the ledger before another run issued starts
            // again from the ledger as it is now (billing days caught up
            // side by side by two schedulers do this).
            let mut tries = 0;
            loop {
                match self.billing_run(req, now, lease).await {
                    Err(ReportError::LedgerMoved(why)) if tries < LEDGER_RETRIES => {
                        tries += 1;
                        tracing::info!(day = %req.day, tries, reason = %why, "billing again from the ledger as it is now");
                    }
                    out => return out,
                }
            }
        })
        .await
    }

    async fn billing_run(
        &self,
        req: &BillingRequest,
        now: Micros,
        lease: Option<Lease<'_>>,
    ) -> Result<Manifest, ReportError> {
        if req.formats.is_empty() {
            return Err(ReportError::input("no output format asked for"));
        }
        let w = Window::of(self.tz, req.day, self.cfg.lookback_days)?;
        w.check_complete(now)?;
        let engine = req.engine.unwrap_or(self.cfg.engine);
        let src = Source::pin(&self.lake, &self.lake_cfg.s3, req.snapshot_id).await?;
        let date = req.day.to_string();
        // One invoice per day: an issued day is only ever reproduced, or
        // corrected when asked for.
        let all = self.invoices.all().await?;
        let issued: Vec<&Invoice> = all.iter().filter(|i| i.billing_day == date).collect();
        let card = &self.card.sha256;
        let next_version = all.last().map_or(1, |i| i.ledger_version + 1);
        let mode = if req.correction {
            let Some(last) = issued.last() else {
                return Err(ReportError::input(format!(
                    "billing day {date} has no invoice to correct: bill it first"
                )));
            };
            if &last.rate_card_sha256 != card {
                return Err(ReportError::input(format!(
                    "the rate card changed since billing day {date} was issued (sha256 {} then, \
                     {card} now): a correction bills at the invoice's prices",
                    last.rate_card_sha256
                )));
            }
            Mode::Correct(last.seq + 1)
        } else if let Some(first) = issued.first() {
            if !first.reproduced_by(src.snapshot_id, card) {
                return Err(invoices::refusal(first));
            }
            Mode::Reproduce(first.ledger_version)
        } else {
            Mode::Issue
        };
        if !matches!(mode, Mode::Reproduce(_)) && req.snapshot_id.is_none() {
            self.check_complete(&src, &w)?;
        }
        // The ledger as this run reads it: every run issued before (for a
        // reproduction, before its invoice), and the late-line rule's days.
        let upto = match mode {
            Mode::Reproduce(v) => v,
            _ => next_version,
        };
        let known: Vec<&Invoice> = all.iter().filter(|i| i.ledger_version < upto).collect();
        let runs: std::collections::HashSet<String> = known.iter().map(|i| i.run.clone()).collect();
        let days: std::collections::BTreeSet<NaiveDate> = known
            .iter()
            .filter(|i| i.seq == 0)
            .filter_map(|i| i.billing_day.parse().ok())
            .collect();
        // A late line only for a day whose own invoice read the ledger for
        // its whole look-back (issued at least lookback_days after the
        // first day ever issued): before, a message billed by an earlier
        // run without the ledger could look unbilled.
        let settled_from = days
            .first()
            .and_then(|e| e.checked_add_days(chrono::Days::new(u64::from(self.cfg.lookback_days))));
        let late_ok = |d: NaiveDate| days.contains(&d) && settled_from.is_some_and(|s| d >= s);
        let ledger = engine::LedgerView {
            src: Some(Source::pin(self.billed.lake(), &self.lake_cfg.s3, None).await?),
            runs: runs.into_iter().collect(),
            holds: Some(Source::pin(self.billed.holds(), &self.lake_cfg.s3, None).await?),
            day: req.day,
            // Corrections bill no late lines: what they saw stays for the
            // next invoice.
            since: known
                .iter()
                .filter(|i| i.seq == 0)
                .max_by_key(|i| i.ledger_version)
                .map(|i| i.lake_snapshot_id),
        };
        let free = billing::free_spans(&self.card, self.tz)?;
        let limits = self.billing_limits();
        let messages = engine::billing_messages(engine, &src, &w, &free, &ledger, limits).await?;
        let split = billing::split(&messages, &w, self.tz, late_ok, |d| days.contains(&d))?;
        let correcting = matches!(mode, Mode::Correct(_));
        let items = billing::items(&split, req.day, !correcting);
        if correcting && items.is_empty() {
            return Err(ReportError::input(format!(
                "nothing to correct: every message of billing day {date} in the lake is billed"
            )));
        }
        let lines = billing::price_items(&items, &self.card, req.day)?;
        let batch = billing::to_batch(&lines, &self.card.currency)?;
        let schema = billing::schema();
        let dir = run_dir("billing", &date);
        let name = match mode {
            Mode::Correct(n) => format!("billing-{date}-correction-{n}"),
            _ => format!("billing-{date}"),
        };
        let run = dir
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default();
        let tag = src
            .snapshot_id
            .map(|_| format!("notiflow-billing-{date}-{run}"));
        let files = self
            .published(&dir, async {
                let mut files = Vec::new();
                for f in sorted(&req.formats) {
                    let mut sink = self
                        .out
                        .create(&format!("{dir}{name}.{}", f.ext()), f, schema.clone())
                        .await?;
                    sink.write(&batch).await?;
                    files.push(sink.finish(&schema).await?);
                }
                // The snapshot stays readable for the dispute period
                // before the manifest that names it is published.
                if let (Some(id), Some(tag)) = (src.snapshot_id, &tag) {
                    let keep_ms = i64::from(self.cfg.dispute_days) * 86_400_000;
                    tag_snapshot(&self.lake, tag, id, keep_ms).await?;
                }
                // Last things before the manifest: a scheduled run that
                // lost its slot publishes nothing; the messages go into the
                // ledger; then the day is issued (or corrected), by this
                // run only if no other run issued anything since it read
                // the ledger.
                if let Some(l) = &lease {
                    l.check().await?;
                }
                let seq = match mode {
                    Mode::Issue => 0,
                    Mode::Correct(n) => n,
                    Mode::Reproduce(_) => return Ok(files),
                };
                let Some(id) = src.snapshot_id else {
                    return Ok(files); // an empty lake issues nothing
                };
                let mut rows: Vec<(NaiveDate, arrow::array::RecordBatch)> =
                    split.own.iter().map(|b| (req.day, b.clone())).collect();
                let mut held = Vec::new();
                if !correcting {
                    rows.extend(split.late.iter().cloned());
                    held.extend(split.held.iter().cloned());
                }
                self.billed.append(run, &rows, &held).await?;
                let inv = Invoice {
                    billing_day: date.clone(),
                    seq,
                    timezone: self.cfg.timezone.clone(),
                    run: run.to_string(),
                    lake_snapshot_id: id,
                    rate_card_sha256: self.card.sha256.clone(),
                    issued_at: chrono::Utc::now().timestamp_micros(),
                    ledger_version: next_version,
                };
                match self.invoices.issue(&inv).await? {
                    Issue::Issued => Ok(files),
                    Issue::Taken(first) if seq == 0 => Err(invoices::refusal(&first)),
                    Issue::Taken(other) => Err(ReportError::Issued(format!(
                        "correction {seq} of billing day {date} was registered by run {} \
                         meanwhile: nothing published; correct again from there",
                        other.run
                    ))),
                    // Retryable: the next attempt reads the ledger again.
                    Issue::LedgerMoved => Err(ReportError::LedgerMoved(format!(
                        "another billing run issued meanwhile (ledger version {next_version} is \
                         taken): this run may bill messages that run billed, so it publishes \
                         nothing; run it again"
                    ))),
                }
            })
            .await?;
        let mut params = json!({ "billing_day": req.day.to_string(), "timezone": self.cfg.timezone, "lookback_days": self.cfg.lookback_days });
        if let (Mode::Correct(n), Some(last)) = (mode, issued.last()) {
            params["correction"] = json!(n);
            params["corrects"] =
                json!({ "run": last.run, "lake_snapshot_id": last.lake_snapshot_id });
        }
        let manifest = Manifest {
            kind: if correcting {
                "billing-correction".into()
            } else {
                "billing".into()
            },
            date,
            params,
            engine: engine.as_str().into(),
            lake_snapshot_id: src.snapshot_id,
            lake_snapshot_tag: tag,
            rate_card_version: Some(self.card.version.clone()),
            rate_card_sha256: Some(self.card.sha256.clone()),
            rows: batch.num_rows() as u64,
            files,
        };
        self.write_manifest(&dir, &name, &manifest).await?;
        Ok(manifest)
    }

    /// The completeness gate: billing day `w` is billed only from a
    /// snapshot in which every partition's watermark has passed the day's
    /// end plus the grace (a reproduction of a pinned snapshot skips it:
    /// it reads what was billed then).
    fn check_complete(&self, src: &Source, w: &Window) -> Result<(), ReportError> {
        let Completeness::Until {
            until_ms,
            topic,
            partition,
        } = complete_until(src.table.metadata())?
        else {
            return Ok(());
        };
        let grace_ms = i64::from(self.cfg.completeness_grace_minutes) * 60_000;
        let needed_ms = w.end / 1000 + grace_ms;
        if until_ms >= needed_ms {
            return Ok(());
        }
        let have = if until_ms == i64::MIN {
            "has no watermark yet".to_string()
        } else {
            format!(
                "is committed up to {} (broker time)",
                format_rfc3339(until_ms.saturating_mul(1000))
            )
        };
        Err(ReportError::WaitingForData(format!(
            "partition {partition} of {topic} {have}; billing day {} needs everything up to {} \
             (its end plus reports.completeness_grace_minutes)",
            w.day,
            format_rfc3339(needed_ms * 1000)
        )))
    }

    /// Runs a detailed report.
    pub async fn detail(
        &self,
        req: &DetailRequest,
        now: Micros,
        progress: Option<Progress<'_>>,
    ) -> Result<Manifest, ReportError> {
        let engine = req.engine.unwrap_or(self.cfg.engine);
        self.observed("detail", engine, self.detail_run(req, now, progress))
            .await
    }

    async fn detail_run(
        &self,
        req: &DetailRequest,
        now: Micros,
        progress: Option<Progress<'_>>,
    ) -> Result<Manifest, ReportError> {
        if req.formats.is_empty() {
            return Err(ReportError::input("no output format asked for"));
        }
        let q = &req.query;
        q.validate(now, self.cfg.max_detail_days)?;
        let engine = req.engine.unwrap_or(self.cfg.engine);
        let src = Source::pin(&self.lake, &self.lake_cfg.s3, req.snapshot_id).await?;
        let limits = self.limits();
        let params = detail_params(q);
        let date = format_rfc3339(q.from)[..10].to_string();
        let dir = run_dir("detail", &date);
        let digest = hex::encode(Sha256::digest(params.to_string().as_bytes()));
        let name = format!(
            "detail-{}-{}-{}",
            q.client.as_deref().unwrap_or("all"),
            compact(q.from),
            &digest[..12]
        );
        let (tx, mut rx) = mpsc::channel(4);
        let producer = {
            let src = src.clone();
            let q = q.clone();
            tokio::spawn(async move { engine::detail(engine, &src, &q, limits, tx).await })
        };
        let next = rx.recv().await;
        let mut producer = Some(producer);
        if next.is_none() {
            // Nothing in the range: only now tell an unknown client from
            // an empty range, so a report with rows never pays for it.
            if let Some(h) = producer.take() {
                join_engine(h).await?;
            }
            if let Some(c) = &q.client
                && !engine::client_exists(engine, &src, c, limits).await?
            {
                return Err(ReportError::input(format!(
                    "unknown client '{c}': it has no events in the lake"
                )));
            }
        }
        let (files, rows) = self
            .published(
                &dir,
                self.write_detail(&dir, &name, req, next, rx, producer, progress),
            )
            .await?;
        let manifest = Manifest {
            kind: "detail".into(),
            date,
            params,
            engine: engine.as_str().into(),
            lake_snapshot_id: src.snapshot_id,
            lake_snapshot_tag: None,
            rate_card_version: None,
            rate_card_sha256: None,
            rows,
            files,
        };
        self.write_manifest(&dir, &name, &manifest).await?;
        Ok(manifest)
    }

    /// Writes a run's files under `dir` with `write`; on failure removes
    /// them (no manifest was written: nothing was published).
    async fn published<T>(
        &self,
        dir: &str,
        write: impl Future<Output = Result<T, ReportError>>,
    ) -> Result<T, ReportError> {
        let out = write.await;
        if out.is_err() {
            self.out.discard(dir).await;
        }
        out
    }

    /// Streams a detail run's rows into one file per format under `dir`.
    #[allow(clippy::too_many_arguments)]
    async fn write_detail(
        &self,
        dir: &str,
        name: &str,
        req: &DetailRequest,
        mut next: Option<arrow::array::RecordBatch>,
        mut rx: mpsc::Receiver<arrow::array::RecordBatch>,
        producer: Option<tokio::task::JoinHandle<Result<(), ReportError>>>,
        progress: Option<Progress<'_>>,
    ) -> Result<(Vec<crate::output::FileEntry>, u64), ReportError> {
        let q = &req.query;
        let schema = detail::schema();
        let mut sinks: Vec<FileSink> = Vec::new();
        for f in sorted(&req.formats) {
            sinks.push(
                self.out
                    .create(&format!("{dir}{name}.{}", f.ext()), f, schema.clone())
                    .await?,
            );
        }
        let mut rows = 0u64;
        // Fixed-size batches: the files' bytes must not depend on how an
        // engine happens to chunk its output.
        let mut chunks = BatchCoalescer::new(schema.clone(), OUT_BATCH_ROWS);
        let written: Result<(), ReportError> = async {
            loop {
                let done = match next.take() {
                    Some(b) => {
                        chunks.push_batch(detail::shape(
                            &b,
                            q.pii,
                            self.cfg.pseudonym_secret.expose(),
                        )?)?;
                        false
                    }
                    None => {
                        chunks.finish_buffered_batch()?;
                        true
                    }
                };
                while let Some(b) = chunks.next_completed_batch() {
                    for s in &mut sinks {
                        s.write(&b).await?;
                    }
                    rows += b.num_rows() as u64;
                    if let Some(p) = progress {
                        p(rows);
                    }
                }
                if done {
                    return Ok(());
                }
                next = rx.recv().await;
            }
        }
        .await;
        drop(rx);
        let produced = match producer {
            Some(h) => join_engine(h).await,
            None => Ok(()),
        };
        written?;
        produced?;
        let mut files = Vec::new();
        for s in sinks {
            files.push(s.finish(&schema).await?);
        }
        Ok((files, rows))
    }

    async fn write_manifest(&self, dir: &str, name: &str, m: &Manifest) -> Result<(), ReportError> {
        let mut body =
            serde_json::to_vec_pretty(m).map_err(|e| ReportError::Other(e.to_string()))?;
        body.push(b'\n');
        self.out.put(&Manifest::path(dir, name), body).await
    }
}

/// Waits for the engine task that feeds a detail run.
async fn join_engine(
    h: tokio::task::JoinHandle<Result<(), ReportError>>,
) -> Result<(), ReportError> {
    h.await
        .map_err(|e| ReportError::Other(format!("engine task: {e}")))?
}

fn sorted(formats: &[Format]) -> Vec<Format> {
    let mut f = formats.to_vec();
    f.sort();
    f.dedup();
    f
}

/// `20261122T030000Z`
fn compact(t: Micros) -> String {
    format_rfc3339(t)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(15)
        .collect::<String>()
        + "Z"
}

fn detail_params(q: &DetailQuery) -> serde_json::Value {
    json!({
        "client": q.client,
        "from": format_rfc3339(q.from),
        "to": format_rfc3339(q.to),
        "statuses": q.statuses.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "categories": q.categories.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "countries": q.countries.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "pii": q.pii,
    })
}
