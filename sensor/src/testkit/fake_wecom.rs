//! Fake WeCom group robot (stub, being written).
