//! Where this process runs, which decides what `localhost` and `host.docker.internal` mean: a
//! host, the compose project's own container, a development container, a Kubernetes pod; and the
//! evidence that reading is taken from, the workspace's own cluster among it.

use std::path::{Path, PathBuf};

use crate::base::workspace::root;

/// Where this process runs; it decides what `localhost` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeContext {
    Host,
    Container,
    Kubernetes,
}

/// What this process can see of where it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Evidence {
    /// `KUBERNETES_SERVICE_HOST` is set, or a service account is mounted.
    pub kubernetes: bool,
    /// The markers container engines leave: `/.dockerenv`, `/run/.containerenv`, cgroups.
    pub container: bool,
    /// This binary runs from a workspace checkout (its `Cargo.toml` and `xtask/`), not from an
    /// image's `/app`: a developer's machine, or a development container (VS Code, Codespaces, a
    /// Docker-in-Docker runner), where `localhost` is where the developer's tools run.
    pub checkout: bool,
}

impl Evidence {
    pub fn gather(in_kubernetes: bool) -> Evidence {
        let kubernetes = in_kubernetes || Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token").exists();
        let marker = Path::new("/.dockerenv").exists() || Path::new("/run/.containerenv").exists();
        let cgroup = std::fs::read_to_string("/proc/1/cgroup").unwrap_or_default();
        let engine = ["docker", "containerd", "kubepods", "libpod"].iter().any(|name| cgroup.contains(name));
        let root = crate::base::workspace::root();
        let checkout = root.join("Cargo.toml").is_file() && root.join("xtask").is_dir();
        Evidence { kubernetes, container: marker || engine, checkout }
    }

    /// The reading taken: a pod; the compose project's own container (an image, no checkout); a
    /// development container (a checkout in a container), judged as a host, whose `localhost` and
    /// `host.docker.internal` are this container, where its developer runs the database; a host.
    pub fn reading(self) -> RuntimeContext {
        match self {
            Evidence { kubernetes: true, .. } => RuntimeContext::Kubernetes,
            Evidence { container: true, checkout: false, .. } => RuntimeContext::Container,
            _ => RuntimeContext::Host,
        }
    }

    /// Said where the evidence is split (a container, and a workspace checkout in it).
    pub fn split(self) -> bool {
        self.container && self.checkout && !self.kubernetes
    }
}

impl RuntimeContext {
    /// The reading of the evidence (see [`Evidence::reading`]).
    pub fn detect(in_kubernetes: bool) -> Self {
        Evidence::gather(in_kubernetes).reading()
    }
}

/// What a diagnosis that depends on the context says of it, so that a wrong reading can be set
/// right: the reading taken, why, and the `--context` that takes the other.
pub fn context_note(context: RuntimeContext) -> String {
    match context {
        RuntimeContext::Container => "judged from inside a container (the compose project's own, as prestart's): \
                                      `--context host` judges it as this machine's tools"
            .into(),
        RuntimeContext::Kubernetes => {
            "judged from inside a Kubernetes pod (`--context host|container` to judge otherwise)".into()
        }
        RuntimeContext::Host if Evidence::gather(false).split() => "judged as a development container: this is a \
            container, but runs from a workspace checkout, so localhost and host.docker.internal are taken as this \
            container, where its tools and their database run (`--context container` judges it as the compose \
            project's own container)"
            .into(),
        RuntimeContext::Host => {
            "judged as this machine (`--context container` judges it from inside a container)".into()
        }
    }
}

/// Whether this machine's `/etc/hosts` maps `name`: what `--add-host` and compose's `extra_hosts`
/// write in a container (a development container's `runArgs`, say), and Docker Desktop on its
/// host. Read once a run.
pub fn hosts_file_maps(name: &str) -> bool {
    static HOSTS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let text = HOSTS.get_or_init(|| std::fs::read_to_string("/etc/hosts").unwrap_or_default());
    hosts_text_maps(text, name)
}

/// Whether the hosts file `text` has an entry for `name` (any of a line's names, comments aside).
pub fn hosts_text_maps(text: &str, name: &str) -> bool {
    text.lines().any(|line| {
        let entry = line.split('#').next().unwrap_or_default();
        entry.split_whitespace().skip(1).any(|listed| listed.eq_ignore_ascii_case(name))
    })
}

pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        || host.starts_with('/')
}

/// Where the cluster of `dir` lives when the server user cannot reach `dir`.
pub fn fallback_dir(dir: &Path) -> PathBuf {
    let name: String = dir.to_string_lossy().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    PathBuf::from("/var/tmp").join(format!("prestart{name}"))
}

/// The port of this workspace's local cluster (running or not), in `target/dev-db/` or its
/// fallback, as its last start wrote it: a fact that decides which likely cause of a refused
/// connection comes first. Looks at files only.
pub fn workspace_cluster_port() -> Option<u16> {
    let dir = root().join("target").join("dev-db");
    [dir.join("data"), fallback_dir(&dir).join("data")].iter().find_map(|data| {
        let conf = std::fs::read_to_string(data.join("postgresql.auto.conf")).ok()?;
        conf.lines().find_map(|line| line.strip_prefix("port = ")?.trim().parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::{Evidence, RuntimeContext, hosts_text_maps};

    #[test]
    fn a_hosts_file_maps_a_name_on_any_of_its_entries_lines_not_in_comments() {
        let text = "127.0.0.1 localhost\n# 10.0.0.1 host.docker.internal\n172.17.0.1\tdocker host.docker.internal\n";
        assert!(hosts_text_maps(text, "host.docker.internal"));
        assert!(hosts_text_maps(text, "LOCALHOST"));
        assert!(!hosts_text_maps("# 10.0.0.1 host.docker.internal\n", "host.docker.internal"));
        assert!(!hosts_text_maps("172.17.0.1 host.docker.internal.example\n", "host.docker.internal"));
    }

    #[test]
    fn a_checkout_in_a_container_is_a_development_container_and_an_image_is_the_compose_container() {
        let e = |kubernetes, container, checkout| Evidence { kubernetes, container, checkout };
        assert_eq!(e(false, true, false).reading(), RuntimeContext::Container);
        assert_eq!(e(false, true, true).reading(), RuntimeContext::Host);
        assert!(e(false, true, true).split());
        assert_eq!(e(false, false, true).reading(), RuntimeContext::Host);
        assert!(!e(false, false, true).split());
        assert_eq!(e(true, true, false).reading(), RuntimeContext::Kubernetes);
        assert_eq!(e(true, true, true).reading(), RuntimeContext::Kubernetes);
    }
}
