//! Secrets in configs, typed so that they cannot print.
//!
//! Every config struct derives `Debug`, and a `Debug` print reaches logs,
//! panic messages and error chains. A secret kept as a `String` there (the
//! S3 secret key, the pseudonym key, a password in a URL, librdkafka's
//! inline `ssl.key.pem`) would print with it. These wrappers print
//! `<redacted>` instead and give the value out only on an explicit call.
//! They serialize as the plain value (the config round-trips through
//! figment and TOML); `notiflow config` redacts its own output by key name.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Deref, DerefMut};

use serde::{Deserialize, Serialize};

/// What a redacted value reads as.
pub const REDACTED: &str = "<redacted>";

/// A secret string: `Debug` and `Display` print [`REDACTED`] (or `""` when
/// empty, so a missing secret still shows); [`Secret::expose`] gives it out.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no secret is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_string())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str(REDACTED)
        }
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A URL that may carry a password (`redis://:pw@host`,
/// `postgres://user:pw@host/db`): used as the string it is (it derefs to
/// `String`), printed by `Debug` with the password redacted.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl Deref for SecretUrl {
    type Target = String;
    fn deref(&self) -> &String {
        &self.0
    }
}

impl From<&str> for SecretUrl {
    fn from(s: &str) -> Self {
        SecretUrl(s.to_string())
    }
}

impl From<String> for SecretUrl {
    fn from(s: String) -> Self {
        SecretUrl(s)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = redact_url(&self.0).unwrap_or_else(|| self.0.clone());
        fmt::Debug::fmt(&shown, f)
    }
}

/// `scheme://user:password@host…` with the password redacted; `None` when
/// `s` is no URL with a password.
pub fn redact_url(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (user, password) = userinfo.split_once(':')?;
    if password.is_empty() {
        return None;
    }
    let host_and_path = &rest[userinfo.len()..];
    Some(format!("{scheme}://{user}:{REDACTED}{host_and_path}"))
}

/// Whether a setting named `key` holds a secret: its name says secret,
/// password, token or private key (librdkafka's `sasl.password`,
/// `ssl.key.password`, `ssl.key.pem`, `sasl.oauthbearer.client.secret`…).
pub fn names_a_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "secret", "password", "passwd", "token", "key.pem", "private", "jaas",
    ]
    .iter()
    .any(|w| k.contains(w))
}

/// Free-form settings passed on as they are (librdkafka's properties):
/// a map to use, whose `Debug` redacts the values of keys that
/// [`names_a_secret`] (and passwords in URL values).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Properties(pub BTreeMap<String, String>);

impl Deref for Properties {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Properties {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if names_a_secret(k) && !v.is_empty() {
                    REDACTED.to_string()
                } else {
                    redact_url(v).unwrap_or_else(|| v.clone())
                };
                (k, shown)
            }))
            .finish()
    }
}

impl<'a> IntoIterator for &'a Properties {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl FromIterator<(String, String)> for Properties {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Properties(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::from("hunter2");
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(format!("{:?}", Secret::default()), "\"\"");
        let u = SecretUrl::from("postgres://app:hunter2@db:5432/notiflow");
        assert_eq!(
            format!("{u:?}"),
            "\"postgres://app:<redacted>@db:5432/notiflow\""
        );
        assert_eq!(u.as_str(), "postgres://app:hunter2@db:5432/notiflow");
        let mut p = Properties::default();
        p.insert("ssl.key.pem".into(), "-----BEGIN PRIVATE KEY-----".into());
        p.insert("sasl.password".into(), "hunter2".into());
        p.insert("security.protocol".into(), "SASL_SSL".into());
        let shown = format!("{p:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("BEGIN"),
            "{shown}"
        );
        assert!(shown.contains("SASL_SSL"), "{shown}");
    }

    #[test]
    fn secrets_serialize_as_their_value() {
        let s: Secret = serde_json::from_str("\"k\"").unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"k\"");
        let u: SecretUrl = serde_json::from_str("\"redis://:pw@h:1\"").unwrap();
        assert_eq!(serde_json::to_string(&u).unwrap(), "\"redis://:pw@h:1\"");
    }

    #[test]
    fn url_passwords_are_found() {
        for (url, want) in [
            (
                "redis://:pw@host:6379/0",
                Some("redis://:<redacted>@host:6379/0"),
            ),
            ("redis://host:6379", None),
            ("postgres://user@host/db", None),
            (
                "https://u:p@reg.example/x@y",
                Some("https://u:<redacted>@reg.example/x@y"),
            ),
            (
                "postgres://lake:pg@db:5432/cat",
                Some("postgres://lake:<redacted>@db:5432/cat"),
            ),
            ("https://user@reg", None),
            ("sqlite://data/catalog.db", None),
            ("plain text", None),
        ] {
            assert_eq!(redact_url(url).as_deref(), want, "{url}");
        }
    }
}
