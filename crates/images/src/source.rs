//! Random access to the files of an import: a directory, or a tar (gzip-compressed or not)
//! indexed once so blobs are read in place without unpacking the archive.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::{ImageError, IoContext, Result};

/// Largest JSON document (index, manifest, config) we read into memory.
const MAX_JSON: u64 = 32 << 20;

pub(crate) enum TarItem {
    File { offset: u64, size: u64 },
    Symlink(String),
    Hardlink(String),
}

pub(crate) enum Source {
    Dir {
        root: PathBuf,
    },
    Tar {
        origin: PathBuf,
        archive: PathBuf,
        items: HashMap<String, TarItem>,
    },
}

impl Source {
    /// `scratch` is a private directory where a gzip-compressed archive is decompressed.
    pub fn new(path: &Path, scratch: &Path) -> Result<Source> {
        let meta = fs::metadata(path).at(path)?;
        if meta.is_dir() {
            return Ok(Source::Dir {
                root: path.canonicalize().at(path)?,
            });
        }
        let mut f = File::open(path).at(path)?;
        let mut magic = [0u8; 2];
        let n = read_up_to(&mut f, &mut magic).at(path)?;
        let archive = if n == 2 && magic == [0x1f, 0x8b] {
            let out = scratch.join("archive.tar");
            f.seek(SeekFrom::Start(0)).at(path)?;
            let mut dec = flate2::read::MultiGzDecoder::new(BufReader::new(f));
            let mut w = File::create(&out).at(&out)?;
            io::copy(&mut dec, &mut w).map_err(|e| ImageError::NotAnArchive {
                path: path.to_path_buf(),
                reason: format!("bad gzip: {e}"),
            })?;
            out
        } else {
            path.to_path_buf()
        };
        let items = index_tar(&archive).map_err(|e| ImageError::NotAnArchive {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(Source::Tar {
            origin: path.to_path_buf(),
            archive,
            items,
        })
    }

    pub fn origin(&self) -> &Path {
        match self {
            Source::Dir { root } => root,
            Source::Tar { origin, .. } => origin,
        }
    }

    pub fn exists(&self, name: &str) -> bool {
        self.open(name).is_ok()
    }

    /// Opens a file of the archive by its path inside it.
    pub fn open(&self, name: &str) -> Result<Box<dyn Read + Send>> {
        let missing = || ImageError::MissingBlob(name.to_string());
        match self {
            Source::Dir { root } => {
                let rel = normalize(name).ok_or_else(missing)?;
                let p = root.join(&rel);
                // Symlinks inside the layout are followed, but must stay inside it.
                let real = match p.canonicalize() {
                    Ok(r) => r,
                    Err(_) => return Err(missing()),
                };
                if !real.starts_with(root) || !real.is_file() {
                    return Err(missing());
                }
                Ok(Box::new(File::open(&real).at(&real)?))
            }
            Source::Tar { archive, items, .. } => {
                let mut cur = normalize(name).ok_or_else(missing)?;
                for _ in 0..16 {
                    match items.get(&cur).ok_or_else(missing)? {
                        TarItem::File { offset, size } => {
                            let mut f = File::open(archive).at(archive)?;
                            f.seek(SeekFrom::Start(*offset)).at(archive)?;
                            return Ok(Box::new(BufReader::new(f).take(*size)));
                        }
                        TarItem::Hardlink(t) => cur = normalize(t).ok_or_else(missing)?,
                        TarItem::Symlink(t) => {
                            let base = match cur.rfind('/') {
                                Some(i) if !t.starts_with('/') => format!("{}/{t}", &cur[..i]),
                                _ => t.clone(),
                            };
                            cur = normalize(&base).ok_or_else(missing)?;
                        }
                    }
                }
                Err(missing())
            }
        }
    }

    /// Reads a small file (JSON documents), refusing anything implausibly large.
    pub fn read_small(&self, name: &str) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.open(name)?
            .take(MAX_JSON + 1)
            .read_to_end(&mut buf)
            .at(self.origin().join(name))?;
        if buf.len() as u64 > MAX_JSON {
            return Err(crate::error::invalid(name, "larger than 32 MiB"));
        }
        Ok(buf)
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Lexically normalises an archive path; None when it climbs above the root.
fn normalize(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for p in name.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

fn index_tar(path: &Path) -> io::Result<HashMap<String, TarItem>> {
    let f = File::open(path)?;
    let mut archive = tar::Archive::new(BufReader::new(f));
    let mut items = HashMap::new();
    // Seeking over file data: indexing reads headers only.
    for entry in archive.entries_with_seek()? {
        let entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let Some(name) = normalize(&name) else {
            continue;
        };
        let link = || -> io::Result<String> {
            Ok(entry
                .link_name()?
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default())
        };
        let item = match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => TarItem::File {
                offset: entry.raw_file_position(),
                size: entry.size(),
            },
            tar::EntryType::Symlink => TarItem::Symlink(link()?),
            tar::EntryType::Link => TarItem::Hardlink(link()?),
            _ => continue,
        };
        items.insert(name, item);
    }
    Ok(items)
}
