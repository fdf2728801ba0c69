//! Where the warehouse lives: a local folder or an `s3://bucket/prefix`, and how to reach it.
//!
//! One [`Warehouse`] value gives the catalog its object store, gives Delta tables their storage
//! options, and gives DataFusion an object store registry that can open any `s3://` bucket with
//! the configured endpoint and credentials (so external tables on S3 work too).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::error::{Error, Result};

/// S3 connection settings; every field is optional so AWS defaults and env vars still apply.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL of an S3-compatible server (MinIO, moto, ...); empty for AWS.
    pub endpoint: Option<String>,
    /// Region, e.g. `us-east-1`.
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Allow plain `http://` endpoints (local test servers).
    pub allow_http: Option<bool>,
    /// Take credentials from the cloud instance's metadata endpoint when no keys are given.
    /// Off unless set: without keys the warehouse fails at once instead of waiting on an
    /// endpoint that only exists inside a cloud.
    pub instance_credentials: Option<bool>,
}

impl S3Config {
    /// Options in the lower-case `aws_*` spelling that both `object_store` and `deltalake` accept.
    pub fn options(&self) -> HashMap<String, String> {
        let mut o = HashMap::new();
        if let Some(v) = &self.endpoint {
            o.insert("aws_endpoint_url".into(), v.clone());
            // Local S3-compatible servers rarely support virtual-hosted buckets.
            o.insert("aws_virtual_hosted_style_request".into(), "false".into());
            if v.starts_with("http://") && self.allow_http.is_none() {
                o.insert("aws_allow_http".into(), "true".into());
            }
        }
        if let Some(v) = &self.region {
            o.insert("aws_region".into(), v.clone());
        }
        if let Some(v) = &self.access_key_id {
            o.insert("aws_access_key_id".into(), v.clone());
        }
        if let Some(v) = &self.secret_access_key {
            o.insert("aws_secret_access_key".into(), v.clone());
        }
        if let Some(v) = self.allow_http {
            o.insert("aws_allow_http".into(), v.to_string());
        }
        o
    }

    /// Where this configuration's credentials come from, or a clear error when there are none:
    /// object_store would otherwise fall back to the instance-metadata endpoint and a query
    /// would hang on retries to an address that does not answer outside a cloud.
    fn check_credentials(&self, bucket: &str) -> Result<()> {
        let env = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
        let keys = self.access_key_id.is_some() && self.secret_access_key.is_some();
        let env_keys = env("AWS_ACCESS_KEY_ID") && env("AWS_SECRET_ACCESS_KEY");
        let other_source = env("AWS_WEB_IDENTITY_TOKEN_FILE")
            || env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
            || env("AWS_CONTAINER_CREDENTIALS_FULL_URI");
        if keys || env_keys || other_source || self.instance_credentials == Some(true) {
            return Ok(());
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err(Error::invalid(format!(
                "S3 bucket '{bucket}': give both --s3-access-key-id and --s3-secret-access-key \
                 (STREAMPULSE_S3_ACCESS_KEY_ID, STREAMPULSE_S3_SECRET_ACCESS_KEY), not one of them"
            )));
        }
        Err(Error::invalid(format!(
            "S3 bucket '{bucket}' has no credentials: set --s3-access-key-id and --s3-secret-access-key \
             (STREAMPULSE_S3_ACCESS_KEY_ID, STREAMPULSE_S3_SECRET_ACCESS_KEY, or the [s3] section of the config \
             file), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; on a cloud instance, --s3-instance-credentials \
             true takes them from its metadata endpoint"
        )))
    }

    pub(crate) fn build_store(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>> {
        self.check_credentials(bucket)?;
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (k, v) in self.options() {
            let key = k.parse().map_err(|e| Error::invalid(format!("S3 option {k}: {e}")))?;
            b = b.with_config(key, v);
        }
        Ok(Arc::new(b.build()?))
    }
}

/// The warehouse root: where the catalog file and managed tables live.
#[derive(Debug, Clone)]
pub struct Warehouse {
    root: Url,
    s3: S3Config,
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

impl Warehouse {
    /// Open (and for a local folder, create) the warehouse at `location`: a path or a URL.
    pub fn open(location: &str, s3: S3Config) -> Result<Self> {
        let root = parse_location(location)?;
        let (store, prefix): (Arc<dyn ObjectStore>, Path) = match root.scheme() {
            "file" => {
                let dir = root.to_file_path().map_err(|()| Error::invalid(format!("bad local path {root}")))?;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| Error::invalid(format!("cannot create warehouse folder {}: {e}", dir.display())))?;
                (
                    Arc::new(LocalFileSystem::new()),
                    Path::from_url_path(root.path())
                        .map_err(|e| Error::invalid(format!("bad warehouse path {root}: {e}")))?,
                )
            }
            "s3" | "s3a" => {
                let bucket = root.host_str().ok_or_else(|| Error::invalid(format!("no bucket in {root}")))?;
                (
                    s3.build_store(bucket)?,
                    Path::from_url_path(root.path())
                        .map_err(|e| Error::invalid(format!("bad warehouse path {root}: {e}")))?,
                )
            }
            other => {
                return Err(Error::invalid(format!(
                    "unsupported warehouse scheme '{other}': use a local folder or s3://bucket/prefix"
                )));
            }
        };
        Ok(Self { root, s3, store, prefix })
    }

    /// The root URL, always ending in `/`.
    pub fn root(&self) -> &Url {
        &self.root
    }

    /// S3 settings shared by everything that reaches storage.
    pub fn s3(&self) -> &S3Config {
        &self.s3
    }

    /// Storage options for Delta tables under this warehouse.
    pub fn storage_options(&self) -> HashMap<String, String> {
        if self.root.scheme() == "file" { HashMap::new() } else { self.s3.options() }
    }

    /// The object store holding the warehouse root.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// An object-store path under the root.
    pub fn path(&self, relative: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in relative.split('/').filter(|s| !s.is_empty()) {
            p = p.clone().join(part);
        }
        p
    }

    /// A URL under the root for a relative folder (ends in `/`).
    pub fn url(&self, relative: &str) -> Result<Url> {
        let rel = if relative.ends_with('/') { relative.to_string() } else { format!("{relative}/") };
        self.root.join(&rel).map_err(|e| Error::invalid(format!("bad table location {relative}: {e}")))
    }

    /// A DataFusion object store registry that knows the warehouse and any `s3://` bucket.
    pub fn object_store_registry(&self) -> Arc<dyn ObjectStoreRegistry> {
        Arc::new(WarehouseStores { inner: DefaultObjectStoreRegistry::new(), s3: self.s3.clone() })
    }
}

/// Parse a warehouse location: `s3://bucket/prefix`, `file:///abs`, or a plain path.
fn parse_location(location: &str) -> Result<Url> {
    let mut url = if location.contains("://") {
        Url::parse(location).map_err(|e| Error::invalid(format!("bad warehouse URL {location}: {e}")))?
    } else {
        let path = std::path::Path::new(location);
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir().map_err(|e| Error::invalid(format!("no current directory: {e}")))?.join(path)
        };
        std::fs::create_dir_all(&abs)
            .map_err(|e| Error::invalid(format!("cannot create warehouse folder {}: {e}", abs.display())))?;
        let abs = abs.canonicalize().map_err(|e| Error::invalid(format!("{location}: {e}")))?;
        Url::from_directory_path(&abs).map_err(|()| Error::invalid(format!("bad warehouse path {}", abs.display())))?
    };
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    Ok(url)
}

/// Object store registry: the default one, plus lazily built S3 stores for any bucket.
#[derive(Debug)]
struct WarehouseStores {
    inner: DefaultObjectStoreRegistry,
    s3: S3Config,
}

impl ObjectStoreRegistry for WarehouseStores {
    fn register_store(&self, url: &Url, store: Arc<dyn ObjectStore>) -> Option<Arc<dyn ObjectStore>> {
        self.inner.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        self.inner.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        if let Ok(store) = self.inner.get_store(url) {
            return Ok(store);
        }
        match (url.scheme(), url.host_str()) {
            ("s3" | "s3a", Some(bucket)) => {
                let store = self.s3.build_store(bucket).map_err(Error::into_datafusion)?;
                let base = Url::parse(&format!("{}://{bucket}", url.scheme()))
                    .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
                self.inner.register_store(&base, store.clone());
                Ok(store)
            }
            _ => self.inner.get_store(url),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_become_directory_urls() {
        let dir = tempfile::tempdir().unwrap();
        let w = Warehouse::open(dir.path().to_str().unwrap(), S3Config::default()).unwrap();
        assert_eq!(w.root().scheme(), "file");
        assert!(w.root().path().ends_with('/'));
        assert!(w.url("public/t-1").unwrap().as_str().ends_with("/public/t-1/"));
    }

    #[test]
    fn s3_urls_keep_bucket_and_prefix() {
        let s3 = S3Config {
            endpoint: Some("http://127.0.0.1:9".into()),
            access_key_id: Some("key".into()),
            secret_access_key: Some("secret".into()),
            ..Default::default()
        };
        let w = Warehouse::open("s3://bucket/wh", s3).unwrap();
        assert_eq!(w.root().as_str(), "s3://bucket/wh/");
        assert_eq!(w.path("_catalog/x.json").as_ref(), "wh/_catalog/x.json");
        assert_eq!(w.storage_options().get("aws_allow_http").map(String::as_str), Some("true"));
    }

    #[test]
    fn s3_without_credentials_fails_at_once_naming_the_settings() {
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() || std::env::var_os("AWS_WEB_IDENTITY_TOKEN_FILE").is_some()
        {
            return; // the environment supplies credentials: nothing to check here
        }
        let s3 = S3Config { endpoint: Some("http://127.0.0.1:9".into()), ..Default::default() };
        let err = Warehouse::open("s3://bucket/wh", s3.clone()).unwrap_err().to_string();
        assert!(err.contains("no credentials") && err.contains("--s3-access-key-id"), "{err}");
        let half = S3Config { access_key_id: Some("k".into()), ..s3.clone() };
        let err = Warehouse::open("s3://bucket/wh", half).unwrap_err().to_string();
        assert!(err.contains("give both"), "{err}");
        let instance = S3Config { instance_credentials: Some(true), ..s3 };
        assert!(Warehouse::open("s3://bucket/wh", instance).is_ok());
    }

    #[test]
    fn unknown_scheme_is_a_clear_error() {
        let err = Warehouse::open("ftp://x/y", S3Config::default()).unwrap_err();
        assert!(err.to_string().contains("unsupported warehouse scheme 'ftp'"), "{err}");
    }
}
