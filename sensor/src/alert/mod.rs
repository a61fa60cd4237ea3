//! Alerts (stub, being written).
