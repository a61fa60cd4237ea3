//! What flows from the enrichment stage to the outputs.

use std::sync::Arc;

use crate::{query::Query, verdict::Assessment};

/// An event and what is known of its name. `intel` is `None` when no provider is configured.
#[derive(Debug, Clone)]
pub struct Enriched {
    pub query: Query,
    pub intel: Option<Arc<Assessment>>,
}
