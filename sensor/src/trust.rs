//! Trusted-domain filter (stub, being written).
