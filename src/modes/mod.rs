//! The two ways tiny-forge runs, which only wire the engine, the store or the cluster, the
//! sources and the adapters together: `standalone` (a manifest directory and an embedded store)
//! and `kubernetes` (custom resources, kube-runtime). `host` is what both set up alike.

pub mod host;
pub mod kubernetes;
pub mod standalone;
