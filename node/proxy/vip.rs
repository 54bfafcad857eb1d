//! Where each upstream listens: its fixed `listen=` address, or a VIP from the loopback
//! range (consecutive addresses in config order, so a restart gives the same ones), and
//! the hosts-file lines that name them (as ECS Service Connect writes /etc/hosts).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use crate::config::UpstreamSpec;

/// Marks the lines murmur owns in a hosts file.
const HOSTS_MARK: &str = "# murmur";

/// The listen address of each upstream.
pub fn listen_addrs(upstreams: &[UpstreamSpec], base: Ipv4Addr, count: u32) -> Vec<SocketAddr> {
    let mut next = 0u32;
    let mut by_alias: std::collections::BTreeMap<&str, Ipv4Addr> = Default::default();
    upstreams
        .iter()
        .map(|u| {
            if let Some(l) = u.listen {
                return l;
            }
            // One VIP per alias: two ports of one alias share it, as one host name would.
            let ip = *by_alias.entry(u.alias.as_str()).or_insert_with(|| {
                let ip = Ipv4Addr::from(u32::from(base).wrapping_add(next % count.max(1)));
                next += 1;
                ip
            });
            SocketAddr::new(IpAddr::V4(ip), u.port)
        })
        .collect()
}

/// Rewrites `path`: every line murmur wrote before is replaced by `entries` (alias, IP),
/// every other line is kept as it was. The new file is written beside and renamed over
/// the old one, so a reader never sees half a file. Where that cannot be done, as for a
/// bind-mounted /etc/hosts (Docker, Kubernetes, ECS: the rename fails with EBUSY) or a
/// read-only directory around a writable file, the file is rewritten in place instead:
/// one write of the whole text, then cut to its length and synced.
pub fn write_hosts(path: &Path, entries: &[(String, IpAddr)], namespace: &str) -> std::io::Result<()> {
    let old = std::fs::read_to_string(path).or_else(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Ok(String::new())
        } else {
            Err(e)
        }
    })?;
    let mut out: String = old.lines().filter(|l| !l.ends_with(HOSTS_MARK)).map(|l| format!("{l}\n")).collect();
    for (alias, ip) in entries {
        out.push_str(&format!("{ip} {alias} {alias}.{namespace} {HOSTS_MARK}\n"));
    }
    if out == old {
        return Ok(());
    }
    let tmp = path.with_extension("murmur-tmp");
    let renamed = std::fs::write(&tmp, &out).and_then(|()| std::fs::rename(&tmp, path));
    match renamed {
        Ok(()) => Ok(()),
        Err(e) if path.exists() => {
            let _ = std::fs::remove_file(&tmp);
            tracing::debug!(path = %path.display(), error = %e, "cannot replace the hosts file; rewriting it in place");
            rewrite_in_place(path, out.as_bytes())
        }
        Err(e) => Err(e),
    }
}

fn rewrite_in_place(path: &Path, text: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.write_all(text)?;
    file.set_len(text.len() as u64)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::upstream::parse_upstream_spec;

    #[test]
    fn vips_are_consecutive_per_alias_and_fixed_addresses_win() {
        let ups: Vec<UpstreamSpec> = ["orders:80", "orders:443", "billing:80,listen=127.0.0.1:9000", "cache:6379"]
            .iter()
            .map(|s| parse_upstream_spec(s).expect("valid"))
            .collect();
        let addrs = listen_addrs(&ups, Ipv4Addr::new(127, 100, 0, 1), 10);
        let want: Vec<SocketAddr> = ["127.100.0.1:80", "127.100.0.1:443", "127.0.0.1:9000", "127.100.0.2:6379"]
            .iter()
            .map(|a| a.parse().expect("addr"))
            .collect();
        assert_eq!(addrs, want);
    }

    #[test]
    fn hosts_files_keep_other_lines() {
        let dir = std::env::temp_dir().join(format!("murmur-hosts-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("hosts");
        std::fs::write(&path, "127.0.0.1 localhost\n::1 ip6-localhost\n").expect("write");
        let ip: IpAddr = "127.100.0.1".parse().expect("ip");
        write_hosts(&path, &[("orders".into(), ip)], "app.local").expect("write hosts");
        write_hosts(&path, &[("orders".into(), ip)], "app.local").expect("again");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "127.0.0.1 localhost\n::1 ip6-localhost\n127.100.0.1 orders orders.app.local # murmur\n");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    /// Unmounts what it mounted when dropped, whatever the test did.
    struct Mounted(std::path::PathBuf);

    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }

    #[test]
    fn a_bind_mounted_hosts_file_is_rewritten_in_place() {
        let root = std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if !root {
            eprintln!("\n*** SKIPPED a_bind_mounted_hosts_file_is_rewritten_in_place: a bind mount needs root ***\n");
            return;
        }
        let dir = std::env::temp_dir().join(format!("murmur-bind-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (source, target) = (dir.join("source"), dir.join("hosts"));
        std::fs::write(&source, "127.0.0.1 localhost\n10.0.0.5 this-task\n").expect("write");
        std::fs::write(&target, "").expect("write");
        // As a container runtime does: the task's hosts file is a bind mount of another.
        let ok = std::process::Command::new("mount").arg("--bind").arg(&source).arg(&target).status();
        assert!(ok.is_ok_and(|s| s.success()), "mount --bind");
        let mounted = Mounted(target.clone());
        let ip: IpAddr = "127.100.0.1".parse().expect("ip");
        // What defeated the old write: a file cannot be renamed over the mount point.
        std::fs::write(dir.join("other"), "x").expect("write");
        let busy = std::fs::rename(dir.join("other"), &target).expect_err("a rename over a bind mount fails");
        assert_eq!(busy.raw_os_error(), Some(16), "EBUSY: {busy}");
        write_hosts(&target, &[("orders".into(), ip)], "app.local").expect("rewritten in place");
        write_hosts(&target, &[("billing".into(), ip)], "app.local").expect("and again, shorter");
        let want = "127.0.0.1 localhost\n10.0.0.5 this-task\n127.100.0.1 billing billing.app.local # murmur\n";
        assert_eq!(std::fs::read_to_string(&target).expect("read"), want);
        drop(mounted);
        assert_eq!(std::fs::read_to_string(&source).expect("read the source"), want, "the mounted file itself changed");
        assert!(!target.with_extension("murmur-tmp").exists(), "no temporary file left");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
