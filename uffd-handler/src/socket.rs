//! The listening socket at the path Firecracker connects to.
//!
//! The handler never deletes a file it did not make: if anything exists at the path (a
//! regular file, a directory, a socket left by another program or an earlier run), it
//! refuses to start and says so. The socket it binds is removed once Firecracker has
//! connected (or when the handler stops before), and only if the path still names that very
//! socket (same device and inode).

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// A socket this handler bound, removed (if still ours) when dropped.
pub struct Listener {
    listener: UnixListener,
    path: PathBuf,
    identity: Option<(u64, u64)>,
}

/// What exists at `path`, for the message refusing it.
fn describe(meta: &fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_socket() {
        "a socket"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "a file"
    }
}

impl Listener {
    /// Binds a new socket at `path`; refuses if anything exists there.
    pub fn bind(path: &Path) -> Result<Listener, String> {
        match fs::symlink_metadata(path) {
            Ok(meta) => {
                return Err(format!(
                    "{} already exists ({}); uffd-handler removes only the socket it makes: \
                     remove it, or choose another path",
                    path.display(),
                    describe(&meta)
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("checking {}: {e}", path.display())),
        }
        // Bound and listening under a temporary name, then renamed into place: whoever waits
        // for the path to appear (Firecracker's own test scripts do) can connect at once,
        // never between bind and listen (ECONNREFUSED). RENAME_NOREPLACE: a file that
        // appeared at the path meanwhile is not replaced.
        let name = path
            .file_name()
            .ok_or_else(|| format!("{} names no file", path.display()))?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".{}.binding", std::process::id()));
        let temp = path.with_file_name(temp_name);
        let _ = fs::remove_file(&temp); // our own pid's leftover, if any
        let listener = UnixListener::bind(&temp)
            .map_err(|e| format!("binding a Unix socket at {}: {e}", temp.display()))?;
        if let Err(e) = rename_no_replace(&temp, path) {
            let _ = fs::remove_file(&temp);
            return Err(if e.kind() == io::ErrorKind::AlreadyExists {
                format!(
                    "{} appeared while the handler was starting; uffd-handler removes only the \
                     socket it makes",
                    path.display()
                )
            } else {
                format!("putting the socket at {}: {e}", path.display())
            });
        }
        let identity = fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()));
        Ok(Listener {
            listener,
            path: path.to_owned(),
            identity,
        })
    }

    /// The listening descriptor (to wait on).
    pub fn as_listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Accepts the connection waiting, then removes the socket file (no one else is to
    /// connect).
    pub fn accept(mut self) -> io::Result<UnixStream> {
        let (stream, _) = self.listener.accept()?;
        self.remove();
        Ok(stream)
    }

    /// Removes the socket file if the path still names the socket bound here.
    fn remove(&mut self) {
        let Some(identity) = self.identity.take() else {
            return;
        };
        if let Ok(meta) = fs::symlink_metadata(&self.path) {
            if meta.file_type().is_socket() && (meta.dev(), meta.ino()) == identity {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

/// `renameat2(from, to, RENAME_NOREPLACE)`.
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: both are NUL-terminated paths, read only.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.remove();
    }
}
