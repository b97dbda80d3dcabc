//! Recording one delivery, whatever keeps the record: claim its id (a delivery id seen before
//! changes nothing: redeliveries, registry retries), match its images or Git events to Projects,
//! offer the tags to their Stages. Where it is kept is a [`Book`]: the embedded store's
//! transaction (`store::ledger`, group commit) or the cluster (`modes::kubernetes::ingest`).

use tokio::sync::oneshot;

use super::{Catalog, Delivery, Ledger, Parsed, ProjectRef, Provider, Push, Verdict};

/// A delivery without a sender's id (Quay, Docker Hub, Harbor, the generic endpoint without
/// `Idempotency-Key`) is known by a hash of its body, and only for this long: enough to absorb
/// a sender's retries of the same request, short enough that the same tag pushed again later
/// (an identical body) is recorded again.
pub const RETRY_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// One authenticated delivery waiting to be recorded.
pub struct Job {
    pub provider: Provider,
    pub delivery: Delivery,
    /// The sender's delivery id, else a hash of the body.
    pub delivery_key: String,
    /// Projects (namespace, name) the delivery proved it may speak for.
    pub accepted: Vec<(String, String)>,
    pub respond: oneshot::Sender<Result<Answer, BookError>>,
}

/// What was recorded.
#[derive(Debug, Default)]
pub struct Answer {
    pub duplicate: bool,
    pub delivery_key: String,
    pub verdicts: Vec<Verdict>,
    /// Projects created for images nobody used yet.
    pub created: Vec<String>,
    /// Why (parts of) the delivery changed nothing.
    pub ignored: Option<String>,
}

/// What recording needs of where it records: the embedded store here, the cluster in Kubernetes
/// mode (`crate::modes::kubernetes::ingest`).
/// The book could not record: the store or the API server failed. The delivery is answered 503
/// and its sender retries; nothing of it was recorded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BookError {
    #[error("{0}")]
    Unavailable(String),
}

pub trait Book: Ledger<Error = BookError> {
    /// Marks a delivery key seen; false when it was seen before — within `window` when one is
    /// given (a body hash: [`RETRY_WINDOW`]), else within the retention of sender ids.
    fn claim(
        &self,
        key: &str,
        source: &str,
        window: Option<std::time::Duration>,
    ) -> Result<bool, BookError>;
    fn catalog(&self) -> Result<Catalog, BookError>;
    /// Why no Project may be created for `repository` now (allow-list, cap), if it may not:
    /// answered 2xx with that reason, not an error.
    fn refuses_auto_create(&self, _repository: &str) -> Option<String> {
        None
    }
    /// Creates a Project (with a Stage) for an image nobody uses; None when that is off.
    fn auto_create(
        &self,
        catalog: &mut Catalog,
        repository: &str,
    ) -> Option<Result<ProjectRef, BookError>>;
}

/// Records one delivery in `book`: claims its id, matches its images or Git events to Projects,
/// offers the tags to their Stages.
pub fn process<B: Book>(
    book: &B,
    job: &Job,
    catalog: &mut Option<Catalog>,
) -> Result<Answer, BookError> {
    let source = job.provider.as_str();
    let mut answer = Answer {
        delivery_key: job.delivery_key.clone(),
        ..Default::default()
    };
    // The sender's id is remembered for days; a body hash only long enough for retries.
    let window = job.delivery.delivery_id.is_none().then_some(RETRY_WINDOW);
    let claim = |key: &str, window| book.claim(&format!("{source}:{key}"), source, window);
    let mut reasons: Vec<String> = Vec::new();
    match &job.delivery.parsed {
        Parsed::Ping => answer.ignored = Some("ping".into()),
        Parsed::Ignored(reason) => answer.ignored = Some(reason.clone()),
        Parsed::Images(images) => {
            // Registry notifications carry an id per event and are retried whole: each event
            // counts once. Other senders: one id per delivery.
            let fresh: Vec<_> = if images.iter().all(|i| i.event_id.is_some()) {
                let mut fresh = Vec::new();
                for i in images {
                    if claim(i.event_id.as_deref().unwrap_or_default(), None)? {
                        fresh.push(i);
                    }
                }
                fresh
            } else if claim(&job.delivery_key, window)? {
                images.iter().collect()
            } else {
                Vec::new()
            };
            if fresh.is_empty() {
                answer.duplicate = true;
                return Ok(answer);
            }
            let catalog = loaded(book, catalog)?;
            for image in fresh {
                let push = Push::from_image(image, source, job.delivery.delivery_id.as_deref());
                let users = super::for_image(&catalog.projects, &image.repository);
                let anyone = !users.is_empty();
                let mine: Vec<ProjectRef> = allowed(&users, &job.accepted)
                    .into_iter()
                    .cloned()
                    .collect();
                if !mine.is_empty() {
                    let mine: Vec<&ProjectRef> = mine.iter().collect();
                    answer
                        .verdicts
                        .extend(super::record(book, &catalog.stages, &mine, &push)?);
                } else if anyone {
                    reasons.push(format!(
                        "not authorised for the Projects using {}",
                        image.repository
                    ));
                } else if let Some(why) = book.refuses_auto_create(&image.repository) {
                    tracing::warn!(image = %image.repository, reason = %why, "no Project created for a new image");
                    reasons.push(format!("no Project uses {}: {why}", image.repository));
                } else if let Some(created) = book.auto_create(catalog, &image.repository) {
                    // A Project that cannot be created (a read-only manifests directory) is a
                    // reason, not a failure: the registry would retry a non-2xx forever and hold
                    // every later event behind it.
                    match created {
                        Ok(created) => {
                            tracing::info!(project = %created.name, image = %image.repository, "created a Project for a new image");
                            answer
                                .created
                                .push(format!("{}/{}", created.namespace, created.name));
                            answer.verdicts.extend(super::record(
                                book,
                                &catalog.stages,
                                &[&created],
                                &push,
                            )?);
                        }
                        Err(e) => {
                            tracing::error!(image = %image.repository, error = %e, "could not create a Project for a new image");
                            reasons.push(format!(
                                "no Project uses {} and creating one failed: {e}",
                                image.repository
                            ));
                        }
                    }
                } else {
                    reasons.push(format!("no Project uses {}", image.repository));
                }
            }
        }
        Parsed::Git(events) => {
            if !claim(&job.delivery_key, window)? {
                answer.duplicate = true;
                return Ok(answer);
            }
            let catalog = loaded(book, catalog)?;
            for event in events {
                let users = super::for_git(&catalog.projects, source, &event.repository);
                let mine = allowed(&users, &job.accepted);
                if mine.is_empty() {
                    reasons.push(format!("no Project has gitSource {}", event.repository));
                }
                for project in mine {
                    match super::git_tag(&project.spec, event) {
                        Ok(tag) => {
                            let push = Push {
                                repository: project.spec.image.clone(),
                                tag,
                                digest: None,
                                source: source.to_string(),
                                delivery_id: job.delivery.delivery_id.clone(),
                            };
                            answer.verdicts.extend(super::record(
                                book,
                                &catalog.stages,
                                &[project],
                                &push,
                            )?);
                        }
                        Err(reason) => reasons.push(format!("{}: {reason}", project.name)),
                    }
                }
            }
        }
    }
    reasons.extend(answer.verdicts.iter().filter_map(|v| {
        v.ignored
            .as_ref()
            .map(|r| format!("{}/{}: {r}", v.namespace, v.stage))
    }));
    if answer.ignored.is_none() && !reasons.is_empty() {
        answer.ignored = Some(reasons.join("; "));
    }
    Ok(answer)
}

/// The batch's catalog, read on first use.
fn loaded<'c, B: Book>(
    book: &B,
    catalog: &'c mut Option<Catalog>,
) -> Result<&'c mut Catalog, BookError> {
    if catalog.is_none() {
        *catalog = Some(book.catalog()?);
    }
    Ok(catalog.as_mut().expect("just loaded"))
}

/// The Projects of `users` this delivery may speak for: those it authenticated against, and any
/// without a webhook secret (the URL secret, already checked, is all they ask). The latter covers
/// Projects created after the listener looked — by an earlier tag of the same delivery, or by a
/// concurrent delivery for the same new image — so every tag counts.
fn allowed<'p>(users: &[&'p ProjectRef], accepted: &[(String, String)]) -> Vec<&'p ProjectRef> {
    users
        .iter()
        .copied()
        .filter(|p| {
            p.spec
                .webhook
                .as_ref()
                .is_none_or(|w| w.secret_ref.is_none())
                || accepted
                    .iter()
                    .any(|(ns, n)| *ns == p.namespace && *n == p.name)
        })
        .collect()
}
