//! Live events: gzip JSONL files in Hive folders, ≈6,500 lines each.

#[allow(unused_imports)]
use super::*;

/// An open gzip JSONL file of live events.
pub(super) struct EventFile {
    pub(super) path: PathBuf,
    pub(super) encoder: GzEncoder<BufWriter<File>>,
    pub(super) lines: usize,
    pub(super) pending: Vec<u8>,
}

impl EventFile {
    pub(super) fn flush_pending(&mut self) -> Result<()> {
        self.encoder.write_all(&self.pending).map_err(io_err(&self.path))?;
        self.pending.clear();
        Ok(())
    }

    pub(super) fn finish(mut self) -> Result<()> {
        self.flush_pending()?;
        self.encoder.finish().map_err(io_err(&self.path))?;
        Ok(())
    }
}
