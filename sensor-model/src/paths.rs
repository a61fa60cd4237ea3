//! Every default path of the sensor, in one place: the config sections' defaults, the service
//! unit and the package agree with these (README, "Run as a service").

/// bpffs, where pinned maps and links live.
pub const BPFFS: &str = "/sys/fs/bpf";
/// `sensor.pin_root`: under it, `<sensor.name>/` holds the instance's pins.
pub const PIN_ROOT: &str = "/sys/fs/bpf/dns-sensor";
/// The instance lock's directory when systemd gives no `RUNTIME_DIRECTORY`.
pub const RUNTIME_DIR: &str = "/run/dns-sensor";
/// `blocklist.policy.state_dir`: the nightly job's store.
pub const BLOCKLIST_STATE_DIR: &str = "/var/lib/dns-sensor/blocklist";
/// `blocklist.edl.path`: the list file served to the border firewall.
pub const EDL_FILE: &str = "/var/lib/dns-sensor/blocklist/edl.txt";
/// `blocklist.results_dir`: each night's CSV and JSON lines.
pub const BLOCKLIST_RESULTS_DIR: &str = "/var/lib/dns-sensor/blocklist/results";
/// `pdns.path`: the passive DNS store (SQLite; its `-wal` and `-shm` files beside it).
pub const PDNS_STORE: &str = "/var/lib/dns-sensor/pdns/pdns.sqlite";
