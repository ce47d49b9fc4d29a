//! Import, in two steps: `plan` reads and verifies an archive's JSON (index, manifests,
//! configs) and decides what images it holds; `Staging` copies the blobs and unpacks the
//! layers that the store lacks into a private directory, verifying every digest on the
//! way. Only a fully verified staging directory is committed into the store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::digest::{is_hex64, Digest, HashingReader, TeeReader};
use crate::error::{invalid, ImageError, IoContext, Result};
use crate::layer::{self, UnpackOptions};
use crate::reference::Reference;
use crate::source::Source;
use crate::spec::{self, ConfigFile, Descriptor, DockerArchiveEntry, Index, Manifest, Platform};

pub(crate) struct PlannedImage {
    pub names: Vec<Reference>,
    /// None for a legacy `docker save` archive, which has no manifest: one is written
    /// once the layer blobs' digests are known.
    pub manifest: Option<(Vec<u8>, Digest)>,
    pub config: (Vec<u8>, Digest),
    pub layers: Vec<PlannedLayer>,
}

pub(crate) struct PlannedLayer {
    /// Path inside the archive.
    pub path: String,
    pub media_type: Option<String>,
    pub digest: Option<Digest>,
    pub size: Option<u64>,
    pub diff_id: Digest,
}

/// Reads what images an archive holds, verifying every JSON blob it reads.
pub(crate) fn plan(source: &Source) -> Result<Vec<PlannedImage>> {
    if source.exists("oci-layout") && source.exists("index.json") {
        plan_oci(source)
    } else if source.exists("manifest.json") {
        plan_docker(source)
    } else {
        Err(ImageError::UnknownFormat(source.origin().to_path_buf()))
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
        what: what.to_string(),
        source,
    })
}

fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// A small blob named by a descriptor, verified against its digest and size.
fn read_blob(source: &Source, desc: &Descriptor, what: &str) -> Result<(Vec<u8>, Digest)> {
    let digest = Digest::parse(&desc.digest)?;
    let bytes = source.read_small(&blob_path(&digest))?;
    let actual = Digest::of(&bytes);
    if actual != digest {
        return Err(ImageError::DigestMismatch {
            what: what.to_string(),
            expected: digest.to_string(),
            actual: actual.to_string(),
        });
    }
    if bytes.len() as u64 != desc.size {
        return Err(ImageError::SizeMismatch {
            what: what.to_string(),
            expected: desc.size,
            actual: bytes.len() as u64,
        });
    }
    Ok((bytes, digest))
}

fn platform_matches(p: &Option<Platform>, host: &Platform) -> bool {
    match p {
        None => true,
        Some(p) => p.os == host.os && p.architecture == host.architecture,
    }
}

/// Names an OCI index entry carries. `org.opencontainers.image.ref.name` is often only a
/// tag (`latest`), which names nothing without a repository, so it counts only when it
/// is a whole reference; containerd's `io.containerd.image.name` always is.
fn annotation_names(desc: &Descriptor) -> Result<Vec<Reference>> {
    let mut out = Vec::new();
    if let Some(n) = desc.annotations.get(spec::ANNOTATION_CONTAINERD_NAME) {
        out.push(Reference::parse(n)?);
    }
    if let Some(n) = desc.annotations.get(spec::ANNOTATION_REF_NAME) {
        if n.contains(['/', ':', '@']) {
            let r = Reference::parse(n)?;
            if !out.contains(&r) {
                out.push(r);
            }
        } else if out.is_empty() {
            tracing::warn!(ref_name = %n, "OCI ref.name is a bare tag with no repository; ignored");
        }
    }
    Ok(out)
}

/// Follows an index entry down to the manifest for this platform (None: no such one).
fn resolve_manifest(
    source: &Source,
    desc: &Descriptor,
    host: &Platform,
    depth: usize,
) -> Result<Option<(Vec<u8>, Digest)>> {
    if depth > 4 {
        return Err(invalid("image index", "nested more than 4 deep"));
    }
    if spec::is_manifest(&desc.media_type) {
        if !platform_matches(&desc.platform, host) {
            return Ok(None);
        }
        return read_blob(source, desc, &format!("manifest {}", desc.digest)).map(Some);
    }
    if spec::is_index(&desc.media_type) {
        let (bytes, _) = read_blob(source, desc, &format!("image index {}", desc.digest))?;
        let index: Index = parse_json(&bytes, &format!("image index {}", desc.digest))?;
        for m in &index.manifests {
            // Skip buildkit's attestation manifests (platform unknown/unknown).
            if m.annotations.contains_key("vnd.docker.reference.type") {
                continue;
            }
            if m.platform.is_some() && platform_matches(&m.platform, host) {
                if let Some(found) = resolve_manifest(source, m, host, depth + 1)? {
                    return Ok(Some(found));
                }
            }
        }
        return Ok(None);
    }
    Err(ImageError::UnsupportedMediaType {
        what: format!("index entry {}", desc.digest),
        media_type: desc.media_type.clone(),
    })
}

fn plan_oci(source: &Source) -> Result<Vec<PlannedImage>> {
    let layout: serde_json::Value = parse_json(&source.read_small("oci-layout")?, "oci-layout")?;
    if layout
        .get("imageLayoutVersion")
        .and_then(|v| v.as_str())
        .is_none()
    {
        return Err(invalid("oci-layout", "no imageLayoutVersion"));
    }
    let index: Index = parse_json(&source.read_small("index.json")?, "index.json")?;
    if index.manifests.is_empty() {
        return Err(invalid("index.json", "lists no manifests"));
    }
    let host = spec::host_platform();
    // Several index entries may name the same manifest: one image, several names.
    let mut by_digest: BTreeMap<Digest, (Vec<u8>, Vec<Reference>)> = BTreeMap::new();
    let mut order: Vec<Digest> = Vec::new();
    let mut wrong_platform = false;
    for desc in &index.manifests {
        let names = annotation_names(desc)?;
        match resolve_manifest(source, desc, &host, 0)? {
            None => wrong_platform = true,
            Some((bytes, digest)) => {
                let entry = by_digest.entry(digest.clone()).or_insert_with(|| {
                    order.push(digest);
                    (bytes, Vec::new())
                });
                for n in names {
                    if !entry.1.contains(&n) {
                        entry.1.push(n);
                    }
                }
            }
        }
    }
    // A newer `docker save` is an OCI layout plus the old manifest.json; its RepoTags
    // name the image by its config blob.
    let mut docker_names: HashMap<Digest, Vec<Reference>> = HashMap::new();
    if source.exists("manifest.json") {
        let entries: Vec<DockerArchiveEntry> =
            parse_json(&source.read_small("manifest.json")?, "manifest.json")?;
        for e in entries {
            if let Some(hex) = e.config.strip_prefix("blobs/sha256/") {
                let d = Digest::from_hex(hex)?;
                for t in e.repo_tags.unwrap_or_default() {
                    docker_names
                        .entry(d.clone())
                        .or_default()
                        .push(Reference::parse(&t)?);
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut unnamed = false;
    for digest in order {
        let (bytes, mut names) = by_digest.remove(&digest).expect("digest was recorded");
        let manifest: Manifest = parse_json(&bytes, &format!("manifest {digest}"))?;
        let (config, config_digest) = read_config(source, &manifest, &digest)?;
        for n in docker_names.remove(&config_digest).unwrap_or_default() {
            if !names.contains(&n) {
                names.push(n);
            }
        }
        if names.is_empty() {
            tracing::warn!(manifest = %digest, "image in archive has no name; skipped");
            unnamed = true;
            continue;
        }
        let cfg: ConfigFile = parse_json(&config, &format!("config {config_digest}"))?;
        let diff_ids = diff_ids(&cfg, manifest.layers.len(), &config_digest)?;
        let mut layers = Vec::new();
        for (l, diff_id) in manifest.layers.iter().zip(diff_ids) {
            if !spec::is_supported_layer(&l.media_type) {
                return Err(ImageError::UnsupportedMediaType {
                    what: format!("layer {}", l.digest),
                    media_type: l.media_type.clone(),
                });
            }
            let d = Digest::parse(&l.digest)?;
            layers.push(PlannedLayer {
                path: blob_path(&d),
                media_type: Some(l.media_type.clone()),
                digest: Some(d),
                size: Some(l.size),
                diff_id,
            });
        }
        out.push(PlannedImage {
            names,
            manifest: Some((bytes, digest)),
            config: (config, config_digest),
            layers,
        });
    }
    if out.is_empty() {
        return Err(if unnamed {
            ImageError::NoReference(source.origin().to_path_buf())
        } else if wrong_platform {
            ImageError::NoMatchingPlatform(format!("{}/{}", host.os, host.architecture))
        } else {
            invalid("index.json", "no usable manifest")
        });
    }
    Ok(out)
}

fn read_config(source: &Source, manifest: &Manifest, digest: &Digest) -> Result<(Vec<u8>, Digest)> {
    if !spec::is_config(&manifest.config.media_type) {
        return Err(ImageError::UnsupportedMediaType {
            what: format!("config of manifest {digest} (not a container image)"),
            media_type: manifest.config.media_type.clone(),
        });
    }
    read_blob(
        source,
        &manifest.config,
        &format!("config {}", manifest.config.digest),
    )
}

fn diff_ids(cfg: &ConfigFile, layers: usize, config: &Digest) -> Result<Vec<Digest>> {
    if cfg.rootfs.kind != "layers" {
        return Err(invalid(
            format!("config {config}"),
            format!("rootfs.type is {:?}, not \"layers\"", cfg.rootfs.kind),
        ));
    }
    if cfg.rootfs.diff_ids.len() != layers {
        return Err(invalid(
            format!("config {config}"),
            format!(
                "{} diff_ids for {} layers",
                cfg.rootfs.diff_ids.len(),
                layers
            ),
        ));
    }
    cfg.rootfs
        .diff_ids
        .iter()
        .map(|d| Digest::parse(d))
        .collect()
}

fn plan_docker(source: &Source) -> Result<Vec<PlannedImage>> {
    let entries: Vec<DockerArchiveEntry> =
        parse_json(&source.read_small("manifest.json")?, "manifest.json")?;
    if entries.is_empty() {
        return Err(invalid("manifest.json", "lists no images"));
    }
    let mut out = Vec::new();
    let mut unnamed = false;
    for e in entries {
        let config = source.read_small(&e.config)?;
        let config_digest = Digest::of(&config);
        // The config's file name is its digest (`<hex>.json`, or a blob path).
        let named_hex = e
            .config
            .rsplit('/')
            .next()
            .map(|f| f.trim_end_matches(".json"))
            .filter(|h| is_hex64(h));
        if let Some(hex) = named_hex {
            if hex != config_digest.hex() {
                return Err(ImageError::DigestMismatch {
                    what: format!("config {}", e.config),
                    expected: format!("sha256:{hex}"),
                    actual: config_digest.to_string(),
                });
            }
        }
        let mut names = Vec::new();
        for t in e.repo_tags.as_deref().unwrap_or_default() {
            let r = Reference::parse(t)?;
            if !names.contains(&r) {
                names.push(r);
            }
        }
        if names.is_empty() {
            tracing::warn!(config = %e.config, "image in archive has no RepoTags; skipped");
            unnamed = true;
            continue;
        }
        let cfg: ConfigFile = parse_json(&config, &format!("config {}", e.config))?;
        let diff_ids = diff_ids(&cfg, e.layers.len(), &config_digest)?;
        let layers = e
            .layers
            .iter()
            .zip(diff_ids)
            .map(|(path, diff_id)| {
                let digest = path
                    .strip_prefix("blobs/sha256/")
                    .map(Digest::from_hex)
                    .transpose()?;
                Ok(PlannedLayer {
                    path: path.clone(),
                    media_type: None,
                    digest,
                    size: None,
                    diff_id,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.push(PlannedImage {
            names,
            manifest: None,
            config: (config, config_digest),
            layers,
        });
    }
    if out.is_empty() && unnamed {
        return Err(ImageError::NoReference(source.origin().to_path_buf()));
    }
    Ok(out)
}

/// What the store already holds, so staging copies and unpacks only what is new.
pub(crate) trait Present {
    fn has_blob(&self, d: &Digest) -> bool;
    fn has_layer(&self, diff_id: &Digest) -> bool;
}

/// A private directory under the store's tmp/ holding verified blobs (`blob-<hex>`) and
/// unpacked layers (`layer-<hex>`); removed on drop unless committed.
pub(crate) struct Staging {
    pub dir: tempfile::TempDir,
    pub blobs: HashSet<Digest>,
    pub layers: HashSet<Digest>,
    /// Layers already verified in this import, by archive path.
    seen: HashMap<String, (Descriptor, Digest)>,
    opts: UnpackOptions,
}

/// One image, ready to commit: its manifest digest and the names to point at it.
pub(crate) struct StagedImage {
    pub names: Vec<Reference>,
    pub manifest: Digest,
}

impl Staging {
    pub fn new(tmp: &Path, opts: UnpackOptions) -> Result<Staging> {
        let dir = tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(tmp)
            .at(tmp)?;
        Ok(Staging {
            dir,
            blobs: HashSet::new(),
            layers: HashSet::new(),
            seen: HashMap::new(),
            opts,
        })
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir.path().join(format!("blob-{}", d.hex()))
    }

    pub fn layer_path(&self, d: &Digest) -> PathBuf {
        self.dir.path().join(format!("layer-{}", d.hex()))
    }

    pub fn stage_image(
        &mut self,
        source: &Source,
        img: PlannedImage,
        store: &dyn Present,
    ) -> Result<StagedImage> {
        let (config, config_digest) = img.config;
        let mut descs = Vec::new();
        for l in &img.layers {
            descs.push(self.stage_layer(source, l, store)?);
        }
        self.stage_bytes(&config, &config_digest, store)?;
        let (manifest, manifest_digest) = match img.manifest {
            Some(m) => m,
            None => {
                let m = Manifest {
                    schema_version: 2,
                    media_type: Some(spec::OCI_MANIFEST.to_string()),
                    config: Descriptor {
                        media_type: spec::OCI_CONFIG.to_string(),
                        digest: config_digest.to_string(),
                        size: config.len() as u64,
                        platform: None,
                        annotations: BTreeMap::new(),
                    },
                    layers: descs,
                };
                let bytes = serde_json::to_vec(&m).expect("a manifest serialises");
                let d = Digest::of(&bytes);
                (bytes, d)
            }
        };
        self.stage_bytes(&manifest, &manifest_digest, store)?;
        Ok(StagedImage {
            names: img.names,
            manifest: manifest_digest,
        })
    }

    fn stage_bytes(&mut self, bytes: &[u8], d: &Digest, store: &dyn Present) -> Result<()> {
        if store.has_blob(d) || self.blobs.contains(d) {
            return Ok(());
        }
        let p = self.blob_path(d);
        let mut f = File::create(&p).at(&p)?;
        f.write_all(bytes).at(&p)?;
        self.blobs.insert(d.clone());
        Ok(())
    }

    /// Reads one layer blob once: hashing it, copying it into staging if the store lacks
    /// it, decompressing, hashing the tar (diff_id) and unpacking it if the store lacks it.
    fn stage_layer(
        &mut self,
        source: &Source,
        l: &PlannedLayer,
        store: &dyn Present,
    ) -> Result<Descriptor> {
        let what = format!("layer {}", l.path);
        if let Some((desc, diff_id)) = self.seen.get(&l.path) {
            if *diff_id != l.diff_id {
                return Err(ImageError::DigestMismatch {
                    what: format!("{what} (uncompressed, config diff_id)"),
                    expected: l.diff_id.to_string(),
                    actual: diff_id.to_string(),
                });
            }
            return Ok(desc.clone());
        }
        let need_blob = match &l.digest {
            Some(d) => !store.has_blob(d) && !self.blobs.contains(d),
            None => true,
        };
        let need_unpack = !store.has_layer(&l.diff_id) && !self.layers.contains(&l.diff_id);
        let incoming = self.dir.path().join("incoming");
        let writer = if need_blob {
            Some(BufWriter::new(File::create(&incoming).at(&incoming)?))
        } else {
            None
        };
        let reader = source.open(&l.path)?;
        let mut outer = HashingReader::new(TeeReader::new(reader, writer));
        let tar_err = |source: io::Error| ImageError::LayerTar {
            layer: l.path.clone(),
            source,
        };
        let opts = self.opts;
        let dest = self.layer_path(&l.diff_id);
        let inner = (|| -> Result<bool> {
            let mut buffered = BufReader::with_capacity(1 << 16, &mut outer);
            let head = buffered.fill_buf().map_err(tar_err)?;
            let gzip = head.starts_with(&[0x1f, 0x8b]);
            if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                return Err(ImageError::UnsupportedMediaType {
                    what: what.clone(),
                    media_type: l
                        .media_type
                        .clone()
                        .unwrap_or_else(|| "zstd-compressed tar".to_string()),
                });
            }
            let decoded: Box<dyn Read + '_> = if gzip {
                Box::new(flate2::read::MultiGzDecoder::new(buffered))
            } else {
                Box::new(buffered)
            };
            let mut diff = HashingReader::new(decoded);
            if need_unpack {
                fs::create_dir(&dest).at(&dest)?;
                layer::unpack(&mut diff, &dest, opts, &l.path)?;
            }
            // The tar's end-of-archive padding, or the whole tar when not unpacking.
            io::copy(&mut diff, &mut io::sink()).map_err(tar_err)?;
            let (actual, _) = diff.digest();
            if actual != l.diff_id {
                return Err(ImageError::DigestMismatch {
                    what: format!("{what} (uncompressed, config diff_id)"),
                    expected: l.diff_id.to_string(),
                    actual: actual.to_string(),
                });
            }
            Ok(gzip)
        })();
        // Read to the end even after a failure: a blob that does not match its digest
        // explains any decoding error, and is the clearer thing to report.
        let drained = io::copy(&mut outer, &mut io::sink());
        let (digest, size) = outer.digest();
        if let Some(expected) = &l.digest {
            if *expected != digest {
                return Err(ImageError::DigestMismatch {
                    what,
                    expected: expected.to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        let gzip = inner?;
        drained.map_err(tar_err)?;
        if let Some(expected) = l.size {
            if expected != size {
                return Err(ImageError::SizeMismatch {
                    what,
                    expected,
                    actual: size,
                });
            }
        }
        if let Some(w) = outer.into_inner().into_writer() {
            let f = w.into_inner().map_err(|e| e.into_error()).at(&incoming)?;
            drop(f);
            if store.has_blob(&digest) || self.blobs.contains(&digest) {
                fs::remove_file(&incoming).at(&incoming)?;
            } else {
                let p = self.blob_path(&digest);
                fs::rename(&incoming, &p).at(&p)?;
                self.blobs.insert(digest.clone());
            }
        }
        if need_unpack {
            self.layers.insert(l.diff_id.clone());
        }
        let media_type = l.media_type.clone().unwrap_or_else(|| {
            if gzip {
                spec::OCI_LAYER_GZIP.to_string()
            } else {
                spec::OCI_LAYER_TAR.to_string()
            }
        });
        let desc = Descriptor {
            media_type,
            digest: digest.to_string(),
            size,
            platform: None,
            annotations: BTreeMap::new(),
        };
        self.seen
            .insert(l.path.clone(), (desc.clone(), l.diff_id.clone()));
        Ok(desc)
    }
}
