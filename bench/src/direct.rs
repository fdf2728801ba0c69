//! Large output files written around the page cache, by a thread of their own.
//!
//! At SF 1 the generator writes ~10 GB. Through the page cache, the kernel copies every byte
//! once more and then writes it back: a quarter of the generator's CPU went to that on 2 cores.
//! [`DirectFile`] writes whole 4 MiB blocks with `O_DIRECT` (the disk reads them from our
//! buffers) on a writer thread, so generating the next block overlaps writing this one; the last
//! partial block goes through an ordinary write. Where the file system refuses `O_DIRECT`
//! (tmpfs) or on other systems, the same thread does ordinary writes.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Alignment `O_DIRECT` asks of buffer addresses, lengths and file offsets (the page size covers
/// every logical block size in use).
const ALIGN: usize = 4096;
/// Bytes per write.
const BLOCK: usize = 4 << 20;
/// Buffers per file: one being filled, the others being written.
const BUFFERS: usize = 3;

/// A `BLOCK`-byte buffer starting at an `ALIGN`ed address inside an ordinary `Vec`.
struct Buffer {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl Buffer {
    fn new() -> Self {
        let raw = vec![0u8; BLOCK + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        Self { raw, start, len: 0 }
    }

    fn data(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

/// A file written by a background thread, `O_DIRECT` where the file system allows it.
pub(crate) struct DirectFile {
    filling: Buffer,
    to_writer: Option<SyncSender<Buffer>>,
    returned: Receiver<Buffer>,
    writer: Option<JoinHandle<io::Result<()>>>,
}

impl DirectFile {
    /// Creates (or truncates) `path`; `direct: false` never uses `O_DIRECT`.
    pub(crate) fn create(path: &Path, direct: bool) -> io::Result<Self> {
        let plain = File::create(path)?;
        let direct = if direct { open_direct(path) } else { None };
        let (to_writer, incoming) = sync_channel::<Buffer>(BUFFERS);
        let (give_back, returned) = sync_channel::<Buffer>(BUFFERS);
        for _ in 1..BUFFERS {
            give_back.send(Buffer::new()).map_err(|_| io::Error::other("writer channel closed"))?;
        }
        let writer = std::thread::Builder::new().name("datagen-writer".into()).spawn(move || {
            let mut direct = direct;
            let mut offset = 0u64;
            for mut buffer in incoming {
                let data = buffer.data();
                let whole = data.len() - data.len() % ALIGN;
                let mut written = 0;
                if let Some(file) = &direct {
                    match file.write_all_at(&data[..whole], offset) {
                        Ok(()) => written = whole,
                        // Accepted at open, refused at write: ordinary writes from here on.
                        Err(e) if e.kind() == io::ErrorKind::InvalidInput => direct = None,
                        Err(e) => return Err(e),
                    }
                }
                plain.write_all_at(&data[written..], offset + written as u64)?;
                offset += data.len() as u64;
                buffer.len = 0;
                // The filler may have finished: then nobody needs the buffer back.
                let _ = give_back.send(buffer);
            }
            Ok(())
        })?;
        Ok(Self { filling: Buffer::new(), to_writer: Some(to_writer), returned, writer: Some(writer) })
    }

    pub(crate) fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = (BLOCK - self.filling.len).min(bytes.len());
            let at = self.filling.start + self.filling.len;
            self.filling.raw[at..at + n].copy_from_slice(&bytes[..n]);
            self.filling.len += n;
            bytes = &bytes[n..];
            if self.filling.len == BLOCK {
                self.hand_over()?;
            }
        }
        Ok(())
    }

    /// Writes what is left and waits until everything is in the file.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        if self.filling.len > 0 {
            let last = std::mem::replace(&mut self.filling, Buffer { raw: Vec::new(), start: 0, len: 0 });
            self.send(last)?;
        }
        self.join()
    }

    fn hand_over(&mut self) -> io::Result<()> {
        let next = match self.returned.recv() {
            Ok(buffer) => buffer,
            Err(_) => return Err(self.join().err().unwrap_or_else(|| io::Error::other("writer thread ended"))),
        };
        let full = std::mem::replace(&mut self.filling, next);
        self.send(full)
    }

    fn send(&mut self, buffer: Buffer) -> io::Result<()> {
        let sent = self.to_writer.as_ref().map(|tx| tx.send(buffer).is_ok()).unwrap_or(false);
        if sent { Ok(()) } else { Err(self.join().err().unwrap_or_else(|| io::Error::other("writer thread ended"))) }
    }

    fn join(&mut self) -> io::Result<()> {
        self.to_writer = None;
        match self.writer.take() {
            Some(handle) => handle.join().map_err(|_| io::Error::other("writer thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for DirectFile {
    fn drop(&mut self) {
        // Dropped without `finish` (an error elsewhere): let the thread end.
        self.to_writer = None;
        let _ = self.join();
    }
}

#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path).ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &Path) -> Option<File> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_every_byte_in_order_direct_or_not() {
        let dir = tempfile::tempdir().unwrap();
        // Sizes around the alignment and the block, written in pieces of awkward sizes.
        for size in [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 12_345] {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            for direct in [true, false] {
                let path = dir.path().join(format!("f-{size}-{direct}"));
                let mut file = DirectFile::create(&path, direct).unwrap();
                for piece in data.chunks(70_001) {
                    file.write_all(piece).unwrap();
                }
                file.finish().unwrap();
                assert!(std::fs::read(&path).unwrap() == data, "size {size}, direct {direct}");
            }
        }
    }

    #[test]
    fn a_write_error_is_reported() {
        // Writing to /dev/full fails with ENOSPC on the writer thread; the caller sees it.
        let Ok(mut file) = DirectFile::create(Path::new("/dev/full"), false) else { return };
        let block = vec![7u8; BLOCK];
        let mut result = Ok(());
        for _ in 0..BUFFERS + 2 {
            result = file.write_all(&block);
            if result.is_err() {
                break;
            }
        }
        let result = result.and_then(|()| file.finish());
        assert!(result.is_err());
    }
}
