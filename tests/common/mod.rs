//! Helpers shared by the integration tests, one module per concern.
#![allow(dead_code)]

pub mod azurite;
pub mod backend;
pub mod canary;
pub mod checksums;
pub mod cli;
pub mod conformance;
pub mod daemon;
pub mod data;
pub mod engines;
pub mod fault_proxy;
pub mod filerest;
pub mod fs;
pub mod http;
pub mod job;
pub mod manifests;
pub mod mounts;
pub mod net;
pub mod procs;
pub mod registry;
pub mod scene;
pub mod secrets;
pub mod serial;
pub mod tls;
pub mod tmpfs;
pub mod token_server;
pub mod users;
pub mod wait;
