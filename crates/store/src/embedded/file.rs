//! Finding, creating and opening the store file.
//!
//! A new file is built under a temporary name and linked into place only once its tables
//! and counters are committed: a crash while creating it (even a `kill -9` in the first
//! milliseconds of the first start) must never leave a half-written file at the real name,
//! which redb would refuse to open ever after.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use redb::{Builder, Database, DatabaseError, ReadableTable};

use super::codec::{KV, LOG, META, META_COMPACTED, META_CURRENT};
use crate::{EmbeddedOptions, Error, Revision};

/// Name of the store file when a directory is given.
pub const FILE_NAME: &str = "store.redb";

/// Infix of the temporary names new files are built under.
const CREATING: &str = ".creating.";

/// `dir_or_file`: an existing directory, or a path without extension (created as a
/// directory), holds `store.redb`; anything else is the file itself.
pub(crate) fn resolve_path(path: &Path) -> Result<PathBuf, Error> {
    if path.is_dir() {
        return Ok(path.join(FILE_NAME));
    }
    if path.exists() || path.extension().is_some() {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        return Ok(path.to_path_buf());
    }
    std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
    Ok(path.join(FILE_NAME))
}

pub(crate) fn open_error(path: &Path, e: DatabaseError) -> Error {
    match e {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => Error::Locked {
            path: path.to_path_buf(),
        },
        DatabaseError::Storage(redb::StorageError::Io(io)) => Error::io(path, io),
        other => other.into(),
    }
}

/// Opens (or atomically creates) the file; returns the database and its (current,
/// compacted) revisions. Nothing here scans history, so opening is fast whatever the log
/// holds (after a crash redb first checks the file, in time proportional to its size).
pub(crate) fn open(
    path: &Path,
    opts: &EmbeddedOptions,
) -> Result<(Database, Revision, Revision), Error> {
    let mut builder = Database::builder();
    builder.set_cache_size(opts.cache_size);
    let db = if path.exists() {
        builder.create(path).map_err(|e| open_error(path, e))?
    } else {
        create(&builder, path)?
    };
    remove_abandoned_creations(path);
    let (current, compacted) = init(&db)?;
    let mut db = db;
    compact_if_mostly_free(&mut db, path, opts.compact_file_above)?;
    Ok((db, current, compacted))
}

/// Reads the counters, creating the tables and counters of a new file.
fn init(db: &Database) -> Result<(Revision, Revision), Error> {
    let txn = db.begin_write()?;
    let counters = {
        txn.open_table(KV)?;
        txn.open_table(LOG)?;
        let mut meta = txn.open_table(META)?;
        let current = meta.get(META_CURRENT)?.map(|g| g.value());
        let compacted = meta.get(META_COMPACTED)?.map(|g| g.value());
        match (current, compacted) {
            (Some(c), Some(k)) => Some((c, k)),
            _ => {
                meta.insert(META_CURRENT, 1)?;
                meta.insert(META_COMPACTED, 0)?;
                None
            }
        }
    };
    match counters {
        // Nothing changed: no commit, no fsync.
        Some(c) => {
            txn.abort()?;
            Ok(c)
        }
        None => {
            txn.commit()?;
            Ok((1, 0))
        }
    }
}

fn create(builder: &Builder, path: &Path) -> Result<Database, Error> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!("{CREATING}{}", std::process::id()));
    let tmp = path.with_file_name(name);
    let _ = std::fs::remove_file(&tmp);
    let db = builder.create(&tmp).map_err(|e| open_error(&tmp, e))?;
    init(&db)?;
    // A hard link publishes the file only if no other process created one meanwhile.
    match std::fs::hard_link(&tmp, path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            drop(db);
            let _ = std::fs::remove_file(&tmp);
            return builder.create(path).map_err(|e| open_error(path, e));
        }
        // File systems without hard links: a rename is still atomic against crashes.
        Err(_) => std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?,
    }
    let _ = std::fs::remove_file(&tmp);
    sync_dir(path)?;
    Ok(db)
}

/// Makes the new name durable: without this a power loss could lose the whole file.
fn sync_dir(path: &Path) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Temporary files of creations that crashed. Safe to remove once the real file is open
/// and locked: a creation still running would find the real name taken and give up.
fn remove_abandoned_creations(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let mut prefix = name.to_os_string();
    prefix.push(CREATING);
    let prefix = prefix.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            tracing::info!(path = %entry.path().display(), "removing abandoned store file");
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Gives free space back to the file system when most of the file is free. Only at open,
/// where this handle is the only user: redb's compaction needs no live transaction.
fn compact_if_mostly_free(db: &mut Database, path: &Path, above: u64) -> Result<(), Error> {
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if len < above {
        return Ok(());
    }
    let txn = db.begin_write()?;
    let stats = txn.stats()?;
    txn.abort()?;
    let used = stats.allocated_pages() * stats.page_size() as u64;
    if used.saturating_mul(2) > len {
        return Ok(());
    }
    let started = Instant::now();
    while db.compact()? {}
    let after = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    tracing::info!(
        path = %path.display(),
        before_bytes = len,
        after_bytes = after,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "compacted store file"
    );
    Ok(())
}
