//! The runs started through this API process: remembered for polling,
//! held to per-key quotas, evicted oldest-finished first; the lazily
//! opened reports, ledger and output store; who may read which run.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use notiflow_reports::ledger::Ledger;
use notiflow_reports::{Manifest, Reports};
use notiflow_schema::Micros;
use tokio::sync::{OnceCell, Semaphore};

use super::model::{ReportKind, ReportRun, RunStatus};
use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::metrics::ApiMetrics;

pub(crate) struct Entry {
    pub(crate) view: ReportRun,
    pub(crate) manifest: Option<Manifest>,
    /// The key that started it (quotas count by key).
    key_id: String,
}

/// The limits on runs started here.
#[derive(Debug, Clone, Copy)]
pub struct Quotas {
    /// Runs remembered for polling (finished ones are forgotten first).
    pub kept: usize,
    /// Runs one key may have queued or running.
    pub per_key: usize,
    /// Longest run.
    pub timeout: std::time::Duration,
}

/// What a caller with too many runs is told to wait, seconds.
const RETRY_AFTER_SECS: u64 = 30;

/// Report runs, the ledger and the output store.
pub struct ReportRuns {
    pub(crate) reports_cfg: notiflow_reports::ReportsConfig,
    pub(crate) lake_cfg: notiflow_lake::LakeConfig,
    pub(crate) reports: OnceCell<Arc<Reports>>,
    pub(crate) ledger: OnceCell<Ledger>,
    pub(crate) runs: Mutex<(HashMap<String, Entry>, VecDeque<String>)>,
    pub(crate) quotas: Quotas,
    pub(crate) one_at_a_time: Arc<Semaphore>,
    pub(crate) metrics: ApiMetrics,
    pub(crate) report_metrics: notiflow_reports::Metrics,
}

pub(crate) fn now() -> Micros {
    chrono::Utc::now().timestamp_micros()
}

pub(crate) fn new_id() -> String {
    use sha2::Digest;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = format!("{}:{}:{seq}", std::process::id(), now());
    let d = sha2::Sha256::digest(seed.as_bytes());
    format!("r{}", &hex::encode(d)[..20])
}

impl ReportRuns {
    /// Runs over `reports` and `lake`, within `quotas`.
    pub fn new(
        reports: notiflow_reports::ReportsConfig,
        lake: notiflow_lake::LakeConfig,
        quotas: Quotas,
        metrics: ApiMetrics,
        report_metrics: notiflow_reports::Metrics,
    ) -> ReportRuns {
        ReportRuns {
            reports_cfg: reports,
            lake_cfg: lake,
            reports: OnceCell::new(),
            ledger: OnceCell::new(),
            runs: Mutex::new((HashMap::new(), VecDeque::new())),
            quotas,
            one_at_a_time: Arc::new(Semaphore::new(1)),
            metrics,
            report_metrics,
        }
    }

    pub(crate) async fn reports(&self) -> Result<Arc<Reports>, ApiError> {
        self.reports
            .get_or_try_init(|| async {
                Reports::open(&self.reports_cfg, &self.lake_cfg)
                    .await
                    .map(|r| Arc::new(r.with_metrics(self.report_metrics.clone())))
            })
            .await
            .cloned()
            .map_err(|e| ApiError::Unavailable(format!("reports: {e}")))
    }

    pub(crate) async fn ledger(&self) -> Result<&Ledger, ApiError> {
        self.ledger
            .get_or_try_init(|| Ledger::open(&self.lake_cfg.catalog_uri))
            .await
            .map_err(|e| ApiError::Unavailable(format!("run ledger: {e}")))
    }

    pub(crate) fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, (HashMap<String, Entry>, VecDeque<String>)> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers a new run of `key_id`, unless that key already has its
    /// quota of runs queued or running (429). To make room it forgets the
    /// oldest finished runs, never an active one.
    pub(crate) fn insert(&self, view: ReportRun, key_id: &str) -> Result<(), ApiError> {
        let mut g = self.lock();
        let (map, order) = &mut *g;
        let active = |e: &Entry| matches!(e.view.status, RunStatus::Queued | RunStatus::Running);
        let mine = map
            .values()
            .filter(|e| e.key_id == key_id && active(e))
            .count();
        if mine >= self.quotas.per_key {
            self.metrics
                .quota_refusals
                .with_label_values(&["report_runs"])
                .inc();
            return Err(ApiError::TooMany {
                message: format!(
                    "this key has {mine} report runs queued or running, its maximum; \
                     wait for one to finish"
                ),
                retry_after_secs: RETRY_AFTER_SECS,
            });
        }
        order.push_back(view.id.clone());
        map.insert(
            view.id.clone(),
            Entry {
                view,
                manifest: None,
                key_id: key_id.to_string(),
            },
        );
        if order.len() > self.quotas.kept {
            let mut excess = order.len() - self.quotas.kept;
            order.retain(|id| {
                if excess > 0 && map.get(id).is_some_and(|e| !active(e)) {
                    map.remove(id);
                    excess -= 1;
                    false
                } else {
                    true
                }
            });
        }
        Ok(())
    }

    pub(crate) fn update(&self, id: &str, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = self.lock().0.get_mut(id) {
            f(e);
        }
    }

    pub(crate) fn visible(
        &self,
        who: &Principal,
        id: &str,
    ) -> Result<(ReportRun, Option<Manifest>), ApiError> {
        let g = self.lock();
        let e =
            g.0.get(id)
                .filter(|e| may_see(who, &e.view))
                .ok_or_else(|| ApiError::NotFound(format!("no report run '{id}'")))?;
        Ok((e.view.clone(), e.manifest.clone()))
    }
}

/// Whether `who` may read a run (status, list, download): what it could
/// have started itself. Billing is finance's and admin's; a detail of one
/// client is its viewer's, finance's and admin's, of all clients admin's
/// only; unmasked recipients need the `pii` permission, whoever started it.
pub(crate) fn may_see(who: &Principal, run: &ReportRun) -> bool {
    may_read(who, run.kind, run.client.as_deref(), run.pii)
}

/// [`may_see`] on a run's kind, client (None: all clients) and masking.
pub(crate) fn may_read(who: &Principal, kind: ReportKind, client: Option<&str>, pii: bool) -> bool {
    if pii && !who.pii {
        return false;
    }
    match (who.role, kind) {
        (Role::Admin, _) => true,
        (Role::Finance, ReportKind::Billing) => true,
        (Role::Finance, ReportKind::Detail) => client.is_some(),
        (Role::Viewer, ReportKind::Detail) => client.is_some() && client == who.client.as_deref(),
        (Role::Viewer, ReportKind::Billing) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(kept: usize, per_key: usize) -> ReportRuns {
        let reg = prometheus::Registry::new();
        ReportRuns::new(
            notiflow_reports::ReportsConfig::default(),
            notiflow_lake::LakeConfig::default(),
            Quotas {
                kept,
                per_key,
                timeout: std::time::Duration::from_secs(60),
            },
            ApiMetrics::new(&reg).unwrap(),
            notiflow_reports::Metrics::new(&reg).unwrap(),
        )
    }

    fn run(id: &str) -> ReportRun {
        ReportRun::queued(
            id.into(),
            ReportKind::Detail,
            Some("acme".into()),
            "t".into(),
            String::new(),
            false,
        )
    }

    /// The review's defect: one viewer posting 1,200 exports queued them
    /// all and evicted other callers' runs (they answered 404).
    #[test]
    fn a_key_gets_its_quota_and_active_runs_are_never_evicted() {
        let r = runs(3, 2);
        r.insert(run("a1"), "key-a").unwrap();
        r.insert(run("a2"), "key-a").unwrap();
        match r.insert(run("a3"), "key-a") {
            Err(ApiError::TooMany {
                retry_after_secs, ..
            }) => assert!(retry_after_secs > 0),
            other => panic!("a third active run of one key: {other:?}"),
        }
        r.insert(run("b1"), "key-b").unwrap();
        r.insert(run("c1"), "key-c").unwrap();
        let ids = |r: &ReportRuns| {
            let mut v: Vec<String> = r.lock().0.keys().cloned().collect();
            v.sort();
            v
        };
        assert_eq!(
            ids(&r),
            ["a1", "a2", "b1", "c1"],
            "over `kept`, but every run is active: none forgotten"
        );
        r.update("a1", |e| e.view.status = RunStatus::Succeeded);
        r.insert(run("a3"), "key-a").unwrap();
        assert_eq!(
            ids(&r),
            ["a2", "a3", "b1", "c1"],
            "a finished run made room, the oldest finished one"
        );
    }
}
