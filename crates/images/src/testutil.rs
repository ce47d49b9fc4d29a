//! Builds test images in memory with the `tar` crate: layers, OCI layouts, docker save
//! archives, and a fingerprint of a directory tree to check "the store is unchanged".

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use serde_json::{json, Value};

use crate::digest::Digest;
use crate::spec;

pub struct LayerBuilder {
    b: tar::Builder<Vec<u8>>,
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_600_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h
}

impl LayerBuilder {
    pub fn new() -> Self {
        LayerBuilder {
            b: tar::Builder::new(Vec::new()),
        }
    }

    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    pub fn file(self, path: &str, content: &[u8], mode: u32) -> Self {
        self.file_owned(path, content, mode, 0, 0)
    }

    pub fn file_owned(mut self, path: &str, content: &[u8], mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = header(tar::EntryType::Regular, mode, content.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.b.append_data(&mut h, path, content).unwrap();
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = header(tar::EntryType::Link, 0o644, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn device(mut self, path: &str, kind: tar::EntryType, major: u32, minor: u32) -> Self {
        let mut h = header(kind, 0o666, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    /// An entry whose name is written verbatim, bypassing the tar crate's own checks
    /// (which refuse `..`), as a hostile archive would.
    pub fn raw(mut self, kind: tar::EntryType, name: &str, link: &str, content: &[u8]) -> Self {
        let mut h = header(kind, 0o644, content.len() as u64);
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        self.b.append(&h, content).unwrap();
        self
    }

    pub fn build(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// The files of an archive, written out as a tar or a directory.
#[derive(Clone, Default)]
pub struct Files {
    pub files: BTreeMap<String, Vec<u8>>,
    pub symlinks: BTreeMap<String, String>,
}

impl Files {
    pub fn put(&mut self, path: &str, bytes: Vec<u8>) {
        self.files.insert(path.to_string(), bytes);
    }

    pub fn put_blob(&mut self, bytes: &[u8]) -> Digest {
        let d = Digest::of(bytes);
        self.put(&format!("blobs/sha256/{}", d.hex()), bytes.to_vec());
        d
    }

    pub fn blob_mut(&mut self, d: &Digest) -> &mut Vec<u8> {
        self.files
            .get_mut(&format!("blobs/sha256/{}", d.hex()))
            .expect("blob exists")
    }

    pub fn to_tar(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, bytes) in &self.files {
            let mut h = header(tar::EntryType::Regular, 0o644, bytes.len() as u64);
            b.append_data(&mut h, path, &bytes[..]).unwrap();
        }
        for (path, target) in &self.symlinks {
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            b.append_link(&mut h, path, target).unwrap();
        }
        b.into_inner().unwrap()
    }

    pub fn write_dir(&self, dir: &Path) {
        for (path, bytes) in &self.files {
            let p = dir.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, bytes).unwrap();
        }
        for (path, target) in &self.symlinks {
            let p = dir.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, p).unwrap();
        }
    }
}

/// One image to put into an archive.
pub struct TestImage {
    /// Layer tars (uncompressed), lowest first.
    pub layers: Vec<Vec<u8>>,
    pub gzip: bool,
    /// The config's "config" object (Cmd, Env, ...).
    pub runtime: Value,
    pub architecture: String,
}

impl TestImage {
    pub fn new(layers: Vec<Vec<u8>>) -> Self {
        TestImage {
            layers,
            gzip: true,
            runtime: json!({"Cmd": ["sh"]}),
            architecture: spec::host_platform().architecture,
        }
    }

    pub fn config_json(&self) -> Vec<u8> {
        let diff_ids: Vec<String> = self
            .layers
            .iter()
            .map(|l| Digest::of(l).to_string())
            .collect();
        serde_json::to_vec(&json!({
            "architecture": self.architecture,
            "os": "linux",
            "config": self.runtime,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap()
    }

    fn layer_blobs(&self) -> Vec<Vec<u8>> {
        self.layers
            .iter()
            .map(|l| if self.gzip { gzip(l) } else { l.clone() })
            .collect()
    }

    /// Adds this image's blobs to an OCI layout; returns its manifest descriptor.
    pub fn add_oci(&self, f: &mut Files) -> Value {
        let config = self.config_json();
        let cd = f.put_blob(&config);
        let layers: Vec<Value> = self
            .layer_blobs()
            .iter()
            .map(|b| {
                let d = f.put_blob(b);
                json!({
                    "mediaType": if self.gzip { spec::OCI_LAYER_GZIP } else { spec::OCI_LAYER_TAR },
                    "digest": d.to_string(),
                    "size": b.len(),
                })
            })
            .collect();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": spec::OCI_MANIFEST,
            "config": {"mediaType": spec::OCI_CONFIG, "digest": cd.to_string(), "size": config.len()},
            "layers": layers,
        }))
        .unwrap();
        let md = f.put_blob(&manifest);
        json!({"mediaType": spec::OCI_MANIFEST, "digest": md.to_string(), "size": manifest.len()})
    }

    pub fn manifest_digest(&self) -> Digest {
        let mut f = Files::default();
        let d = self.add_oci(&mut f);
        Digest::parse(d["digest"].as_str().unwrap()).unwrap()
    }
}

/// An OCI layout holding `images`, each named by `org.opencontainers.image.ref.name`.
pub fn oci_layout(images: &[(&str, &TestImage)]) -> Files {
    let mut f = Files::default();
    let mut manifests = Vec::new();
    for (name, img) in images {
        let mut desc = img.add_oci(&mut f);
        if !name.is_empty() {
            desc["annotations"] = json!({spec::ANNOTATION_REF_NAME: name});
        }
        manifests.push(desc);
    }
    oci_finish(&mut f, manifests);
    f
}

pub fn oci_finish(f: &mut Files, manifests: Vec<Value>) {
    f.put("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec());
    f.put(
        "index.json",
        serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": spec::OCI_INDEX, "manifests": manifests}),
        )
        .unwrap(),
    );
}

/// A legacy `docker save` archive: `<config hex>.json`, `<n>/layer.tar`, manifest.json.
/// A layer shared with an earlier image is a symlink to its first copy, as docker wrote.
pub fn docker_archive(images: &[(&[&str], &TestImage)]) -> Files {
    let mut f = Files::default();
    let mut entries = Vec::new();
    let mut seen: BTreeMap<Digest, String> = BTreeMap::new();
    let mut counter = 0;
    for (tags, img) in images {
        let config = img.config_json();
        let config_name = format!("{}.json", Digest::of(&config).hex());
        f.put(&config_name, config);
        let mut paths = Vec::new();
        for blob in img.layer_blobs() {
            let d = Digest::of(&blob);
            counter += 1;
            let path = format!("layer{counter}/layer.tar");
            match seen.get(&d) {
                Some(first) => {
                    f.symlinks.insert(path.clone(), format!("../{first}"));
                }
                None => {
                    f.put(&path, blob);
                    seen.insert(d, path.clone());
                }
            }
            paths.push(path);
        }
        entries.push(json!({"Config": config_name, "RepoTags": tags, "Layers": paths}));
    }
    f.put("manifest.json", serde_json::to_vec(&entries).unwrap());
    f
}

/// A fingerprint of a tree: every path with its type, mode, owner, size, content digest,
/// link target and device number. Equal fingerprints mean "nothing changed".
pub fn fingerprint(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == "lock" {
                continue;
            }
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let what = if ft.is_dir() {
                walk(root, &p, out);
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("link {}", fs::read_link(&p).unwrap().display())
            } else if ft.is_file() {
                format!("file {}", Digest::of(&fs::read(&p).unwrap()))
            } else if ft.is_char_device() {
                format!("chr {}", m.rdev())
            } else {
                "other".to_string()
            };
            out.insert(
                rel,
                format!("{what} mode={:o} uid={} gid={}", m.mode(), m.uid(), m.gid()),
            );
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}
