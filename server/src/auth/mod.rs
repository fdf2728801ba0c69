//! Who is calling: users and roles, passwords, bearer tokens.
//!
//! Users live in the persistent catalog with Argon2id password hashes ([`password`]). A client
//! authenticates with HTTP Basic credentials, either on the Flight handshake (which answers
//! `authorization: Bearer <token>`) or on any call; tokens are random 256-bit values kept in
//! memory with an expiry, so a restart simply asks clients to log in again. Every header goes
//! through the one parser in [`header`].
//!
//! There is no built-in password: the first start of a fresh warehouse creates `admin` with the
//! password from `STREAMPULSE_ADMIN_PASSWORD`, or generates one and prints it once.

pub mod header;
pub mod password;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;
use streampulse_engine::{CatalogStore, Error, Result, Role};
use tracing::warn;

pub use header::Credentials;
pub use password::{bootstrap_admin, put_user};

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
    pub fn require_admin(&self, what: &str) -> Result<()> {
        if self.role == Role::Admin {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!("user '{}' has role {} and may not {what}", self.user, self.role)))
        }
    }
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
    pub async fn check_password(&self, store: &CatalogStore, user: &str, password: &str) -> Result<Principal> {
        let state = store.refresh().await?;
        let denied = || Error::Unauthenticated("invalid user name or password".into());
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
        if let Some((p, at)) = self.verified.lock().ok().and_then(|m| m.get(&key).cloned())
            && at.elapsed() < self.ttl
        {
            return Ok(p);
        }
        let (pw, hash) = (password.to_string(), entry.password_hash.clone());
        let ok = tokio::task::spawn_blocking(move || password::verify_password(&pw, &hash))
            .await
            .map_err(|e| Error::internal(format!("password check failed: {e}")))?;
        if !ok {
            warn!(user, "wrong password");
            return Err(denied());
        }
        let principal = Principal { user: user.to_string(), role: entry.role };
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
    pub fn check_token(&self, token: &str) -> Result<Principal> {
        let tokens = self.tokens.lock().map_err(|_| Error::internal("token table poisoned"))?;
        match tokens.get(token) {
            Some((p, at)) if at.elapsed() < self.ttl => Ok(p.clone()),
            Some(_) => Err(Error::Unauthenticated("token expired: authenticate again".into())),
            None => Err(Error::Unauthenticated("unknown token: authenticate again".into())),
        }
    }

    /// Who presented `credentials`.
    pub async fn check(&self, store: &CatalogStore, credentials: &Credentials) -> Result<Principal> {
        match credentials {
            Credentials::Bearer(token) => self.check_token(token),
            Credentials::Basic { user, password } => self.check_password(store, user, password).await,
        }
    }

    /// Authenticate a call from its `authorization` header value (`None`: no header).
    pub async fn authenticate(&self, store: &CatalogStore, header: Option<&str>) -> Result<Principal> {
        let header = header
            .ok_or_else(|| Error::Unauthenticated("no credentials: send authorization: Basic or Bearer".into()))?;
        self.check(store, &header::parse(header)?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_expire() {
        let a = Authenticator::new(Duration::from_millis(0));
        let t = a.issue(Principal { user: "u".into(), role: Role::Reader });
        assert!(matches!(a.check_token(&t), Err(Error::Unauthenticated(_))));
        let a = Authenticator::new(Duration::from_secs(60));
        let t = a.issue(Principal { user: "u".into(), role: Role::Reader });
        assert_eq!(a.check_token(&t).unwrap().user, "u");
        assert!(a.check_token("nope").is_err());
    }
}
