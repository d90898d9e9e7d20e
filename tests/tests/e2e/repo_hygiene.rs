//! Files a running server writes at the root of the repository (`server.log`, `server.pid`)
//! are never tracked, and are ignored so that they cannot be committed by accident.

use std::path::Path;
use std::process::Command;

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
}

#[test]
fn runtime_files_are_neither_tracked_nor_committable() {
    let root = repo_root();
    let git = |args: &[&str]| Command::new("git").current_dir(root).args(args).output();
    let Ok(tracked) = git(&["ls-files", "--", "server.log", "server.pid"]) else {
        // Not a git checkout (a source tarball): nothing can be tracked.
        println!("SKIPPED: git is not available here");
        return;
    };
    if !tracked.status.success() {
        println!("SKIPPED: not a git checkout");
        return;
    }
    assert_eq!(
        String::from_utf8_lossy(&tracked.stdout).trim(),
        "",
        "runtime files are tracked"
    );
    for f in ["server.log", "server.pid"] {
        let ignored = git(&["check-ignore", "-q", "--no-index", f]).expect("git check-ignore");
        assert!(ignored.status.success(), "{f} is not ignored by .gitignore");
    }
}
