//! Keeps the map of DESIGN.md and STYLE.md true as the code grows: reads the sources and
//! fails when an import crosses a line. Test-only.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The part a file belongs to: `dns` for node/dns/config.rs, `clock` for node/clock.rs.
fn part(root: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(root).unwrap_or(file);
    let first = rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
    first.trim_end_matches(".rs").to_owned()
}

/// The non-test code of a file: everything before its `#[cfg(test)]` module.
fn code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

#[test]
fn imports_follow_the_map() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("node");
    let mut files = Vec::new();
    sources(&root, &mut files);
    assert!(files.len() > 20, "found the sources");
    // External crates confined to the parts that own them (main, demo and these tests are
    // the edges and may use anything).
    let confined: [(&str, &[&str]); 5] = [
        ("quinn", &["proxy", "tls"]),
        ("rustls", &["proxy", "tls"]),
        ("hickory_", &["dns"]),
        ("axum", &["api"]),
        ("hyper", &["cli"]),
    ];
    // Readers never import one another; metrics is a leaf. config is a leaf too: the
    // settings table and the specs it parses; each part builds its own config from the
    // settings, and only the agent composes them.
    let everyone = ["gossip", "registry", "dns", "api", "proxy", "health", "local", "agent", "tls", "cli", "metrics"];
    // error and task are leaves too: how errors read, and the tasks behind a handle.
    let forbidden: [(&str, &[&str]); 11] = [
        ("config", &everyone),
        ("error", &everyone),
        ("task", &everyone),
        ("gossip", &["registry", "dns", "api", "proxy", "health", "local", "agent", "cli"]),
        ("tls", &["gossip", "registry", "dns", "api", "proxy", "health", "local", "agent", "cli"]),
        ("metrics", &["config", "gossip", "registry", "dns", "api", "proxy", "health", "local", "agent", "tls", "cli"]),
        ("dns", &["api", "proxy", "health", "agent", "cli"]),
        ("api", &["dns", "proxy", "health", "agent"]),
        ("proxy", &["dns", "api", "health", "agent", "cli"]),
        ("health", &["dns", "api", "proxy", "agent"]),
        ("registry", &["dns", "api", "proxy", "health", "local", "agent"]),
    ];
    let mut broken = Vec::new();
    for file in &files {
        let part = part(&root, file);
        if matches!(part.as_str(), "main" | "demo" | "boundaries" | "lib") {
            continue;
        }
        let text = code(file);
        for (krate, owners) in &confined {
            let used = text.lines().any(|l| {
                let l = l.trim_start();
                !l.starts_with("//") && (l.contains(&format!("use {krate}")) || l.contains(&format!("{krate}::")))
            });
            if used && !owners.contains(&part.as_str()) {
                broken.push(format!("{} uses {krate} (only {owners:?} may)", file.display()));
            }
        }
        for (owner, not) in &forbidden {
            if part != *owner {
                continue;
            }
            for other in *not {
                if text.contains(&format!("crate::{other}::"))
                    || text.contains(&format!("crate::{other};"))
                    || text.contains(&format!("crate::{other}::{{"))
                {
                    broken.push(format!("{} imports crate::{other}", file.display()));
                }
            }
        }
    }
    let protocol = Path::new(env!("CARGO_MANIFEST_DIR")).join("protocol/src");
    let mut pfiles = Vec::new();
    sources(&protocol, &mut pfiles);
    for file in &pfiles {
        let text = code(file);
        for banned in ["tokio", "std::net::UdpSocket", "std::net::TcpStream", "std::fs", "SystemTime", "Instant"] {
            if text.contains(banned) {
                broken.push(format!("{} uses {banned}: protocol is pure", file.display()));
            }
        }
    }
    // The membership core runs in the agent and in the simulator's virtual time: it
    // never reads a clock, sleeps or touches a socket.
    let mut swim = Vec::new();
    sources(&root.join("gossip/swim"), &mut swim);
    assert!(!swim.is_empty(), "found the membership core");
    for file in swim.iter().filter(|f| !f.ends_with("tests.rs")) {
        let text = code(file);
        for banned in ["tokio", "UdpSocket", "Instant::now", "SystemTime", "std::thread", "std::fs"] {
            if text.contains(banned) {
                broken.push(format!("{} uses {banned}: the membership core has no I/O and no clock", file.display()));
            }
        }
    }
    // Outside the crate, the tests and the example use the documented API only; the
    // hidden `internals` is for the benches and fuzz targets.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut outside = Vec::new();
    sources(&manifest.join("tests"), &mut outside);
    sources(&manifest.join("examples"), &mut outside);
    assert!(outside.len() > 5, "found the tests and the example");
    for file in &outside {
        if std::fs::read_to_string(file).unwrap_or_default().contains("murmur::internals") {
            broken.push(format!("{} uses murmur::internals: tests and examples use the public API", file.display()));
        }
    }
    assert!(broken.is_empty(), "imports cross the map:\n{}", broken.join("\n"));
}
