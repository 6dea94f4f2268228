//! Paths inside a container's rootfs, resolved the way the container will
//! see them: symlinks are followed relative to the rootfs, and nothing
//! (`..`, absolute links) can leave it. runc does this with
//! filepath-securejoin; no maintained Rust crate does it for us.

use std::path::{Component, Path, PathBuf};

/// Most symlinks followed while resolving one path (as Linux's ELOOP).
const MAX_LINKS: usize = 40;

/// Joins `path` (as seen inside the container) onto `root`, following
/// symlinks that exist under `root` without ever leaving it. Missing
/// components are kept as they are (they will be created).
pub fn secure_join(root: &Path, path: &str) -> Result<PathBuf, String> {
    let mut pending: Vec<String> = components(path);
    pending.reverse();
    let mut resolved: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "." | "" => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let candidate = root.join(resolved.iter().collect::<PathBuf>()).join(&part);
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(format!("{path}: too many levels of symbolic links"));
                }
                let target = std::fs::read_link(&candidate).map_err(|e| format!("{path}: {e}"))?;
                let target = target.to_string_lossy();
                if target.starts_with('/') {
                    resolved.clear();
                }
                for next in components(&target).into_iter().rev() {
                    pending.push(next);
                }
            }
            _ => resolved.push(part),
        }
    }
    Ok(root.join(resolved.iter().collect::<PathBuf>()))
}

fn components(path: &str) -> Vec<String> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// Finds the executable `program` of a container like execvp would inside
/// it: as given with a '/', else in the `PATH` of `env`.
pub fn find_executable(root: &Path, program: &str, env: &[String], cwd: &str) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    // Why `inside` is not an executable file, if it is not.
    let check = |inside: &str| -> Result<(), String> {
        let path = secure_join(root, inside).map_err(|e| e.to_string())?;
        let meta = std::fs::metadata(&path).map_err(|e| e.to_string())?;
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            Ok(())
        } else {
            Err("not an executable file".into())
        }
    };
    let executable = |inside: &str| check(inside).is_ok();
    if program.contains('/') {
        let inside = if program.starts_with('/') { program.to_string() } else { format!("{cwd}/{program}") };
        return match check(&inside) {
            Ok(()) => Ok(program.to_string()),
            Err(why) => Err(format!("executable file {program:?} not found in the container ({why})")),
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| format!("{}/{program}", dir.trim_end_matches('/')))
        .find(|candidate| executable(candidate))
        .ok_or_else(|| format!("executable file {program:?} not found in $PATH ({path}) of the container"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let root = tempfile::tempdir().expect("tmp");
        let r = root.path();
        std::fs::create_dir_all(r.join("usr/bin")).expect("mkdir");
        std::os::unix::fs::symlink("/usr/bin", r.join("bin")).expect("link");
        std::os::unix::fs::symlink("../../..", r.join("usr/bin/up")).expect("link");
        std::os::unix::fs::symlink("/etc/passwd", r.join("escape")).expect("link");
        assert_eq!(secure_join(r, "/bin/sh").expect("join"), r.join("usr/bin/sh"));
        assert_eq!(secure_join(r, "/bin/up/x").expect("join"), r.join("x"));
        assert_eq!(secure_join(r, "/../../etc").expect("join"), r.join("etc"));
        assert_eq!(secure_join(r, "/escape").expect("join"), r.join("etc/passwd"));
        std::os::unix::fs::symlink("loop", r.join("loop")).expect("link");
        assert!(secure_join(r, "/loop").unwrap_err().contains("too many"));
    }

    #[test]
    fn executables_are_found_in_the_container_path() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().expect("tmp");
        let r = root.path();
        std::fs::create_dir_all(r.join("bin")).expect("mkdir");
        std::fs::write(r.join("bin/busybox"), b"x").expect("write");
        std::fs::set_permissions(r.join("bin/busybox"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::os::unix::fs::symlink("busybox", r.join("bin/sh")).expect("link");
        let env = vec!["PATH=/usr/bin:/bin".to_string()];
        assert_eq!(find_executable(r, "sh", &env, "/").expect("found"), "/bin/sh");
        assert!(find_executable(r, "nope", &env, "/").unwrap_err().contains("not found in $PATH"));
        assert!(find_executable(r, "/bin/nope", &env, "/").unwrap_err().contains("\"/bin/nope\""));
    }
}
