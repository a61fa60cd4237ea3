//! Domain-name sets with suffix matching, and list files (stub, being written).
