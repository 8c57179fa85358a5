//! Azure Storage backends: Blob containers (`blob`, over the official SDK) and File shares
//! (`file`, over FileREST), both over one client (`client`): one pipeline built from the
//! credential and the job's HTTP client, our SharedKey/SAS policies (`auth`), one retry loop
//! that re-reads a rotated secret after a 403, one error mapping.

pub mod auth;
pub mod blob;
mod client;
pub mod file;
mod identity;
