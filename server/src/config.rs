//! Configuration: command-line flags, each also an environment variable (`STREAMPULSE_*`), an
//! optional TOML file for the rest, and defaults that work with nothing set.
//!
//! Precedence: flag or env var, then the file, then the default. Every key is listed with its
//! default and meaning in the README's configuration reference.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;
use streampulse_catalog::{EngineConfig, S3Config};

/// Default warehouse folder, relative to the working directory.
pub const DEFAULT_WAREHOUSE: &str = "./warehouse";
/// Default Flight SQL address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Default memory pool: half of physical memory.
pub const DEFAULT_MEMORY_LIMIT: &str = "50%";
/// Default spill compression: lz4 is fast enough that spilling stays disk-bound.
pub const DEFAULT_SPILL_COMPRESSION: &str = "lz4_frame";
/// Default limit on queries running at once (more wait in a queue).
pub const DEFAULT_MAX_CONCURRENT_QUERIES: usize = 8;
/// Default longest wait in that queue.
pub const DEFAULT_QUEUE_TIMEOUT: &str = "60s";
/// Default bearer token lifetime.
pub const DEFAULT_TOKEN_TTL: &str = "12h";

/// Flags shared by every command that opens a warehouse.
#[derive(Debug, Clone, Args, Default)]
pub struct WarehouseArgs {
    /// Warehouse root: a local folder or s3://bucket/prefix [default: ./warehouse]
    #[arg(long, global = true, env = "STREAMPULSE_WAREHOUSE")]
    pub warehouse: Option<String>,
    /// TOML file with any of these settings (flags and env vars win over it)
    #[arg(long, global = true, env = "STREAMPULSE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Memory pool shared by all queries: bytes, "4GiB", "512MiB" or a share of RAM like "50%" [default: 50%]
    #[arg(long, global = true, env = "STREAMPULSE_MEMORY_LIMIT")]
    pub memory_limit: Option<String>,
    /// Memory one query may use, within --memory-limit: bytes, "1GiB" or a share of RAM [default: the global limit]
    #[arg(long, global = true, env = "STREAMPULSE_QUERY_MEMORY_LIMIT")]
    pub query_memory_limit: Option<String>,
    /// Folder for spill files [default: the OS temp folder]
    #[arg(long, global = true, env = "STREAMPULSE_SPILL_DIR")]
    pub spill_dir: Option<PathBuf>,
    /// Most disk that spill files may take at once, all queries together [default: 100GiB]
    #[arg(long, global = true, env = "STREAMPULSE_SPILL_MAX_SIZE")]
    pub spill_max_size: Option<String>,
    /// Spill file compression: uncompressed, lz4_frame or zstd [default: lz4_frame]
    #[arg(long, global = true, env = "STREAMPULSE_SPILL_COMPRESSION")]
    pub spill_compression: Option<String>,
    /// Partitions (threads) per query [default: number of cores]
    #[arg(long, global = true, env = "STREAMPULSE_TARGET_PARTITIONS")]
    pub target_partitions: Option<usize>,
    /// S3 endpoint URL for S3-compatible servers (MinIO, moto)
    #[arg(long, global = true, env = "STREAMPULSE_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region
    #[arg(long, global = true, env = "STREAMPULSE_S3_REGION")]
    pub s3_region: Option<String>,
    /// S3 access key id
    #[arg(long, global = true, env = "STREAMPULSE_S3_ACCESS_KEY_ID")]
    pub s3_access_key_id: Option<String>,
    /// S3 secret access key
    #[arg(long, global = true, env = "STREAMPULSE_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,
    /// Allow plain http:// S3 endpoints
    #[arg(long, global = true, env = "STREAMPULSE_S3_ALLOW_HTTP")]
    pub s3_allow_http: Option<bool>,
}

/// The TOML file: every key optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub warehouse: Option<String>,
    pub listen: Option<String>,
    pub memory_limit: Option<String>,
    pub query_memory_limit: Option<String>,
    pub spill_dir: Option<PathBuf>,
    pub spill_max_size: Option<String>,
    pub spill_compression: Option<String>,
    pub target_partitions: Option<usize>,
    pub max_concurrent_queries: Option<usize>,
    pub queue_timeout: Option<String>,
    pub token_ttl: Option<String>,
    pub admin_user: Option<String>,
    pub s3: S3Config,
}

impl FileConfig {
    /// Read a config file; a missing or malformed file is an error that names it.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))
    }
}

impl WarehouseArgs {
    /// The config file's content, or defaults when none was given.
    pub fn file(&self) -> Result<FileConfig, String> {
        match &self.config {
            Some(p) => FileConfig::load(p),
            None => Ok(FileConfig::default()),
        }
    }

    /// Resolve flags, file and defaults into an engine configuration.
    pub fn engine_config(&self, file: &FileConfig) -> Result<EngineConfig, String> {
        let warehouse = self
            .warehouse
            .clone()
            .or_else(|| file.warehouse.clone())
            .unwrap_or_else(|| DEFAULT_WAREHOUSE.to_string());
        let memory = self
            .memory_limit
            .clone()
            .or_else(|| file.memory_limit.clone())
            .unwrap_or_else(|| DEFAULT_MEMORY_LIMIT.to_string());
        let memory_limit = parse_size(&memory, total_memory())?;
        let query_memory_limit = match self.query_memory_limit.clone().or_else(|| file.query_memory_limit.clone()) {
            Some(text) => {
                let bytes = parse_size(&text, total_memory())?;
                if bytes > memory_limit {
                    return Err(format!(
                        "query memory limit {text} is above the memory limit {memory} ({bytes} > {memory_limit} bytes)"
                    ));
                }
                Some(bytes)
            }
            None => None,
        };
        let spill_max_size = match self.spill_max_size.clone().or_else(|| file.spill_max_size.clone()) {
            Some(text) if text.contains('%') => return Err(format!("spill max size '{text}': give bytes, e.g. 20GiB")),
            Some(text) => Some(parse_size(&text, u64::MAX)? as u64),
            None => None,
        };
        let spill_compression = self
            .spill_compression
            .clone()
            .or_else(|| file.spill_compression.clone())
            .unwrap_or_else(|| DEFAULT_SPILL_COMPRESSION.to_string());
        if !["uncompressed", "lz4_frame", "zstd"].contains(&spill_compression.as_str()) {
            return Err(format!("spill compression must be uncompressed, lz4_frame or zstd, got '{spill_compression}'"));
        }
        let s3 = S3Config {
            endpoint: self.s3_endpoint.clone().or_else(|| file.s3.endpoint.clone()),
            region: self.s3_region.clone().or_else(|| file.s3.region.clone()),
            access_key_id: self.s3_access_key_id.clone().or_else(|| file.s3.access_key_id.clone()),
            secret_access_key: self.s3_secret_access_key.clone().or_else(|| file.s3.secret_access_key.clone()),
            allow_http: self.s3_allow_http.or(file.s3.allow_http),
        };
        Ok(EngineConfig {
            warehouse,
            s3,
            memory_limit,
            query_memory_limit,
            spill_dir: self.spill_dir.clone().or_else(|| file.spill_dir.clone()),
            spill_max_size,
            spill_compression: Some(spill_compression),
            target_partitions: self.target_partitions.or(file.target_partitions),
        })
    }
}

/// Physical memory in bytes (from /proc/meminfo), or 8 GiB when it cannot be read.
pub fn total_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(8 << 30)
}

/// Parse "4GiB", "512MiB", "1.5GB", "1048576" or "25%" (of `total`) into bytes.
pub fn parse_size(text: &str, total: u64) -> Result<usize, String> {
    let t = text.trim();
    let bad = || format!("invalid size '{text}': use bytes, 512MiB, 4GiB or a share of RAM like 25%");
    if let Some(pct) = t.strip_suffix('%') {
        let p: f64 = pct.trim().parse().map_err(|_| bad())?;
        if !(0.0..=100.0).contains(&p) || p == 0.0 {
            return Err(format!("invalid size '{text}': a share of RAM must be in (0, 100]%"));
        }
        return Ok((total as f64 * p / 100.0) as usize);
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number.parse().map_err(|_| bad())?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1e12,
        "tib" => 1024f64.powi(4),
        _ => return Err(bad()),
    };
    let bytes = n * mult;
    if bytes < 1.0 {
        return Err(format!("invalid size '{text}': must be positive"));
    }
    Ok(bytes as usize)
}

/// Parse a duration like "12h", "30m", "1h 30m".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("invalid duration '{text}': {e} (use e.g. 12h, 30m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4GiB", 0).unwrap(), 4 << 30);
        assert_eq!(parse_size("512MiB", 0).unwrap(), 512 << 20);
        assert_eq!(parse_size("1048576", 0).unwrap(), 1 << 20);
        assert_eq!(parse_size("25%", 1000).unwrap(), 250);
        assert!(parse_size("0%", 1000).is_err());
        assert!(parse_size("12 parsecs", 0).unwrap_err().contains("invalid size"));
        assert!(parse_size("-1", 0).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("12h").unwrap(), Duration::from_secs(12 * 3600));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn flags_win_over_file() {
        let args = WarehouseArgs { memory_limit: Some("1GiB".into()), ..Default::default() };
        let file: FileConfig = toml::from_str("memory_limit = \"2GiB\"\nwarehouse = \"/tmp/wh\"\n[s3]\nregion = \"eu\"").unwrap();
        let c = args.engine_config(&file).unwrap();
        assert_eq!(c.memory_limit, 1 << 30);
        assert_eq!(c.warehouse, "/tmp/wh");
        assert_eq!(c.s3.region.as_deref(), Some("eu"));
        assert!(toml::from_str::<FileConfig>("nonsense_key = 1").is_err());
    }
}
