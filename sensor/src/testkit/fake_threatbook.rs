//! Fake ThreatBook v3 server (stub, being written).
