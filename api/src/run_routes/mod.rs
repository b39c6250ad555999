//! The HTTP endpoints of report runs: `POST /v1/reports` and the
//! background execution ([`start`]); listing, status and downloads of API
//! and ledger runs ([`read`]). They take the app state; the runs
//! themselves (store, quotas, types) are [`crate::runs`], below it.

mod read;
mod start;

pub use read::{
    __path_download, __path_list, __path_scheduled, __path_scheduled_download, __path_status,
    download, list, scheduled, scheduled_download, status,
};
pub use start::{__path_start, start};
