//! Who is calling and what they may see (SPEC §6 tenancy). An API key
//! (`Authorization: Bearer <key>` or `X-API-Key: <key>`) maps, through its
//! sha256, to a role and, for a viewer, one client. Every handler asks the
//! [`Caller`] for a [`Scope`] before it reads anything, so a viewer's
//! requests can only ever name its own client.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use crate::config::KeyConfig;
pub use crate::config::Role;
use crate::error::ApiError;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Key holder's name.
    pub name: String,
    /// Which key (the first 16 hex digits of its sha256): what per-key
    /// quotas count by, since names need not be unique.
    pub key_id: String,
    /// Role.
    pub role: Role,
    /// The viewer's client.
    pub client: Option<String>,
    /// May see recipients unmasked.
    pub pii: bool,
}

/// Which clients a request reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// One client.
    Client(String),
    /// Every client (finance and admin only).
    All,
}

impl Principal {
    /// The scope of a request that asks for `asked` (None: "mine", or all
    /// for finance and admin). A viewer asking for another client: 403.
    pub fn scope(&self, asked: Option<&str>) -> Result<Scope, ApiError> {
        match (self.role, &self.client, asked) {
            (Role::Viewer, Some(own), None) => Ok(Scope::Client(own.clone())),
            (Role::Viewer, Some(own), Some(a)) if a == own => Ok(Scope::Client(own.clone())),
            (Role::Viewer, _, Some(a)) => Err(ApiError::Forbidden(format!(
                "this key may not read client '{a}'"
            ))),
            (Role::Viewer, None, None) => Err(ApiError::Forbidden("this key has no client".into())),
            (_, _, Some(a)) => Ok(Scope::Client(a.to_string())),
            (_, _, None) => Ok(Scope::All),
        }
    }

    /// The one client a request reads; `asked` is required of finance and admin.
    pub fn client(&self, asked: Option<&str>) -> Result<String, ApiError> {
        match self.scope(asked)? {
            Scope::Client(c) => Ok(c),
            Scope::All => Err(ApiError::bad("name the client (parameter `client`)")),
        }
    }

    /// 403 unless the caller holds one of `roles`.
    pub fn require(&self, roles: &[Role], what: &str) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "{what} needs the {} role",
                roles
                    .iter()
                    .map(|r| format!("{r:?}").to_lowercase())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )))
        }
    }
}

/// The known keys, by sha256.
#[derive(Debug, Default)]
pub struct KeyStore {
    by_hash: HashMap<[u8; 32], Arc<Principal>>,
}

/// The sha256 of a key, as stored in config (lower-case hex).
pub fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new random key (`nfk_` and 48 hex digits from the OS's random source)
/// and its config entry; only the entry's sha256 is ever stored.
pub fn new_key(
    name: String,
    role: Role,
    client: Option<String>,
    pii: bool,
) -> std::io::Result<(String, KeyConfig)> {
    use std::io::Read;
    let mut raw = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut raw)?;
    let key = format!("nfk_{}", hex::encode(raw));
    let entry = KeyConfig {
        name,
        sha256: key_hash(&key),
        role,
        client,
        pii,
    };
    Ok((key, entry))
}

impl KeyStore {
    /// From validated config.
    pub fn new(keys: &[KeyConfig]) -> KeyStore {
        let mut by_hash = HashMap::new();
        for k in keys {
            let mut h = [0u8; 32];
            if hex::decode_to_slice(&k.sha256, &mut h).is_ok() {
                by_hash.insert(
                    h,
                    Arc::new(Principal {
                        name: k.name.clone(),
                        key_id: k.sha256[..16].to_string(),
                        role: k.role,
                        client: k.client.clone(),
                        pii: k.pii,
                    }),
                );
            }
        }
        KeyStore { by_hash }
    }

    /// The caller a key names.
    pub fn lookup(&self, key: &str) -> Option<Arc<Principal>> {
        let h: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.by_hash.get(&h).cloned()
    }

    /// The caller of a request, from its headers.
    pub fn authenticate(&self, parts: &Parts) -> Result<Arc<Principal>, ApiError> {
        let h = &parts.headers;
        let key = if let Some(v) = h.get(axum::http::header::AUTHORIZATION) {
            let v = v
                .to_str()
                .map_err(|_| ApiError::Unauthorized("malformed Authorization header".into()))?;
            // The scheme is case-insensitive (RFC 9110 §11.1).
            match v.trim().split_once(char::is_whitespace) {
                Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") => key.trim(),
                _ => {
                    return Err(ApiError::Unauthorized(
                        "use `Authorization: Bearer <key>`".into(),
                    ));
                }
            }
        } else if let Some(v) = h.get("x-api-key") {
            v.to_str()
                .map_err(|_| ApiError::Unauthorized("malformed X-API-Key header".into()))?
                .trim()
        } else {
            return Err(ApiError::Unauthorized(
                "missing credentials: send `Authorization: Bearer <key>`".into(),
            ));
        };
        self.lookup(key)
            .ok_or_else(|| ApiError::Unauthorized("unknown API key".into()))
    }
}

/// Extractor: the authenticated caller (401 otherwise).
pub struct Caller(pub Arc<Principal>);

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync + AsRef<KeyStore>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        state.as_ref().authenticate(parts).map(Caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(role: Role, client: Option<&str>) -> Principal {
        Principal {
            name: "t".into(),
            key_id: "0123456789abcdef".into(),
            role,
            client: client.map(String::from),
            pii: false,
        }
    }

    #[test]
    fn a_viewer_is_held_to_its_client() {
        let v = p(Role::Viewer, Some("acme"));
        assert_eq!(v.scope(None).unwrap(), Scope::Client("acme".into()));
        assert_eq!(v.scope(Some("acme")).unwrap(), Scope::Client("acme".into()));
        assert!(matches!(v.scope(Some("beta")), Err(ApiError::Forbidden(_))));
        assert!(matches!(
            v.require(&[Role::Finance, Role::Admin], "billing"),
            Err(ApiError::Forbidden(_))
        ));
        let a = p(Role::Admin, None);
        assert_eq!(a.scope(None).unwrap(), Scope::All);
        assert_eq!(a.scope(Some("beta")).unwrap(), Scope::Client("beta".into()));
        assert!(matches!(a.client(None), Err(ApiError::BadRequest(_))));
    }

    #[test]
    fn keys_are_matched_by_hash_and_headers_are_checked() {
        let store = KeyStore::new(&[KeyConfig {
            name: "v".into(),
            sha256: key_hash("s3cret"),
            role: Role::Viewer,
            client: Some("acme".into()),
            pii: false,
        }]);
        let parts = |name: &str, value: &str| {
            let req = axum::http::Request::builder()
                .header(name, value)
                .body(())
                .unwrap();
            req.into_parts().0
        };
        let who = store
            .authenticate(&parts("authorization", "Bearer s3cret"))
            .unwrap();
        assert_eq!(who.client.as_deref(), Some("acme"));
        assert!(store.authenticate(&parts("x-api-key", "s3cret")).is_ok());
        for scheme in ["bearer", "BEARER", "BeArEr"] {
            let who = store
                .authenticate(&parts("authorization", &format!("{scheme}  s3cret ")))
                .unwrap();
            assert_eq!(who.key_id, &key_hash("s3cret")[..16]);
        }
        for (n, v) in [
            ("authorization", "Bearer nope"),
            ("authorization", "Basic s3cret"),
            ("x-other", "s3cret"),
        ] {
            assert!(matches!(
                store.authenticate(&parts(n, v)),
                Err(ApiError::Unauthorized(_))
            ));
        }
    }
}
