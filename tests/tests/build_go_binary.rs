//! `scripts/build-go-binary.sh`, which builds the test world's Go programs (the Kubernetes control
//! plane, AEMM), on bad input: no Go toolchain, or a module download that fails. Each is one clear
//! line and exit 1, and nothing half-built is left where the next run would take it for a
//! finished build. (A cache hit is covered by every CI run: the second `setup-backends` builds
//! nothing.)

use std::path::Path;
use std::process::Command;

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-go-binary.sh")
}

/// A tiny module that needs one download.
fn module(dir: &Path) {
    std::fs::write(
        dir.join("go.mod"),
        "module example.com/probe\n\ngo 1.24\n\nrequire github.com/google/uuid v1.6.0\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("go.sum"),
        "github.com/google/uuid v1.6.0 h1:NIvaJDMOsjHA8n1jAhLSgzrAzy1Hgr+hNrb57e+94F0=\ngithub.com/google/uuid v1.6.0/go.mod h1:TdrsveLTzF4+0dO6ZnjqmUhb+8bbJNYyhNJPTEsqjBo=\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("main.go"),
        "package main\n\nimport (\n\t\"fmt\"\n\n\t\"github.com/google/uuid\"\n)\n\nfunc main() { fmt.Println(uuid.NewString()) }\n",
    )
    .unwrap();
}

fn leftovers(backends: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![backends.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_none_or(|e| e != "log") {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[test]
fn without_go_it_says_so_in_one_line_and_builds_nothing() {
    let work = tempfile::tempdir().unwrap();
    module(work.path());
    let backends = work.path().join("backends");
    let out = Command::new("bash")
        .arg(script())
        .args(["probe", work.path().to_str().unwrap()])
        .env("PATH", "/usr/bin:/bin")
        .env("SMARTSCALE_BACKENDS_DIR", &backends)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains("Go toolchain is not installed"), "{err}");
    assert!(
        leftovers(&backends).is_empty(),
        "{:?}",
        leftovers(&backends)
    );
}

#[test]
fn a_failed_module_download_is_one_line_and_leaves_no_binary() {
    let work = tempfile::tempdir().unwrap();
    module(work.path());
    let backends = work.path().join("backends");
    let path = format!(
        "/usr/local/go/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg(script())
        .args(["probe", work.path().to_str().unwrap()])
        .env("PATH", path)
        .env("SMARTSCALE_BACKENDS_DIR", &backends)
        // An empty module cache and no proxy: the download must fail.
        .env("GOMODCACHE", work.path().join("modcache"))
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains("building probe failed"), "{err}");
    assert!(err.contains("module"), "names the module download: {err}");
    assert!(
        !backends.join("bin").join("probe").exists(),
        "no binary where the next run would take it for built"
    );
    assert!(
        leftovers(&backends).is_empty(),
        "{:?}",
        leftovers(&backends)
    );
}
