//! The files a user names, read safely: a directory, a device (`/dev/zero` would be read until
//! memory runs out) or a socket is refused in one line, and a pipe (`--data <(zcat
//! test.jsonl.gz)`) is read up to a cap, where one was meant.
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::Path;

/// The most a pipe may give: far beyond any data or prompt file, far below a machine's memory.
const PIPE_CAP: u64 = 1 << 30;

/// Refuses a path that exists but is no regular file (a directory, a pipe, a device): reading
/// it would fail obscurely, and opening a pipe would block. `hint` follows the message.
/// A missing path passes: its reader names it.
pub fn refuse_non_regular(path: &Path, hint: &str) -> Result<()> {
    if path.exists() && !path.is_file() {
        bail!("{} is not a regular file{hint}", path.display());
    }
    Ok(())
}

/// Creates a folder ponder writes into, with its parents; one that is already there is kept.
/// A file in its place is named as such (create_dir_all's own error, "File exists", reads as if
/// the folder were the problem).
pub fn create_dir(dir: &Path) -> Result<()> {
    // The nearest part of the path that exists decides: a file there (the folder itself or
    // one above it) or a link to nothing would make create_dir_all say only "File exists".
    for a in dir.ancestors().filter(|a| !a.as_os_str().is_empty()) {
        let Ok(md) = std::fs::symlink_metadata(a) else {
            continue;
        };
        if md.file_type().is_symlink() && !a.exists() {
            bail!("{} is a symbolic link to nothing", a.display());
        }
        if !a.is_dir() {
            bail!("{} exists and is not a directory", a.display());
        }
        break;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

/// The bytes of a regular file or a pipe (up to 1 GiB); anything else is refused by name.
/// Opening a named pipe waits for its writer, as `cat` does.
pub fn read_file_or_pipe(path: &Path) -> Result<Vec<u8>> {
    use std::os::unix::fs::FileTypeExt;
    let what = || format!("cannot read {}", path.display());
    let kind = std::fs::metadata(path).with_context(what)?.file_type();
    if kind.is_file() {
        return std::fs::read(path).with_context(what);
    }
    if !kind.is_fifo() {
        bail!("{} is not a regular file or a pipe", path.display());
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(PIPE_CAP + 1).read_to_end(&mut bytes))
        .with_context(what)?;
    if bytes.len() as u64 > PIPE_CAP {
        bail!(
            "{} gave more than 1 GiB: not a data or prompt file",
            path.display()
        );
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_directories_are_refused_files_and_pipes_read() {
        let e = read_file_or_pipe(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "/dev/zero is not a regular file or a pipe");
        let e = read_file_or_pipe(Path::new("/")).unwrap_err().to_string();
        assert_eq!(e, "/ is not a regular file or a pipe");
        let e = read_file_or_pipe(Path::new("/no/such/file")).unwrap_err();
        assert!(
            format!("{e:#}").starts_with("cannot read /no/such/file: "),
            "{e:#}"
        );
        let dir = std::env::temp_dir().join(format!("ponder-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.txt");
        std::fs::write(&file, b"abc").unwrap();
        assert_eq!(read_file_or_pipe(&file).unwrap(), b"abc");
        // A pipe: what its writer wrote, up to its end.
        let fifo = dir.join("p");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.map(|s| s.success()).unwrap_or(false) {
            let f2 = fifo.clone();
            let w = std::thread::spawn(move || std::fs::write(f2, b"piped\n").unwrap());
            assert_eq!(read_file_or_pipe(&fifo).unwrap(), b"piped\n");
            w.join().unwrap();
            let e = refuse_non_regular(&fifo, " (hint)")
                .unwrap_err()
                .to_string();
            assert!(e.ends_with("is not a regular file (hint)"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
