//! Users' passwords: Argon2id hashes (the `argon2` crate, RustCrypto) in the catalog, and the
//! first admin of a fresh warehouse.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use rand::RngCore;
use streampulse_engine::{CatalogStore, Error, Result, Role, UserEntry};
use tracing::info;

/// Hash a password with Argon2id and a random salt (PHC string).
pub fn hash_password(password: &str) -> Result<String> {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let salt = SaltString::encode_b64(&bytes).map_err(|e| Error::internal(format!("cannot make salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::internal(format!("cannot hash password: {e}")))
}

/// Whether `password` matches the stored `hash`.
pub fn verify_password(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// Create or update a user in the catalog.
pub async fn put_user(store: &CatalogStore, name: &str, password: &str, role: Role) -> Result<()> {
    if name.is_empty() || name.contains(':') {
        return Err(Error::invalid(format!("invalid user name '{name}': must be non-empty without ':'")));
    }
    let hash = hash_password(password)?;
    store
        .commit(|s| {
            s.users.insert(name.to_string(), UserEntry { password_hash: hash.clone(), role });
            Ok(())
        })
        .await?;
    Ok(())
}

/// Make sure a fresh warehouse has an admin. Returns the generated password, if one was made.
pub async fn bootstrap_admin(store: &CatalogStore, user: &str, password: Option<String>) -> Result<Option<String>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_reject() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("wrong", &h));
    }
}
