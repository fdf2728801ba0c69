//! Users, roles, passwords and bearer tokens.
//!
//! Users live in the persistent catalog with Argon2id password hashes (the `argon2` crate,
//! RustCrypto). A client authenticates with HTTP Basic credentials, either on the Flight
//! handshake (which answers `authorization: Bearer <token>`) or on any call; tokens are random
//! 256-bit values kept in memory with an expiry, so a restart simply asks clients to log in again.
//!
//! There is no built-in password: the first start of a fresh warehouse creates `admin` with the
//! password from `STREAMPULSE_ADMIN_PASSWORD`, or generates one and prints it once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use rand::RngCore;
use streampulse_catalog::{CatalogError, CatalogStore, UserEntry};
use tonic::Status;
use tracing::{info, warn};

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything: DDL, DML, ingest, queries.
    Admin,
    /// Queries and metadata only.
    Reader,
}

impl Role {
    /// Parse `admin` or `reader`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "admin" => Ok(Role::Admin),
            "reader" => Ok(Role::Reader),
            other => Err(format!("unknown role '{other}': use admin or reader")),
        }
    }

    /// The stored name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Reader => "reader",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// User name.
    pub user: String,
    /// Role.
    pub role: Role,
}

impl Principal {
    /// Fail with PERMISSION_DENIED unless the caller is an admin.
    pub fn require_admin(&self, what: &str) -> Result<(), Status> {
        if self.role == Role::Admin {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "user '{}' has role reader and may not {what}",
                self.user
            )))
        }
    }
}

/// Hash a password with Argon2id and a random salt (PHC string).
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let salt = SaltString::encode_b64(&bytes).map_err(|e| format!("cannot make salt: {e}"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash password: {e}"))
}

fn verify_password(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// Create or update a user in the catalog.
pub async fn put_user(store: &CatalogStore, name: &str, password: &str, role: Role) -> Result<(), CatalogError> {
    if name.is_empty() || name.contains(':') {
        return Err(CatalogError::Config(format!("invalid user name '{name}': must be non-empty without ':'")));
    }
    let hash = hash_password(password).map_err(CatalogError::Config)?;
    store
        .commit(|s| {
            s.users.insert(name.to_string(), UserEntry { password_hash: hash.clone(), role: role.as_str().to_string() });
            Ok(())
        })
        .await?;
    Ok(())
}

/// Make sure a fresh warehouse has an admin. Returns the generated password, if one was made.
pub async fn bootstrap_admin(store: &CatalogStore, user: &str, password: Option<String>) -> Result<Option<String>, CatalogError> {
    if !store.refresh().await?.users.is_empty() {
        return Ok(None);
    }
    let (password, generated) = match password.filter(|p| !p.is_empty()) {
        Some(p) => (p, false),
        None => {
            let mut bytes = [0u8; 18];
            rand::rng().fill_bytes(&mut bytes);
            (base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes), true)
        }
    };
    put_user(store, user, &password, Role::Admin).await?;
    info!(user, "created the first admin user");
    Ok(generated.then_some(password))
}

/// Parse an `authorization: Basic ...` value (padded or unpadded base64 of `user:password`).
pub fn parse_basic(value: &str) -> Option<(String, String)> {
    let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?.trim();
    let engine = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let decoded = engine.decode(encoded).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Verifies credentials and issues/checks bearer tokens.
#[derive(Debug)]
pub struct Authenticator {
    ttl: Duration,
    tokens: Mutex<HashMap<String, (Principal, Instant)>>,
    /// Recently verified Basic credentials, so clients that send Basic on every call do not pay
    /// a full Argon2 verification each time. Keyed by a hash of user, password and stored hash.
    verified: Mutex<HashMap<u64, (Principal, Instant)>>,
}

impl Authenticator {
    /// Tokens live for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, tokens: Mutex::new(HashMap::new()), verified: Mutex::new(HashMap::new()) }
    }

    /// Check a user name and password against the catalog.
    pub async fn check_password(&self, store: &CatalogStore, user: &str, password: &str) -> Result<Principal, Status> {
        let state = store.refresh().await.map_err(crate::status::catalog_status)?;
        let denied = || Status::unauthenticated("invalid user name or password");
        let Some(entry) = state.users.get(user) else {
            warn!(user, "login for unknown user");
            return Err(denied());
        };
        let key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (user, password, &entry.password_hash).hash(&mut h);
            h.finish()
        };
        if let Some((p, at)) = self.verified.lock().ok().and_then(|m| m.get(&key).cloned()) {
            if at.elapsed() < self.ttl {
                return Ok(p);
            }
        }
        let (pw, hash) = (password.to_string(), entry.password_hash.clone());
        let ok = tokio::task::spawn_blocking(move || verify_password(&pw, &hash))
            .await
            .map_err(|e| Status::internal(format!("password check failed: {e}")))?;
        if !ok {
            warn!(user, "wrong password");
            return Err(denied());
        }
        let role = Role::parse(&entry.role).map_err(Status::internal)?;
        let principal = Principal { user: user.to_string(), role };
        if let Ok(mut m) = self.verified.lock() {
            m.insert(key, (principal.clone(), Instant::now()));
        }
        Ok(principal)
    }

    /// Issue a new bearer token for `principal`.
    pub fn issue(&self, principal: Principal) -> String {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token = hex::encode(bytes);
        if let Ok(mut tokens) = self.tokens.lock() {
            let ttl = self.ttl;
            tokens.retain(|_, (_, at)| at.elapsed() < ttl);
            tokens.insert(token.clone(), (principal, Instant::now()));
        }
        token
    }

    /// Resolve a bearer token.
    pub fn check_token(&self, token: &str) -> Result<Principal, Status> {
        let tokens = self.tokens.lock().map_err(|_| Status::internal("token table poisoned"))?;
        match tokens.get(token) {
            Some((p, at)) if at.elapsed() < self.ttl => Ok(p.clone()),
            Some(_) => Err(Status::unauthenticated("token expired: authenticate again")),
            None => Err(Status::unauthenticated("unknown token: authenticate again")),
        }
    }

    /// Authenticate a call from its `authorization` header (Bearer or Basic).
    pub async fn authenticate(&self, store: &CatalogStore, metadata: &tonic::metadata::MetadataMap) -> Result<Principal, Status> {
        let header = metadata
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("no credentials: send authorization: Basic or Bearer"))?
            .to_str()
            .map_err(|_| Status::unauthenticated("authorization header is not text"))?;
        if let Some(token) = header.strip_prefix("Bearer ").or_else(|| header.strip_prefix("bearer ")) {
            return self.check_token(token.trim());
        }
        if let Some((user, password)) = parse_basic(header) {
            return self.check_password(store, &user, &password).await;
        }
        Err(Status::unauthenticated("authorization header must be Basic or Bearer"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_accepts_padded_and_unpadded() {
        // "admin:pw" → YWRtaW46cHc= (padded) and YWRtaW46cHc (unpadded)
        assert_eq!(parse_basic("Basic YWRtaW46cHc="), Some(("admin".into(), "pw".into())));
        assert_eq!(parse_basic("Basic YWRtaW46cHc"), Some(("admin".into(), "pw".into())));
        assert_eq!(parse_basic("Bearer x"), None);
        assert_eq!(parse_basic("Basic !!!"), None);
    }

    #[test]
    fn hashes_verify_and_reject() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("wrong", &h));
    }

    #[test]
    fn tokens_expire() {
        let a = Authenticator::new(Duration::from_millis(0));
        let t = a.issue(Principal { user: "u".into(), role: Role::Reader });
        assert_eq!(a.check_token(&t).unwrap_err().code(), tonic::Code::Unauthenticated);
        let a = Authenticator::new(Duration::from_secs(60));
        let t = a.issue(Principal { user: "u".into(), role: Role::Reader });
        assert_eq!(a.check_token(&t).unwrap().user, "u");
        assert!(a.check_token("nope").is_err());
    }
}
