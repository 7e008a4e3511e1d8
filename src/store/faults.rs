//! Storage faults on command, for testing the paths a failing disk takes: redb's file backend
//! wrapped so that writes or syncs fail while a control file says so.
//!
//! Off unless `STACKDNS_STORAGE_FAULTS` names a control file when the server starts. The file
//! holds whitespace-separated words, read again before every write and sync:
//!
//! | word | effect |
//! |---|---|
//! | `write=eio` | every write fails with EIO |
//! | `write=enospc` | every write fails with ENOSPC (a full disk) |
//! | `sync=eio` | every `fsync` fails with EIO |
//!
//! An empty or missing file means no faults. This is how the integration tests fail commits of
//! a real server (`tests/integration/faults.rs`); it is not meant for production, where the
//! variable is simply not set and the backend is redb's own.

use std::fs::File;
use std::io::Error;
use std::ops::Bound;
use std::path::PathBuf;

use ::redb::backends::FileBackend;
use ::redb::{BackendError, StorageBackend};

/// The environment variable that names the control file.
pub const CONTROL_ENV: &str = "STACKDNS_STORAGE_FAULTS";

/// redb's file backend, failing on command.
#[derive(Debug)]
pub struct FaultyBackend {
    inner: FileBackend,
    control: PathBuf,
}

impl FaultyBackend {
    pub fn new(file: File, control: PathBuf) -> Result<Self, ::redb::DatabaseError> {
        Ok(Self {
            inner: FileBackend::new(file)?,
            control,
        })
    }

    /// The fault the control file asks for on `op` (`write` or `sync`), if any.
    fn fault(&self, op: &str) -> Option<Error> {
        let words = std::fs::read_to_string(&self.control).ok()?;
        let wanted = words
            .split_whitespace()
            .find_map(|w| w.strip_prefix(op)?.strip_prefix('='))?;
        let errno = match wanted {
            "enospc" => 28,
            _ => 5, // EIO
        };
        Some(Error::from_raw_os_error(errno))
    }
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> Result<u64, Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), Error> {
        match self.fault("write") {
            Some(e) => Err(e),
            None => self.inner.set_len(len),
        }
    }

    fn sync_data(&self) -> Result<(), Error> {
        match self.fault("sync") {
            Some(e) => Err(e),
            None => self.inner.sync_data(),
        }
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        match self.fault("write") {
            Some(e) => Err(e),
            None => self.inner.write(offset, data),
        }
    }

    fn close(&self) -> Result<(), Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }
}
