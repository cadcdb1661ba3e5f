//! Keel: a containerd runtime shim (`io.containerd.keel.v1`) driving an OCI runtime.
//!
//! The binary (`src/main.rs`) dispatches containerd's actions; this library
//! holds everything, so tests and fuzz targets can reach the decoders of
//! untrusted input (options, stdio URIs, ids, arguments).

pub mod args;
pub mod cgroups;
pub mod container;
pub mod error;
pub mod events;
pub mod fdpass;
pub mod logger;
pub mod manager;
pub mod mount;
pub mod options;
pub mod reaper;
pub mod resources;
pub mod runtime;
pub mod serve;
pub mod service;
pub mod stdio;
pub mod sync;
pub mod tasklist;
pub mod upgrade;
pub mod wiring;
