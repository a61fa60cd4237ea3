//! Asset inventory (stub, being written).
