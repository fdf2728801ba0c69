//! `streampulse mock-api`: the song metadata API of pipeline C, served from a generated
//! dataset's `songs` table, with the latency, bandwidth, capacity and faults of a real one.
//!
//! `GET /songs?page=N[&page_size=M]` (pages from 1) or `GET /songs?cursor=C` answers
//! `{"data": [song, ...], "meta": {"page", "page_size", "total", "total_pages", "next_cursor",
//! "version"}}`; a page past the end has no rows. Songs are ordered by `song_id`.
//!
//! Faults (`--fault KIND:RATE[:MAX]`, RATE a share of requests, MAX a cap on how often it fires):
//! `429` (with `Retry-After`), `500`, `503`, `reset` (the connection drops after the headers),
//! `timeout` (no answer for an hour), `truncate` (the body stops half way), `malformed` (a
//! complete response that is not JSON), `wrong_type` (one song's `duration_ms` is a string),
//! `extra_field` (every song gains a field the client does not know) and `drift` (the
//! catalogue changes during the crawl: one song is removed and a new one added, so page
//! boundaries shift while the total stays the same). Whether a request gets a fault depends
//! only on the seed, the page and how many times that page was asked for, so runs repeat.
//!
//! Operators' endpoints for tests and benchmarks: `GET /_mock/stats` (requests, faults, peak
//! requests in flight, bytes), `GET /_mock/catalogue` (every song now, no faults), `POST
//! /_mock/change?percent=P` (change P % of songs: title and energy), `GET /moved/<path>`
//! (redirects to `--redirect-to` + `/<path>`).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::Uri;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// A fault the mock can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    TooManyRequests,
    Internal,
    Unavailable,
    Reset,
    Timeout,
    Truncate,
    Malformed,
    WrongType,
    ExtraField,
    Drift,
}

impl FaultKind {
    const ALL: [FaultKind; 10] = [
        FaultKind::TooManyRequests,
        FaultKind::Internal,
        FaultKind::Unavailable,
        FaultKind::Reset,
        FaultKind::Timeout,
        FaultKind::Truncate,
        FaultKind::Malformed,
        FaultKind::WrongType,
        FaultKind::ExtraField,
        FaultKind::Drift,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::TooManyRequests => "429",
            FaultKind::Internal => "500",
            FaultKind::Unavailable => "503",
            FaultKind::Reset => "reset",
            FaultKind::Timeout => "timeout",
            FaultKind::Truncate => "truncate",
            FaultKind::Malformed => "malformed",
            FaultKind::WrongType => "wrong_type",
            FaultKind::ExtraField => "extra_field",
            FaultKind::Drift => "drift",
        }
    }
}

/// One `--fault` setting.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub kind: FaultKind,
    /// Share of requests, 0 to 1.
    pub rate: f64,
    /// Most times it fires over the mock's life (drift: once unless given).
    pub max: Option<u64>,
}

impl std::str::FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(':');
        let name = parts.next().unwrap_or_default();
        let kind = FaultKind::ALL.into_iter().find(|k| k.name() == name).ok_or_else(|| {
            let names: Vec<_> = FaultKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown fault '{name}': use one of {}", names.join(", "))
        })?;
        let rate = match parts.next() {
            Some(r) => r.parse::<f64>().map_err(|_| format!("fault {name}: rate '{r}' is not a number"))?,
            None => return Err(format!("fault {name}: give a rate, e.g. {name}:0.05")),
        };
        if !(0.0..=1.0).contains(&rate) {
            return Err(format!("fault {name}: rate {rate} must be between 0 and 1"));
        }
        let max = match parts.next() {
            Some(m) => Some(m.parse::<u64>().map_err(|_| format!("fault {name}: max '{m}' is not a count"))?),
            None if kind == FaultKind::Drift => Some(1),
            None => None,
        };
        if parts.next().is_some() {
            return Err(format!("fault '{s}': expected KIND:RATE[:MAX]"));
        }
        Ok(Fault { kind, rate, max })
    }
}

/// How the mock behaves.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// A `streampulse datagen` folder (`songs.parquet` or `songs.csv`).
    pub data: PathBuf,
    /// Songs per page unless the request says `page_size`.
    pub page_size: usize,
    /// Added to every answer.
    pub latency: Duration,
    /// Up to this much more, drawn per request.
    pub jitter: Duration,
    /// Bytes per second per response; unlimited when `None`.
    pub bandwidth: Option<u64>,
    /// Requests served at once; more get 429 with `Retry-After: 1`.
    pub max_concurrency: Option<usize>,
    pub faults: Vec<Fault>,
    pub seed: u64,
    /// A bearer token every `/songs` request must carry.
    pub token: Option<String>,
    /// Where `/moved/...` redirects.
    pub redirect_to: Option<String>,
}

/// The catalogue and the counters.
struct Mock {
    config: MockConfig,
    /// `song_id` → the song as a JSON object text.
    songs: Mutex<Catalogue>,
    attempts: Mutex<HashMap<String, u64>>,
    fired: Mutex<BTreeMap<&'static str, u64>>,
    requests: AtomicU64,
    bytes: AtomicU64,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
}

struct Catalogue {
    rows: BTreeMap<i64, String>,
    version: u64,
    next_id: i64,
}

/// Serves until the process ends; `ready` gets the bound address.
pub async fn serve(config: MockConfig, listen: &str, ready: impl FnOnce(std::net::SocketAddr)) -> std::io::Result<()> {
    let rows = load_songs(&config.data)?;
    let next_id = rows.keys().next_back().copied().unwrap_or(0) + 1;
    let mock = Arc::new(Mock {
        config,
        songs: Mutex::new(Catalogue { rows, version: 1, next_id }),
        attempts: Mutex::new(HashMap::new()),
        fired: Mutex::new(BTreeMap::new()),
        requests: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        peak_in_flight: AtomicUsize::new(0),
    });
    let app = Router::new()
        .route("/songs", get(songs))
        .route("/moved/{*rest}", get(moved))
        .route("/_mock/stats", get(stats))
        .route("/_mock/catalogue", get(catalogue))
        .route("/_mock/change", post(change))
        .with_state(mock);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    ready(listener.local_addr()?);
    axum::serve(listener, app).await
}

/// The songs of a datagen folder as JSON object texts by `song_id`.
fn load_songs(folder: &Path) -> std::io::Result<BTreeMap<i64, String>> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let parquet = folder.join("songs.parquet");
    let csv = folder.join("songs.csv");
    let batches: Vec<RecordBatch> = if parquet.exists() {
        let file = File::open(&parquet)?;
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .map_err(|e| invalid(format!("{}: {e}", parquet.display())))?
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(format!("{}: {e}", parquet.display())))?
    } else if csv.exists() {
        let file = File::open(&csv)?;
        arrow::csv::ReaderBuilder::new(Arc::new(songs_schema()))
            .with_header(true)
            .build(file)
            .map_err(|e| invalid(format!("{}: {e}", csv.display())))?
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(format!("{}: {e}", csv.display())))?
    } else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no songs.parquet or songs.csv in {}: run streampulse datagen --out {0} first", folder.display()),
        ));
    };
    let mut out = BTreeMap::new();
    for batch in &batches {
        let mut buf = Vec::new();
        {
            let mut writer = arrow::json::LineDelimitedWriter::new(&mut buf);
            writer.write(batch).map_err(|e| invalid(e.to_string()))?;
            writer.finish().map_err(|e| invalid(e.to_string()))?;
        }
        for line in String::from_utf8_lossy(&buf).lines() {
            let value: Value = serde_json::from_str(line).map_err(|e| invalid(e.to_string()))?;
            let id = value["song_id"].as_i64().ok_or_else(|| invalid(format!("song without song_id: {line}")))?;
            out.insert(id, line.to_string());
        }
    }
    Ok(out)
}

/// The columns of datagen's `songs`.
pub fn songs_schema() -> Schema {
    let mut fields = vec![
        Field::new("song_id", DataType::Int64, true),
        Field::new("artist_id", DataType::Int64, true),
        Field::new("title", DataType::Utf8, true),
        Field::new("album", DataType::Utf8, true),
        Field::new("genre", DataType::Utf8, true),
        Field::new("release_date", DataType::Date32, true),
        Field::new("duration_ms", DataType::Int32, true),
    ];
    for name in
        ["tempo", "energy", "danceability", "valence", "acousticness", "instrumentalness", "speechiness", "liveness"]
    {
        fields.push(Field::new(name, DataType::Float64, true));
    }
    Schema::new(fields)
}

/// A number in [0, 1) from the seed and the parts, the same on every run.
fn draw(seed: u64, parts: &[&[u8]]) -> f64 {
    // FNV-1a then a splitmix finaliser: stable across platforms and Rust versions.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Counts one request in flight until dropped.
struct InFlight<'a>(&'a Mock);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn songs(State(mock): State<Arc<Mock>>, uri: Uri, headers: HeaderMap) -> Response {
    let params = query_params(&uri);
    mock.requests.fetch_add(1, Ordering::SeqCst);
    let now = mock.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    mock.peak_in_flight.fetch_max(now, Ordering::SeqCst);
    let _guard = InFlight(&mock);
    let config = &mock.config;
    if let Some(token) = &config.token {
        let expected = format!("Bearer {token}");
        if headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
            return (StatusCode::UNAUTHORIZED, "missing or wrong bearer token").into_response();
        }
    }
    let page_size = match params.get("page_size").map(|s| s.parse::<usize>()) {
        None => config.page_size,
        Some(Ok(n)) if (1..=100_000).contains(&n) => n,
        Some(_) => return (StatusCode::BAD_REQUEST, "page_size must be 1 to 100000").into_response(),
    };
    let offset = if let Some(cursor) = params.get("cursor").filter(|c| !c.is_empty()) {
        match cursor.strip_prefix('o').and_then(|o| o.parse::<usize>().ok()) {
            Some(o) => o,
            None => return (StatusCode::BAD_REQUEST, "unknown cursor").into_response(),
        }
    } else {
        match params.get("page").map(|p| p.parse::<usize>()) {
            None => 0,
            Some(Ok(p)) if p >= 1 => (p - 1) * page_size,
            Some(_) => return (StatusCode::BAD_REQUEST, "page must be a number from 1").into_response(),
        }
    };
    let key = format!("{offset}/{page_size}");
    let attempt = {
        let mut attempts = mock.attempts.lock().unwrap_or_else(|e| e.into_inner());
        let n = attempts.entry(key.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let latency =
        config.latency + config.jitter.mul_f64(draw(config.seed, &[key.as_bytes(), &attempt.to_le_bytes(), b"jitter"]));
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(limit) = config.max_concurrency
        && now > limit
    {
        mock.fire_count("over_capacity");
        return retry_after_429();
    }
    let fault = mock.pick_fault(&key, attempt);
    match fault {
        Some(FaultKind::TooManyRequests) => return retry_after_429(),
        Some(FaultKind::Internal) => return (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response(),
        Some(FaultKind::Unavailable) => return (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response(),
        Some(FaultKind::Timeout) => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Some(FaultKind::Drift) => mock.drift(),
        _ => {}
    }
    let body = {
        let songs = mock.songs.lock().unwrap_or_else(|e| e.into_inner());
        let total = songs.rows.len();
        let rows: Vec<&String> = songs.rows.values().skip(offset).take(page_size).collect();
        let mut data = String::with_capacity(rows.iter().map(|r| r.len() + 1).sum::<usize>() + 2);
        data.push('[');
        for (i, row) in rows.iter().enumerate() {
            if i > 0 {
                data.push(',');
            }
            match fault {
                Some(FaultKind::WrongType) if i == 0 => {
                    let mut v: Value = serde_json::from_str(row).unwrap_or(Value::Null);
                    v["duration_ms"] = json!("unknown");
                    data.push_str(&v.to_string());
                }
                Some(FaultKind::ExtraField) => {
                    data.push_str(row.strip_suffix('}').unwrap_or(row));
                    data.push_str(",\"mood\":\"calm\"}");
                }
                _ => data.push_str(row),
            }
        }
        data.push(']');
        let next = offset + rows.len();
        let page = offset / page_size + 1;
        let meta = json!({
            "page": page,
            "page_size": page_size,
            "total": total,
            "total_pages": total.div_ceil(page_size),
            "next_cursor": if next < total { Value::from(format!("o{next}")) } else { Value::Null },
            "version": songs.version,
        });
        format!("{{\"data\":{data},\"meta\":{meta}}}")
    };
    let bytes = Bytes::from(body);
    mock.bytes.fetch_add(bytes.len() as u64, Ordering::SeqCst);
    match fault {
        Some(FaultKind::Malformed) => {
            let cut = bytes.slice(..bytes.len() / 2);
            json_response(Body::from(cut), None)
        }
        Some(FaultKind::Reset) => {
            let stream = futures::stream::iter([Err::<Bytes, std::io::Error>(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "mock: connection reset",
            ))]);
            json_response(Body::from_stream(stream), Some(bytes.len()))
        }
        Some(FaultKind::Truncate) => {
            let half = bytes.slice(..bytes.len() / 2);
            let stream = futures::stream::iter([
                Ok(half),
                Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "mock: body truncated")),
            ]);
            json_response(Body::from_stream(stream), Some(bytes.len()))
        }
        _ => match config.bandwidth {
            Some(rate) if rate > 0 => {
                let len = bytes.len();
                let chunk = 16 * 1024;
                let stream = futures::stream::unfold(0usize, move |at| {
                    let bytes = bytes.clone();
                    async move {
                        if at >= bytes.len() {
                            return None;
                        }
                        let end = (at + chunk).min(bytes.len());
                        tokio::time::sleep(Duration::from_secs_f64((end - at) as f64 / rate as f64)).await;
                        Some((Ok::<Bytes, std::io::Error>(bytes.slice(at..end)), end))
                    }
                });
                json_response(Body::from_stream(stream), Some(len))
            }
            _ => json_response(Body::from(bytes), None),
        },
    }
}

fn query_params(uri: &Uri) -> HashMap<String, String> {
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).into_owned().collect()
}

fn json_response(body: Body, length: Option<usize>) -> Response {
    let mut response = Response::new(body);
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(n) = length {
        response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    response
}

fn retry_after_429() -> Response {
    let mut response = (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

impl Mock {
    /// The fault for this attempt at this page, if any (the first kind whose draw falls under
    /// its rate and whose cap is not reached).
    fn pick_fault(&self, key: &str, attempt: u64) -> Option<FaultKind> {
        for fault in &self.config.faults {
            let d = draw(self.config.seed, &[key.as_bytes(), &attempt.to_le_bytes(), fault.kind.name().as_bytes()]);
            if d >= fault.rate {
                continue;
            }
            let mut fired = self.fired.lock().unwrap_or_else(|e| e.into_inner());
            let n = fired.entry(fault.kind.name()).or_insert(0);
            if fault.max.is_some_and(|m| *n >= m) {
                continue;
            }
            *n += 1;
            return Some(fault.kind);
        }
        None
    }

    fn fire_count(&self, name: &'static str) {
        *self.fired.lock().unwrap_or_else(|e| e.into_inner()).entry(name).or_insert(0) += 1;
    }

    /// The catalogue changes under the crawl: the song in the middle goes, a new one comes.
    fn drift(&self) {
        let mut songs = self.songs.lock().unwrap_or_else(|e| e.into_inner());
        let middle = songs.rows.keys().nth(songs.rows.len() / 2).copied();
        if let Some(id) = middle {
            songs.rows.remove(&id);
        }
        let id = songs.next_id;
        songs.next_id += 1;
        let template = songs.rows.values().next().cloned().unwrap_or_else(|| "{}".into());
        let mut v: Value = serde_json::from_str(&template).unwrap_or_else(|_| json!({}));
        v["song_id"] = json!(id);
        v["title"] = json!(format!("New song {id}"));
        songs.rows.insert(id, v.to_string());
        songs.version += 1;
    }
}

async fn moved(
    State(mock): State<Arc<Mock>>,
    axum::extract::Path(rest): axum::extract::Path<String>,
    uri: Uri,
) -> Response {
    mock.requests.fetch_add(1, Ordering::SeqCst);
    let Some(base) = &mock.config.redirect_to else {
        return (StatusCode::NOT_FOUND, "no --redirect-to").into_response();
    };
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let location = format!("{}/{rest}{query}", base.trim_end_matches('/'));
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

async fn stats(State(mock): State<Arc<Mock>>) -> Response {
    let fired = mock.fired.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let songs = mock.songs.lock().unwrap_or_else(|e| e.into_inner());
    let body = json!({
        "requests": mock.requests.load(Ordering::SeqCst),
        "faults": fired,
        "peak_in_flight": mock.peak_in_flight.load(Ordering::SeqCst),
        "bytes": mock.bytes.load(Ordering::SeqCst),
        "songs": songs.rows.len(),
        "version": songs.version,
    });
    json_response(Body::from(body.to_string()), None)
}

async fn catalogue(State(mock): State<Arc<Mock>>) -> Response {
    let songs = mock.songs.lock().unwrap_or_else(|e| e.into_inner());
    let mut body = String::from("[");
    for (i, row) in songs.rows.values().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(row);
    }
    body.push(']');
    json_response(Body::from(body), None)
}

async fn change(State(mock): State<Arc<Mock>>, uri: Uri) -> Response {
    let params = query_params(&uri);
    let percent = match params.get("percent").map(|p| p.parse::<f64>()) {
        Some(Ok(p)) if (0.0..=100.0).contains(&p) => p,
        _ => return (StatusCode::BAD_REQUEST, "percent=0..100 is required").into_response(),
    };
    let mut songs = mock.songs.lock().unwrap_or_else(|e| e.into_inner());
    songs.version += 1;
    let version = songs.version;
    let mut changed = Vec::new();
    for (id, row) in songs.rows.iter_mut() {
        if draw(mock.config.seed, &[&id.to_le_bytes(), &version.to_le_bytes(), b"change"]) * 100.0 >= percent {
            continue;
        }
        let mut v: Value = serde_json::from_str(row).unwrap_or_else(|_| json!({}));
        let title = v["title"].as_str().unwrap_or_default().to_string();
        v["title"] = json!(format!("{title} (v{version})"));
        let energy = v["energy"].as_f64().unwrap_or(0.5);
        v["energy"] = json!((energy + 0.1) % 1.0);
        *row = v.to_string();
        changed.push(*id);
    }
    json_response(Body::from(json!({ "changed": changed, "version": version }).to_string()), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_with_clear_errors() {
        let f: Fault = "503:0.05".parse().unwrap();
        assert_eq!((f.kind, f.rate, f.max), (FaultKind::Unavailable, 0.05, None));
        let d: Fault = "drift:0.01".parse().unwrap();
        assert_eq!(d.max, Some(1));
        assert!("nope:0.1".parse::<Fault>().unwrap_err().contains("unknown fault 'nope'"));
        assert!("500".parse::<Fault>().unwrap_err().contains("give a rate"));
        assert!("500:2".parse::<Fault>().unwrap_err().contains("between 0 and 1"));
    }

    #[test]
    fn draws_are_stable_and_spread() {
        assert_eq!(draw(7, &[b"a", b"b"]), draw(7, &[b"a", b"b"]));
        assert_ne!(draw(7, &[b"a", b"b"]), draw(8, &[b"a", b"b"]));
        let n = 20_000;
        let below = (0..n).filter(|i: &u64| draw(1, &[&i.to_le_bytes()]) < 0.1).count();
        assert!((1_700..2_300).contains(&below), "{below} of {n} below 0.1");
    }
}
