//! The resource model, `tinyforge.dev/v1alpha1`: the very types that become the CRDs.
//!
//! Spec belongs to the user, status to the controller. Field docs become schema descriptions, so
//! they are written for the person reading `kubectl explain`.

mod common;
mod project;
mod stage;
mod status;

pub use common::*;
pub use project::*;
pub use stage::*;
pub use status::*;

/// API group of every tiny-forge resource.
pub const GROUP: &str = "tinyforge.dev";
/// API version served by this release.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "tinyforge.dev/v1alpha1";

/// Labels put on everything tiny-forge creates outside Kubernetes; garbage collection goes by
/// these and never by name guessing.
pub mod labels {
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const MANAGED_BY_VALUE: &str = "tiny-forge";
    /// Which controller instance owns the container: two instances sharing a Docker host never
    /// touch each other's containers.
    pub const INSTANCE: &str = "tinyforge.dev/instance";
    pub const NAMESPACE: &str = "tinyforge.dev/namespace";
    pub const PROJECT: &str = "tinyforge.dev/project";
    pub const STAGE: &str = "tinyforge.dev/stage";
    pub const TAG: &str = "tinyforge.dev/tag";
    /// The container port, so a route back to an older container uses its own port.
    pub const PORT: &str = "tinyforge.dev/port";
    /// Hash of everything that makes a container what it is (image id + settings).
    pub const SPEC_HASH: &str = "tinyforge.dev/spec-hash";
}
