//! The engine: pure decisions about what a Stage should run, and the deploy state machine that
//! carries them out through small traits. Nothing here knows Kubernetes, Docker or HTTP types.

pub mod build;
pub mod conditions;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod health;
pub mod holder;
pub mod policy;
pub mod proxy;
pub mod reasons;
pub mod reconcile;
pub mod runtime;
pub mod spec;
pub mod tags;

pub use health::{ProbeError, Prober};
pub use reasons::Reason;
pub use reconcile::{
    Reconciled, Reconciler, Requeue, SecretError, Secrets, SinkError, StageInput, StatusSink,
};
pub use runtime::{
    ContainerInfo, ContainerSpec, ContainerState, ImageInfo, Pull, Runtime, RuntimeError,
};
pub use spec::{Effective, FieldError, StageKey};
