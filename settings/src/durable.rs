//! Replacing a file so that a crash or power cut at any moment leaves either
//! the old or the new content: temporary file, fsync, rename, fsync of the
//! directory. Both daemons keep their state this way.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Replaces `dir/name` with `bytes`, mode 0600. The temporary file is made
/// fresh (`create_new`, after removing a leftover of a crashed writer), so
/// nothing is ever written through a file or link that was already there.
pub fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let target = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let written = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, &target)?;
        File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_content_privately_and_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("chatixia-durable-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        // A leftover temporary file of a crashed writer does not block us.
        fs::write(dir.join(format!(".f.{}.tmp", std::process::id())), "junk").unwrap();
        replace_file(&dir, "f", b"one").unwrap();
        replace_file(&dir, "f", b"two").unwrap();
        assert_eq!(fs::read(dir.join("f")).unwrap(), b"two");
        assert_eq!(fs::metadata(dir.join("f")).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        assert!(replace_file(&dir.join("missing"), "f", b"x").is_err());
        fs::remove_dir_all(dir).unwrap();
    }
}
