//! The test upstreams themselves work with real clients (no gateway, no root): so a
//! failing end-to-end test points at the gateway, not at the harness.
use std::process::Command;

use egress_e2e::https::{HttpsUpstream, TestCa, make_git_repo};

fn ca_file(ca: &TestCa, dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("test-ca.pem");
    std::fs::write(&path, &ca.pem).unwrap();
    path
}

#[test]
fn https_upstream_echoes_requests_over_h1_and_h2() {
    let dir = tempfile_dir("echo");
    let ca = TestCa::new();
    let up = HttpsUpstream::start("127.0.0.2", &["api.upstream.test"], &ca, None);
    let cafile = ca_file(&ca, &dir);
    for flag in ["--http1.1", "--http2"] {
        let out = Command::new("curl")
            .args(["-sS", "-m", "5", flag, "--cacert"])
            .arg(&cafile)
            .args(["--resolve", &format!("api.upstream.test:{}:127.0.0.2", up.port())])
            .args(["-d", "hello", &format!("https://api.upstream.test:{}/v1/x?q=1", up.port())])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let echo: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(echo["path"], "/v1/x?q=1");
        assert_eq!(echo["body"], "hello");
    }
    let versions: Vec<String> = up.requests().iter().map(|r| r.version.clone()).collect();
    assert_eq!(versions, ["HTTP/1.1", "HTTP/2.0"]);
}

#[test]
fn https_upstream_serves_git_clone() {
    let dir = tempfile_dir("git");
    let ca = TestCa::new();
    make_git_repo(&dir, "repo");
    let up = HttpsUpstream::start("127.0.0.2", &["git.upstream.test"], &ca, Some(dir.clone()));
    let cafile = ca_file(&ca, &dir);
    let out = Command::new("git")
        .args(["-c", &format!("http.curloptResolve=git.upstream.test:{}:127.0.0.2", up.port())])
        .args(["clone", "-q", &format!("https://git.upstream.test:{}/git/repo.git", up.port())])
        .arg(dir.join("clone"))
        .env("GIT_SSL_CAINFO", &cafile)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.join("clone/README").exists());
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("egress-harness-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
