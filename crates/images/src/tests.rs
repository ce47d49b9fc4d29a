//! Store behaviour end to end, on images built in memory (see testutil).

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::testutil::*;
use crate::*;

fn new_store() -> (TempDir, ImageStore) {
    let t = TempDir::new().unwrap();
    let s = ImageStore::open(t.path().join("images")).unwrap();
    (t, s)
}

fn base_layer() -> Vec<u8> {
    LayerBuilder::new()
        .dir("bin", 0o755)
        .file("bin/busybox", b"\x7fELF pretend busybox", 0o755)
        .symlink("bin/sh", "busybox")
        .dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
        .dir("tmp", 0o1777)
        .build()
}

fn web_layer(v: &str) -> Vec<u8> {
    LayerBuilder::new()
        .dir("www", 0o755)
        .file("www/index.html", format!("web {v}\n").as_bytes(), 0o644)
        .build()
}

fn web_image(v: &str) -> TestImage {
    let mut img = TestImage::new(vec![base_layer(), web_layer(v)]);
    img.runtime = json!({
        "Cmd": ["httpd", "-f", "-p", "8080", "-h", "/www"],
        "Entrypoint": null,
        "Env": ["PATH=/bin", format!("VERSION={v}")],
        "WorkingDir": "/www",
        "User": "nobody",
        "ExposedPorts": {"8080/tcp": {}},
        "Labels": {"version": v},
    });
    img
}

fn write(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    fs::write(&p, bytes).unwrap();
    p
}

fn count_dir(p: &Path) -> usize {
    fs::read_dir(p).unwrap().count()
}

#[test]
fn imports_oci_tar_and_resolves_by_every_name_form() {
    let (t, store) = new_store();
    let img = web_image("1");
    let layout = oci_layout(&[("busybox-web:1", &img)]);
    let refs = store
        .import(write(&t, "web1.tar", &layout.to_tar()))
        .unwrap();
    assert_eq!(refs, vec!["docker.io/library/busybox-web:1"]);

    let a = store.resolve("busybox-web:1").expect("short name resolves");
    let b = store.resolve("docker.io/library/busybox-web:1").unwrap();
    assert_eq!(a, b);
    assert_eq!(a.references, vec!["docker.io/library/busybox-web:1"]);
    assert_eq!(a.digest, img.manifest_digest());
    assert_eq!(a.id, Digest::of(&img.config_json()));
    let c = &a.config;
    assert_eq!(c.cmd, ["httpd", "-f", "-p", "8080", "-h", "/www"]);
    assert!(c.entrypoint.is_empty());
    assert_eq!(c.env, ["PATH=/bin", "VERSION=1"]);
    assert_eq!(c.working_dir.as_deref(), Some("/www"));
    assert_eq!(c.user.as_deref(), Some("nobody"));
    assert_eq!(c.exposed_ports, ["8080/tcp"]);
    assert_eq!(c.labels.get("version").map(String::as_str), Some("1"));
    assert_eq!(a.os, "linux");
    let expected_size =
        img.config_json().len() + gzip(&base_layer()).len() + gzip(&web_layer("1")).len();
    assert_eq!(a.size, expected_size as u64);

    // Layers lowest first, unpacked, named by diff_id.
    assert_eq!(a.layers.len(), 2);
    assert_eq!(a.diff_ids[0], Digest::of(&base_layer()));
    assert!(a.layers[0].ends_with(Digest::of(&base_layer()).hex()));
    assert_eq!(
        fs::read(a.layers[0].join("etc/passwd")).unwrap(),
        b"root:x:0:0:root:/root:/bin/sh\n"
    );
    assert_eq!(
        fs::read_link(a.layers[0].join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        fs::read_to_string(a.layers[1].join("www/index.html")).unwrap(),
        "web 1\n"
    );
    let tmp_mode = fs::metadata(a.layers[0].join("tmp")).unwrap().mode() & 0o7777;
    assert_eq!(tmp_mode, 0o1777);

    // Not there: another tag, the implied :latest.
    assert!(store.resolve("busybox-web:2").is_none());
    assert!(store.resolve("busybox-web").is_none());
    // By digest: the manifest digest under the same repository, or the image id.
    let by_digest = format!("busybox-web@{}", a.digest);
    assert_eq!(store.resolve(&by_digest).unwrap().digest, a.digest);
    assert!(store.resolve(&format!("other@{}", a.digest)).is_none());
    assert_eq!(store.resolve(a.id.as_str()).unwrap().digest, a.digest);
    assert_eq!(store.resolve(a.digest.as_str()).unwrap().digest, a.digest);
    assert_eq!(store.resolve(a.id.hex()).unwrap().digest, a.digest);
    // Malformed references are None from resolve, an error from get.
    assert!(store.resolve("Bad:Name").is_none());
    assert!(matches!(
        store.get("Bad:Name"),
        Err(ImageError::InvalidReference { .. })
    ));
}

#[test]
fn untagged_reference_means_latest_and_containerd_name_annotation_counts() {
    let (t, store) = new_store();
    let img = TestImage::new(vec![base_layer()]);
    let mut f = Files::default();
    let mut desc = img.add_oci(&mut f);
    desc["annotations"] = json!({
        "io.containerd.image.name": "busybox",
        "org.opencontainers.image.ref.name": "latest",
    });
    oci_finish(&mut f, vec![desc]);
    let refs = store.import(write(&t, "bb.tar", &f.to_tar())).unwrap();
    assert_eq!(refs, ["docker.io/library/busybox:latest"]);
    for name in [
        "busybox",
        "busybox:latest",
        "docker.io/library/busybox:latest",
    ] {
        assert!(store.resolve(name).is_some(), "{name}");
    }
}

#[test]
fn imports_oci_directory_with_uncompressed_layers() {
    let (t, store) = new_store();
    let mut img = web_image("1");
    img.gzip = false;
    let dir = t.path().join("layout");
    oci_layout(&[("docker.io/library/busybox-web:1", &img)]).write_dir(&dir);
    store.import(&dir).unwrap();
    let i = store.resolve("busybox-web:1").unwrap();
    // An uncompressed layer's blob digest is its diff_id.
    assert!(store
        .root()
        .join("blobs/sha256")
        .join(i.diff_ids[1].hex())
        .is_file());
    assert_eq!(
        fs::read_to_string(i.layers[1].join("www/index.html")).unwrap(),
        "web 1\n"
    );
}

#[test]
fn imports_legacy_docker_save_plain_and_gzipped() {
    let t = TempDir::new().unwrap();
    let mut v1 = web_image("1");
    let mut v2 = web_image("2");
    v1.gzip = false;
    v2.gzip = false;
    let archive = docker_archive(&[
        (&["busybox-web:1"], &v1),
        (&["busybox-web:2", "quay.io/x/web:2"], &v2),
    ]);
    // docker wrote a layer shared by two images once, plus a symlink.
    assert_eq!(archive.symlinks.len(), 1);
    let plain = write(&t, "docker.tar", &archive.to_tar());
    let gz = write(&t, "docker.tar.gz", &gzip(&archive.to_tar()));

    let mut digests = Vec::new();
    for (n, path) in [plain, gz].iter().enumerate() {
        let store = ImageStore::open(t.path().join(format!("store{n}"))).unwrap();
        let mut refs = store.import(path).unwrap();
        refs.sort();
        assert_eq!(
            refs,
            [
                "docker.io/library/busybox-web:1",
                "docker.io/library/busybox-web:2",
                "quay.io/x/web:2"
            ]
        );
        let a = store.resolve("busybox-web:1").unwrap();
        let b = store.resolve("quay.io/x/web:2").unwrap();
        assert_eq!(a.id, Digest::of(&v1.config_json()));
        assert_eq!(a.layers[0], b.layers[0]);
        assert_eq!(count_dir(&store.root().join("layers")), 3);
        assert_eq!(
            fs::read_to_string(b.layers[1].join("www/index.html")).unwrap(),
            "web 2\n"
        );
        // The manifest written for a legacy archive is stored and resolvable.
        assert!(store
            .resolve(&format!("busybox-web@{}", a.digest))
            .is_some());
        digests.push(a.digest);
    }
    assert_eq!(
        digests[0], digests[1],
        "synthesised manifests are deterministic"
    );
}

#[test]
fn imports_newer_docker_save_names_from_repo_tags() {
    // docker 25+ writes an OCI layout whose ref.name is only a tag, plus manifest.json.
    let (t, store) = new_store();
    let img = web_image("1");
    let mut f = Files::default();
    let mut desc = img.add_oci(&mut f);
    desc["annotations"] = json!({"org.opencontainers.image.ref.name": "1"});
    oci_finish(&mut f, vec![desc.clone()]);
    let config = Digest::of(&img.config_json());
    let layers: Vec<String> = [base_layer(), web_layer("1")]
        .iter()
        .map(|l| format!("blobs/sha256/{}", Digest::of(&gzip(l)).hex()))
        .collect();
    f.put(
        "manifest.json",
        serde_json::to_vec(&json!([{
            "Config": format!("blobs/sha256/{}", config.hex()),
            "RepoTags": ["busybox-web:1"],
            "Layers": layers,
        }]))
        .unwrap(),
    );
    let refs = store.import(write(&t, "new.tar", &f.to_tar())).unwrap();
    assert_eq!(refs, ["docker.io/library/busybox-web:1"]);
    assert_eq!(
        store.resolve("busybox-web:1").unwrap().digest.as_str(),
        desc["digest"].as_str().unwrap()
    );
}

#[test]
fn shared_layer_unpacked_once_and_import_is_idempotent() {
    let (t, store) = new_store();
    let p1 = write(
        &t,
        "1.tar",
        &oci_layout(&[("busybox-web:1", &web_image("1"))]).to_tar(),
    );
    let p2 = write(
        &t,
        "2.tar",
        &oci_layout(&[("busybox-web:2", &web_image("2"))]).to_tar(),
    );
    store.import(&p1).unwrap();
    store.import(&p2).unwrap();
    let a = store.resolve("busybox-web:1").unwrap();
    let b = store.resolve("busybox-web:2").unwrap();
    assert_eq!(a.layers[0], b.layers[0]);
    assert_ne!(a.layers[1], b.layers[1]);
    assert_eq!(count_dir(&store.root().join("layers")), 3);
    // 2 manifests + 2 configs + 3 layer blobs
    assert_eq!(count_dir(&store.root().join("blobs/sha256")), 7);

    let before = fingerprint(store.root());
    assert_eq!(
        store.import(&p1).unwrap(),
        ["docker.io/library/busybox-web:1"]
    );
    assert_eq!(fingerprint(store.root()), before);
    assert_eq!(store.resolve("busybox-web:1").unwrap(), a);
}

#[test]
fn multi_platform_index_picks_this_platform() {
    let (t, store) = new_store();
    let host = crate::spec::host_platform();
    let other_arch = if host.architecture == "s390x" {
        "riscv64"
    } else {
        "s390x"
    };
    let mine = web_image("mine");
    let mut other = web_image("other");
    other.architecture = other_arch.to_string();
    let mut f = Files::default();
    let mut d_other = other.add_oci(&mut f);
    d_other["platform"] = json!({"os": "linux", "architecture": other_arch});
    let mut d_mine = mine.add_oci(&mut f);
    d_mine["platform"] = json!({"os": "linux", "architecture": host.architecture});
    let nested = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": crate::spec::OCI_INDEX,
        "manifests": [d_other.clone(), d_mine],
    }))
    .unwrap();
    let nd = f.put_blob(&nested);
    oci_finish(
        &mut f,
        vec![json!({
            "mediaType": crate::spec::OCI_INDEX,
            "digest": nd.to_string(),
            "size": nested.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi:1"},
        })],
    );
    store.import(write(&t, "multi.tar", &f.to_tar())).unwrap();
    let i = store.resolve("multi:1").unwrap();
    assert_eq!(i.digest, mine.manifest_digest());
    assert_eq!(
        fs::read_to_string(i.layers[1].join("www/index.html")).unwrap(),
        "web mine\n"
    );

    // Only a foreign platform on offer: a clear error.
    let (t2, store2) = new_store();
    let mut g = Files::default();
    let mut d = other.add_oci(&mut g);
    d["platform"] = json!({"os": "linux", "architecture": other_arch});
    d["annotations"] = json!({"org.opencontainers.image.ref.name": "foreign:1"});
    oci_finish(&mut g, vec![d]);
    let err = store2
        .import(write(&t2, "foreign.tar", &g.to_tar()))
        .unwrap_err();
    assert!(matches!(err, ImageError::NoMatchingPlatform(_)), "{err}");
}

/// Rewrites the manifest of the single image in `f` and re-points index.json at it.
fn edit_manifest(f: &mut Files, name: &str, edit: impl FnOnce(&mut Value)) {
    let index: Value = serde_json::from_slice(&f.files["index.json"]).unwrap();
    let d = Digest::parse(index["manifests"][0]["digest"].as_str().unwrap()).unwrap();
    let mut m: Value = serde_json::from_slice(f.blob_mut(&d)).unwrap();
    edit(&mut m);
    let bytes = serde_json::to_vec(&m).unwrap();
    let nd = f.put_blob(&bytes);
    oci_finish(
        f,
        vec![json!({
            "mediaType": crate::spec::OCI_MANIFEST,
            "digest": nd.to_string(),
            "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": name},
        })],
    );
}

#[test]
fn bad_input_is_a_typed_error_and_leaves_the_store_unchanged() {
    let (t, store) = new_store();
    store
        .import(write(
            &t,
            "ok.tar",
            &oci_layout(&[("busybox-web:1", &web_image("1"))]).to_tar(),
        ))
        .unwrap();
    let before = fingerprint(store.root());
    let outside = t.path().join("evil");

    let check = |name: &str, bytes: Vec<u8>, ok: &dyn Fn(&ImageError) -> bool| {
        let err = store.import(write(&t, name, &bytes)).unwrap_err();
        assert!(ok(&err), "{name}: unexpected error {err:?}");
        assert!(!err.to_string().is_empty());
        assert_eq!(
            fingerprint(store.root()),
            before,
            "{name} changed the store"
        );
        assert!(!outside.exists(), "{name} wrote outside the layer");
    };

    check(
        "text.tar",
        b"this is not an image archive\n".repeat(40),
        &|e| matches!(e, ImageError::NotAnArchive { .. }),
    );
    check("bad.tar.gz", vec![0x1f, 0x8b, 8, 0, 1, 2, 3], &|e| {
        matches!(e, ImageError::NotAnArchive { .. })
    });
    let mut unrelated = Files::default();
    unrelated.put("README", b"hello".to_vec());
    check("unrelated.tar", unrelated.to_tar(), &|e| {
        matches!(e, ImageError::UnknownFormat(_))
    });
    let empty = t.path().join("empty-dir");
    fs::create_dir(&empty).unwrap();
    assert!(matches!(
        store.import(&empty),
        Err(ImageError::UnknownFormat(_))
    ));

    // A layer blob missing.
    let img = web_image("x");
    let mut f = oci_layout(&[("x:1", &img)]);
    let web_blob = Digest::of(&gzip(&web_layer("x")));
    f.files.remove(&format!("blobs/sha256/{}", web_blob.hex()));
    check("missing.tar", f.to_tar(), &|e| {
        matches!(e, ImageError::MissingBlob(_))
    });

    // A layer blob corrupted (gzip'd: the digest, not the inflater, is what is reported).
    let mut f = oci_layout(&[("x:1", &img)]);
    let blob = f.blob_mut(&web_blob);
    let mid = blob.len() / 2;
    blob[mid] ^= 0xff;
    check("corrupt.tar", f.to_tar(), &|e| {
        matches!(e, ImageError::DigestMismatch { .. })
    });

    // The config corrupted.
    let mut f = oci_layout(&[("x:1", &img)]);
    f.blob_mut(&Digest::of(&img.config_json()))[0] = b' ';
    check("config.tar", f.to_tar(), &|e| {
        matches!(e, ImageError::DigestMismatch { .. })
    });

    // A legacy layer whose content does not match the config's diff_id.
    let mut plain = web_image("x");
    plain.gzip = false;
    let mut f = docker_archive(&[(&["x:1"], &plain)]);
    f.put("layer2/layer.tar", web_layer("y"));
    check(
        "diffid.tar",
        f.to_tar(),
        &|e| matches!(e, ImageError::DigestMismatch { what, .. } if what.contains("diff_id")),
    );

    // Unsafe layer tars.
    let hostile = [
        (
            "dotdot",
            LayerBuilder::new()
                .file("ok", b"fine", 0o644)
                .raw(tar::EntryType::Regular, "../evil", "", b"pwned")
                .build(),
        ),
        (
            "dotdot-inner",
            LayerBuilder::new()
                .raw(tar::EntryType::Regular, "a/../../evil", "", b"pwned")
                .build(),
        ),
        (
            "abs-symlink",
            LayerBuilder::new()
                .symlink("escape", t.path().to_str().unwrap())
                .raw(tar::EntryType::Regular, "escape/evil", "", b"pwned")
                .build(),
        ),
        (
            "rel-symlink",
            LayerBuilder::new()
                .dir("a", 0o755)
                .symlink("a/up", "../../../../../../../../..")
                .raw(tar::EntryType::Regular, "a/up/evil", "", b"pwned")
                .build(),
        ),
        (
            "hardlink",
            LayerBuilder::new()
                .raw(tar::EntryType::Link, "h", "../../../etc/passwd", b"")
                .build(),
        ),
    ];
    for (name, layer) in hostile {
        let f = oci_layout(&[("x:1", &TestImage::new(vec![base_layer(), layer]))]);
        check(&format!("{name}.tar"), f.to_tar(), &|e| {
            matches!(e, ImageError::UnsafePath { .. })
        });
    }

    // Media types we cannot use.
    let mut f = oci_layout(&[("x:1", &img)]);
    edit_manifest(&mut f, "x:1", |m| {
        m["layers"][1]["mediaType"] = json!("application/vnd.oci.image.layer.v1.tar+zstd")
    });
    check("zstd.tar", f.to_tar(), &|e| {
        matches!(e, ImageError::UnsupportedMediaType { .. })
    });
    let mut f = oci_layout(&[("x:1", &img)]);
    edit_manifest(&mut f, "x:1", |m| {
        m["config"]["mediaType"] = json!("application/vnd.cncf.helm.config.v1+json")
    });
    check("helm.tar", f.to_tar(), &|e| {
        matches!(e, ImageError::UnsupportedMediaType { .. })
    });

    // No name, or a bad one.
    check("noname.tar", oci_layout(&[("", &img)]).to_tar(), &|e| {
        matches!(e, ImageError::NoReference(_))
    });
    check(
        "badname.tar",
        oci_layout(&[("Bad/Name:1", &img)]).to_tar(),
        &|e| matches!(e, ImageError::InvalidReference { .. }),
    );
    check("missing-file", Vec::new(), &|e| {
        matches!(
            e,
            ImageError::UnknownFormat(_) | ImageError::NotAnArchive { .. }
        )
    });
    assert!(matches!(
        store.import(t.path().join("does-not-exist")),
        Err(ImageError::Io { .. })
    ));
}

fn whiteout_layers() -> Vec<Vec<u8>> {
    vec![
        LayerBuilder::new()
            .dir("a", 0o755)
            .file("a/keep", b"keep", 0o644)
            .file("a/gone", b"gone", 0o644)
            .dir("b", 0o755)
            .dir("b/old", 0o755)
            .file("b/old/x", b"x", 0o644)
            .file("c", b"c1", 0o644)
            .dir("d", 0o755)
            .file("d/f", b"f", 0o644)
            .symlink("e", "c")
            .build(),
        LayerBuilder::new()
            .dir("a", 0o755)
            .file("a/.wh.gone", b"", 0o644)
            .file(".wh.c", b"", 0o644)
            .dir("b", 0o711)
            .file("b/.wh..wh..opq", b"", 0o644)
            .file("b/new", b"new", 0o644)
            .file("d", b"file d", 0o600)
            .build(),
        LayerBuilder::new().file("c", b"again", 0o644).build(),
    ]
}

/// Every path under `root` with what it is and holds.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for (path, desc) in fingerprint(root) {
        out.push(format!("{path}: {}", desc.split(" uid=").next().unwrap()));
    }
    out
}

fn expected_flat_tree() -> Vec<String> {
    let f = |s: &str| format!("file {}", Digest::of(s.as_bytes()));
    vec![
        "a: dir mode=40755".to_string(),
        format!("a/keep: {} mode=100644", f("keep")),
        "b: dir mode=40711".to_string(),
        format!("b/new: {} mode=100644", f("new")),
        format!("c: {} mode=100644", f("again")),
        format!("d: {} mode=100600", f("file d")),
        "e: link c mode=120777".to_string(),
    ]
}

fn import_whiteouts(store: &ImageStore, t: &TempDir) -> Image {
    let img = TestImage::new(whiteout_layers());
    store
        .import(write(t, "wh.tar", &oci_layout(&[("wh:1", &img)]).to_tar()))
        .unwrap();
    store.resolve("wh:1").unwrap()
}

#[test]
fn oci_whiteouts_kept_as_files_and_applied_by_flatten() {
    let t = TempDir::new().unwrap();
    let store = ImageStore::open_with(t.path().join("images"), WhiteoutFormat::Oci).unwrap();
    let img = import_whiteouts(&store, &t);
    let l1 = &img.layers[1];
    assert!(l1.join("a/.wh.gone").is_file());
    assert!(l1.join(".wh.c").is_file());
    assert!(l1.join("b/.wh..wh..opq").is_file());

    let out = t.path().join("rootfs");
    flatten(&img, &out).unwrap();
    assert_eq!(tree(&out), expected_flat_tree());
}

#[test]
fn overlay_whiteouts_as_root() {
    if !crate::sys::is_root() {
        eprintln!("SKIP overlay_whiteouts_as_root: needs root");
        return;
    }
    let t = TempDir::new().unwrap();
    let store = ImageStore::open(t.path().join("images")).unwrap();
    assert_eq!(store.whiteout_format(), WhiteoutFormat::Overlay);
    let img = import_whiteouts(&store, &t);
    let l1 = &img.layers[1];
    let c = fs::symlink_metadata(l1.join("c")).unwrap();
    assert!(c.file_type().is_char_device() && c.rdev() == 0);
    let gone = fs::symlink_metadata(l1.join("a/gone")).unwrap();
    assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
    assert_eq!(
        crate::sys::lgetxattr(&l1.join("b"), "trusted.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
    assert!(!l1.join("b/.wh..wh..opq").exists());
    assert!(!l1.join(".wh.c").exists());

    let out = t.path().join("rootfs");
    flatten(&img, &out).unwrap();
    assert_eq!(tree(&out), expected_flat_tree());

    // The layer directories work as overlayfs lowerdirs as they are.
    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let lower: Vec<String> = img
        .layers
        .iter()
        .rev()
        .map(|p| p.to_str().unwrap().to_string())
        .collect();
    let opts = std::ffi::CString::new(format!("lowerdir={}", lower.join(":"))).unwrap();
    let target = std::ffi::CString::new(mnt.to_str().unwrap()).unwrap();
    // SAFETY: valid C strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            target.as_ptr(),
            c"overlay".as_ptr(),
            libc::MS_RDONLY,
            opts.as_ptr().cast(),
        )
    };
    if rc != 0 {
        eprintln!(
            "SKIP overlay mount part: mount failed: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    let seen = tree(&mnt);
    // SAFETY: as above.
    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    // overlayfs reports the merged root; compare below it.
    assert_eq!(seen, expected_flat_tree());
}

#[test]
fn keeps_modes_owners_links_and_devices() {
    let (t, store) = new_store();
    let root = crate::sys::is_root();
    let layer = LayerBuilder::new()
        .dir("bin", 0o755)
        .file_owned("bin/su", b"su", 0o4755, 1000, 1001)
        .hardlink("bin/su2", "bin/su")
        .symlink("bin/abs", "/bin/su")
        .dir("secret", 0o700)
        .device("dev/null", tar::EntryType::Char, 1, 3)
        .device("fifo", tar::EntryType::Fifo, 0, 0)
        .build();
    store
        .import(write(
            &t,
            "m.tar",
            &oci_layout(&[("meta:1", &TestImage::new(vec![layer]))]).to_tar(),
        ))
        .unwrap();
    let img = store.resolve("meta:1").unwrap();
    let out = t.path().join("rootfs");
    flatten(&img, &out).unwrap();
    for dir in [&img.layers[0], &out] {
        let su = fs::symlink_metadata(dir.join("bin/su")).unwrap();
        assert_eq!(su.mode() & 0o7777, 0o4755, "{dir:?}");
        assert_eq!(su.mtime(), 1_600_000_000);
        let su2 = fs::symlink_metadata(dir.join("bin/su2")).unwrap();
        assert_eq!(su2.ino(), su.ino(), "hard link kept in {dir:?}");
        assert_eq!(
            fs::read_link(dir.join("bin/abs")).unwrap(),
            Path::new("/bin/su")
        );
        let secret = fs::metadata(dir.join("secret")).unwrap();
        assert_eq!(secret.permissions().mode() & 0o7777, 0o700);
        assert_eq!(secret.mtime(), 1_600_000_000);
        assert!(fs::symlink_metadata(dir.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        let null = fs::symlink_metadata(dir.join("dev/null"));
        if root {
            assert_eq!((su.uid(), su.gid()), (1000, 1001));
            let null = null.unwrap();
            assert!(null.file_type().is_char_device());
            assert_eq!(null.rdev(), libc::makedev(1, 3));
        } else {
            assert!(null.is_err(), "device nodes only as root");
        }
    }
}

#[test]
fn list_display_remove_and_gc() {
    let (t, store) = new_store();
    for (name, img) in [
        ("busybox-web:1", web_image("1")),
        ("busybox-web:2", web_image("2")),
        ("busybox:test", TestImage::new(vec![base_layer()])),
    ] {
        store
            .import(write(&t, "i.tar", &oci_layout(&[(name, &img)]).to_tar()))
            .unwrap();
    }
    let rows = store.list().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r.reference.as_str()).collect();
    assert_eq!(
        names,
        [
            "docker.io/library/busybox-web:1",
            "docker.io/library/busybox-web:2",
            "docker.io/library/busybox:test"
        ]
    );
    let row = rows[0].to_string();
    assert!(row.starts_with("docker.io/library/busybox-web:1 "));
    assert!(row.contains(rows[0].digest.short()));
    let table = ImageTable(&rows).to_string();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(lines[0].starts_with("REFERENCE") && lines[0].contains("DIGEST"));
    assert_eq!(
        lines[1].find(rows[0].digest.short()),
        lines[0].find("DIGEST")
    );

    let web1 = store.resolve("busybox-web:1").unwrap();
    let web2 = store.resolve("busybox-web:2").unwrap();
    let base = web1.layers[0].clone();
    assert_eq!(
        store.remove("busybox-web:1").unwrap(),
        ["docker.io/library/busybox-web:1"]
    );
    assert!(store.resolve("busybox-web:1").is_none());
    assert!(!web1.layers[1].exists(), "unique layer collected");
    assert!(base.exists(), "shared layer kept");
    for d in [&web1.digest, &web1.id] {
        assert!(!store.root().join("blobs/sha256").join(d.hex()).exists());
    }
    assert!(store.resolve("busybox-web:2").is_some());
    assert!(matches!(
        store.remove("busybox-web:1"),
        Err(ImageError::NotFound(_))
    ));
    assert!(matches!(
        store.remove("never-imported"),
        Err(ImageError::NotFound(_))
    ));

    store
        .remove(&format!("busybox-web@{}", web2.digest))
        .unwrap();
    assert!(base.exists());
    let bb = store.resolve("busybox:test").unwrap();
    assert_eq!(
        store.remove(bb.id.as_str()).unwrap(),
        ["docker.io/library/busybox:test"]
    );
    assert!(store.list().unwrap().is_empty());
    assert_eq!(count_dir(&store.root().join("layers")), 0);
    assert_eq!(count_dir(&store.root().join("blobs/sha256")), 0);
    assert_eq!(store.gc().unwrap(), GcStats::default());
}

#[test]
fn retagging_collects_the_old_image() {
    let (t, store) = new_store();
    let p1 = write(
        &t,
        "1.tar",
        &oci_layout(&[("app:1", &web_image("1"))]).to_tar(),
    );
    let p2 = write(
        &t,
        "2.tar",
        &oci_layout(&[("app:1", &web_image("2"))]).to_tar(),
    );
    store.import(&p1).unwrap();
    let old = store.resolve("app:1").unwrap();
    store.import(&p2).unwrap();
    let new = store.resolve("app:1").unwrap();
    assert_ne!(old.digest, new.digest);
    assert!(!old.layers[1].exists());
    assert_eq!(
        fs::read_to_string(new.layers[1].join("www/index.html")).unwrap(),
        "web 2\n"
    );
    assert_eq!(count_dir(&store.root().join("layers")), 2);
}

#[test]
fn concurrent_imports_do_not_lose_references() {
    let t = TempDir::new().unwrap();
    let dir = t.path().join("images");
    ImageStore::open(&dir).unwrap();
    let mut paths = Vec::new();
    for who in ["a", "b", "c"] {
        for i in 0..4 {
            let img = web_image(&format!("{who}{i}"));
            let name = format!("{who}:{i}");
            paths.push((
                who,
                write(
                    &t,
                    &format!("{who}{i}.tar"),
                    &oci_layout(&[(&name, &img)]).to_tar(),
                ),
            ));
        }
    }
    std::thread::scope(|s| {
        for who in ["a", "b", "c"] {
            let mine: Vec<PathBuf> = paths
                .iter()
                .filter(|(w, _)| *w == who)
                .map(|(_, p)| p.clone())
                .collect();
            let dir = dir.clone();
            s.spawn(move || {
                // Each thread has its own store handle, as separate processes would.
                let store = ImageStore::open(&dir).unwrap();
                for p in mine {
                    store.import(&p).unwrap();
                }
            });
        }
    });
    let store = ImageStore::open(&dir).unwrap();
    assert_eq!(store.list().unwrap().len(), 12);
    for who in ["a", "b", "c"] {
        for i in 0..4 {
            let img = store.resolve(&format!("{who}:{i}")).unwrap();
            assert_eq!(
                fs::read_to_string(img.layers[1].join("www/index.html")).unwrap(),
                format!("web {who}{i}\n")
            );
        }
    }
    // 1 shared base + 12 web layers
    assert_eq!(count_dir(&dir.join("layers")), 13);
    assert_eq!(count_dir(&dir.join("tmp")), 0);
}

#[test]
fn leftovers_of_a_crashed_import_are_cleaned_on_open() {
    let t = TempDir::new().unwrap();
    let dir = t.path().join("images");
    let store = ImageStore::open(&dir).unwrap();
    let half = dir.join("tmp/import-dead/layer-x/usr");
    fs::create_dir_all(&half).unwrap();
    fs::write(half.join("partial"), b"half a file").unwrap();
    fs::set_permissions(
        dir.join("tmp/import-dead/layer-x"),
        fs::Permissions::from_mode(0o555),
    )
    .unwrap();
    drop(store);
    let store = ImageStore::open(&dir).unwrap();
    assert_eq!(count_dir(&store.root().join("tmp")), 0);
    assert_eq!(count_dir(&store.root().join("layers")), 0);
}

#[test]
fn human_sizes() {
    assert_eq!(human_size(0), "0B");
    assert_eq!(human_size(999), "999B");
    assert_eq!(human_size(2_160_000), "2.16MB");
    assert_eq!(human_size(12_345), "12.3kB");
    assert_eq!(human_size(123_456_789), "123MB");
}
