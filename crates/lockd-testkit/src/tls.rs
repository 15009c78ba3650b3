//! Throwaway TLS certificates for a redis-server on loopback.

use std::path::{Path, PathBuf};

use crate::paths::TempDir;

/// A self-signed certificate for `127.0.0.1` and `localhost`, which is its
/// own certificate authority, with its key, as PEM files in a folder
/// removed on drop.
#[derive(Debug)]
pub struct SelfSigned {
    dir: TempDir,
}

impl SelfSigned {
    pub fn new() -> SelfSigned {
        let dir = TempDir::new("tls")
            .unwrap_or_else(|e| panic!("creating a folder for certificates: {e}"));
        let certified = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])
        .unwrap_or_else(|e| panic!("generating a certificate: {e}"));
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text)
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        };
        write("cert.pem", certified.cert.pem());
        write("key.pem", certified.key_pair.serialize_pem());
        SelfSigned { dir }
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// redis-server flags that serve TLS on `tls_port` with this certificate
    /// (clients are not asked for one), beside its plain port.
    pub fn redis_args(&self, tls_port: u16) -> Vec<String> {
        let path = |p: &Path| p.display().to_string();
        vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            path(&self.cert()),
            "--tls-key-file".into(),
            path(&self.key()),
            "--tls-ca-cert-file".into(),
            path(&self.cert()),
            "--tls-auth-clients".into(),
            "no".into(),
        ]
    }
}

impl Default for SelfSigned {
    fn default() -> Self {
        SelfSigned::new()
    }
}
