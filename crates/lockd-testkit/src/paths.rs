//! The workspace and target folders, installed programs, and scratch folders.

use std::path::{Path, PathBuf};

use crate::ids::unique;

/// The workspace this crate is built in.
pub fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap_or_else(|| panic!("crates/lockd-testkit sits two levels below the workspace"));
    root.to_path_buf()
}

/// `$CARGO_TARGET_DIR` (relative to the workspace when relative), else
/// `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// `name` from `PATH`, else from /usr/sbin or /usr/bin where Debian puts
/// servers (a `PATH` without the sbin folders is common for non-root users).
pub fn program(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    let fallbacks = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin"];
    on_path
        .into_iter()
        .chain(fallbacks.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// A fresh folder under the system temp folder, removed with its contents on
/// drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// `<tmp>/lockd-testkit-<tag>-<pid>-<n>`; `tag` says whose folder it is
    /// when one is left behind by a killed test.
    pub fn new(tag: &str) -> std::io::Result<TempDir> {
        let path = std::env::temp_dir().join(unique(&format!("lockd-testkit-{tag}")));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // For reading the servers' logs after a failed run.
        if std::env::var_os("LOCKD_TESTKIT_KEEP").is_some() {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
