//! dataref: the compute-node side of Azure ML datastores.
//!
//! A job manifest names data references (a path in a datastore plus a mode); dataref validates
//! it, makes each input available (mount or download), runs the training command, and uploads
//! its outputs. The modules follow that flow:
//!
//! - [`manifest`]: the model and its validation, producing a [`manifest::JobPlan`];
//! - [`datastore`]: datastore definitions, secrets by reference, the registry;
//! - [`store`]: the backend-agnostic storage trait and its backends;
//! - [`transfer`]: the parallel, streamed download/upload engine;
//! - [`fs`]: the read-only FUSE filesystem over any store;
//! - [`localfs`]: the local filesystem with a job's user's rights (a user-side process);
//! - [`job`]: one job from start to end (prepare → run → stage out);
//! - [`daemon`]: service mode, its job queue and socket API;
//! - [`cli`]: the command line, a thin layer over the above.

pub mod cli;
pub mod daemon;
pub mod fs;
pub mod job;
pub mod localfs;
pub mod manifest;
pub mod model;
pub mod registry;
pub mod store;
pub mod transfer;
