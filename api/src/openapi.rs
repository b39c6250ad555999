//! `/openapi.json`, generated from the handlers' and types' annotations
//! (utoipa), so the document cannot drift from the code; the tests check
//! the running server against it.

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{counters, error, runs, server, stream};

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "api_key_header",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "notiflow API", description = "Live counters, the SSE stream and reports of notiflow (SPEC §6). Authenticate with `Authorization: Bearer <key>`."),
    paths(
        server::healthz, server::readyz, server::metrics, server::whoami,
        server::series, server::top, stream::stream,
        runs::start, runs::list, runs::status, runs::download,
        runs::scheduled, runs::scheduled_download
    ),
    components(schemas(
        error::ErrorBody, counters::Series, counters::Point, counters::Step, counters::Top,
        counters::TopEntry, stream::SnapshotEvent, runs::StartReport, runs::ReportRun,
        runs::RunFile, runs::RunStatus, runs::ReportKind, runs::ScheduledRun,
        server::Ready, server::WhoAmI, crate::auth::Role
    )),
    modifiers(&Security),
    tags(
        (name = "counters", description = "Per-client counters from Redis"),
        (name = "live", description = "Server-Sent Events"),
        (name = "reports", description = "Detail and billing exports"),
        (name = "auth", description = "Keys and roles"),
        (name = "ops", description = "Health and metrics")
    )
)]
pub struct ApiDoc;

/// Serves the document.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented() {
        let doc = ApiDoc::openapi();
        for p in [
            "/v1/clients/{client}/series",
            "/v1/top",
            "/v1/stream",
            "/v1/reports",
            "/v1/reports/{id}",
            "/v1/reports/{id}/download",
            "/v1/runs",
            "/v1/runs/{job}/{slot}/download",
            "/healthz",
            "/readyz",
            "/metrics",
            "/v1/whoami",
        ] {
            assert!(doc.paths.paths.contains_key(p), "{p} missing");
        }
    }
}
