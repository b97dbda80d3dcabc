//! Sources: where announcements come from ("image X:tag was pushed", "commit Y on main"), each
//! turned into `ingest` events. Today the webhook listener; later registry polling and builds.

pub mod webhook;
