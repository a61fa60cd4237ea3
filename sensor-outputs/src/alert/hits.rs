//! The alert stage as the enrichment stage's [`HitSink`]: each malicious sighting group
//! becomes an alert candidate (suppression and counting happen in the stage).

use std::{net::IpAddr, sync::Arc};

use sensor_intel::enrich::HitSink;
use sensor_model::{query::qtype_name, verdict::Assessment};
use time::OffsetDateTime;

/// Hands the enrichment stage's hits to the alert stage, which suppresses repeats and counts
/// them; a deferred sighting group of `count` queries takes one queue slot.
pub struct AlertHits {
    pub submitter: super::AlertSubmitter,
    pub sensor: String,
}

impl HitSink for AlertHits {
    fn hit(
        &self,
        client: IpAddr,
        name: &str,
        qtype: u16,
        assessment: &Arc<Assessment>,
        first_seen: OffsetDateTime,
        last_seen: OffsetDateTime,
        count: u64,
    ) {
        let hit = super::Hit {
            client,
            name: name.to_owned(),
            qtype: qtype_name(qtype),
            assessment: assessment.clone(),
            seen: first_seen,
            sensor: self.sensor.clone(),
        };
        if count <= 1 {
            self.submitter.submit(hit);
        } else {
            self.submitter.submit_group(hit, last_seen, count);
        }
    }
}
