//! The daemon's pidfile, through which `leadsync ctl` finds it — made so that a signal only
//! ever reaches the daemon that wrote it:
//!
//! - the daemon opens the file without following a symbolic link, mode 0600, and holds an
//!   exclusive `flock` on it for as long as it runs; a second daemon finds it held and leaves
//!   it alone (it runs without one), and only its owner removes it;
//! - the file records the pid and the process's start time; `ctl` signals only while the
//!   lock is held (a daemon that died released it) by a process with that start time (a pid
//!   reused by another process has another), and never a pid ≤ 1 (`0` and `-1` address
//!   process groups and every process of the user);
//! - by default it lives in a private directory (`$XDG_RUNTIME_DIR/leadsync`, else
//!   `<tmp>/leadsync-<uid>`, mode 0700, owned by the user), not in a shared `/tmp`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::config::Settings;

/// The pidfile could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("pidfile {path}: {reason}; not used")]
    Unsafe { path: String, reason: String },
    #[error("pidfile {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// What taking the pidfile gave.
#[derive(Debug)]
pub enum Taken {
    /// This process holds it until the value drops.
    Mine(PidFile),
    /// Another running leadsync holds it (its pid, when readable).
    Held { pid: Option<i32> },
}

/// Where the daemon writes its pid: `control.pidfile`, else `<slot>.pid` in the private
/// directory of [`default_dir`].
pub fn pidfile(settings: &Settings) -> PathBuf {
    settings
        .control
        .pidfile
        .clone()
        .map(PathBuf::from)
        .unwrap_or_else(|| default_dir().join(format!("{}.pid", settings.slot.name)))
}

/// `$XDG_RUNTIME_DIR/leadsync`, else `<tmp>/leadsync-<uid>`.
fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("leadsync"),
        // SAFETY: geteuid cannot fail.
        None => std::env::temp_dir().join(format!("leadsync-{}", unsafe { libc::geteuid() })),
    }
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> PidFileError + '_ {
    move |source| PidFileError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn unsafe_file(path: &Path, reason: impl Into<String>) -> PidFileError {
    PidFileError::Unsafe {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Makes `dir` (mode 0700) if missing, and checks that it is a real directory of this user
/// that no one else can write or read.
fn private_dir(dir: &Path) -> Result<(), PidFileError> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_error(dir)(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io_error(dir))?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() {
        return Err(unsafe_file(dir, "is not a directory (a symbolic link?)"));
    }
    if meta.uid() != me || meta.mode() & 0o077 != 0 {
        return Err(unsafe_file(
            dir,
            format!(
                "belongs to uid {} with mode {:o}; it must be this user's (uid {me}) and \
                 private (0700)",
                meta.uid(),
                meta.mode() & 0o777
            ),
        ));
    }
    Ok(())
}

/// `flock(2)` without waiting; `Ok(false)` when another open file holds a conflicting lock.
fn try_lock(file: &File, operation: i32) -> std::io::Result<bool> {
    // SAFETY: flock on a descriptor this `File` owns.
    if unsafe { libc::flock(file.as_raw_fd(), operation | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Opens `path` without following a symbolic link.
fn open_no_follow(path: &Path, write: bool) -> Result<File, PidFileError> {
    let mut options = OpenOptions::new();
    options
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    if write {
        options.write(true).create(true).mode(0o600);
    }
    options.open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            unsafe_file(path, "is a symbolic link")
        } else {
            io_error(path)(e)
        }
    })
}

/// A pidfile's record: the pid and, when written by this version, its start time.
fn read_record(file: &mut File) -> (Option<i32>, Option<u64>) {
    let mut text = String::new();
    if file.read_to_string(&mut text).is_err() {
        return (None, None);
    }
    let mut lines = text.lines();
    let pid = lines.next().and_then(|l| l.trim().parse().ok());
    let start = lines.next().and_then(|l| l.trim().parse().ok());
    (pid, start)
}

/// When process `pid` started, in clock ticks after boot (`/proc/<pid>/stat`, field 22).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` may be signalled at all: `0`, `-1` and other negative values address
/// process groups or every process of the user, and `1` is init.
pub fn signallable(pid: i32) -> bool {
    pid > 1
}

/// The daemon's pidfile, held.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    file: File,
}

impl PidFile {
    /// Takes the pidfile at `path` for this process, or finds it held by a running daemon.
    /// The default location's directory is made private first.
    pub fn take(path: &Path) -> Result<Taken, PidFileError> {
        if let Some(dir) = path.parent()
            && dir == default_dir()
        {
            private_dir(dir)?;
        }
        let mut file = open_no_follow(path, true)?;
        let meta = file.metadata().map_err(io_error(path))?;
        // SAFETY: geteuid cannot fail.
        if !meta.is_file() || meta.uid() != unsafe { libc::geteuid() } {
            return Err(unsafe_file(path, "is not a regular file of this user"));
        }
        if !try_lock(&file, libc::LOCK_EX).map_err(io_error(path))? {
            let (pid, _) = read_record(&mut file);
            return Ok(Taken::Held { pid });
        }
        let pid = std::process::id() as i32;
        let start = start_time(pid).map_or(String::new(), |t| t.to_string());
        file.set_len(0).map_err(io_error(path))?;
        file.write_all(format!("{pid}\n{start}\n").as_bytes())
            .map_err(io_error(path))?;
        file.sync_all().map_err(io_error(path))?;
        Ok(Taken::Mine(PidFile {
            path: path.to_owned(),
            file,
        }))
    }
}

impl Drop for PidFile {
    /// Removes the file — only if the path still names the file this process holds.
    fn drop(&mut self) {
        let same = match (std::fs::symlink_metadata(&self.path), self.file.metadata()) {
            (Ok(on_disk), Ok(held)) => on_disk.ino() == held.ino() && on_disk.dev() == held.dev(),
            _ => false,
        };
        if same {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The pid of the running daemon that holds the pidfile at `path`, or why there is none.
fn holder(path: &Path) -> Result<i32, String> {
    let mut file = open_no_follow(path, false).map_err(|e| e.to_string())?;
    let (pid, start) = read_record(&mut file);
    let pid = pid.ok_or_else(|| format!("pidfile {} holds no pid", path.display()))?;
    if !signallable(pid) {
        return Err(format!(
            "pidfile {} holds pid {pid}, which is never signalled",
            path.display()
        ));
    }
    if try_lock(&file, libc::LOCK_SH).map_err(|e| e.to_string())? {
        return Err(format!(
            "pidfile {} is stale: no running leadsync holds it (pid {pid} is not signalled)",
            path.display()
        ));
    }
    if let Some(recorded) = start
        && start_time(pid) != Some(recorded)
    {
        return Err(format!(
            "pidfile {}: pid {pid} is not the process that wrote it; no signal sent",
            path.display()
        ));
    }
    Ok(pid)
}

/// The pid of the running daemon that holds the pidfile at `path`, if any.
pub fn running_pid(path: &Path) -> Option<i32> {
    holder(path).ok()
}

/// Sends `signal` to the daemon that holds the pidfile at `path`.
pub fn signal_daemon(path: &Path, signal: i32) -> Result<i32, String> {
    let pid = holder(path).map_err(|why| {
        format!(
            "no running leadsync found through the pidfile {}: {why} (set control.pidfile if \
             the daemon uses another one)",
            path.display()
        )
    })?;
    // SAFETY: kill(2) of a pid > 1 that holds the daemon's pidfile, with a valid signal.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(format!(
            "cannot signal pid {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pids_above_one_are_ever_signalled() {
        for pid in [i32::MIN, -2, -1, 0, 1] {
            assert!(!signallable(pid), "{pid}");
        }
        for pid in [2, 4242, i32::MAX] {
            assert!(signallable(pid), "{pid}");
        }
    }

    #[test]
    fn a_pidfile_holding_a_group_or_every_process_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for text in ["-1\n", "0\n", "1\n", "-4242\n"] {
            let path = dir.path().join("group.pid");
            std::fs::write(&path, text).unwrap();
            // Held by this test, so only the pid check can refuse it.
            let held = File::open(&path).unwrap();
            assert!(try_lock(&held, libc::LOCK_EX).unwrap());
            let refused = signal_daemon(&path, 0).unwrap_err();
            assert!(refused.contains("never signalled"), "{text:?}: {refused}");
        }
    }

    #[test]
    fn a_stale_pidfile_naming_another_process_is_not_signalled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stale.pid");
        // The test's own parent: alive, but it holds no lock on the file.
        let other = std::os::unix::process::parent_id();
        std::fs::write(&path, format!("{other}\n")).unwrap();
        let refused = signal_daemon(&path, libc::SIGUSR1).unwrap_err();
        assert!(refused.contains("stale"), "{refused}");
        assert_eq!(running_pid(&path), None);
    }

    #[test]
    fn a_reused_pid_with_another_start_time_is_not_signalled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reused.pid");
        let other = std::os::unix::process::parent_id();
        std::fs::write(&path, format!("{other}\n1\n")).unwrap();
        let held = File::open(&path).unwrap();
        assert!(try_lock(&held, libc::LOCK_EX).unwrap());
        let refused = signal_daemon(&path, libc::SIGUSR1).unwrap_err();
        assert!(
            refused.contains("not the process that wrote it"),
            "{refused}"
        );
    }

    #[test]
    fn the_pidfile_is_taken_once_and_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.pid");
        let Taken::Mine(mine) = PidFile::take(&path).unwrap() else {
            panic!("not taken")
        };
        let me = std::process::id() as i32;
        assert_eq!(running_pid(&path), Some(me));
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A second daemon finds it held and leaves it alone.
        match PidFile::take(&path).unwrap() {
            Taken::Held { pid } => assert_eq!(pid, Some(me)),
            Taken::Mine(_) => panic!("taken twice"),
        }
        assert!(path.exists());
        drop(mine);
        assert!(!path.exists(), "the owner removes it");
    }

    #[test]
    fn a_symlinked_pidfile_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, "keep me").unwrap();
        let link = dir.path().join("d.pid");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let refused = PidFile::take(&link).unwrap_err();
        assert!(refused.to_string().contains("symbolic link"), "{refused}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
        assert!(
            signal_daemon(&link, 0)
                .unwrap_err()
                .contains("symbolic link")
        );
    }

    #[test]
    fn the_default_directory_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("mine");
        private_dir(&private).unwrap();
        assert_eq!(std::fs::metadata(&private).unwrap().mode() & 0o777, 0o700);
        let open = dir.path().join("open");
        std::fs::DirBuilder::new()
            .mode(0o777)
            .create(&open)
            .unwrap();
        std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        assert!(private_dir(&open).is_err());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&private, &link).unwrap();
        assert!(private_dir(&link).is_err());
    }
}
