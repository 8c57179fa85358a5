//! The `mount` mode: a read-only FUSE filesystem over any `Store`.
//!
//! `filesystem` is the filesystem (namespace, attributes, reads) with no kernel involved; `reader`
//! is the per-file read path with read-ahead; `buffers` recycles its windows; `cache` the
//! optional on-disk block cache under it; `fuse` is the thin adapter to the kernel; `attach`
//! mounts it on a file descriptor and unmounts exactly that mount.

mod attach;
pub mod buffers;
pub mod cache;
pub mod cleanup;
pub mod filesystem;
pub mod fuse;
pub mod mount;
pub mod reader;
pub mod whole_check;
