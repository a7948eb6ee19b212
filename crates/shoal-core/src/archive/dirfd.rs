//! Open directories, for writing inside a tree without ever following a symlink: a path is
//! walked one name at a time from an open directory, each step opened with `O_NOFOLLOW |
//! O_DIRECTORY` (a link or a file there fails the step), and files and links are created
//! with `O_CREAT | O_EXCL` and `symlinkat`, which never follow a link at the last name
//! either. The unpacker uses it so that a link an archive created earlier cannot carry a
//! later entry anywhere else. Works on any Linux kernel: no `openat2` needed, since a
//! single name can neither climb with `..` nor pass through a link.
//!
//! std has no `*at` calls, hence libc and the `unsafe` blocks here; each only hands the
//! kernel a descriptor this type owns and NUL-terminated strings that outlive the call.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// One open directory.
pub(super) struct DirFd(File);

/// What a name in a directory is, the name itself (a link is not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Folder,
    File,
    Symlink,
    Other,
}

impl DirFd {
    /// Open the directory at `path`, which the caller trusts (its own staging directory).
    pub(super) fn open(path: &Path) -> io::Result<DirFd> {
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(path)?;
        Ok(DirFd(dir))
    }

    /// The same directory, on a descriptor of its own.
    pub(super) fn try_clone(&self) -> io::Result<DirFd> {
        Ok(DirFd(self.0.try_clone()?))
    }

    /// The folder `name` in this one, made (0755, whatever the umask) if missing. Fails if
    /// `name` is a symlink or not a folder, without following it.
    pub(super) fn folder(&self, name: &OsStr) -> io::Result<DirFd> {
        let name = c_name(name)?;
        // SAFETY: a descriptor we own and a NUL-terminated name, both live for the call.
        let made = unsafe { libc::mkdirat(self.0.as_raw_fd(), name.as_ptr(), 0o755) } == 0;
        if !made {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::AlreadyExists {
                return Err(error);
            }
        }
        let folder = DirFd(File::from(self.open_at(
            &name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0,
        )?));
        if made {
            // Instances will read their code under another uid: 0755 even under umask 077.
            folder
                .0
                .set_permissions(std::fs::Permissions::from_mode(0o755))?;
        }
        Ok(folder)
    }

    /// A new file `name`, writable by its owner only until the caller sets its mode. Fails
    /// if anything (a symlink too, dangling or not) is already there.
    pub(super) fn create_file(&self, name: &OsStr) -> io::Result<File> {
        let name = c_name(name)?;
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
        Ok(File::from(self.open_at(
            &name,
            flags | libc::O_CLOEXEC,
            0o600,
        )?))
    }

    /// A new symlink `name` to `target`. Fails if anything is already there.
    pub(super) fn symlink(&self, target: &Path, name: &OsStr) -> io::Result<()> {
        let name = c_name(name)?;
        let target = c_name(target.as_os_str())?;
        // SAFETY: a descriptor we own and two NUL-terminated strings, all live for the call.
        let done =
            unsafe { libc::symlinkat(target.as_ptr(), self.0.as_raw_fd(), name.as_ptr()) } == 0;
        if done {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// What `name` is, without following it.
    pub(super) fn kind(&self, name: &OsStr) -> io::Result<Kind> {
        let name = c_name(name)?;
        let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let kind = File::from(self.open_at(&name, flags, 0)?)
            .metadata()?
            .file_type();
        Ok(if kind.is_symlink() {
            Kind::Symlink
        } else if kind.is_dir() {
            Kind::Folder
        } else if kind.is_file() {
            Kind::File
        } else {
            Kind::Other
        })
    }

    fn open_at(
        &self,
        name: &CString,
        flags: libc::c_int,
        mode: libc::mode_t,
    ) -> io::Result<OwnedFd> {
        // SAFETY: a descriptor we own and a NUL-terminated name, both live for the call.
        let fd = unsafe {
            libc::openat(
                self.0.as_raw_fd(),
                name.as_ptr(),
                flags,
                libc::c_uint::from(mode),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `openat` just returned this descriptor; nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// `name` for the kernel. Tar names cannot hold NUL, so this fails only on a broken entry.
fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}
