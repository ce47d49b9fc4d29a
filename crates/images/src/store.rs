//! The store itself: content-addressed blobs, layers unpacked once, and an index of
//! references, changed only under a lock file and always by atomic rename.
//!
//! ```text
//! <dir>/blobs/sha256/<hex>   manifests, configs, layer blobs as imported (verified)
//! <dir>/layers/<diffid hex>/ one unpacked layer, shared by every image that has it
//! <dir>/refs.json            {"version":1,"refs":{"docker.io/library/x:1":"sha256:.."}}
//! <dir>/lock                 flock(2) held by import, remove and gc
//! <dir>/tmp/                 staging for imports in progress; emptied when unused
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{is_hex64, Digest};
use crate::error::{invalid, ImageError, IoContext, Result};
use crate::import::{self, Present, Staging};
use crate::layer::{UnpackOptions, WhiteoutFormat};
use crate::reference::Reference;
use crate::source::Source;
use crate::spec::{ConfigFile, Manifest};
use crate::sys;

const REFS_FILE: &str = "refs.json";

/// What a runtime needs from an image's config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// `8080/tcp`, sorted.
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub volumes: Vec<String>,
    pub stop_signal: Option<String>,
}

/// An image in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Every reference naming this image, fully qualified and sorted.
    pub references: Vec<String>,
    /// The manifest digest (what `name@sha256:...` refers to).
    pub digest: Digest,
    /// The config digest: the image id, as docker and the CRI report it.
    pub id: Digest,
    /// Content size: config plus layer blobs, as stored.
    pub size: u64,
    pub os: String,
    pub architecture: String,
    pub config: ImageConfig,
    /// Uncompressed layer digests, lowest first.
    pub diff_ids: Vec<Digest>,
    /// The unpacked layer directories, lowest first (overlayfs wants lowerdirs highest
    /// first: reverse this).
    pub layers: Vec<PathBuf>,
}

/// One row of `list()`: one per reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSummary {
    pub reference: String,
    pub digest: Digest,
    pub id: Digest,
    pub size: u64,
}

impl fmt::Display for ImageSummary {
    /// `REFERENCE  DIGEST(short)  SIZE`, single-space separated; `ImageTable` aligns.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.reference,
            self.digest.short(),
            human_size(self.size)
        )
    }
}

/// Rows of `list()` as an aligned table with a header, for `corral image ls`.
pub struct ImageTable<'a>(pub &'a [ImageSummary]);

impl fmt::Display for ImageTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self
            .0
            .iter()
            .map(|r| r.reference.len())
            .chain(["REFERENCE".len()])
            .max()
            .unwrap_or(0);
        writeln!(f, "{:<w$}   {:<12}   SIZE", "REFERENCE", "DIGEST")?;
        for r in self.0 {
            writeln!(
                f,
                "{:<w$}   {:<12}   {}",
                r.reference,
                r.digest.short(),
                human_size(r.size)
            )?;
        }
        Ok(())
    }
}

/// Sizes as crictl prints them: decimal units, 3 significant digits (`2.16MB`).
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n}B")
    } else if v < 10.0 {
        format!("{v:.2}{}", UNITS[i])
    } else if v < 100.0 {
        format!("{v:.1}{}", UNITS[i])
    } else {
        format!("{v:.0}{}", UNITS[i])
    }
}

/// What `gc` deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    pub blobs_removed: usize,
    pub layers_removed: usize,
}

#[derive(Serialize, Deserialize, Default)]
struct RefIndex {
    version: u32,
    refs: BTreeMap<String, Digest>,
}

pub struct ImageStore {
    root: PathBuf,
    opts: UnpackOptions,
}

struct Held(#[allow(dead_code)] File);

impl ImageStore {
    /// Opens (creating if needed) the store at `dir`. Whiteouts are written in overlayfs
    /// form when running as root, as `.wh.` files otherwise.
    pub fn open(dir: impl AsRef<Path>) -> Result<ImageStore> {
        let format = if sys::is_root() {
            WhiteoutFormat::Overlay
        } else {
            WhiteoutFormat::Oci
        };
        ImageStore::open_with(dir, format)
    }

    pub fn open_with(dir: impl AsRef<Path>, whiteouts: WhiteoutFormat) -> Result<ImageStore> {
        let privileged = sys::is_root();
        if whiteouts == WhiteoutFormat::Overlay && !privileged {
            return Err(invalid(
                "whiteout format",
                "overlayfs whiteouts (0:0 devices, trusted.* xattrs) need root",
            ));
        }
        let root = dir.as_ref().to_path_buf();
        for d in ["blobs/sha256", "layers", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).at(&p)?;
        }
        let store = ImageStore {
            root,
            opts: UnpackOptions {
                whiteouts,
                privileged,
            },
        };
        // Leftovers of a crashed import; only when nobody is importing right now.
        if let Some(_held) = store.try_lock()? {
            let tmp = store.root.join("tmp");
            for e in fs::read_dir(&tmp).at(&tmp)? {
                let p = e.at(&tmp)?.path();
                sys::remove_any(&p).at(&p)?;
            }
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn whiteout_format(&self) -> WhiteoutFormat {
        self.opts.whiteouts
    }

    fn blob_file(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    fn lock_file(&self) -> Result<File> {
        let p = self.root.join("lock");
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .at(&p)
    }

    fn lock(&self) -> Result<Held> {
        let f = self.lock_file()?;
        sys::lock_exclusive(&f, true).at(self.root.join("lock"))?;
        Ok(Held(f))
    }

    fn try_lock(&self) -> Result<Option<Held>> {
        let f = self.lock_file()?;
        let got = sys::lock_exclusive(&f, false).at(self.root.join("lock"))?;
        Ok(got.then_some(Held(f)))
    }

    fn read_index(&self) -> Result<RefIndex> {
        let p = self.root.join(REFS_FILE);
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| ImageError::Json {
                what: p.display().to_string(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RefIndex {
                version: 1,
                refs: BTreeMap::new(),
            }),
            Err(e) => Err(e).at(&p),
        }
    }

    /// Write to a temporary file, fsync, rename over the old one, fsync the directory.
    fn write_index(&self, idx: &RefIndex) -> Result<()> {
        let p = self.root.join(REFS_FILE);
        let tmp = self.root.join(format!("{REFS_FILE}.tmp"));
        let mut bytes = serde_json::to_vec_pretty(idx).expect("the index serialises");
        bytes.push(b'\n');
        let mut f = File::create(&tmp).at(&tmp)?;
        f.write_all(&bytes).at(&tmp)?;
        f.sync_all().at(&tmp)?;
        fs::rename(&tmp, &p).at(&p)?;
        sys::fsync_dir(&self.root).at(&self.root)
    }

    /// Imports an OCI image layout (directory or tar) or a `docker save` archive, gzip
    /// compressed or not. Returns the (fully qualified) references it imported. On any
    /// error the store is left as it was.
    pub fn import(&self, path: impl AsRef<Path>) -> Result<Vec<String>> {
        let path = path.as_ref();
        // Held for the whole import: a concurrent remove cannot collect a layer this
        // import decided it need not unpack.
        let _held = self.lock()?;
        let mut staging = Staging::new(&self.root.join("tmp"), self.opts)?;
        let source = Source::new(path, staging.dir.path())?;
        let planned = import::plan(&source)?;
        let mut staged = Vec::new();
        for img in planned {
            staged.push(staging.stage_image(&source, img, self)?);
        }
        drop(source);

        // Everything is verified: make it durable, then move it in.
        sys::syncfs(staging.dir.path()).at(staging.dir.path())?;
        for d in &staging.blobs {
            let to = self.blob_file(d);
            if !to.exists() {
                fs::rename(staging.blob_path(d), &to).at(&to)?;
            }
        }
        for d in &staging.layers {
            let to = self.layer_dir(d);
            if !to.exists() {
                fs::rename(staging.layer_path(d), &to).at(&to)?;
            }
        }
        for d in ["blobs/sha256", "layers"] {
            let p = self.root.join(d);
            sys::fsync_dir(&p).at(&p)?;
        }
        let mut idx = self.read_index()?;
        idx.version = 1;
        let mut names = Vec::new();
        let mut moved = false;
        for img in staged {
            for n in img.names {
                let key = n.to_string();
                if let Some(old) = idx.refs.insert(key.clone(), img.manifest.clone()) {
                    moved |= old != img.manifest;
                }
                if !names.contains(&key) {
                    names.push(key);
                }
            }
        }
        self.write_index(&idx)?;
        drop(staging);
        if moved {
            // A tag now names another image: the old one may be unreferenced.
            self.gc_locked(&idx)?;
        }
        Ok(names)
    }

    /// The image a reference names (`busybox:1`, `docker.io/library/busybox:1`,
    /// `busybox@sha256:<manifest>`, or an image id `sha256:<config>`); None if there is
    /// none or the reference is malformed.
    pub fn resolve(&self, reference: &str) -> Option<Image> {
        match self.get(reference) {
            Ok(img) => img,
            Err(e) => {
                tracing::debug!(reference, error = %e, "resolve failed");
                None
            }
        }
    }

    /// Like `resolve`, but a malformed reference or an unreadable store is an error.
    pub fn get(&self, reference: &str) -> Result<Option<Image>> {
        let idx = self.read_index()?;
        match self.find(&idx, reference)? {
            Some(d) => self.load(&idx, &d).map(Some),
            None => Ok(None),
        }
    }

    /// The manifest digest a reference resolves to.
    fn find(&self, idx: &RefIndex, reference: &str) -> Result<Option<Digest>> {
        if let Some(id) = parse_id(reference) {
            if idx.refs.values().any(|d| *d == id) {
                return Ok(Some(id));
            }
            let digests: BTreeSet<&Digest> = idx.refs.values().collect();
            for d in digests {
                if self.read_manifest(d)?.config.digest == id.as_str() {
                    return Ok(Some(d.clone()));
                }
            }
            return Ok(None);
        }
        let r = Reference::parse(reference)?;
        if let Some(d) = r.digest() {
            let repo = r.repository();
            let hit = idx
                .refs
                .iter()
                .any(|(k, v)| v == d && Reference::parse(k).is_ok_and(|k| k.repository() == repo));
            return Ok(hit.then(|| d.clone()));
        }
        Ok(idx.refs.get(&r.to_string()).cloned())
    }

    fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.blob_file(d);
        fs::read(&p).at(&p)
    }

    fn read_manifest(&self, d: &Digest) -> Result<Manifest> {
        serde_json::from_slice(&self.read_blob(d)?).map_err(|source| ImageError::Json {
            what: format!("stored manifest {d}"),
            source,
        })
    }

    fn read_config(&self, m: &Manifest) -> Result<(Digest, ConfigFile)> {
        let d = Digest::parse(&m.config.digest)?;
        let cfg =
            serde_json::from_slice(&self.read_blob(&d)?).map_err(|source| ImageError::Json {
                what: format!("stored config {d}"),
                source,
            })?;
        Ok((d, cfg))
    }

    fn load(&self, idx: &RefIndex, digest: &Digest) -> Result<Image> {
        let m = self.read_manifest(digest)?;
        let (id, cfg) = self.read_config(&m)?;
        let diff_ids = cfg
            .rootfs
            .diff_ids
            .iter()
            .map(|d| Digest::parse(d))
            .collect::<Result<Vec<_>>>()?;
        let mut layers = Vec::new();
        for d in &diff_ids {
            let p = self.layer_dir(d);
            if !p.is_dir() {
                return Err(invalid(
                    format!("image {digest}"),
                    format!("layer {} is missing from the store", p.display()),
                ));
            }
            layers.push(p);
        }
        let rc = cfg.config.unwrap_or_default();
        let config = ImageConfig {
            entrypoint: rc.entrypoint.unwrap_or_default(),
            cmd: rc.cmd.unwrap_or_default(),
            env: rc.env.unwrap_or_default(),
            working_dir: rc.working_dir.filter(|w| !w.is_empty()),
            user: rc.user.filter(|u| !u.is_empty()),
            exposed_ports: rc.exposed_ports.unwrap_or_default().into_keys().collect(),
            labels: rc.labels.unwrap_or_default(),
            volumes: rc.volumes.unwrap_or_default().into_keys().collect(),
            stop_signal: rc.stop_signal.filter(|s| !s.is_empty()),
        };
        let references = idx
            .refs
            .iter()
            .filter(|(_, v)| *v == digest)
            .map(|(k, _)| k.clone())
            .collect();
        Ok(Image {
            references,
            digest: digest.clone(),
            id,
            size: m.config.size + m.layers.iter().map(|l| l.size).sum::<u64>(),
            os: cfg.os,
            architecture: cfg.architecture,
            config,
            diff_ids,
            layers,
        })
    }

    /// Every image in the store, one per distinct manifest, sorted by first reference.
    pub fn images(&self) -> Result<Vec<Image>> {
        let idx = self.read_index()?;
        let digests: BTreeSet<&Digest> = idx.refs.values().collect();
        let mut out = digests
            .into_iter()
            .map(|d| self.load(&idx, d))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| a.references.cmp(&b.references));
        Ok(out)
    }

    /// One row per reference, sorted by reference.
    pub fn list(&self) -> Result<Vec<ImageSummary>> {
        let mut rows = Vec::new();
        for img in self.images()? {
            for r in &img.references {
                rows.push(ImageSummary {
                    reference: r.clone(),
                    digest: img.digest.clone(),
                    id: img.id.clone(),
                    size: img.size,
                });
            }
        }
        rows.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(rows)
    }

    /// Removes a reference (`busybox:1`), every name of one repository at a digest
    /// (`busybox@sha256:<manifest>`), or every name of an image (`sha256:<manifest or
    /// config>`); then collects blobs and layers no remaining image uses. Returns the
    /// references removed.
    pub fn remove(&self, reference: &str) -> Result<Vec<String>> {
        let _held = self.lock()?;
        let mut idx = self.read_index()?;
        let keys: Vec<String> = if parse_id(reference).is_some() {
            match self.find(&idx, reference)? {
                Some(target) => keys_at(&idx, &target, None),
                None => Vec::new(),
            }
        } else {
            let r = Reference::parse(reference)?;
            match r.digest() {
                Some(d) => keys_at(&idx, d, Some(&r.repository())),
                None => {
                    let k = r.to_string();
                    if idx.refs.contains_key(&k) {
                        vec![k]
                    } else {
                        Vec::new()
                    }
                }
            }
        };
        if keys.is_empty() {
            return Err(ImageError::NotFound(reference.to_string()));
        }
        for k in &keys {
            idx.refs.remove(k);
        }
        self.write_index(&idx)?;
        self.gc_locked(&idx)?;
        Ok(keys)
    }

    /// Deletes blobs and layers that no referenced image uses.
    pub fn gc(&self) -> Result<GcStats> {
        let _held = self.lock()?;
        let idx = self.read_index()?;
        self.gc_locked(&idx)
    }

    fn gc_locked(&self, idx: &RefIndex) -> Result<GcStats> {
        let mut live_blobs: BTreeSet<String> = BTreeSet::new();
        let mut live_layers: BTreeSet<String> = BTreeSet::new();
        for d in idx.refs.values().collect::<BTreeSet<_>>() {
            // An unreadable manifest aborts collection rather than risk deleting the
            // layers of an image that is still named.
            let m = self.read_manifest(d)?;
            let (config, cfg) = self.read_config(&m)?;
            live_blobs.insert(d.hex().to_string());
            live_blobs.insert(config.hex().to_string());
            for l in &m.layers {
                live_blobs.insert(Digest::parse(&l.digest)?.hex().to_string());
            }
            for diff in &cfg.rootfs.diff_ids {
                live_layers.insert(Digest::parse(diff)?.hex().to_string());
            }
        }
        let mut stats = GcStats::default();
        let blobs = self.root.join("blobs/sha256");
        for e in fs::read_dir(&blobs).at(&blobs)? {
            let e = e.at(&blobs)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if is_hex64(&name) && !live_blobs.contains(&name) {
                fs::remove_file(e.path()).at(e.path())?;
                stats.blobs_removed += 1;
            }
        }
        let layers = self.root.join("layers");
        let tmp = self.root.join("tmp");
        for e in fs::read_dir(&layers).at(&layers)? {
            let e = e.at(&layers)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if is_hex64(&name) && !live_layers.contains(&name) {
                // Renamed away first, so a crash mid-delete leaves no partial layer
                // under layers/ (tmp/ is emptied on the next open).
                let doomed = tmp.join(format!("gc-{name}"));
                sys::remove_any(&doomed).at(&doomed)?;
                fs::rename(e.path(), &doomed).at(e.path())?;
                sys::remove_tree(&doomed).at(&doomed)?;
                stats.layers_removed += 1;
            }
        }
        if stats != GcStats::default() {
            tracing::info!(
                blobs = stats.blobs_removed,
                layers = stats.layers_removed,
                "image gc"
            );
        }
        Ok(stats)
    }
}

impl Present for ImageStore {
    fn has_blob(&self, d: &Digest) -> bool {
        self.blob_file(d).is_file()
    }

    fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layer_dir(diff_id).is_dir()
    }
}

/// `sha256:<hex>` or a bare 64-hex id.
fn parse_id(s: &str) -> Option<Digest> {
    if is_hex64(s) {
        return Digest::from_hex(s).ok();
    }
    if s.starts_with("sha256:") {
        return Digest::parse(s).ok();
    }
    None
}

fn keys_at(idx: &RefIndex, d: &Digest, repo: Option<&str>) -> Vec<String> {
    idx.refs
        .iter()
        .filter(|(k, v)| {
            *v == d
                && repo.is_none_or(|repo| Reference::parse(k).is_ok_and(|k| k.repository() == repo))
        })
        .map(|(k, _)| k.clone())
        .collect()
}
