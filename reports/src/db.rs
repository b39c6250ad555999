//! The catalog's database (SQLite or PostgreSQL) as the reports' own
//! tables use it: the run ledger and the invoice registry live next to the
//! Iceberg catalog, so a deployment has one database to back up.

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

use crate::error::ReportError;

/// A pool on the catalog's database, and its placeholder style.
#[derive(Clone)]
pub(crate) struct Db {
    pub(crate) pool: AnyPool,
    dollar: bool,
}

impl Db {
    /// Connects to `uri` (`sqlite://…` or `postgres://…`, as the lake's
    /// catalog).
    pub(crate) async fn open(uri: &str) -> Result<Db, ReportError> {
        let uri = notiflow_lake::table::catalog_uri(uri)?;
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .connect(&uri)
            .await?;
        Ok(Db {
            dollar: !uri.starts_with("sqlite:"),
            pool,
        })
    }

    /// `?` placeholders as the database wants them.
    pub(crate) fn sql(&self, q: &str) -> String {
        if self.dollar {
            notiflow_lake::table::dollar(q)
        } else {
            q.to_string()
        }
    }
}
