//! An opendal operator over a location of the warehouse's kind (a local
//! folder, `file://` or `s3://` URL) with the lake's S3 settings: orphan
//! removal lists the table's folder with it, and reports write their outputs
//! through it.

use crate::config::S3Config;
use crate::error::LakeError;

/// An operator for `location`; the location's prefix in it (ends with `/`
/// unless empty); and what to put before a listed path to get the URL
/// iceberg uses (`s3://bucket/` or `file:///`).
pub fn operator(
    s3: &S3Config,
    location: &str,
) -> Result<(opendal::Operator, String, String), LakeError> {
    if let Some(rest) = location.strip_prefix("s3://") {
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        let mut b = opendal::services::S3::default()
            .bucket(bucket)
            .region(&s3.region)
            .disable_config_load()
            .disable_ec2_metadata();
        if !s3.endpoint.is_empty() {
            b = b.endpoint(&s3.endpoint);
        }
        if !s3.access_key_id.is_empty() {
            b = b
                .access_key_id(&s3.access_key_id)
                .secret_access_key(s3.secret_access_key.expose());
        }
        if !s3.path_style {
            b = b.enable_virtual_host_style();
        }
        let op = opendal::Operator::new(b)?.finish();
        let key = key.trim_matches('/');
        let prefix = if key.is_empty() {
            String::new()
        } else {
            format!("{key}/")
        };
        Ok((op, prefix, format!("s3://{bucket}/")))
    } else {
        let path = location.strip_prefix("file://").unwrap_or(location);
        let abs = if std::path::Path::new(path).is_absolute() {
            path.to_string()
        } else {
            std::env::current_dir()
                .map(|d| d.join(path).display().to_string())
                .unwrap_or_else(|_| path.to_string())
        };
        let op = opendal::Operator::new(opendal::services::Fs::default().root("/"))?.finish();
        Ok((
            op,
            format!("{}/", abs.trim_start_matches('/').trim_end_matches('/')),
            "file:///".to_string(),
        ))
    }
}
