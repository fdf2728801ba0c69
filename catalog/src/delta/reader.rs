//! How a managed table's data files are read: DataFusion's Parquet reader, with what a scan
//! reads before it decodes any row kept in memory across statements.
//!
//! A Delta data file never changes once written (its name is a fresh UUID; a rewrite is a new
//! file), so whatever was read from it stays true. DataFusion's own reader caches a file's
//! footer but reads its page index and bloom filters again on every scan: for a key lookup on a
//! table of 20 files, 40 reads and parses before the one page that holds the key is decoded.
//! Here the footer is cached together with its page index (in the session's file metadata
//! cache, bounded by `datafusion.runtime.metadata_cache_limit`), and the small byte ranges a
//! scan reads one at a time, which are the bloom filters, in a cache of [`SMALL_RANGE_BYTES`].

use std::ops::Range;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use datafusion::common::TableReference;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::ParquetFileReaderFactory;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::execution::cache::cache_manager::FileMetadataCache;
use datafusion::execution::cache::default_cache::DefaultCache;
use datafusion::execution::cache::{Cache, CacheKey, CacheValue};
use datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions;
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures::FutureExt;
use futures::future::BoxFuture;
use object_store::ObjectStore;
use object_store::path::Path;

/// Bytes of small ranges (bloom filters) kept across statements, for all tables of the process.
/// A managed table's bloom filter is at most 64 KiB per column and row group, so this holds
/// the filters of about a thousand row-group columns.
const SMALL_RANGE_BYTES: usize = 64 * 1024 * 1024;

/// The longest single read that is kept: a bloom filter sized for
/// 64 Ki values is 64 KiB; data pages are read as ranges of a row group, never through here.
const SMALL_RANGE_MAX: u64 = 1024 * 1024;

static SMALL_RANGES: LazyLock<DefaultCache<RangeKey, CachedBytes>> =
    LazyLock::new(|| DefaultCache::new(SMALL_RANGE_BYTES).with_name("managed file ranges"));

/// One byte range of one file of one store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RangeKey {
    store: Arc<str>,
    location: Path,
    /// The file's size: a file of another size at the same path is another file.
    file_size: u64,
    range: Range<u64>,
}

impl CacheKey for RangeKey {
    fn size(&self) -> usize {
        std::mem::size_of::<Self>() + self.store.len() + self.location.as_ref().len()
    }

    fn table_ref(&self) -> Option<&TableReference> {
        None
    }
}

#[derive(Clone)]
struct CachedBytes(Bytes);

impl CacheValue for CachedBytes {
    fn size(&self) -> usize {
        self.0.len()
    }
}

/// Creates the readers of a managed table's scans; see the module doc.
#[derive(Debug)]
pub(super) struct ManagedFileReaderFactory {
    /// The store's URL, which tells apart equal paths of different stores in the range cache.
    store_url: Arc<str>,
    inner: CachedParquetFileReaderFactory,
}

impl ManagedFileReaderFactory {
    pub(super) fn new(store_url: &str, store: Arc<dyn ObjectStore>, metadata_cache: Arc<FileMetadataCache>) -> Self {
        Self { store_url: store_url.into(), inner: CachedParquetFileReaderFactory::new(store, metadata_cache) }
    }
}

impl ParquetFileReaderFactory for ManagedFileReaderFactory {
    fn create_reader(
        &self,
        partition_index: usize,
        file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> datafusion::error::Result<Box<dyn AsyncFileReader + Send>> {
        let key = RangeKey {
            store: Arc::clone(&self.store_url),
            location: file.object_meta.location.clone(),
            file_size: file.object_meta.size,
            range: 0..0,
        };
        let inner = self.inner.create_reader(partition_index, file, metadata_size_hint, metrics)?;
        Ok(Box::new(ManagedFileReader { inner, key }))
    }
}

/// DataFusion's reader of one file, asked for the page index with every footer and with its
/// small reads cached.
struct ManagedFileReader {
    inner: Box<dyn AsyncFileReader + Send>,
    /// The file's range key, its range set per read.
    key: RangeKey,
}

impl AsyncFileReader for ManagedFileReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, datafusion::parquet::errors::Result<Bytes>> {
        if range.end.saturating_sub(range.start) > SMALL_RANGE_MAX {
            return self.inner.get_bytes(range);
        }
        let key = RangeKey { range: range.clone(), ..self.key.clone() };
        if let Some(CachedBytes(bytes)) = SMALL_RANGES.get(&key) {
            return futures::future::ready(Ok(bytes)).boxed();
        }
        async move {
            let bytes = self.inner.get_bytes(range).await?;
            SMALL_RANGES.put(&key, CachedBytes(bytes.clone()));
            Ok(bytes)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, datafusion::parquet::errors::Result<Vec<Bytes>>> {
        self.inner.get_byte_ranges(ranges)
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, datafusion::parquet::errors::Result<Arc<ParquetMetaData>>> {
        // The opener asks for the footer alone and loads the page index later, through this
        // reader but past the cache; asking for both here caches both, and the opener then
        // finds the page index already loaded.
        let options = options.cloned().unwrap_or_default().with_page_index_policy(PageIndexPolicy::Optional);
        async move { self.inner.get_metadata(Some(&options)).await }.boxed()
    }
}
