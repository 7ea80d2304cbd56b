//! The deployment files agree with the code: they parse, every `BACKLESS_*` setting they set is
//! one the services read, compose's build targets and the binaries the Dockerfile copies exist,
//! ports match listen addresses, and kustomize's resources are present. (`docker compose config`
//! runs too where the compose client is installed; no engine is needed.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn yaml_docs(rel: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    let text = read(rel);
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .collect()
}

/// `BACKLESS_[A-Z0-9_]+` words in `text`.
fn setting_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("BACKLESS_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// Every `"BACKLESS_…"` string literal in the services' sources: the settings they read.
fn settings_read_by_code() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for name in setting_names(&text) {
                    if text.contains(&format!("\"{name}\"")) {
                        out.insert(name);
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    for krate in ["common/src", "web/src", "worker/src"] {
        walk(&root().join(krate), &mut out);
    }
    // The build scripts' own variables (model cache, importer binary).
    for entry in std::fs::read_dir(root().join("scripts")).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "sh") {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            out.extend(
                setting_names(&text).into_iter().filter(|n| {
                    text.contains(&format!("${{{n}")) || text.contains(&format!("${n}"))
                }),
            );
        }
    }
    out
}

fn dockerfile_targets() -> BTreeSet<String> {
    read("Dockerfile")
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect()
}

#[test]
fn every_setting_in_deploy_files_is_read_by_the_code() {
    let known = settings_read_by_code();
    assert!(
        known.contains("BACKLESS_DATABASE_URL") && known.len() > 20,
        "{known:?}"
    );
    let mut files = vec![
        "Dockerfile".to_string(),
        "docker-compose.yml".into(),
        "cloudbuild.yaml".into(),
    ];
    for entry in std::fs::read_dir(root().join("k8s")).unwrap().flatten() {
        files.push(format!("k8s/{}", entry.file_name().to_string_lossy()));
    }
    let mut unknown = Vec::new();
    for f in &files {
        for name in setting_names(&read(f)) {
            if !known.contains(&name) {
                unknown.push(format!("{f}: {name}"));
            }
        }
    }
    assert!(unknown.is_empty(), "settings no service reads: {unknown:?}");
}

#[test]
fn compose_services_build_existing_targets() {
    let targets = dockerfile_targets();
    for t in ["web", "worker", "emulator", "s3"] {
        assert!(
            targets.contains(t),
            "Dockerfile has no `{t}` stage: {targets:?}"
        );
    }
    let compose = &yaml_docs("docker-compose.yml")[0];
    let services = compose["services"].as_mapping().expect("services");
    for name in ["web", "worker", "emulator", "postgres", "redis", "s3"] {
        assert!(
            services.contains_key(name),
            "compose lacks the {name} service"
        );
    }
    for (name, svc) in services {
        if let Some(target) = svc["build"]["target"].as_str() {
            assert!(
                targets.contains(target),
                "{name:?} builds unknown target {target}"
            );
        }
    }
    // Images live in the compose S3 server's bucket, reached by both services alike (their
    // settings come through the `<<: *backless` merge key).
    let mut merged = compose.clone();
    merged.apply_merge().expect("merge keys");
    for name in ["web", "worker"] {
        let env = &merged["services"][name]["environment"];
        let url = env["BACKLESS_STORAGE_URL"].as_str().unwrap_or_default();
        let bucket = url
            .strip_prefix("s3://")
            .and_then(|u| u.split('/').next())
            .unwrap_or_else(|| panic!("{name} does not store in S3: {url:?}"));
        assert_eq!(
            services["s3"]["environment"]["S3_BUCKET"].as_str(),
            Some(bucket),
            "{name} uses a bucket the s3 service does not create"
        );
        assert_eq!(env["AWS_ENDPOINT"].as_str(), Some("http://s3:9000"));
        assert_eq!(
            env["AWS_ACCESS_KEY_ID"],
            services["s3"]["environment"]["S3_ACCESS_KEY"]
        );
        assert_eq!(
            env["AWS_SECRET_ACCESS_KEY"],
            services["s3"]["environment"]["S3_SECRET_KEY"]
        );
    }
    // The worker's OIDC audience is what web asks the queue to put in tokens.
    assert_eq!(
        services["worker"]["environment"]["BACKLESS_PUSH_OIDC_AUDIENCE"],
        services["web"]["environment"]["BACKLESS_TASKS_AUDIENCE"]
    );
    // Where the compose client is installed, let it validate the file too.
    let has_compose = std::process::Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_compose {
        let out = std::process::Command::new("docker")
            .args(["compose", "config", "--quiet"])
            .current_dir(root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn dockerfile_copies_binaries_that_exist() {
    let mut bins = BTreeSet::new();
    for manifest in ["web/Cargo.toml", "worker/Cargo.toml", "emulator/Cargo.toml"] {
        let mut in_bin = false;
        for line in read(manifest).lines() {
            if line.starts_with('[') {
                in_bin = line == "[[bin]]";
            } else if in_bin && let Some(v) = line.strip_prefix("name = ") {
                bins.insert(v.trim_matches('"').to_string());
            }
        }
    }
    let docker = read("Dockerfile");
    let copied: Vec<&str> = docker
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("target/release/"))
        .collect();
    assert_eq!(copied.len(), 3, "{copied:?}");
    for b in copied {
        assert!(
            bins.contains(b),
            "Dockerfile copies {b}, not a binary: {bins:?}"
        );
    }
    assert!(
        docker.contains("USER 10001"),
        "runtime images must not run as root"
    );
}

#[test]
fn kubernetes_manifests_are_consistent() {
    let kustomization = &yaml_docs("k8s/kustomization.yaml")[0];
    for r in kustomization["resources"].as_sequence().unwrap() {
        let f = r.as_str().unwrap();
        assert!(root().join("k8s").join(f).is_file(), "k8s/{f} missing");
    }
    for file in ["k8s/web.yaml", "k8s/worker.yaml"] {
        let docs = yaml_docs(file);
        let deployment = docs
            .iter()
            .find(|d| d["kind"] == "Deployment")
            .expect("a Deployment");
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let port = container["ports"][0]["containerPort"].as_u64().unwrap();
        let addr = container["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|e| e["name"].as_str().is_some_and(|n| n.ends_with("_ADDR")))
            .and_then(|e| e["value"].as_str())
            .expect("a listen address");
        assert_eq!(addr, format!("0.0.0.0:{port}"), "{file}");
        for probe in ["readinessProbe", "livenessProbe"] {
            assert!(
                container[probe]["httpGet"]["path"].is_string(),
                "{file} {probe}"
            );
        }
        let service = docs
            .iter()
            .find(|d| d["kind"] == "Service")
            .expect("a Service");
        assert_eq!(
            service["spec"]["selector"], deployment["spec"]["selector"]["matchLabels"],
            "{file}"
        );
    }
    let cloudbuild = &yaml_docs("cloudbuild.yaml")[0];
    assert!(cloudbuild["steps"].as_sequence().unwrap().len() >= 4);
    let key: serde_json::Value = serde_json::from_str(&read("key.json.example")).unwrap();
    assert_eq!(key["type"], "service_account");
}

#[test]
fn deploy_files_are_safe_as_shipped() {
    let compose = &yaml_docs("docker-compose.yml")[0];
    let services = &compose["services"];
    // Web is published on loopback only; the emulator (which signs tokens and fetches URLs for
    // whoever reaches it) is published nowhere.
    for port in services["web"]["ports"].as_sequence().unwrap() {
        let port = port.as_str().unwrap();
        assert!(
            port.starts_with("127.0.0.1:"),
            "web published beyond loopback: {port}"
        );
    }
    assert!(
        services["emulator"]["ports"].is_null(),
        "the emulator is published"
    );
    // The cookie secret comes from the environment, with no committed default.
    let secret = services["web"]["environment"]["BACKLESS_COOKIE_SECRET"]
        .as_str()
        .unwrap();
    assert!(
        secret.starts_with("${BACKLESS_COOKIE_SECRET:?"),
        "compose commits a cookie secret: {secret}"
    );
    // Behind a proxy, quotas count the client's address, not the proxy's.
    let web = yaml_docs("k8s/web.yaml");
    let deployment = web.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_sequence()
        .unwrap();
    assert!(
        env.iter().any(|e| e["name"] == "BACKLESS_CLIENT_IP_HEADER"),
        "k8s web does not read the client address header"
    );
    let cloudbuild = read("cloudbuild.yaml");
    let web_deploy = cloudbuild
        .split("--set-env-vars")
        .find(|part| part.contains("BACKLESS_COOKIE_SECURE"))
        .expect("web's Cloud Run settings");
    assert!(web_deploy.contains("BACKLESS_CLIENT_IP_HEADER=X-Forwarded-For"));
    // The worker on Cloud Run checks tokens against Google's issuer: it names the account.
    let worker_deploy = cloudbuild
        .split("--set-env-vars")
        .find(|part| part.contains("BACKLESS_PUSH_OIDC_AUDIENCE"))
        .expect("worker's Cloud Run settings");
    assert!(worker_deploy.contains("BACKLESS_PUSH_OIDC_EMAIL="));
}
