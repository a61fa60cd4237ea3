//! The sensor's shared vocabulary, below every stage: a DNS [`query`] and [`response`] as
//! documents use them, the [`verdict`] intel gives them, the [`enriched`] event that flows to
//! the outputs, its ECS
//! [`document`] and the fast [`encode`]r, and the small things every layer needs: config
//! [`error`]s that name their key, [`secret`]s that never print, atomic [`files`], the wall
//! [`clock`], [`reload`]ing lists, the default [`paths`], the one [`http`] client builder and
//! the one [`retry`] back-off, and [`text`] that came from outside made fit for a log line.
//!
//! Depends on `sensor-common` only among the workspace's crates; every other layer depends on it.

pub mod clock;
pub mod counters;
pub mod document;
pub mod encode;
pub mod enriched;
pub mod error;
pub mod files;
pub mod http;
pub mod paths;
pub mod query;
pub mod reload;
pub mod response;
pub mod retry;
pub mod secret;
pub mod text;
pub mod verdict;
