//! Local threat feeds (stub, being written).
