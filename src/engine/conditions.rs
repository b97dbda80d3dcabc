//! Kubernetes-style conditions: `lastTransitionTime` moves only when `status` changes, so
//! watchers and GitOps tools see no churn from repeated reconciles.

use crate::api::Condition;

pub const READY: &str = "Ready";

/// RFC 3339 UTC now, as every timestamp in status.
pub fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Sets (or adds) a condition, keeping its transition time when the status did not change.
/// `Ready` is kept first.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) {
    let status = if ok { "True" } else { "False" };
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now();
            }
            c.status = status.into();
            c.reason = reason.into();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: now(),
            observed_generation: generation,
        }),
    }
    conditions.sort_by_key(|c| c.type_ != READY);
}

/// The `Ready` condition, if set.
pub fn ready(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == READY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut c = Vec::new();
        set(&mut c, "Other", true, "A", "", Some(1));
        set(&mut c, READY, false, "Deploying", "x", Some(1));
        assert_eq!(c[0].type_, READY, "Ready is kept first");
        c[0].last_transition_time = "2000-01-01T00:00:00Z".into();
        set(&mut c, READY, false, "StillDeploying", "y", Some(2));
        assert_eq!(c[0].last_transition_time, "2000-01-01T00:00:00Z");
        assert_eq!(c[0].reason, "StillDeploying");
        assert_eq!(c[0].observed_generation, Some(2));
        set(&mut c, READY, true, "Healthy", "z", Some(2));
        assert_ne!(c[0].last_transition_time, "2000-01-01T00:00:00Z");
        assert_eq!(c.len(), 2);
    }
}
