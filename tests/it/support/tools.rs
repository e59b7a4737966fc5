//! External programs some tests run (`nats-server`, `promtool`, `systemd-analyze`). A missing
//! one fails the test with the Debian package to install; no test skips because of it.
//! `.ci/run` installs them on a clean Debian machine.

use std::path::PathBuf;

/// The path of `tool` on `PATH`, or in `/usr/sbin` or `/usr/bin` (Debian installs daemons such
/// as `nats-server` in `/usr/sbin`, which a non-root `PATH` often lacks). Panics naming the
/// Debian `package` that provides it.
pub fn require(tool: &str, package: &str) -> PathBuf {
    find(tool).unwrap_or_else(|| {
        panic!(
            "`{tool}` is needed by this test but is not on PATH nor in /usr/sbin or /usr/bin: \
             install the Debian package `{package}` (`apt-get install {package}`; .ci/run \
             installs it)"
        )
    })
}

/// `tool` on PATH, in /usr/sbin or in /usr/bin.
fn find(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// Like [`require`], for a tool that comes from PyPI (`how` says how `.ci/run` installs it).
#[allow(dead_code)] // benches include this file for `require` only
pub fn require_from(tool: &str, how: &str) -> PathBuf {
    find(tool).unwrap_or_else(|| {
        panic!("`{tool}` is needed by this test but is not on PATH: {how} (.ci/run does it)")
    })
}
