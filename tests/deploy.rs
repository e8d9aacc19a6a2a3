//! The Dockerfile and `deploy/` checked against the daemon they deploy: the Kubernetes
//! manifests parse, pass `kubernetes-validate` and configure the sidecar the way leadsync reads
//! its settings (probe paths and ports, the metrics address, the pidfile, a non-root user);
//! the Prometheus files pass `promtool`; the Dockerfile passes `hadolint` and its health check
//! works against the real HTTP endpoints; and every metric and label the alert rules and the
//! Grafana dashboard use is one that `src/metrics.rs` defines and the exporter emits.
//!
//! The external tools are installed by `bash .ci/deploy-tools` (CI runs it); a missing tool
//! fails the test with that instruction rather than skipping it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use leadsync::config::Settings;
use leadsync::status::{SharedStatus, State};
use serde::Deserialize;
use serde_yaml::Value;

/// Where `.ci/deploy-tools` installs the tools from PyPI (also linked onto PATH).
const TOOLS_VENV_BIN: &str = "/opt/leadsync-tools/bin";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The tool's path: on PATH, else in the tools' virtual environment. Fails the test when it
/// is in neither.
fn tool(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    on_path
        .or_else(|| Some(Path::new(TOOLS_VENV_BIN).join(name)).filter(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed (not on PATH, not in {TOOLS_VENV_BIN}): \
                 run `bash .ci/deploy-tools` first (CI runs it)"
            )
        })
}

/// Runs `name args…` in the repository root; fails the test, with its output, unless it exits 0.
fn run_tool(name: &str, args: &[&str]) -> String {
    let out = Command::new(tool(name))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "`{name} {}` failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    text
}

/// Every YAML document in `path`, empty ones left out.
fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn manifest_files() -> Vec<PathBuf> {
    let dir = root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    files
}

/// Every Kubernetes object in deploy/kubernetes/.
fn manifests() -> Vec<Value> {
    let mut objects = Vec::new();
    for file in manifest_files() {
        for doc in yaml_documents(&file) {
            for field in ["apiVersion", "kind"] {
                assert!(
                    doc[field].as_str().is_some_and(|s| !s.is_empty()),
                    "{}: an object without {field}",
                    file.display()
                );
            }
            assert!(
                doc["metadata"]["name"].as_str().is_some(),
                "{}: a {} without metadata.name",
                file.display(),
                doc["kind"].as_str().unwrap_or("?")
            );
            objects.push(doc);
        }
    }
    objects
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} named {name} in deploy/kubernetes/"))
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v:?}"))
}

fn seq<'a>(v: &'a Value, what: &str) -> &'a [Value] {
    v.as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{what} is not a list: {v:?}"))
}

/// The Deployment's pod spec and its leadsync container.
fn sidecar(objects: &[Value]) -> (&Value, &Value, &Value) {
    let deployment = objects
        .iter()
        .find(|o| o["kind"].as_str() == Some("Deployment"))
        .expect("a Deployment in deploy/kubernetes/");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = seq(&pod["containers"], "containers")
        .iter()
        .find(|c| c["name"].as_str() == Some("leadsync"))
        .expect("a container named leadsync");
    (deployment, pod, container)
}

/// The container's environment as the daemon sees it: literal values, and values taken from
/// Secrets (`stringData`) and ConfigMaps of the manifests.
fn container_env(objects: &[Value], container: &Value) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for var in seq(&container["env"], "env") {
        let name = str_of(&var["name"], "env name").to_owned();
        let value = if let Some(value) = var["value"].as_str() {
            value.to_owned()
        } else if var["valueFrom"]["secretKeyRef"].is_mapping() {
            let r = &var["valueFrom"]["secretKeyRef"];
            let secret = find(objects, "Secret", str_of(&r["name"], "secret name"));
            let key = str_of(&r["key"], "secret key");
            str_of(&secret["stringData"][key], &format!("Secret key {key}")).to_owned()
        } else if var["valueFrom"]["configMapKeyRef"].is_mapping() {
            let r = &var["valueFrom"]["configMapKeyRef"];
            let map = find(objects, "ConfigMap", str_of(&r["name"], "config map name"));
            let key = str_of(&r["key"], "config map key");
            str_of(&map["data"][key], &format!("ConfigMap key {key}")).to_owned()
        } else {
            panic!("env {name}: neither a value nor a Secret or ConfigMap key");
        };
        env.push((name, value));
    }
    env
}

/// A volume mount of the container that holds `path`, and its volume.
fn mount_of<'a>(
    pod: &'a Value,
    container: &'a Value,
    path: &Path,
) -> Option<(&'a Value, &'a Value)> {
    let mount = container["volumeMounts"]
        .as_sequence()?
        .iter()
        .filter(|m| {
            m["mountPath"]
                .as_str()
                .is_some_and(|mp| path.starts_with(mp))
        })
        .max_by_key(|m| m["mountPath"].as_str().map_or(0, str::len))?;
    let volume = seq(&pod["volumes"], "volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume for the mount {mount:?}"));
    Some((mount, volume))
}

/// Writes the files of the container's Secret and ConfigMap volumes under `root`, at their
/// mount paths, with the volume's mode; returns `(mount path, where it now is)`.
fn mount_volume_files(
    objects: &[Value],
    pod: &Value,
    container: &Value,
    root: &Path,
) -> Vec<(String, PathBuf)> {
    let mut mounted = Vec::new();
    for mount in seq(&container["volumeMounts"], "volumeMounts") {
        let mount_path = str_of(&mount["mountPath"], "mountPath");
        let volume = seq(&pod["volumes"], "volumes")
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume for the mount {mount:?}"));
        let (data, source) = if volume["secret"].is_mapping() {
            let name = str_of(&volume["secret"]["secretName"], "secretName");
            (
                &find(objects, "Secret", name)["stringData"],
                &volume["secret"],
            )
        } else if volume["configMap"].is_mapping() {
            let name = str_of(&volume["configMap"]["name"], "configMap name");
            (
                &find(objects, "ConfigMap", name)["data"],
                &volume["configMap"],
            )
        } else {
            continue;
        };
        let dir = root.join(mount_path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap();
        let files: Vec<(String, String)> = match source["items"].as_sequence() {
            Some(items) => items
                .iter()
                .map(|i| {
                    (
                        str_of(&i["key"], "item key").to_owned(),
                        str_of(&i["path"], "item path").to_owned(),
                    )
                })
                .collect(),
            None => data
                .as_mapping()
                .map(|m| {
                    m.keys()
                        .map(|k| {
                            let k = str_of(k, "key").to_owned();
                            (k.clone(), k)
                        })
                        .collect()
                })
                .unwrap_or_default(),
        };
        for (key, path) in files {
            let file = dir.join(&path);
            std::fs::write(&file, str_of(&data[key.as_str()], &key)).unwrap();
            if let Some(mode) = source["defaultMode"].as_u64() {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode as u32))
                    .unwrap();
            }
        }
        mounted.push((mount_path.to_owned(), dir));
    }
    mounted
}

/// `value` with each mount path in it moved to where [`mount_volume_files`] put its files.
fn under(mounted: &[(String, PathBuf)], value: &str) -> String {
    // Longest first, each through a placeholder, so that a moved path is not moved again.
    let mut mounts: Vec<&(String, PathBuf)> = mounted.iter().collect();
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    let mut out = value.to_owned();
    for (i, (mount_path, _)) in mounts.iter().enumerate() {
        out = out.replace(mount_path.as_str(), &format!("\u{0}{i}\u{0}"));
    }
    for (i, (_, dir)) in mounts.iter().enumerate() {
        out = out.replace(&format!("\u{0}{i}\u{0}"), &dir.to_string_lossy());
    }
    out
}

/// A probe's or Service's port: a number, or the name of one of the container's ports.
fn resolve_port(port: &Value, container: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = str_of(port, "port");
    seq(&container["ports"], "ports")
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

/// The defaults every deployment file must agree with: config/leadsync.toml's settings.
fn default_settings() -> Settings {
    let path = root().join("config/leadsync.toml");
    Settings::load_from(Some(&path), Vec::new()).expect("config/leadsync.toml loads")
}

fn default_port() -> u16 {
    default_settings()
        .metrics_addr()
        .expect("metrics.listen is an address")
        .port()
}

/// Whether src/http.rs routes `path`.
fn routed(path: &str) -> bool {
    read("src/http.rs").contains(&format!("\"{path}\" =>"))
}

#[test]
fn manifests_pass_kubernetes_validate() {
    let objects = manifests();
    let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    for kind in [
        "ConfigMap",
        "Deployment",
        "NetworkPolicy",
        "Secret",
        "Service",
    ] {
        assert!(kinds.contains(kind), "no {kind} in deploy/kubernetes/");
    }
    let files: Vec<String> = manifest_files()
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let mut args = vec!["--strict", "--quiet"];
    args.extend(files.iter().map(String::as_str));
    run_tool("kubernetes-validate", &args);
}

/// The metrics port, which the sidecar binds on every address, is reachable only from
/// Prometheus: a NetworkPolicy selects the pods, and its only rule that admits the port
/// names who may come; the application's own ports stay open.
#[test]
fn network_policy_admits_only_prometheus_to_the_metrics_port() {
    let objects = manifests();
    let (_, pod, container) = sidecar(&objects);
    let deployment_labels = &sidecar(&objects).0["spec"]["template"]["metadata"]["labels"];
    let policy = objects
        .iter()
        .find(|o| o["kind"].as_str() == Some("NetworkPolicy"))
        .expect("a NetworkPolicy in deploy/kubernetes/");
    let spec = &policy["spec"];
    // It selects the pods.
    let selector = spec["podSelector"]["matchLabels"]
        .as_mapping()
        .expect("podSelector.matchLabels");
    for (key, value) in selector {
        assert_eq!(
            &deployment_labels[key], value,
            "the policy's podSelector does not match the pods ({key:?})"
        );
    }
    assert!(
        seq(&spec["policyTypes"], "policyTypes")
            .iter()
            .any(|t| t.as_str() == Some("Ingress"))
    );
    let metrics = resolve_port(&serde_yaml::Value::from("metrics"), container);
    let app = seq(&pod["containers"], "containers")
        .iter()
        .find(|c| c["name"].as_str() != Some("leadsync"))
        .expect("the application's container");
    let mut metrics_rules = 0;
    let mut app_open = false;
    for rule in seq(&spec["ingress"], "ingress") {
        let ports: Vec<u64> = seq(&rule["ports"], "ingress ports")
            .iter()
            .map(|p| {
                let port = &p["port"];
                if port.as_str() == Some("metrics") || port.as_u64() == Some(metrics) {
                    metrics
                } else {
                    resolve_port(port, app)
                }
            })
            .collect();
        if ports.contains(&metrics) {
            metrics_rules += 1;
            let from = seq(
                &rule["from"],
                "a rule admitting the metrics port must say from whom",
            );
            assert!(!from.is_empty());
            for peer in from {
                assert!(
                    peer["podSelector"]["matchLabels"].is_mapping()
                        || peer["namespaceSelector"]["matchLabels"].is_mapping(),
                    "a peer that is not a selector: {peer:?}"
                );
                assert!(peer["ipBlock"].is_null(), "an address block: {peer:?}");
            }
        } else if rule["from"].is_null() {
            app_open = true;
        }
    }
    assert_eq!(metrics_rules, 1, "one rule admits the metrics port");
    assert!(app_open, "the application's port stays open");
    // And the sidecar does listen on every address, which is why the policy is needed.
    let env = container_env(&objects, container);
    assert!(
        env.iter()
            .any(|(k, v)| k == "LEADSYNC_METRICS__LISTEN" && v.starts_with("0.0.0.0:"))
    );
}

#[test]
fn sidecar_settings_match_the_daemon() {
    let objects = manifests();
    let (deployment, pod, container) = sidecar(&objects);
    let port = default_port();
    assert_eq!(port, 9187, "config/leadsync.toml's default metrics port");

    let replicas = deployment["spec"]["replicas"].as_u64().unwrap_or(1);
    assert!(
        replicas >= 2,
        "several replicas (one active daemon, the rest standbys)"
    );

    // The environment and the ConfigMap, loaded the way the daemon loads them.
    let env = container_env(&objects, container);
    let vars: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert!(
        container["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|v| v["name"].as_str() == Some("LEADSYNC_SOURCE__URL")
                && v["valueFrom"]["secretKeyRef"].is_mapping()),
        "LEADSYNC_SOURCE__URL comes from a Secret"
    );
    let config_path = Path::new(vars.get("LEADSYNC_CONFIG").expect("LEADSYNC_CONFIG is set"));
    let (mount, volume) =
        mount_of(pod, container, config_path).expect("the configuration file is mounted");
    let map_name = str_of(
        &volume["configMap"]["name"],
        "the config volume's ConfigMap",
    );
    let relative = config_path
        .strip_prefix(str_of(&mount["mountPath"], "mountPath"))
        .expect("under the mount");
    let toml_text = str_of(
        &find(&objects, "ConfigMap", map_name)["data"][relative.to_str().unwrap()],
        "the ConfigMap's TOML",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("leadsync.toml");
    std::fs::write(&file, toml_text).expect("write the TOML");
    // The Secret's and ConfigMaps' files, where the pod mounts them (under a temporary
    // root): the settings are read from the files the sidecar would read.
    let mounted = mount_volume_files(&objects, pod, container, dir.path());
    let settings_env: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k != "LEADSYNC_CONFIG")
        .map(|(k, v)| (k.clone(), under(&mounted, v)))
        .collect();
    let settings = Settings::load_from(Some(&file), settings_env)
        .unwrap_or_else(|e| panic!("the sidecar's configuration does not load: {e}"));
    settings
        .validate()
        .unwrap_or_else(|e| panic!("the sidecar's configuration is not valid: {e}"));
    // It verifies the server against the mounted CA, and its password comes from the
    // Secret's file, not from the environment.
    let url = secrecy::ExposeSecret::expose_secret(settings.source_url()).to_owned();
    let source = leadsync::db::parse_url(&url).expect("the URL parses");
    assert_eq!(
        source.tls.mode,
        leadsync::db::SslMode::VerifyFull,
        "sslmode"
    );
    match &source.tls.root_cert {
        Some(leadsync::db::RootCert::File(path)) => assert!(
            path.is_file(),
            "sslrootcert {} is not a mounted file",
            path.display()
        ),
        other => panic!("sslrootcert: {other:?}"),
    }
    let secret = find(&objects, "Secret", "leadsync-source");
    let password = str_of(&secret["stringData"]["password"], "the Secret's password");
    assert_eq!(
        source.config.get_password(),
        Some(password.as_bytes()),
        "the password from LEADSYNC_SOURCE__PASSWORD_FILE"
    );
    assert!(
        env.iter().all(|(_, v)| !v.contains(password)),
        "the password is in the container's environment"
    );

    // Metrics on every interface, on the default port.
    let addr: SocketAddr = settings.metrics_addr().unwrap();
    assert!(
        addr.ip().is_unspecified(),
        "LEADSYNC_METRICS__LISTEN binds 0.0.0.0, not {addr}"
    );
    assert_eq!(addr.port(), port, "the sidecar's metrics port");
    let metrics_port = seq(&container["ports"], "ports")
        .iter()
        .find(|p| p["name"].as_str() == Some("metrics"))
        .and_then(|p| p["containerPort"].as_u64())
        .expect("a container port named metrics");
    assert_eq!(
        metrics_port,
        u64::from(port),
        "the container's metrics port"
    );

    // Probes: /livez for liveness (a failure must not restart the container into a crash
    // loop), /readyz for readiness, both on the metrics port.
    for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe} path");
        assert!(routed(path), "src/http.rs serves {path}");
        assert_eq!(
            resolve_port(&get["port"], container),
            u64::from(port),
            "{probe} port"
        );
    }

    // Prometheus annotations.
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));
    assert!(routed("/metrics"));
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(port.to_string().as_str()),
        "prometheus.io/port"
    );

    // The headless Service Prometheus discovers the pods through.
    let service = objects
        .iter()
        .find(|o| o["kind"].as_str() == Some("Service"))
        .unwrap();
    assert_eq!(
        service["spec"]["clusterIP"].as_str(),
        Some("None"),
        "headless"
    );
    let selector = service["spec"]["selector"]
        .as_mapping()
        .expect("a selector");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (k, v) in selector {
        assert_eq!(&labels[k], v, "the Service selects the pods ({k:?})");
    }
    let service_port = &seq(&service["spec"]["ports"], "Service ports")[0];
    assert_eq!(service_port["port"].as_u64(), Some(u64::from(port)));
    assert_eq!(
        resolve_port(&service_port["targetPort"], container),
        u64::from(port)
    );
    let prometheus = &yaml_documents(&root().join("deploy/prometheus/prometheus.yml"))[0];
    let job = seq(&prometheus["scrape_configs"], "scrape_configs")
        .iter()
        .find(|j| j["job_name"].as_str() == Some("leadsync"))
        .expect("a scrape job named leadsync");
    let dns = &seq(&job["dns_sd_configs"], "dns_sd_configs")[0];
    assert_eq!(
        dns["port"].as_u64(),
        Some(u64::from(port)),
        "the scraped port"
    );
    let service_name = str_of(&service["metadata"]["name"], "Service name");
    for name in seq(&dns["names"], "DNS names") {
        assert!(
            str_of(name, "DNS name").starts_with(&format!("{service_name}.")),
            "the scrape job resolves the Service {service_name}: {name:?}"
        );
    }

    // The pidfile: on a writable volume (the root filesystem is read-only) of leadsync's
    // own. No process namespace is shared: the application cannot read the sidecar's
    // environment (its credentials), and `kubectl exec -c leadsync … leadsync ctl` reaches
    // the daemon inside its own container.
    let pidfile = PathBuf::from(settings.control.pidfile.clone().expect("control.pidfile"));
    let (pid_mount, pid_volume) =
        mount_of(pod, container, &pidfile).expect("the pidfile's directory is mounted");
    assert!(
        pid_volume["emptyDir"].is_mapping(),
        "the pidfile lives on an emptyDir"
    );
    assert_ne!(
        pid_mount["readOnly"].as_bool(),
        Some(true),
        "the pidfile is writable"
    );
    assert_ne!(
        pod["shareProcessNamespace"].as_bool(),
        Some(true),
        "the pod shares its process namespace"
    );
    for other in seq(&pod["containers"], "containers") {
        if other["name"] != container["name"] {
            assert!(
                mount_of(pod, other, &pidfile).is_none(),
                "container {:?} sees leadsync's pidfile",
                other["name"]
            );
            assert!(
                other["securityContext"]["runAsUser"].is_null()
                    && pod["securityContext"]["runAsUser"].is_null(),
                "the application is made to run as leadsync's user"
            );
        }
    }

    // Non-root, read-only root filesystem, no privilege escalation, the image's user.
    let effective = |field: &str| {
        let own = &container["securityContext"][field];
        if own.is_null() {
            &pod["securityContext"][field]
        } else {
            own
        }
    };
    assert_eq!(
        effective("runAsNonRoot").as_bool(),
        Some(true),
        "runAsNonRoot"
    );
    let uid = effective("runAsUser").as_u64().expect("runAsUser");
    assert_ne!(uid, 0, "runAsUser");
    assert_eq!(effective("readOnlyRootFilesystem").as_bool(), Some(true));
    assert_eq!(effective("allowPrivilegeEscalation").as_bool(), Some(false));
    assert_eq!(
        Some(uid),
        dockerfile_user().0,
        "the manifest runs the sidecar as the image's user"
    );
    let resources = &container["resources"];
    assert!(resources["requests"].is_mapping() && resources["limits"].is_mapping());
    assert_eq!(
        Some(config_path.to_str().unwrap()),
        dockerfile_env().get("LEADSYNC_CONFIG").map(String::as_str),
        "the ConfigMap is mounted where the image reads its configuration"
    );
}

#[test]
fn prometheus_files_pass_promtool() {
    run_tool(
        "promtool",
        &["check", "config", "deploy/prometheus/prometheus.yml"],
    );
    run_tool(
        "promtool",
        &["check", "rules", "deploy/prometheus/alerts.yml"],
    );
    run_tool(
        "promtool",
        &["test", "rules", "deploy/prometheus/alerts.test.yml"],
    );
}

// ---- Dockerfile ----

/// The Dockerfile's instructions, continuation lines joined, comments left out.
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (word, rest) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((word.to_uppercase(), rest.trim().to_owned()));
        current.clear();
    }
    out
}

/// The final stage's instructions.
fn runtime_stage() -> Vec<(String, String)> {
    let all = dockerfile();
    let start = all.iter().rposition(|(w, _)| w == "FROM").expect("a FROM");
    all[start..].to_vec()
}

/// The final stage's `USER` as (uid, gid).
fn dockerfile_user() -> (Option<u64>, Option<u64>) {
    let user = runtime_stage()
        .into_iter()
        .rev()
        .find(|(w, _)| w == "USER")
        .expect("the runtime stage sets USER")
        .1;
    let (uid, gid) = user.split_once(':').unwrap_or((&user, ""));
    (uid.parse().ok(), gid.parse().ok())
}

/// The final stage's `ENV` variables (`ENV A=1 B=2` form).
fn dockerfile_env() -> BTreeMap<String, String> {
    runtime_stage()
        .into_iter()
        .filter(|(w, _)| w == "ENV")
        .flat_map(|(_, rest)| {
            rest.split_whitespace()
                .map(|pair| {
                    let (k, v) = pair.split_once('=').expect("ENV in the KEY=value form");
                    (k.to_owned(), v.to_owned())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn dockerfile_passes_hadolint() {
    run_tool("hadolint", &["--no-color", "Dockerfile"]);
}

#[test]
fn image_is_multi_stage_non_root_and_configured_like_the_defaults() {
    let all = dockerfile();
    assert!(
        all.iter().filter(|(w, _)| w == "FROM").count() >= 2,
        "a multi-stage build"
    );
    let (uid, _gid) = dockerfile_user();
    assert!(uid.is_some_and(|u| u != 0), "a numeric, non-root USER");

    let env = dockerfile_env();
    let settings_env: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k.as_str() != "LEADSYNC_CONFIG")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let image_config = env.get("LEADSYNC_CONFIG").expect("ENV LEADSYNC_CONFIG");
    let stage = runtime_stage();
    assert!(
        stage
            .iter()
            .any(|(w, rest)| w == "COPY" && rest == &format!("config/leadsync.toml {image_config}")),
        "the image carries config/leadsync.toml at LEADSYNC_CONFIG"
    );
    let settings = Settings::load_from(Some(&root().join("config/leadsync.toml")), settings_env)
        .unwrap_or_else(|e| panic!("the image's configuration does not load: {e}"));
    let addr = settings.metrics_addr().unwrap();
    assert!(
        addr.ip().is_unspecified(),
        "the image listens on every interface"
    );
    assert_eq!(addr.port(), default_port());
    let exposed: Vec<&str> = stage
        .iter()
        .filter(|(w, _)| w == "EXPOSE")
        .map(|(_, p)| p.as_str())
        .collect();
    assert_eq!(exposed, [default_port().to_string()], "EXPOSE");
    assert!(
        stage.iter().any(|(w, _)| w == "HEALTHCHECK"),
        "a HEALTHCHECK"
    );

    // The build context holds every file Cargo needs to read the manifest and build the
    // binary: the sources, each declared test and bench target, and what the sources
    // compile in.
    let manifest: toml::Table = toml::from_str(&read("Cargo.toml")).expect("Cargo.toml");
    let mut needed = vec![
        "Cargo.toml".to_owned(),
        "Cargo.lock".to_owned(),
        "src".into(),
    ];
    for (section, dir) in [("test", "tests"), ("bench", "benches")] {
        for target in manifest
            .get(section)
            .and_then(|t| t.as_array())
            .into_iter()
            .flatten()
        {
            let name = target["name"].as_str().expect("target name");
            let path = target
                .get("path")
                .and_then(|p| p.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{dir}/{name}.rs"));
            needed.push(path);
        }
    }
    needed.extend(compiled_in_files());
    let froms: Vec<usize> = (0..all.len()).filter(|&i| all[i].0 == "FROM").collect();
    let build_copies: Vec<String> = all[froms[0]..froms[1]]
        .iter()
        .filter(|(w, _)| w == "COPY")
        .flat_map(|(_, rest)| {
            let parts: Vec<&str> = rest
                .split_whitespace()
                .filter(|p| !p.starts_with("--"))
                .collect();
            parts[..parts.len() - 1]
                .iter()
                .map(|s| s.trim_end_matches('/').to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    let ignore = read(".dockerignore");
    let included: Vec<&str> = ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    assert!(
        ignore.lines().any(|l| l.trim() == "*"),
        ".dockerignore starts from nothing"
    );
    for path in &needed {
        assert!(root().join(path).exists(), "{path} exists");
        let covered = |list: &[&str]| {
            list.iter()
                .any(|c| path == c || Path::new(path).starts_with(c))
        };
        let copies: Vec<&str> = build_copies.iter().map(String::as_str).collect();
        assert!(covered(&copies), "the build stage copies {path}");
        assert!(
            covered(&included),
            ".dockerignore lets {path} into the context"
        );
    }
    assert!(
        included.contains(&"config/leadsync.toml"),
        ".dockerignore lets config/leadsync.toml into the context"
    );
}

/// The files the binary compiles in (`include_str!` / `include_bytes!` in src/, outside test
/// modules), relative to the repository root.
fn compiled_in_files() -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![root().join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("list src/") {
            let path = entry.expect("directory entry").path();
            let test_only = path
                .file_name()
                .is_some_and(|n| n == "tests" || n == "tests.rs");
            if test_only {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read a source file");
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for mac in ["include_str!(\"", "include_bytes!(\""] {
                for (at, _) in code.match_indices(mac) {
                    let rest = &code[at + mac.len()..];
                    let relative = &rest[..rest.find('"').expect("a closing quote")];
                    let file = path.parent().unwrap().join(relative);
                    let file = std::fs::canonicalize(&file)
                        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                    let from_root = file
                        .strip_prefix(std::fs::canonicalize(root()).unwrap())
                        .expect("inside the repository")
                        .to_string_lossy()
                        .into_owned();
                    out.push(from_root);
                }
            }
        }
    }
    assert!(
        out.iter().any(|f| f.starts_with("fixtures/")),
        "the fixtures are found among the compiled-in files: {out:?}"
    );
    out
}

/// The HEALTHCHECK's command, run against the real HTTP endpoints: it passes in every state
/// a healthy daemon can be in and fails once the daemon has stopped on an error.
#[tokio::test]
async fn image_health_check_probes_healthz() {
    let health = runtime_stage()
        .into_iter()
        .find(|(w, _)| w == "HEALTHCHECK")
        .expect("a HEALTHCHECK")
        .1;
    let json = &health[health.find("CMD [").expect("HEALTHCHECK … CMD [exec form]") + 4..];
    let argv: Vec<String> = serde_json::from_str(json).expect("the CMD is a JSON array");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().unwrap().port();
    let status = SharedStatus::default();
    let recorder = leadsync::metrics::prometheus_builder()
        .expect("builder")
        .build_recorder();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(leadsync::http::serve(
        listener,
        status.clone(),
        recorder.handle(),
        shutdown,
    ));

    let check = |argv: Vec<String>| async move {
        tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            // As in the image, the port comes from the listen address.
            .env("LEADSYNC_METRICS__LISTEN", format!("0.0.0.0:{port}"))
            .output()
            .await
            .expect("run the health check")
    };
    for state in [
        State::Starting,
        State::Standby,
        State::Backfill,
        State::Streaming,
        State::Paused,
        State::Reconnecting,
    ] {
        status.update(|s| s.state = state);
        let out = check(argv.clone()).await;
        assert!(
            out.status.success(),
            "the health check fails in state {state:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    status.update(|s| s.state = State::Failed);
    assert!(
        !check(argv.clone()).await.status.success(),
        "the health check passes for a failed daemon"
    );
    stop.send(true).expect("stop the server");
    server.await.expect("server task");
    assert!(
        !check(argv).await.status.success(),
        "the health check passes with nothing listening"
    );
}

// ---- Metric and label names ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// What src/metrics.rs defines: metric names by constant, label names, and each metric's type.
struct Definitions {
    metrics: BTreeMap<String, String>,
    labels: BTreeSet<String>,
    kinds: BTreeMap<String, Kind>,
}

fn definitions() -> Definitions {
    let text = read("src/metrics.rs");
    let mut metrics = BTreeMap::new();
    let mut labels = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("pub const ") else {
            continue;
        };
        let Some((ident, value)) = rest.split_once(": &str = \"") else {
            continue;
        };
        let value = value
            .strip_suffix("\";")
            .expect("a one-line string constant");
        if value.starts_with("leadsync_") {
            metrics.insert(ident.to_owned(), value.to_owned());
        } else {
            labels.insert(value.to_owned());
        }
    }
    let mut kinds = BTreeMap::new();
    for (mac, kind) in [
        ("describe_counter!(", Kind::Counter),
        ("describe_gauge!(", Kind::Gauge),
        ("describe_histogram!(", Kind::Histogram),
    ] {
        for (at, _) in text.match_indices(mac) {
            let ident: String = text[at + mac.len()..]
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !ident.is_empty() {
                kinds.insert(ident, kind);
            }
        }
    }
    assert!(metrics.len() >= 12, "metric constants parsed: {metrics:?}");
    assert_eq!(
        labels,
        BTreeSet::from(["kind".to_owned(), "op".into(), "table".into()])
    );
    Definitions {
        metrics,
        labels,
        kinds,
    }
}

/// The sample names the exporter emits once every metric of src/metrics.rs has a value.
fn exported_names(defs: &Definitions) -> BTreeSet<String> {
    let recorder = leadsync::metrics::prometheus_builder()
        .expect("builder")
        .build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        leadsync::metrics::describe();
        for (ident, name) in &defs.metrics {
            match defs.kinds.get(ident) {
                Some(Kind::Counter) => metrics::counter!(name.clone()).increment(1),
                Some(Kind::Gauge) => metrics::gauge!(name.clone()).set(1.0),
                Some(Kind::Histogram) => metrics::histogram!(name.clone()).record(0.01),
                None => panic!("src/metrics.rs does not describe {ident}"),
            }
        }
    });
    let names: BTreeSet<String> = handle
        .render()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect();
    for (ident, name) in &defs.metrics {
        let expected: Vec<String> = if defs.kinds[ident] == Kind::Histogram {
            ["_bucket", "_sum", "_count"]
                .iter()
                .map(|s| format!("{name}{s}"))
                .collect()
        } else {
            vec![name.clone()]
        };
        for e in expected {
            assert!(names.contains(&e), "{ident} is exported as {e}: {names:?}");
        }
    }
    names
}

/// The `leadsync_*` names in a query or text.
fn metric_tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(pos) = text[from..].find("leadsync_") {
        let start = from + pos;
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |n| start + n);
        let before = text[..start].chars().next_back();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
            out.push(text[start..end].to_owned());
        }
        from = end;
    }
    out
}

/// Label names a PromQL expression uses: in `{…}` matchers and in by / without / on /
/// ignoring / group_left / group_right lists.
fn label_tokens(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').expect("a closing brace") + open;
        for matcher in rest[open + 1..close].split(',') {
            let name = matcher.split(['=', '!', '~']).next().unwrap().trim();
            if !name.is_empty() {
                out.push(name.to_owned());
            }
        }
        rest = &rest[close + 1..];
    }
    let words = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let bytes = expr.as_bytes();
    for word in words {
        for (at, _) in expr.match_indices(word) {
            let before_ok =
                at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
            let after = expr[at + word.len()..].trim_start();
            if !before_ok || !after.starts_with('(') {
                continue;
            }
            let list = &after[1..after.find(')').expect("a closing parenthesis")];
            out.extend(
                list.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            );
        }
    }
    out
}

/// Labels a query may use: the metrics' own, the histogram's `le`, and the target labels
/// Prometheus adds (job, instance, and those prometheus.yml's relabelling sets).
fn allowed_labels(defs: &Definitions) -> BTreeSet<String> {
    let mut allowed = defs.labels.clone();
    allowed.extend(["le", "job", "instance"].map(str::to_owned));
    let prometheus = &yaml_documents(&root().join("deploy/prometheus/prometheus.yml"))[0];
    for job in seq(&prometheus["scrape_configs"], "scrape_configs") {
        for relabel in job["relabel_configs"].as_sequence().into_iter().flatten() {
            if let Some(label) = relabel["target_label"].as_str() {
                if !label.starts_with("__") {
                    allowed.insert(label.to_owned());
                }
            }
        }
    }
    allowed
}

fn check_names(
    what: &str,
    text: &str,
    exported: &BTreeSet<String>,
    allowed: &BTreeSet<String>,
    labels: bool,
) {
    for name in metric_tokens(text) {
        assert!(
            exported.contains(&name),
            "{what} uses {name}, which leadsync does not export: {text}"
        );
    }
    if labels {
        for label in label_tokens(text) {
            assert!(
                allowed.contains(&label),
                "{what} uses the label {label}, which no leadsync series has ({allowed:?}): {text}"
            );
        }
    }
}

#[test]
fn alert_rules_use_exported_metrics_and_labels() {
    let defs = definitions();
    let exported = exported_names(&defs);
    let allowed = allowed_labels(&defs);
    // Prose may name a histogram by its own name rather than by one of its series.
    let mut named = exported.clone();
    named.extend(defs.metrics.values().cloned());
    let rules_file = &yaml_documents(&root().join("deploy/prometheus/alerts.yml"))[0];
    let mut used = BTreeSet::new();
    let mut alerts = 0;
    for group in seq(&rules_file["groups"], "groups") {
        for rule in seq(&group["rules"], "rules") {
            let name = str_of(&rule["alert"], "alert name");
            alerts += 1;
            let expr = str_of(&rule["expr"], "expr");
            check_names(name, expr, &exported, &allowed, true);
            used.extend(metric_tokens(expr));
            assert!(
                rule["labels"]["severity"].as_str().is_some(),
                "{name} has a severity"
            );
            for key in ["summary", "description"] {
                let text = str_of(&rule["annotations"][key], key);
                check_names(name, text, &named, &allowed, false);
                for (at, _) in text.match_indices("$labels.") {
                    let label: String = text[at + 8..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    assert!(
                        allowed.contains(&label),
                        "{name} {key} uses $labels.{label}"
                    );
                }
            }
            if expr.contains("up{") {
                used.insert("up".to_owned());
            }
        }
    }
    assert!(alerts >= 6, "alert rules found: {alerts}");
    use leadsync::metrics as m;
    for needed in [
        m::LAG_SECONDS,
        m::LAG_BYTES,
        m::PAUSED,
        m::DEAD_LETTERS_PENDING,
        m::SLOT_RETAINED_BYTES,
        m::ERRORS_TOTAL,
        m::FAILED,
        "up",
    ] {
        assert!(used.contains(needed), "no alert on {needed}");
    }
}

/// Every `expr` in the dashboard's panels.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dashboard];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(expr)) = map.get("expr") {
                    out.push(expr.clone());
                }
                stack.extend(map.values());
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    out
}

#[test]
fn dashboard_uses_exported_metrics_and_valid_queries() {
    let defs = definitions();
    let exported = exported_names(&defs);
    let allowed = allowed_labels(&defs);
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/leadsync.json")).expect("the dashboard is JSON");
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    let queries = dashboard_queries(&dashboard);
    assert!(
        queries.len() >= 10,
        "dashboard queries found: {}",
        queries.len()
    );
    let mut used = BTreeSet::new();
    for q in &queries {
        check_names("the dashboard", q, &exported, &allowed, true);
        used.extend(metric_tokens(q));
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(q) = var["query"]["query"].as_str() {
            check_names("a dashboard variable", q, &exported, &allowed, true);
        }
    }
    use leadsync::metrics as m;
    let bucket = format!("{}_bucket", m::APPLY_SECONDS);
    for needed in [
        m::LAG_SECONDS,
        m::LAG_BYTES,
        m::CHANGES_TOTAL,
        m::TRANSACTIONS_TOTAL,
        bucket.as_str(),
        m::ERRORS_TOTAL,
        m::DEAD_LETTERS_TOTAL,
    ] {
        assert!(used.contains(needed), "no dashboard panel shows {needed}");
    }
    assert!(
        queries
            .iter()
            .any(|q| q.contains(m::CHANGES_TOTAL) && q.contains("by (table, op)")),
        "changes are shown by table and op"
    );

    // The queries are valid PromQL: promtool checks them as recording rules, with the
    // dashboard's variables filled in.
    let mut rules = Vec::new();
    for (i, q) in queries.iter().enumerate() {
        let expr = q
            .replace("$__rate_interval", "5m")
            .replace("$namespace", "crm")
            .replace("$app", "crm");
        assert!(!expr.contains('$'), "an unknown dashboard variable in {q}");
        let mut rule = serde_yaml::Mapping::new();
        rule.insert("record".into(), format!("dashboard:query_{i}").into());
        rule.insert("expr".into(), expr.into());
        rules.push(Value::Mapping(rule));
    }
    let mut group = serde_yaml::Mapping::new();
    group.insert("name".into(), "dashboard".into());
    group.insert("rules".into(), Value::Sequence(rules));
    let mut file = serde_yaml::Mapping::new();
    file.insert(
        "groups".into(),
        Value::Sequence(vec![Value::Mapping(group)]),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("dashboard-queries.yml");
    std::fs::write(&path, serde_yaml::to_string(&file).unwrap()).expect("write the rules");
    run_tool("promtool", &["check", "rules", path.to_str().unwrap()]);
}
