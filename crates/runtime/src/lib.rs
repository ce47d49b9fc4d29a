//! Runs containers: namespaces, cgroups, rootfs, pod networking, a per-container shim.
