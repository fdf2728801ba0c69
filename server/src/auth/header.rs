//! The one parser of `authorization` header values: `Basic <base64 user:password>` (padded or
//! not) and `Bearer <token>`, case-insensitive in the scheme as HTTP says.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use streampulse_engine::{Error, Result};

/// Credentials a client presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A user name and password.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// A token issued at handshake.
    Bearer(String),
}

/// Parse an `authorization` header value.
pub fn parse(value: &str) -> Result<Credentials> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        return Ok(Credentials::Bearer(rest.to_string()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let engine = GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
        );
        let bad = || Error::Unauthenticated("authorization: Basic must carry base64 of user:password".into());
        let decoded = engine.decode(rest).map_err(|_| bad())?;
        let text = String::from_utf8(decoded).map_err(|_| bad())?;
        let (user, password) = text.split_once(':').ok_or_else(bad)?;
        return Ok(Credentials::Basic { user: user.to_string(), password: password.to_string() });
    }
    Err(Error::Unauthenticated("authorization header must be Basic or Bearer".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_accepts_padded_and_unpadded_and_bearer_any_case() {
        // "admin:pw" → YWRtaW46cHc= (padded) and YWRtaW46cHc (unpadded)
        let basic = Credentials::Basic { user: "admin".into(), password: "pw".into() };
        assert_eq!(parse("Basic YWRtaW46cHc=").unwrap(), basic);
        assert_eq!(parse("basic YWRtaW46cHc").unwrap(), basic);
        assert_eq!(parse("Bearer abc ").unwrap(), Credentials::Bearer("abc".into()));
        assert_eq!(parse("bearer abc").unwrap(), Credentials::Bearer("abc".into()));
        assert!(parse("Basic !!!").is_err());
        assert!(parse("Digest x").is_err());
        assert!(parse("Bearer").is_err());
    }
}
