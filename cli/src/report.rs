//! `notiflow report …` and `notiflow run reports`: on-demand billing and
//! detail exports with a progress bar and a summary, the run ledger, and
//! the scheduler as a long-running process. The work itself lives in the
//! reports crate; this module parses flags and prints.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use notiflow_reports::detail::{DetailQuery, parse_values};
use notiflow_reports::ledger::Ledger;
use notiflow_reports::{BillingRequest, DetailRequest, EngineKind, Format, Manifest, Reports};
use notiflow_schema::time::format_rfc3339;
use notiflow_schema::{Category, Country, Micros, Status as EventStatus};

use crate::config::Config;

/// What `notiflow report` does.
#[derive(Subcommand)]
pub enum ReportAction {
    /// The daily billing export of one billing day (CSV and Parquet).
    Billing {
        /// Billing day, YYYY-MM-DD, in the billing time zone.
        #[arg(long)]
        date: String,
        /// Correct the issued invoice of the day: a file of its own with
        /// the difference between the day read now (or from --snapshot)
        /// and the day as its invoice or last correction read it.
        #[arg(long)]
        correction: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Event rows of one client (or all with --all) over a time range.
    Detail {
        /// The client.
        #[arg(long, conflicts_with = "all")]
        client: Option<String>,
        /// Every client (admins).
        #[arg(long)]
        all: bool,
        /// Start: RFC 3339, or YYYY-MM-DD for midnight in the billing zone.
        #[arg(long)]
        from: String,
        /// End (exclusive), as --from.
        #[arg(long)]
        to: String,
        /// Only these statuses (comma-separated).
        #[arg(long, value_delimiter = ',')]
        status: Vec<String>,
        /// Only these categories (comma-separated).
        #[arg(long, value_delimiter = ',')]
        category: Vec<String>,
        /// Only these countries (comma-separated ISO codes).
        #[arg(long, value_delimiter = ',')]
        country: Vec<String>,
        /// Unmasked recipients (the caller holds the `pii` permission).
        #[arg(long)]
        pii: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Recorded runs, newest first (JSON lines).
    Runs {
        /// Only this job (`on-demand` for CLI runs).
        #[arg(long)]
        job: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

/// Flags every report takes.
#[derive(clap::Args)]
pub struct Common {
    /// duckdb or datafusion (default from `[reports] engine`).
    #[arg(long)]
    engine: Option<String>,
    /// Output formats (comma-separated: csv, parquet).
    #[arg(long, value_delimiter = ',', default_value = "csv,parquet")]
    format: Vec<String>,
    /// Read this lake snapshot (reproduce a report); default the current one.
    #[arg(long)]
    snapshot: Option<i64>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

impl Common {
    fn engine(&self) -> anyhow::Result<Option<EngineKind>> {
        self.engine
            .as_deref()
            .map(|e| {
                e.parse::<EngineKind>()
                    .map_err(|e| anyhow::anyhow!("--engine: {e}"))
            })
            .transpose()
    }

    fn formats(&self) -> anyhow::Result<Vec<Format>> {
        self.format
            .iter()
            .map(|f| {
                f.parse::<Format>()
                    .map_err(|e| anyhow::anyhow!("--format: {e}"))
            })
            .collect()
    }
}

fn now() -> Micros {
    chrono::Utc::now().timestamp_micros()
}

fn instant(reports: &Reports, text: &str) -> anyhow::Result<Micros> {
    Ok(notiflow_reports::billing::instant(reports.tz(), text)?)
}

fn spinner(quiet: bool, what: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

fn summary(reports: &Reports, m: &Manifest, took: Duration) {
    println!(
        "{} report {} — engine {}, lake snapshot {}, {} rows in {:.2} s ({:.0} rows/s)",
        m.kind,
        m.date,
        m.engine,
        m.lake_snapshot_id
            .map_or("none (empty table)".into(), |s| s.to_string()),
        m.rows,
        took.as_secs_f64(),
        m.rows as f64 / took.as_secs_f64().max(1e-9)
    );
    for f in &m.files {
        println!(
            "  {}  {} bytes  sha256 {}",
            reports.output().url(&f.path),
            f.bytes,
            f.sha256
        );
    }
    if let Some(v) = &m.rate_card_version {
        let digest = m.rate_card_sha256.as_deref().unwrap_or("-");
        println!("  rate card {v} (sha256 {digest})");
    }
}

/// Records an on-demand run in the ledger around `work`.
async fn recorded<F>(ledger: &Ledger, work: F) -> anyhow::Result<Manifest>
where
    F: std::future::Future<Output = Result<Manifest, notiflow_reports::ReportError>>,
{
    let owner = format!("cli-{}", std::process::id());
    Ok(ledger.record("on-demand", now(), &owner, work).await?)
}

pub async fn command(action: ReportAction, cfg: &Config) -> anyhow::Result<()> {
    let ledger = Ledger::open(&cfg.lake.catalog_uri)
        .await
        .context("opening the run ledger")?;
    if let ReportAction::Runs { job, limit } = &action {
        for r in ledger.list(job.as_deref(), *limit).await? {
            let mut v = serde_json::to_value(&r)?;
            v["scheduled_for"] = format_rfc3339(r.scheduled_for).into();
            v["started_at"] = format_rfc3339(r.started_at).into();
            v["finished_at"] = r.finished_at.map(format_rfc3339).into();
            println!("{v}");
        }
        return Ok(());
    }
    let reports = Reports::open(&cfg.reports, &cfg.lake)
        .await
        .context("opening the reports")?;
    let started = Instant::now();
    let manifest = match action {
        ReportAction::Billing {
            date,
            correction,
            common,
        } => {
            let day = date
                .parse()
                .map_err(|_| anyhow::anyhow!("--date '{date}' is not YYYY-MM-DD"))?;
            let req = BillingRequest {
                day,
                engine: common.engine()?,
                formats: common.formats()?,
                snapshot_id: common.snapshot,
                correction,
            };
            let pb = spinner(
                common.quiet,
                &format!("billing {date}: counting and pricing"),
            );
            let m = recorded(&ledger, reports.billing(&req, now())).await;
            pb.finish_and_clear();
            let m = m?;
            let owner = format!("cli-{}", std::process::id());
            for job in
                notiflow_reports::schedule::settle_failed_slots(&reports, &ledger, &m, &owner)
                    .await?
            {
                println!("the failed slot of job {job} for {date} is settled by this run");
            }
            m
        }
        ReportAction::Detail {
            client,
            all,
            from,
            to,
            status,
            category,
            country,
            pii,
            common,
        } => {
            if client.is_none() && !all {
                anyhow::bail!("give --client ID, or --all for every client");
            }
            let query = DetailQuery {
                client,
                from: instant(&reports, &from)?,
                to: instant(&reports, &to)?,
                statuses: parse_values("status", &status, EventStatus::parse)?,
                categories: parse_values("category", &category, Category::parse)?,
                countries: parse_values("country", &country, Country::parse)?,
                pii,
            };
            let req = DetailRequest {
                query,
                engine: common.engine()?,
                formats: common.formats()?,
                snapshot_id: common.snapshot,
            };
            let pb = spinner(common.quiet, "detail: planning");
            let progress = {
                let pb = pb.clone();
                move |rows: u64| pb.set_message(format!("detail: {rows} rows written"))
            };
            let m = recorded(&ledger, reports.detail(&req, now(), Some(&progress))).await;
            pb.finish_and_clear();
            m?
        }
        ReportAction::Runs { .. } => unreachable!("handled above"),
    };
    summary(&reports, &manifest, started.elapsed());
    Ok(())
}
