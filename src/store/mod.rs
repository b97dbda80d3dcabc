//! Where resources and their status live. Standalone: manifests in a directory plus an embedded
//! SQLite store. (Kubernetes mode keeps both in the API server.)

pub mod ledger;
pub mod manifests;
pub mod secrets;
pub mod state;

pub use manifests::{Loaded, ManifestError, Manifests, load_dir};
pub use secrets::StoreSecrets;
pub use state::{Kind, StateDb, StoreError, Stored, Tx};
