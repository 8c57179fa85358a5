//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod azurite;
pub mod cli;
pub mod conformance;
pub mod fault_proxy;
pub mod filerest;
pub mod tmpfs;
