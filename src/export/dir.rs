//! A directory as the export target (served by any static web server): each
//! object is written to a temporary file beside it, then renamed over it, so a
//! reader sees the old body or the new one, never a part.
//!
//! The documents are public: files are made 0644 and the directories created
//! here 0755 whatever the umask (the Debian unit's is 0077), so the web server's
//! user can read them.

use std::fs::Permissions;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub(crate) struct DirTarget {
    root: PathBuf,
}

impl DirTarget {
    pub(crate) fn new(root: PathBuf) -> Self {
        DirTarget { root }
    }

    pub(crate) fn describe(&self) -> String {
        self.root.display().to_string()
    }

    /// The object's body, None when there is none yet.
    pub(crate) async fn get(&self, name: &str) -> std::io::Result<Option<Vec<u8>>> {
        match tokio::fs::read(self.root.join(name)).await {
            Ok(body) => Ok(Some(body)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn put(&self, name: &str, body: Vec<u8>) -> std::io::Result<()> {
        let (root, path) = (self.root.clone(), self.root.join(name));
        tokio::task::spawn_blocking(move || {
            make_dirs(&root, path.parent().unwrap_or(&root))?;
            write_atomically(&path, &body)
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

/// `dir` and its missing parents, the root included, each new one 0755; what is
/// already there keeps the modes the admin gave it.
fn make_dirs(root: &Path, dir: &Path) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.exists() {
        missing.push(at);
        match at.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => at = parent,
            _ => break,
        }
    }
    // Outermost first: each one's parent exists when it is made.
    for new in missing.into_iter().rev() {
        match std::fs::create_dir(new) {
            Ok(()) => std::fs::set_permissions(new, Permissions::from_mode(0o755))?,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    debug_assert!(dir.starts_with(root));
    Ok(())
}

fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(body)?;
        file.set_permissions(Permissions::from_mode(0o644))?;
        // On disk before the rename makes it visible: a crash leaves the old body.
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_replace_whole_files_and_leave_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let target = DirTarget::new(dir.path().to_owned());
        assert_eq!(target.get(".well-known/openid-configuration").await.unwrap(), None);
        target
            .put(".well-known/openid-configuration", b"one".to_vec())
            .await
            .unwrap();
        target
            .put(".well-known/openid-configuration", b"two".to_vec())
            .await
            .unwrap();
        assert_eq!(
            target.get(".well-known/openid-configuration").await.unwrap(),
            Some(b"two".to_vec())
        );
        let names: Vec<_> = std::fs::read_dir(dir.path().join(".well-known"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["openid-configuration"]);
    }

    #[tokio::test]
    async fn files_and_new_directories_are_world_readable_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let admins = dir.path().join("admins");
        std::fs::create_dir(&admins).unwrap();
        std::fs::set_permissions(&admins, Permissions::from_mode(0o750)).unwrap();
        // The root itself does not exist yet (--to /var/lib/gitlab-oidc-proxy/oidc).
        let root = admins.join("oidc");
        // A umask like the Debian unit's: new files 0600, new directories 0700.
        // The process's umask is shared by the test threads: only this test in
        // this module writes files, and it restores it.
        let before = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        let target = DirTarget::new(root.clone());
        let written = target.put("oauth/discovery/keys", b"{}".to_vec()).await;
        nix::sys::stat::umask(before);
        written.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root.join("oauth/discovery/keys")), 0o644);
        assert_eq!(mode(&root.join("oauth/discovery")), 0o755);
        assert_eq!(mode(&root.join("oauth")), 0o755);
        assert_eq!(mode(&root), 0o755);
        assert_eq!(mode(&admins), 0o750, "the admin's own directory is left alone");
    }
}
