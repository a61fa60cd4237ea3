//! `sensor run`: build the pipeline, run it until SIGINT/SIGTERM, shut it down.

use std::path::PathBuf;

use tokio::signal::unix::{SignalKind, signal};

use crate::pipeline::Pipeline;

pub fn run(config_path: Option<PathBuf>, interfaces: Vec<String>) -> anyhow::Result<()> {
    let mut config = super::load_config(config_path.as_ref())?;
    if !interfaces.is_empty() {
        config.capture.interfaces = interfaces;
        config.validate()?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let running = Pipeline::build(&config, config_path).await?.run()?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
        running.shutdown().await
    })
}
