//! Typed values of settings: memory sizes (`4GiB`, `512MiB`, bytes, or a share of RAM like
//! `50%`), disk sizes (bytes only) and spill compression. Each keeps the text it was given, so
//! messages quote the user's own words.

use std::fmt;
use std::str::FromStr;

/// A memory size: bytes, or a share of physical memory resolved when used.
#[derive(Debug, Clone, PartialEq)]
pub struct MemorySize {
    text: String,
    spec: SizeSpec,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum SizeSpec {
    Bytes(u64),
    Percent(f64),
}

impl MemorySize {
    /// Bytes on a machine with `total` bytes of memory.
    pub fn bytes(&self, total: u64) -> usize {
        match self.spec {
            SizeSpec::Bytes(b) => b as usize,
            SizeSpec::Percent(p) => (total as f64 * p / 100.0) as usize,
        }
    }
}

impl FromStr for MemorySize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let spec = match t.strip_suffix('%') {
            Some(pct) => {
                let p: f64 = pct.trim().parse().map_err(|_| bad_size(text))?;
                if !(0.0..=100.0).contains(&p) || p == 0.0 {
                    return Err(format!("invalid size '{text}': a share of RAM must be in (0, 100]%"));
                }
                SizeSpec::Percent(p)
            }
            None => SizeSpec::Bytes(parse_bytes(text)?),
        };
        Ok(Self { text: t.to_string(), spec })
    }
}

impl fmt::Display for MemorySize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `n` bytes for people: `512 B`, `3.0 MiB`.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// A disk size in bytes (a share of RAM makes no sense for disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.contains('%') {
            return Err(format!("'{text}' is a share of RAM: give bytes, e.g. 20GiB"));
        }
        parse_bytes(text).map(ByteSize)
    }
}

fn bad_size(text: &str) -> String {
    format!("invalid size '{text}': use bytes, 512MiB, 4GiB or a share of RAM like 25%")
}

/// Parse "4GiB", "512MiB", "1.5GB" or "1048576" into bytes.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number.parse().map_err(|_| bad_size(text))?;
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
        _ => return Err(bad_size(text)),
    };
    let bytes = n * mult;
    if bytes < 1.0 {
        return Err(format!("invalid size '{text}': must be positive"));
    }
    Ok(bytes as u64)
}

/// How spill files are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpillCompression {
    /// No compression.
    Uncompressed,
    /// LZ4 frames: fast enough that spilling stays disk-bound.
    Lz4Frame,
    /// Zstandard: smaller, slower.
    Zstd,
}

impl SpillCompression {
    /// DataFusion's name for it.
    pub fn as_str(&self) -> &'static str {
        match self {
            SpillCompression::Uncompressed => "uncompressed",
            SpillCompression::Lz4Frame => "lz4_frame",
            SpillCompression::Zstd => "zstd",
        }
    }
}

impl FromStr for SpillCompression {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "uncompressed" => Ok(Self::Uncompressed),
            "lz4_frame" => Ok(Self::Lz4Frame),
            "zstd" => Ok(Self::Zstd),
            other => Err(format!("spill compression must be uncompressed, lz4_frame or zstd, got '{other}'")),
        }
    }
}

impl fmt::Display for SpillCompression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let m = |s: &str| s.parse::<MemorySize>();
        assert_eq!(m("4GiB").unwrap().bytes(0), 4 << 30);
        assert_eq!(m("512MiB").unwrap().bytes(0), 512 << 20);
        assert_eq!(m("1048576").unwrap().bytes(0), 1 << 20);
        assert_eq!(m("25%").unwrap().bytes(1000), 250);
        assert_eq!(m("25%").unwrap().to_string(), "25%");
        assert!(m("0%").is_err());
        assert!(m("12 parsecs").unwrap_err().contains("invalid size"));
        assert!(m("-1").is_err());
        assert!("10%".parse::<ByteSize>().unwrap_err().contains("give bytes"));
        assert_eq!("2KiB".parse::<ByteSize>().unwrap(), ByteSize(2048));
        assert!("brotli".parse::<SpillCompression>().unwrap_err().contains("uncompressed, lz4_frame or zstd"));
    }
}
