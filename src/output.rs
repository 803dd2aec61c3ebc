//! Output paths checked before any work: an output never replaces an input, never lands inside an
//! input folder, and never replaces an existing file unless the caller forces it.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Whether an existing output file may be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overwrite {
    /// Refuse to replace an existing file (the default).
    #[default]
    Refuse,
    /// Replace it (`--force`).
    Force,
}

/// The absolute, symlink-resolved form of `p`; for a path that does not exist yet, its nearest
/// existing ancestor resolved and the rest appended.
fn resolved(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let mut tail = Vec::new();
    let mut cur = abs.as_path();
    loop {
        if let Ok(c) = cur.canonicalize() {
            let mut out = c;
            for part in tail.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (cur.file_name(), cur.parent()) {
            (Some(name), Some(parent)) => {
                tail.push(name.to_os_string());
                cur = parent;
            }
            _ => return abs,
        }
    }
}

/// Checks that `out` may be written: it is not one of `inputs`, not inside an input folder, not an
/// existing folder, and (unless `overwrite` is [`Overwrite::Force`]) does not exist yet. `option`
/// names the output in the message (e.g. `--out`). Call it before any expensive work.
pub fn check_output(
    out: &Path,
    option: &str,
    inputs: &[&Path],
    overwrite: Overwrite,
) -> Result<()> {
    let target = resolved(out);
    for input in inputs {
        let inp = resolved(input);
        if inp == target {
            return Err(Error::Output {
                path: out.to_path_buf(),
                reason: format!(
                    "{option} names an input of this command ({})",
                    input.display()
                ),
            });
        }
        if input.is_dir() && target.starts_with(&inp) {
            return Err(Error::Output {
                path: out.to_path_buf(),
                reason: format!(
                    "{option} lies inside the input folder {}; write it elsewhere",
                    input.display()
                ),
            });
        }
    }
    if out.is_dir() {
        return Err(Error::Output {
            path: out.to_path_buf(),
            reason: format!("{option} names an existing folder; expected a file path"),
        });
    }
    if out.exists() && overwrite == Overwrite::Refuse {
        return Err(Error::Output {
            path: out.to_path_buf(),
            reason: "the file exists; pass --force to replace it".into(),
        });
    }
    Ok(())
}

/// Checks that `dir` may receive a command's output files: not an input, not inside an input
/// folder, and (unless forced) none of `names` exists in it yet.
pub fn check_output_dir(
    dir: &Path,
    option: &str,
    names: &[&str],
    inputs: &[&Path],
    overwrite: Overwrite,
) -> Result<()> {
    let target = resolved(dir);
    for input in inputs {
        let inp = resolved(input);
        if inp == target || (input.is_dir() && target.starts_with(&inp)) {
            return Err(Error::Output {
                path: dir.to_path_buf(),
                reason: format!(
                    "{option} is or lies inside the input {}; write elsewhere",
                    input.display()
                ),
            });
        }
    }
    if dir.exists() && !dir.is_dir() {
        return Err(Error::Output {
            path: dir.to_path_buf(),
            reason: format!("{option} names an existing file; expected a folder"),
        });
    }
    for name in names {
        let f = dir.join(name);
        if f.exists() && overwrite == Overwrite::Refuse {
            return Err(Error::Output {
                path: f,
                reason: "the file exists; pass --force to replace it".into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dsg-output-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn refuses_an_input_an_input_folder_and_an_existing_file() {
        let d = scratch("refuse");
        let input = d.join("forget.txt");
        std::fs::write(&input, "x").unwrap();
        let folder = d.join("sae");
        std::fs::create_dir_all(&folder).unwrap();
        let e = check_output(&input, "--out", &[&input], Overwrite::Force).unwrap_err();
        assert!(e.to_string().contains("names an input"), "{e}");
        // The same file through another spelling of its path.
        let other = d.join("sae/../forget.txt");
        assert!(check_output(&other, "--out", &[&input], Overwrite::Force).is_err());
        let inside = folder.join("guard.json");
        let e = check_output(&inside, "--out", &[&folder], Overwrite::Force).unwrap_err();
        assert!(e.to_string().contains("inside the input folder"), "{e}");
        let e = check_output(&input, "--out", &[], Overwrite::Refuse).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        assert!(check_output(&input, "--out", &[], Overwrite::Force).is_ok());
        assert!(check_output(
            &d.join("new/guard.json"),
            "--out",
            &[&input],
            Overwrite::Refuse
        )
        .is_ok());
        let e = check_output(&folder, "--out", &[], Overwrite::Force).unwrap_err();
        assert!(e.to_string().contains("existing folder"), "{e}");
    }

    #[test]
    fn output_folders_keep_existing_files_unless_forced() {
        let d = scratch("dir");
        std::fs::write(d.join("report.json"), "{}").unwrap();
        let e =
            check_output_dir(&d, "--out", &["report.json"], &[], Overwrite::Refuse).unwrap_err();
        assert!(e.to_string().contains("report.json"), "{e}");
        assert!(check_output_dir(&d, "--out", &["report.json"], &[], Overwrite::Force).is_ok());
        assert!(check_output_dir(&d, "--out", &["other.json"], &[], Overwrite::Refuse).is_ok());
        let e = check_output_dir(&d.join("x"), "--out", &[], &[&d], Overwrite::Force).unwrap_err();
        assert!(e.to_string().contains("inside the input"), "{e}");
    }
}
