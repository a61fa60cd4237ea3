//! The EDL server's certificate and key: read at start, re-read on SIGHUP (a renewed
//! certificate takes effect without a restart and without dropping the firewall's next fetch),
//! and readable from systemd's credentials directory.
//!
//! A path that starts with `$CREDENTIALS_DIRECTORY/` is taken inside the directory systemd
//! hands the service for `LoadCredential=` (the key then never has to be readable by the
//! service user on disk). A reload that fails (a half-copied file, a key that does not match the
//! certificate) keeps the pair in force and is reported like every other reload.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use sensor_model::reload::{Reload, ReloadCounters, ReloadError};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self,
        crypto::CryptoProvider,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::{ClientHello, ResolvesServerCert},
        sign::CertifiedKey,
    },
};

use crate::edl::EdlError;

const CREDENTIALS_PREFIX: &str = "$CREDENTIALS_DIRECTORY/";

/// `path` with a leading `$CREDENTIALS_DIRECTORY/` replaced by that directory; `key` names the
/// config key when the variable is not set.
/// `dir` is the value of `$CREDENTIALS_DIRECTORY` (the environment's, in [`CertSource::open`]).
pub fn expand_credentials(
    path: &Path,
    key: &'static str,
    dir: Option<std::ffi::OsString>,
) -> Result<PathBuf, EdlError> {
    let Some(rest) = path
        .to_str()
        .and_then(|p| p.strip_prefix(CREDENTIALS_PREFIX))
    else {
        return Ok(path.to_owned());
    };
    match dir {
        Some(dir) if !dir.is_empty() => Ok(PathBuf::from(dir).join(rest)),
        _ => Err(EdlError::Config(
            sensor_model::error::ConfigError::Invalid {
                key,
                message: format!(
                    "{} needs CREDENTIALS_DIRECTORY (set by systemd's LoadCredential=), which is not set",
                    path.display()
                ),
            },
        )),
    }
}

/// The certificate and key files and the pair in force.
pub struct CertSource {
    pub cert: PathBuf,
    pub key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
}

impl std::fmt::Debug for CertSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertSource")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertSource {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn read_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, EdlError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect())
        .map_err(|e| EdlError::Tls(format!("certificate {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(EdlError::Tls(format!(
            "certificate {}: no certificate in the file",
            cert.display()
        )));
    }
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| EdlError::Tls(format!("key {}: {e}", key.display())))?;
    CertifiedKey::from_der(certs, der, provider).map_err(|e| {
        EdlError::Tls(format!(
            "certificate {} and key {}: {e}",
            cert.display(),
            key.display()
        ))
    })
}

impl CertSource {
    /// Reads the pair (paths as configured, `$CREDENTIALS_DIRECTORY/` expanded).
    pub fn open(cert: &Path, key: &Path) -> Result<Arc<Self>, EdlError> {
        Self::open_in(cert, key, std::env::var_os("CREDENTIALS_DIRECTORY"))
    }

    /// [`CertSource::open`] with the credentials directory given.
    pub fn open_in(
        cert: &Path,
        key: &Path,
        credentials: Option<std::ffi::OsString>,
    ) -> Result<Arc<Self>, EdlError> {
        let cert = expand_credentials(cert, "blocklist.edl.tls_cert", credentials.clone())?;
        let key = expand_credentials(key, "blocklist.edl.tls_key", credentials)?;
        // The provider is named, not taken from the process default, which is ambiguous when
        // more than one rustls provider is compiled in.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let pair = read_pair(&cert, &key, &provider)?;
        Ok(Arc::new(Self {
            cert,
            key,
            provider,
            current: ArcSwap::from_pointee(pair),
        }))
    }

    /// Re-reads both files; on error the pair in force stays.
    pub fn reload(&self) -> Result<(), EdlError> {
        let pair = read_pair(&self.cert, &self.key, &self.provider)?;
        self.current.store(Arc::new(pair));
        Ok(())
    }

    /// A TLS acceptor that asks this source for the pair at every handshake.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, EdlError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| EdlError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// Re-reads the certificate and key on SIGHUP and when either file changes.
pub struct TlsReload {
    pub source: Arc<CertSource>,
    pub files: Vec<PathBuf>,
    pub counters: ReloadCounters,
}

impl TlsReload {
    pub fn new(source: Arc<CertSource>) -> Self {
        Self {
            files: vec![source.cert.clone(), source.key.clone()],
            source,
            counters: ReloadCounters::default(),
        }
    }
}

impl std::fmt::Debug for TlsReload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReload")
            .field("files", &self.files)
            .finish()
    }
}

impl Reload for TlsReload {
    fn name(&self) -> &str {
        "edl_tls"
    }
    fn files(&self) -> &[PathBuf] {
        &self.files
    }
    fn poll_interval(&self) -> Option<Duration> {
        Some(Duration::from_secs(30))
    }
    fn reload(&self) -> Result<usize, ReloadError> {
        let started = std::time::Instant::now();
        let result = self
            .source
            .reload()
            .map(|()| 1)
            .map_err(|e| ReloadError::Other(Box::new(e)));
        self.counters.record("edl_tls", started, &result);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_directory_paths_expand_or_name_the_key() {
        let p = Path::new("$CREDENTIALS_DIRECTORY/edl.crt");
        assert_eq!(
            expand_credentials(
                p,
                "blocklist.edl.tls_cert",
                Some("/run/credentials/x".into())
            )
            .unwrap(),
            Path::new("/run/credentials/x/edl.crt")
        );
        let e = expand_credentials(p, "blocklist.edl.tls_cert", None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("blocklist.edl.tls_cert") && e.contains("LoadCredential"),
            "{e}"
        );
        let plain = Path::new("/etc/dns-sensor/edl.crt");
        assert_eq!(
            expand_credentials(plain, "k", None).unwrap(),
            plain.to_path_buf()
        );
    }
}
