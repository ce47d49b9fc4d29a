//! The test images of tests/images/build.py (real busybox-static) import, share their
//! base layer, resolve by short name, and flatten into a rootfs that busybox runs in.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use corral_images::{flatten, ImageStore};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/images/build.py")
}

fn have_tools() -> bool {
    let python = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !python {
        eprintln!("SKIP import_built_images: python3 not found");
        return false;
    }
    if !Path::new("/bin/busybox").is_file() {
        eprintln!(
            "SKIP import_built_images: /bin/busybox missing (apt-get install -y busybox-static)"
        );
        return false;
    }
    true
}

fn build(out: &Path) {
    let st = Command::new("python3")
        .arg(script())
        .arg(out)
        .status()
        .expect("run build.py");
    assert!(st.success(), "build.py failed: {st}");
}

#[test]
fn built_images_import_share_their_base_layer_and_run() {
    if !have_tools() {
        return;
    }
    let t = tempfile::TempDir::new().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    build(&a);
    build(&b);
    for f in ["busybox-test.tar", "busybox-web-1.tar", "busybox-web-2.tar"] {
        assert_eq!(
            fs::read(a.join(f)).unwrap(),
            fs::read(b.join(f)).unwrap(),
            "{f} is not deterministic"
        );
    }

    let store = ImageStore::open(t.path().join("images")).unwrap();
    let mut refs = Vec::new();
    for f in ["busybox-test.tar", "busybox-web-1.tar", "busybox-web-2.tar"] {
        refs.extend(store.import(a.join(f)).unwrap());
    }
    assert_eq!(
        refs,
        [
            "docker.io/library/busybox:test",
            "docker.io/library/busybox-web:1",
            "docker.io/library/busybox-web:2"
        ]
    );

    let bb = store.resolve("busybox:test").unwrap();
    let web1 = store.resolve("busybox-web:1").unwrap();
    let web2 = store.resolve("docker.io/library/busybox-web:2").unwrap();
    assert_eq!(bb.layers.len(), 1);
    assert_eq!(web1.layers[0], bb.layers[0]);
    assert_eq!(web2.layers[0], bb.layers[0]);
    assert_eq!(
        fs::read_dir(store.root().join("layers")).unwrap().count(),
        3
    );

    assert_eq!(bb.config.cmd, ["sh"]);
    assert_eq!(web1.config.cmd, ["httpd", "-f", "-p", "8080", "-h", "/www"]);
    assert_eq!(web1.config.exposed_ports, ["8080/tcp"]);
    assert!(web1.config.env.iter().any(|e| e.starts_with("PATH=")));
    assert_eq!(
        fs::read_to_string(web1.layers[1].join("www/index.html")).unwrap(),
        "web v1\n"
    );
    assert_eq!(
        fs::read_to_string(web2.layers[1].join("www/index.html")).unwrap(),
        "web v2\n"
    );

    let base = &bb.layers[0];
    let busybox = fs::metadata(base.join("bin/busybox")).unwrap();
    assert_eq!(busybox.len(), fs::metadata("/bin/busybox").unwrap().len());
    assert_eq!(busybox.permissions().mode() & 0o777, 0o755);
    assert_eq!(
        fs::read_link(base.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert!(fs::read_to_string(base.join("etc/passwd"))
        .unwrap()
        .contains("nobody:x:65534"));
    assert_eq!(
        fs::metadata(base.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );

    // Flattened, the rootfs runs: busybox is static, so chroot needs nothing else.
    let root = t.path().join("rootfs");
    flatten(&web1, &root).unwrap();
    assert_eq!(
        fs::read_to_string(root.join("www/index.html")).unwrap(),
        "web v1\n"
    );
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    if is_root {
        let out = Command::new("chroot")
            .arg(&root)
            .args(["/bin/sh", "-c", "cat /www/index.html; ls /bin | wc -l"])
            .output()
            .expect("chroot");
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("web v1"));
        let applets: usize = lines.next().unwrap().trim().parse().unwrap();
        assert!(applets > 100, "{applets} entries in /bin");
    } else {
        eprintln!("SKIP chroot part: needs root");
    }

    // Removing one web image keeps the shared base for the others.
    store.remove("busybox-web:1").unwrap();
    assert!(!web1.layers[1].exists());
    assert!(bb.layers[0].exists());
    assert_eq!(
        fs::read_dir(store.root().join("layers")).unwrap().count(),
        2
    );
}
