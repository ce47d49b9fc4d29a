//! Container images on a node: import (OCI layout, `docker save`), list, remove; blobs
//! stored by digest, each layer unpacked once and shared by every image that has it.
//!
//! ```no_run
//! let store = corral_images::ImageStore::open("/var/lib/corral/images")?;
//! store.import("busybox-web-1.oci.tar")?;
//! let img = store.resolve("busybox-web:1").expect("imported");
//! corral_images::flatten(&img, std::path::Path::new("/tmp/rootfs"))?;
//! # Ok::<(), corral_images::ImageError>(())
//! ```

mod digest;
mod error;
mod flatten;
mod import;
mod layer;
mod reference;
mod source;
mod spec;
mod store;
mod sys;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

pub use digest::Digest;
pub use error::{ImageError, Result};
pub use flatten::flatten;
pub use layer::WhiteoutFormat;
pub use reference::Reference;
pub use store::{human_size, GcStats, Image, ImageConfig, ImageStore, ImageSummary, ImageTable};
