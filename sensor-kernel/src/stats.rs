//! `sensor stats`: the kernel counters of a running sensor, read from its pinned map.

use std::path::Path;

use aya::maps::{Map, MapData, PerCpuArray};
use sensor_common::{Counter, Counters, map_names};

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error(
        "no running sensor pinned its counters at {0} (is the sensor running, and its name right?)"
    )]
    NotRunning(String),
    #[error("reading {path}: {reason}")]
    Read { path: String, reason: String },
}

/// Reads and sums the pinned per-CPU counters under `pin_dir`.
pub fn read(pin_dir: &Path) -> Result<Counters, StatsError> {
    let path = pin_dir.join(map_names::COUNTERS);
    let shown = path.display().to_string();
    if !path.exists() {
        return Err(StatsError::NotRunning(shown));
    }
    let err = |reason: String| StatsError::Read {
        path: shown.clone(),
        reason,
    };
    let data = MapData::from_pin(&path).map_err(|e| err(e.to_string()))?;
    let map: PerCpuArray<MapData, Counters> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(|e| err(e.to_string()))?;
    crate::loader::read_counters(&map).map_err(|e| err(e.to_string()))
}

/// One `name value` line per counter, outcome counters marked, and the conservation check.
pub fn render(c: &Counters) -> String {
    let mut out = String::new();
    let width = Counter::ALL
        .iter()
        .map(|c| c.name().len())
        .max()
        .unwrap_or(0);
    for &k in Counter::ALL {
        out.push_str(&format!(
            "{:<width$}  {:>14}  # {}\n",
            k.name(),
            c.get(k),
            k.help()
        ));
    }
    let outcomes: u64 = Counter::ALL
        .iter()
        .filter(|k| k.is_outcome())
        .map(|&k| c.get(k))
        .sum();
    out.push_str(&format!(
        "# every packet, and every further message of a TCP segment, ends in one outcome: \
         packets {} + tcp_pipelined {} = outcomes {}\n",
        c.packets, c.tcp_pipelined, outcomes
    ));
    out
}

/// The counters as one JSON object.
pub fn json(c: &Counters) -> serde_json::Value {
    serde_json::Value::Object(
        Counter::ALL
            .iter()
            .map(|&k| (k.name().to_owned(), c.get(k).into()))
            .collect(),
    )
}
