//! Outgoing HTTP under the server's allow-list: which URLs a source may fetch, which addresses
//! it may connect to, and the one client that enforces both.
//!
//! - A URL is allowed only under a prefix of `--http-sources-allow` (empty by default, which
//!   turns HTTP sources off): same scheme, host and port, and a path under the prefix's on a
//!   segment boundary. User names in URLs and encoded `.`/`/` in paths are refused.
//! - Host names are resolved by the client's own resolver, which refuses loopback,
//!   link-local (cloud metadata at 169.254.169.254), unspecified, multicast and broadcast
//!   addresses, so a name that points (or is re-pointed, DNS rebinding) at the server's own
//!   network is never reached. An IP address written in an allowed prefix is allowed as
//!   written: that is how tests and private deployments reach `http://127.0.0.1:PORT/`.
//! - A redirect is followed only to a URL the allow-list allows, at most 5 times.
//! - Proxy settings from the environment are ignored: a proxy would resolve names elsewhere.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

use crate::error::{Error, Result};

/// The allow-list of URL prefixes, from the server's configuration.
#[derive(Debug, Clone, Default)]
pub struct HttpPolicy {
    prefixes: Vec<Url>,
}

impl HttpPolicy {
    /// Parses the configured prefixes; each must be an absolute `http://` or `https://` URL.
    pub fn new(prefixes: &[String]) -> Result<Self> {
        let mut out = Vec::new();
        for p in prefixes.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let url = Url::parse(p)
                .map_err(|e| Error::invalid(format!("configuration: http sources allow-list entry '{p}': {e}")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(Error::invalid(format!(
                    "configuration: http sources allow-list entry '{p}' must be an http:// or https:// URL with a host"
                )));
            }
            if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
                return Err(Error::invalid(format!(
                    "configuration: http sources allow-list entry '{p}' must not carry a user name, password or query"
                )));
            }
            out.push(url);
        }
        Ok(Self { prefixes: out })
    }

    /// Whether any prefix is configured.
    pub fn enabled(&self) -> bool {
        !self.prefixes.is_empty()
    }

    /// `Ok` if `url` may be fetched, else an error that says why (no request is made).
    pub fn check(&self, url: &str) -> Result<Url> {
        let parsed = Url::parse(url).map_err(|e| Error::invalid(format!("JSON_API: '{url}' is not a URL: {e}")))?;
        if !self.enabled() {
            return Err(Error::PermissionDenied(format!(
                "JSON_API: outgoing HTTP is off on this server; an operator must list the URL prefix of {} in \
                 --http-sources-allow (STREAMPULSE_HTTP_SOURCES_ALLOW, [http_sources] allow in the config file)",
                redact(&parsed)
            )));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(Error::invalid(format!(
                "JSON_API: {} carries a user name or password; give credentials with 'bearer_token_env'",
                redact(&parsed)
            )));
        }
        let lower = parsed.path().to_ascii_lowercase();
        if lower.contains("%2e") || lower.contains("%2f") || lower.contains("%5c") {
            return Err(Error::invalid(format!(
                "JSON_API: {} has an encoded '.', '/' or '\\' in its path",
                redact(&parsed)
            )));
        }
        if self.prefixes.iter().any(|p| prefix_allows(p, &parsed)) {
            return Ok(parsed);
        }
        let allowed: Vec<&str> = self.prefixes.iter().map(Url::as_str).collect();
        Err(Error::PermissionDenied(format!(
            "JSON_API: {} is not under an allowed URL prefix ({}); the server's --http-sources-allow decides",
            redact(&parsed),
            allowed.join(", ")
        )))
    }

    /// The HTTP client every source uses: the allow-list on redirects, the checked resolver,
    /// no proxies.
    pub fn client(self: &Arc<Self>, connect_timeout: Duration) -> Result<reqwest::Client> {
        let policy = Arc::clone(self);
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                let last = redact(attempt.url());
                return attempt.error(format!("more than 5 redirects, last to {last}"));
            }
            let checked = policy.check(attempt.url().as_str());
            match checked {
                Ok(_) => attempt.follow(),
                Err(e) => attempt.error(format!("redirect refused: {}", e.user_message())),
            }
        });
        reqwest::Client::builder()
            .redirect(redirects)
            .dns_resolver(Arc::new(CheckedResolver))
            .no_proxy()
            .connect_timeout(connect_timeout)
            .user_agent(concat!("streampulse/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::internal(format!("cannot build the HTTP client: {e}")))
    }
}

/// Scheme, host and port equal; the path under the prefix's path on a segment boundary.
fn prefix_allows(prefix: &Url, url: &Url) -> bool {
    if prefix.scheme() != url.scheme()
        || prefix.host() != url.host()
        || prefix.port_or_known_default() != url.port_or_known_default()
    {
        return false;
    }
    let base = prefix.path();
    let path = url.path();
    if base == "/" || base.is_empty() {
        return true;
    }
    match path.strip_prefix(base) {
        Some(rest) => base.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// A URL for messages and logs, without credentials. (Secrets belong in environment
/// variables named by `bearer_token_env`; the URL is stored in the catalog as written.)
pub fn redact(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// Whether a host name may resolve to this address.
pub fn forbidden_for_names(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_link_local() {
                Some("link-local (cloud metadata)")
            } else if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() {
                Some("unspecified, broadcast or multicast")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_for_names(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if (seg[0] & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some("unspecified or multicast")
            } else if seg == [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254] {
                Some("cloud metadata")
            } else {
                None
            }
        }
    }
}

/// The system resolver, minus the addresses of [`forbidden_for_names`]. Only host names come
/// here: an IP address in a URL is connected to directly, and passed the allow-list as written.
#[derive(Debug)]
struct CheckedResolver;

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match forbidden_for_names(a.ip()) {
                    Some(why) => {
                        refused = Some((a.ip(), why));
                        false
                    }
                    None => true,
                })
                .collect();
            if allowed.is_empty() {
                let detail = match refused {
                    Some((ip, why)) => {
                        format!("{host} resolves to {ip}, a {why} address, which host names may not reach")
                    }
                    None => format!("{host} does not resolve"),
                };
                return Err(detail.into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The host of a URL as an IP address, if it is written as one.
pub fn literal_ip(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        Host::Ipv4(a) => Some(IpAddr::V4(a)),
        Host::Ipv6(a) => Some(IpAddr::V6(a)),
        Host::Domain(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(p: &[&str]) -> HttpPolicy {
        HttpPolicy::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn prefixes_match_on_scheme_host_port_and_path_segments() {
        let p = policy(&["https://api.example.com/v1/", "http://127.0.0.1:8099/"]);
        assert!(p.check("https://api.example.com/v1/songs?page=1").is_ok());
        assert!(p.check("https://api.example.com:443/v1/songs").is_ok());
        assert!(p.check("http://127.0.0.1:8099/songs").is_ok());
        for bad in [
            "http://api.example.com/v1/songs",
            "https://api.example.com/v2/songs",
            "https://api.example.com.evil.net/v1/songs",
            "https://api.example.com:8443/v1/songs",
            "https://api.example.com/v1/../admin",
            "https://api.example.com/v1/%2e%2e/admin",
            "https://user:pw@api.example.com/v1/songs",
            "http://127.0.0.1:8100/songs",
            "http://169.254.169.254/latest/meta-data",
        ] {
            assert!(p.check(bad).is_err(), "{bad} should be refused");
        }
        let q = policy(&["https://h.example/v1"]);
        assert!(q.check("https://h.example/v1/x").is_ok());
        assert!(q.check("https://h.example/v1").is_ok());
        assert!(q.check("https://h.example/v10/x").is_err());
    }

    #[test]
    fn empty_list_refuses_everything_and_bad_entries_are_errors() {
        let e = policy(&[]).check("https://api.example.com/").unwrap_err();
        assert!(e.to_string().contains("--http-sources-allow"), "{e}");
        assert!(HttpPolicy::new(&["ftp://x/".into()]).is_err());
        assert!(HttpPolicy::new(&["not a url".into()]).is_err());
        assert!(HttpPolicy::new(&["https://u:p@x/".into()]).is_err());
    }

    #[test]
    fn names_may_not_resolve_to_local_or_metadata_addresses() {
        for ip in ["127.0.0.1", "169.254.169.254", "0.0.0.0", "::1", "fe80::1", "::ffff:127.0.0.1", "fd00:ec2::254"] {
            assert!(forbidden_for_names(ip.parse().unwrap()).is_some(), "{ip}");
        }
        for ip in ["10.0.0.5", "192.168.1.2", "93.184.216.34", "2606:2800:220:1::"] {
            assert!(forbidden_for_names(ip.parse().unwrap()).is_none(), "{ip}");
        }
    }

    #[test]
    fn redaction_drops_credentials() {
        let u = Url::parse("https://u:p@h.example/v1/s?page=2").unwrap();
        assert_eq!(redact(&u), "https://h.example/v1/s?page=2");
    }
}
