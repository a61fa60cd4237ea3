//! ThreatBook v3 client (stub, being written).
