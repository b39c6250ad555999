//! `/openapi.json`, generated from the handlers' and types' annotations
//! (utoipa), so the document cannot drift from the code; the tests check
//! the running server against it.

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::{counters, error, handlers, run_routes, runs, stream};

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

/// The answers every operation can give besides its own: a 500 (our
/// failure: a fixed text and a request id), a 405 for another method, a
/// 503 on the `/v1` paths (a dependency down, or the server full), and a
/// 429 where a per-key quota applies.
struct CommonAnswers;

impl Modify for CommonAnswers {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let error = |what: &str| {
            ResponseBuilder::new()
                .description(what)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for (path, item) in doc.paths.paths.iter_mut() {
            let ops = [(&mut item.get, "get"), (&mut item.post, "post")];
            for (op, method) in ops {
                let Some(op) = op.as_mut() else { continue };
                let r = &mut op.responses.responses;
                r.entry("500".into()).or_insert_with(|| {
                    error("Internal error: the body gives a request id; the detail is in the server log").into()
                });
                if path.starts_with("/v1/") {
                    r.entry("503".into()).or_insert_with(|| {
                        error("A dependency is unavailable and no earlier answer is known, or the server is full (`Retry-After`)").into()
                    });
                }
                let quota = (path == "/v1/reports" && method == "post") || path == "/v1/stream";
                if quota {
                    r.entry("429".into()).or_insert_with(|| {
                        error("This key's quota is used up (`Retry-After`)").into()
                    });
                }
            }
        }
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "notiflow API", description = "Live counters, the SSE stream and reports of notiflow (SPEC §6). Authenticate with `Authorization: Bearer <key>` or `X-API-Key: <key>`. Prometheus metrics are on the process's metrics listener, not here."),
    paths(
        handlers::healthz, handlers::readyz, handlers::whoami,
        handlers::series, handlers::top, stream::stream,
        run_routes::start, run_routes::list, run_routes::status, run_routes::download,
        run_routes::scheduled, run_routes::scheduled_download
    ),
    components(schemas(
        error::ErrorBody, counters::Series, counters::Point, counters::Step, counters::Top,
        counters::TopEntry, stream::SnapshotEvent, runs::StartReport, runs::ReportRun,
        runs::RunFile, runs::RunStatus, runs::ReportKind, runs::ScheduledRun,
        handlers::Ready, handlers::WhoAmI, crate::auth::Role
    )),
    modifiers(&Security, &CommonAnswers),
    tags(
        (name = "counters", description = "Per-client counters from Redis"),
        (name = "live", description = "Server-Sent Events"),
        (name = "reports", description = "Detail and billing exports"),
        (name = "auth", description = "Keys and roles"),
        (name = "ops", description = "Health")
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
            "/v1/whoami",
        ] {
            assert!(doc.paths.paths.contains_key(p), "{p} missing");
        }
        assert!(
            !doc.paths.paths.contains_key("/metrics"),
            "not on the public port"
        );
    }

    #[test]
    fn both_key_schemes_and_the_common_answers_are_documented() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["api_key_header"]["name"], "X-API-Key");
        let series = &doc["paths"]["/v1/clients/{client}/series"]["get"];
        let security = series["security"].as_array().unwrap();
        assert!(
            security.iter().any(|s| s.get("api_key_header").is_some()),
            "{security:?}"
        );
        for code in ["500", "503"] {
            assert!(series["responses"][code].is_object(), "{code}");
        }
        let start = &doc["paths"]["/v1/reports"]["post"]["responses"];
        assert!(start["429"].is_object());
        assert!(doc["paths"]["/v1/stream"]["get"]["responses"]["429"].is_object());
        assert!(doc["paths"]["/healthz"]["get"]["responses"]["503"].is_null());
    }
}
