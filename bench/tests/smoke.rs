//! CI smoke test: the harness runs end to end at `--smoke` size (a few hundred
//! connections, a couple of seconds per scenario) against the debug builds of
//! auth-service and ws-node, and writes a complete report. It checks that
//! every scenario produced its figures and that fan-out lost nothing; it never
//! asserts performance, which depends on the machine and on what else runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The whole run must finish in this time (it takes ~20-60 s).
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// `<target>/<profile>`: test executables live in `<target>/<profile>/deps/`,
/// the workspace's binaries one level up.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable in <target>/<profile>/deps")
        .to_path_buf()
}

/// SIGTERM first, so the harness stops the services it started and drops its
/// database; SIGKILL only if it does not exit in time.
fn stop(child: &mut std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn smoke_run_writes_a_complete_report() {
    let bin_dir = profile_dir();
    for name in ["auth-service", "ws-node"] {
        assert!(
            bin_dir.join(name).is_file(),
            "{} is missing: build the services first (`cargo build -p auth-service -p ws-node`; \
             `cargo nextest run --workspace` does it)",
            bin_dir.join(name).display()
        );
    }
    let out = std::env::temp_dir().join(format!("tessera-bench-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);

    let mut command = Command::new(env!("CARGO_BIN_EXE_tessera-bench"));
    command
        .args(["run", "--smoke", "--out"])
        .arg(&out)
        .arg("--bin-dir")
        .arg(&bin_dir);
    // The same servers the other integration tests use (see testkit).
    if let Ok(url) = std::env::var("TEST_DATABASE_URL") {
        command.arg("--postgres-url").arg(url);
    }
    if let Ok(url) = std::env::var("TEST_REDIS_URL") {
        command.arg("--redis-url").arg(url);
    }
    let mut child = command.spawn().expect("start tessera-bench");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for tessera-bench") {
            break status;
        }
        if started.elapsed() > RUN_TIMEOUT {
            stop(&mut child);
            panic!("tessera-bench --smoke did not finish within {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "tessera-bench exited with {status}");

    let markdown = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(markdown.contains("| Scenario | Figure | Measured | Target | Met |"));
    let json = std::fs::read_to_string(out.join("report.json")).expect("report.json");
    let report: serde_json::Value = serde_json::from_str(&json).expect("report.json is JSON");

    let scenarios = report["scenarios"].as_array().expect("scenarios");
    let names: Vec<&str> = scenarios
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    for prefix in [
        "handshake",
        "fanout-",
        "latency-",
        "rooms-",
        "idle",
        "mint",
        "login-storm",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(prefix)),
            "no {prefix} scenario in {names:?}"
        );
    }
    for s in scenarios {
        let name = &s["name"];
        assert!(s["error"].is_null(), "{name} failed: {}", s["error"]);
        let metrics = s["metrics"].as_array().expect("metrics");
        assert!(!metrics.is_empty(), "{name} produced no figures");
        for m in metrics {
            assert!(
                m["value"].as_f64().is_some_and(f64::is_finite),
                "{name}: {m}"
            );
        }
        for c in s["checks"].as_array().expect("checks") {
            assert!(
                c["value"].is_number(),
                "{name}: {} was not measured",
                c["metric"]
            );
        }
        if name
            .as_str()
            .is_some_and(|n| n.starts_with("fanout-") || n.starts_with("rooms-"))
        {
            // Tessera's figures, then the reference server's.
            for figure in ["lost", "reference: lost"] {
                let lost = metrics
                    .iter()
                    .find(|m| m["name"] == figure)
                    .unwrap_or_else(|| panic!("{name} reports no {figure:?}"));
                assert_eq!(lost["value"].as_f64(), Some(0.0), "{name}: {figure}");
            }
            let deliveries = metrics
                .iter()
                .find(|m| m["name"] == "deliveries")
                .expect("fanout reports deliveries");
            assert!(deliveries["value"].as_f64().unwrap_or(0.0) > 0.0);
        }
    }
    assert!(report["machine"]["nproc"].as_u64().unwrap_or(0) > 0);
    let _ = std::fs::remove_dir_all(&out);
}
