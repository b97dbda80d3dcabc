//! Sources: where announcements come from ("image X:tag was pushed", "commit Y on main"), each
//! turned into `ingest` events: the webhook listener, and builds from Git (`build`), whose
//! tags are recorded like pushed ones. Later: registry polling.

pub mod build;
pub mod webhook;
