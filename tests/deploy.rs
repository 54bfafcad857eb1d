//! The deployment examples in deploy/ work as written, checked with what this machine can
//! run:
//! - the ECS task definition and the Kubernetes pod parse, and every murmur setting
//!   they give is one the agent accepts;
//! - the systemd unit passes `systemd-analyze verify`;
//! - as root with podman: the image is built FROM scratch by deploy/image/build.sh, the
//!   podman kube file starts three nodes that converge and answer DNS, and a node
//!   stopped with SIGTERM drains, leaves and exits 0.
//!
//! A test whose tool is missing shows as ignored, saying why (and fails under CI, whose
//! .ci/run installs them); the image test is ignored without root.

#[path = "common/trials.rs"]
mod trials;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use murmur::client::{addresses, query, ApiClient, MemberJson};
use murmur::{Config, Keyring, Layer};
use serde_json::Value;
use trials::{trial, Needs};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn main() -> ExitCode {
    let pyyaml = || trials::python_module("yaml", "pyyaml");
    let podman = || -> Needs {
        // `podman play kube` builds its pause image with catatonit.
        trials::program("podman", "podman")
            .and(trials::program("runc", "runc"))
            .and(trials::program("catatonit", "catatonit"))
    };
    trials::run(vec![
        trial(
            "the_ecs_task_definition_runs_murmur_beside_the_app_with_secrets_and_the_stub_as_resolver",
            trials::nothing(),
            false,
            the_ecs_task_definition_runs_murmur_beside_the_app_with_secrets_and_the_stub_as_resolver,
        ),
        trial(
            "the_kubernetes_pod_runs_murmur_as_a_native_sidecar",
            pyyaml(),
            false,
            the_kubernetes_pod_runs_murmur_as_a_native_sidecar,
        ),
        trial(
            "the_systemd_unit_passes_systemd_analyze_verify",
            trials::program("systemd-analyze", "systemd"),
            false,
            the_systemd_unit_passes_systemd_analyze_verify,
        ),
        trial("the_image_runs_a_three_node_mesh_from_the_podman_kube_file", podman(), true, || {
            trials::block_on(the_image_runs_a_three_node_mesh_from_the_podman_kube_file())
        }),
        trial(
            "the_podman_kube_file_gives_each_node_settings_the_agent_accepts",
            pyyaml(),
            false,
            the_podman_kube_file_gives_each_node_settings_the_agent_accepts,
        ),
    ])
}

/// Parses the YAML documents of `path` with Python's yaml module, as JSON values.
fn yaml(path: &Path) -> Option<Vec<Value>> {
    let script = "import json,sys,yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let out = Command::new("python3").args(["-c", script]).arg(path).output().ok()?;
    if !out.status.success() {
        panic!("{} is not valid YAML: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    }
    Some(serde_json::from_slice(&out.stdout).expect("python printed JSON"))
}

/// A list of `{"name": ..., "value": ...}` (an ECS or Kubernetes `env`) as a map.
fn name_values(list: &Value) -> BTreeMap<String, String> {
    let pair =
        |e: &Value| (e["name"].as_str().expect("name").to_owned(), e["value"].as_str().expect("value").to_owned());
    list.as_array().expect("a list of names and values").iter().map(pair).collect()
}

/// Checks that `env`, the MURMUR_* settings of an example, is what the agent accepts.
fn accepted(example: &str, env: BTreeMap<String, String>) {
    assert!(env.len() >= 8, "{example}: found the settings: {env:?}");
    if let Err(e) = Layer::from_env(&env) {
        panic!("{example}: the agent refuses its settings: {e}");
    }
}

/// A stand-in for a secret: what the setting would hold.
fn secret_value(name: &str) -> String {
    match name {
        "MURMUR_GOSSIP_KEYS" => Keyring::generate_base64(),
        _ => "/run/secrets/stand-in".into(),
    }
}

fn the_ecs_task_definition_runs_murmur_beside_the_app_with_secrets_and_the_stub_as_resolver() {
    let text = std::fs::read_to_string(repo("deploy/ecs/task-definition.json")).expect("the example");
    let task: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(
        task["networkMode"], "awsvpc",
        "one network namespace for the task: the app reaches the sidecar on 127.0.0.1"
    );
    let containers = task["containerDefinitions"].as_array().expect("containers");
    let by_name = |n: &str| containers.iter().find(|c| c["name"] == n).unwrap_or_else(|| panic!("container {n}"));
    let (murmur, app) = (by_name("murmur"), by_name("app"));
    assert_eq!(murmur["user"], "65532", "not root");
    assert_eq!(app["dependsOn"][0], serde_json::json!({"containerName": "murmur", "condition": "HEALTHY"}));
    assert!(app["entryPoint"].to_string().contains("nameserver 127.0.0.1"), "the app resolves through the stub");
    let secrets: BTreeMap<String, String> = murmur["secrets"]
        .as_array()
        .expect("secrets")
        .iter()
        .map(|s| {
            let name = s["name"].as_str().expect("a name").to_owned();
            assert!(s["valueFrom"].as_str().is_some_and(|v| v.starts_with("arn:aws:")), "{name} from a secret");
            (name.clone(), secret_value(&name))
        })
        .collect();
    for needed in ["MURMUR_GOSSIP_KEYS", "MURMUR_TLS_CA", "MURMUR_TLS_CERT", "MURMUR_TLS_KEY"] {
        assert!(secrets.contains_key(needed), "{needed} comes from a secret");
    }
    let mut env: BTreeMap<String, String> = name_values(&murmur["environment"]);
    assert_eq!(env["MURMUR_DNS_LISTEN"], "127.0.0.1:53");
    assert!(
        env["MURMUR_SEEDS"].split(':').next().is_some_and(|h| h.parse::<std::net::IpAddr>().is_err()),
        "seeds by name"
    );
    env.extend(secrets);
    accepted("ECS", env);
}

fn the_kubernetes_pod_runs_murmur_as_a_native_sidecar() {
    let docs = yaml(&repo("deploy/kubernetes/pod.yaml")).expect("python3 runs");
    let pod = docs.iter().find(|d| d["kind"] == "Pod").expect("a pod");
    assert!(docs.iter().any(|d| d["kind"] == "Service" && d["spec"]["clusterIP"] == "None"), "a headless seed service");
    let sidecar = &pod["spec"]["initContainers"][0];
    assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar");
    assert_eq!(pod["spec"]["dnsConfig"]["nameservers"][0], "127.0.0.1");
    assert_eq!(sidecar["securityContext"]["runAsNonRoot"], true);
    let env: BTreeMap<String, String> = sidecar["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            let name = e["name"].as_str().expect("name").to_owned();
            let value = match &e["value"] {
                Value::String(v) => v.replace("$(POD_IP)", "10.1.2.3"),
                _ if e["valueFrom"]["secretKeyRef"].is_object() => secret_value(&name),
                _ => "orders-0".into(),
            };
            (name, value)
        })
        .filter(|(name, _)| name.starts_with("MURMUR_"))
        .collect();
    accepted("Kubernetes", env);
}

fn the_systemd_unit_passes_systemd_analyze_verify() {
    // The unit runs /usr/local/bin/murmur; verify checks that it exists, so the copy
    // verified points at the binary under test, and nothing else differs.
    let unit = std::fs::read_to_string(repo("deploy/systemd/murmur.service")).expect("the unit");
    let dir = std::env::temp_dir().join(format!("murmur-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let copy = dir.join("murmur.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/murmur", env!("CARGO_BIN_EXE_murmur"))).expect("written");
    let out = Command::new("systemd-analyze").arg("verify").arg(&copy).output().expect("systemd-analyze runs");
    let _ = std::fs::remove_dir_all(&dir);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    let env = std::fs::read_to_string(repo("deploy/systemd/murmur.env")).expect("the env file");
    let env: BTreeMap<String, String> = env
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), if k == "MURMUR_GOSSIP_KEYS" { secret_value(k) } else { v.to_owned() }))
        .collect();
    accepted("systemd", env);
}

/// podman, with rlimits the host allows and runc, whatever the host's defaults.
struct Podman {
    conf: PathBuf,
    dir: PathBuf,
    image: String,
    kube: PathBuf,
}

impl Podman {
    fn command(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf);
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.command().args(args).output().expect("podman runs");
        assert!(out.status.success(), "podman {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.command().args(["play", "kube", "--down"]).arg(&self.kube).output();
        for i in 1..=3 {
            let _ = self.command().args(["pod", "rm", "-f", "-t", "0", &format!("murmur-node-{i}")]).output();
        }
        let _ = self.command().args(["rmi", "-f", &self.image]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn alive_members(api: SocketAddr) -> Option<Vec<MemberJson>> {
    let body = ApiClient::new(api).get("/v1/members").await.ok()?;
    serde_json::from_str(&body).ok()
}

async fn the_image_runs_a_three_node_mesh_from_the_podman_kube_file() {
    let dir = std::env::temp_dir().join(format!("murmur-image-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let hard = Command::new("sh").args(["-c", "ulimit -Hn"]).output().expect("sh runs");
    let nofile = String::from_utf8_lossy(&hard.stdout).trim().parse::<u64>().unwrap_or(4096).min(65536);
    let conf = dir.join("containers.conf");
    let text = format!(
        "[containers]\ndefault_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc=4096:4096\"]\n[engine]\nruntime = \"runc\"\n"
    );
    std::fs::write(&conf, text).expect("written");
    let image = "localhost/murmur-test:latest".to_owned();
    let kube = dir.join("mesh.yaml");
    let podman = Podman { conf, dir: dir.clone(), image: image.clone(), kube: kube.clone() };

    let started = Instant::now();
    let built = Command::new("bash")
        .arg(repo("deploy/image/build.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_murmur"), "--tag", &image])
        .env("CONTAINERS_CONF", &podman.conf)
        .output()
        .expect("build.sh runs");
    assert!(built.status.success(), "build.sh: {}", String::from_utf8_lossy(&built.stderr));
    let size: u64 = podman.run(&["image", "inspect", "--format", "{{.Size}}", &image]).parse().expect("a size");
    eprintln!(
        "image built in {:?}: {size} bytes ({:.1} MiB, the test's debug binary; README gives the release image)",
        started.elapsed(),
        size as f64 / 1048576.0
    );
    let user = podman.run(&["image", "inspect", "--format", "{{.Config.User}}", &image]);
    assert_eq!(user, "65532:65532", "runs as an unprivileged user");

    let yaml = std::fs::read_to_string(repo("deploy/podman/mesh.yaml")).expect("the kube file");
    let yaml = yaml.replace("@GOSSIP_KEY@", &Keyring::generate_base64()).replace("localhost/murmur:latest", &image);
    std::fs::write(&kube, yaml).expect("written");
    podman.run(&["play", "kube", kube.to_str().expect("utf-8 path")]);

    let api = |i: u8| SocketAddr::from(([127, 47, 0, i], 8500));
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 1..=3 {
        loop {
            let alive = alive_members(api(i)).await.map(|m| m.iter().filter(|m| m.status == "alive").count());
            if alive == Some(3) {
                break;
            }
            assert!(Instant::now() < deadline, "node-{i} sees {alive:?} alive members; logs: {}", logs(&podman, i));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Each agent wrote its keyring file to the image's /var/lib/murmur as user 65532 at
    // start (it exits 1 when it cannot), so converging shows the directory is its own.
    eprintln!("three containers converged {:?} after the build", started.elapsed());
    for i in 1..=3 {
        let dns = SocketAddr::from(([127, 47, 0, i], 8600));
        loop {
            let reply = query(dns, "web.murmur.local", RecordType::A, Duration::from_secs(2)).await;
            let found = reply.map(|m| addresses(&m).len()).unwrap_or(0);
            if found == 3 {
                break;
            }
            assert!(Instant::now() < deadline, "node-{i}'s stub answers {found} addresses for web");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The sample app answers through its own address.
    let mut app = tokio::net::TcpStream::connect(("127.47.0.2", 8080)).await.expect("the app listens");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    app.write_all(b"hello\n").await.expect("write");
    let mut reply = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), app.read_to_string(&mut reply)).await;
    assert!(reply.starts_with("web-2@127.47.0.2 says: hello"), "{reply:?}");

    // SIGTERM drains and leaves: the others see node-3 as left, and it exits 0.
    let stop = Instant::now();
    podman.run(&["stop", "-t", "20", "murmur-node-3-agent"]);
    let took = stop.elapsed();
    let code = podman.run(&["inspect", "--format", "{{.State.ExitCode}}", "murmur-node-3-agent"]);
    assert_eq!(code, "0", "a graceful stop; logs: {}", logs(&podman, 3));
    assert!(took >= Duration::from_secs(3), "the agent drained (--drain 3s) before leaving: {took:?}");
    let members = alive_members(api(1)).await.expect("node-1 answers");
    let node3 = members.iter().find(|m| m.name == "node-3").map(|m| m.status.clone());
    assert_eq!(node3.as_deref(), Some("left"), "{members:?}");
    eprintln!("node-3 stopped with SIGTERM in {took:?}, exit status 0, seen as left");
    drop(podman);
    assert!(!dir.exists(), "cleaned up");
}

fn logs(podman: &Podman, i: u8) -> String {
    let out = podman.command().args(["logs", "--tail", "20", &format!("murmur-node-{i}-agent")]).output();
    out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout))
        .unwrap_or_default()
}

fn the_podman_kube_file_gives_each_node_settings_the_agent_accepts() {
    let text = std::fs::read_to_string(repo("deploy/podman/mesh.yaml")).expect("the kube file");
    let text = text.replace("@GOSSIP_KEY@", &Keyring::generate_base64());
    // Three nodes, each with its own loopback address for every port.
    for i in 1..=3 {
        for port in [":7946", ":8600", ":8500", ":8080"] {
            assert!(text.contains(&format!("127.47.0.{i}{port}")), "node-{i} has {port}");
        }
    }
    let dir = std::env::temp_dir().join(format!("murmur-kube-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("mesh.yaml");
    std::fs::write(&path, &text).expect("written");
    let docs = yaml(&path).expect("python3 runs");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(docs.iter().filter(|d| d["kind"] == "Pod").count(), 3);
    for pod in &docs {
        let agent = &pod["spec"]["containers"][0];
        let env: BTreeMap<String, String> = name_values(&agent["env"]);
        let layer = Layer::from_env(&env).expect("settings the agent accepts");
        Config::from_layer(layer, "").expect("a whole config");
    }
}
