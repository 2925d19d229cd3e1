//! A directory as the export target (served by any static web server): each
//! object is written to a temporary file beside it, then renamed over it, so a
//! reader sees the old body or the new one, never a part.

use std::io::{ErrorKind, Write};
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
        let path = self.root.join(name);
        tokio::task::spawn_blocking(move || write_atomically(&path, &body))
            .await
            .map_err(std::io::Error::other)?
    }
}

fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(body)?;
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
}
