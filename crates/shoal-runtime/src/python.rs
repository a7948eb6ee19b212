//! The Python interpreter that runs Python functions: found once at start (`python3` from
//! `PATH` unless configured), asked where it really lives, and checked to be 3.11 or
//! later (the bootstrap gives each call's task its own context, new in 3.11).
//!
//! A version manager's shim (pyenv) or a virtualenv's link resolves to the real binary, and
//! an installation outside `/usr` is shown read-only inside the sandbox at its own path,
//! standard library included.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Arguments before the bootstrap's path: write no bytecode (the code is read-only).
pub(crate) const ARGS: &[&str] = &["-B"];
/// The oldest Python the bootstrap runs on.
const MIN_VERSION: (u32, u32) = (3, 11);
/// How long the interpreter may take to describe itself.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// A Python installation as it described itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Install {
    /// The real interpreter binary (links resolved).
    pub executable: PathBuf,
    /// `sys.base_prefix`: the installation, standard library included.
    pub prefix: PathBuf,
    pub version: (u32, u32),
}

impl std::fmt::Display for Install {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (major, minor) = self.version;
        write!(f, "Python {major}.{minor} ({})", self.executable.display())
    }
}

impl Install {
    /// Ask `python` (a name looked up in `PATH`, or a path) who it is.
    #[allow(clippy::disallowed_methods)] // this crate is the one place that spawns processes
    pub(crate) fn probe(python: &Path) -> Result<Install, String> {
        let script = "import sys; print(sys.executable); print(sys.base_prefix); \
                      print('%d.%d' % sys.version_info[:2])";
        let mut child = std::process::Command::new(python)
            .args(["-I", "-c", script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("{} could not be started: {e}", python.display()))?;
        let started = std::time::Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() < PROBE_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "{} did not answer within {PROBE_TIMEOUT:?}",
                        python.display()
                    ));
                }
                Err(e) => return Err(format!("waiting for {}: {e}", python.display())),
            }
        };
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            use std::io::Read;
            let _ = stdout.read_to_string(&mut out);
        }
        if !status.success() {
            return Err(format!("{} failed ({status})", python.display()));
        }
        Install::parse(&out)
            .ok_or_else(|| {
                format!(
                    "{} did not describe itself as expected: {out:?}",
                    python.display()
                )
            })?
            .checked()
    }

    fn parse(out: &str) -> Option<Install> {
        let mut lines = out.lines();
        let executable = PathBuf::from(lines.next()?.trim());
        let prefix = PathBuf::from(lines.next()?.trim());
        let (major, minor) = lines.next()?.trim().split_once('.')?;
        let executable = std::fs::canonicalize(&executable).unwrap_or(executable);
        Some(Install {
            executable,
            prefix,
            version: (major.parse().ok()?, minor.parse().ok()?),
        })
    }

    fn checked(self) -> Result<Install, String> {
        if self.version < MIN_VERSION {
            let (major, minor) = self.version;
            return Err(format!(
                "{} is Python {major}.{minor}; Shoal's bootstrap needs {}.{} or later \
                 (shoal serve --python PATH)",
                self.executable.display(),
                MIN_VERSION.0,
                MIN_VERSION.1
            ));
        }
        if !self.executable.is_absolute() {
            return Err(format!(
                "the interpreter reported no usable path ({:?})",
                self.executable
            ));
        }
        Ok(self)
    }

    /// The directory to show inside the sandbox when the installation is not under
    /// `/usr` (which every instance sees anyway).
    pub(crate) fn home(&self) -> Option<&Path> {
        if self.executable.starts_with("/usr") {
            return None;
        }
        self.executable
            .starts_with(&self.prefix)
            .then_some(self.prefix.as_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_installation_outside_usr_is_shown_whole() {
        let install = Install {
            executable: "/opt/py/3.12/bin/python3.12".into(),
            prefix: "/opt/py/3.12".into(),
            version: (3, 12),
        };
        assert_eq!(install.home(), Some(Path::new("/opt/py/3.12")));
        let system = Install {
            executable: "/usr/bin/python3.11".into(),
            prefix: "/usr".into(),
            version: (3, 11),
        };
        assert_eq!(system.home(), None);
    }

    #[test]
    fn an_old_python_is_refused_with_the_way_out() {
        let old = Install {
            executable: "/usr/bin/python3.9".into(),
            prefix: "/usr".into(),
            version: (3, 9),
        };
        let why = old.checked().unwrap_err();
        assert!(why.contains("3.11 or later"), "{why}");
    }

    #[test]
    fn the_interpreter_on_path_describes_itself() {
        // The test machine has a python3 (the bootstrap's own tests need one).
        let install = Install::probe(Path::new("python3")).expect("python3 on PATH");
        assert!(install.executable.is_absolute());
        assert!(install.version >= MIN_VERSION, "{install}");
    }
}
