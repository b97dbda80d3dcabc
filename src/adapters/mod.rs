//! Adapters: each carries out one engine port on a real system. `docker` is the engine's
//! `Runtime` on the Docker Engine API, `npm` its `Proxy` on Nginx Proxy Manager, `probe` its
//! `Prober` over HTTP and TCP, `holder` its `PortHolder` (the port holder's container and
//! control channel), `git` fetches commits to build. Later: `forge` (repository hooks),
//! `registry` (OCI distribution).

pub mod docker;
pub mod git;
pub mod holder;
pub mod npm;
pub mod probe;
