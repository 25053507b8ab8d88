//! The architecture's dependency rules, checked on the real crate graph (`cargo metadata`).
//!
//! A forbidden edge fails here, naming the path that makes it: a rule kept by Cargo, not by
//! habit. The rules (ARCHITECTURE.md, "Code map"):
//! - `eventlog` and `bitlocker` reach neither `swtpm` nor `tss-esapi`;
//! - `portal-client` reaches neither the harness (scenarios, runner) nor `portal-under-test`;
//! - only `benches` (and the fuzz crates, outside the workspace) link `portal-under-test`;
//! - `eventlog` and `bitlocker` know nothing of each other, `swtpm` nothing of either (nor of
//!   `device`, `portal-client`, the harness), the portal nothing of TPMs or the harness;
//! - of the harness's crates only `device` uses `swtpm` (tests and benches may); only the
//!   portal uses `anyhow`;
//! - `swtpm` offers no process supervision beyond its own process: it uses `supervise`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::process::Command;

use serde_json::Value;

use crate::common::workspace_root;

/// The resolved graph: package name -> (dependency name, kinds: normal, dev, build).
struct Graph {
    deps: BTreeMap<String, Vec<(String, Vec<String>)>>,
    members: BTreeSet<String>,
}

fn metadata() -> Graph {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(workspace_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let name_of: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let members = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| name_of[id.as_str().unwrap()].to_string())
        .collect();
    let mut deps = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().unwrap() {
        let from = name_of[node["id"].as_str().unwrap()].to_string();
        let edges = node["deps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                let kinds = d["dep_kinds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k["kind"].as_str().unwrap_or("normal").to_string())
                    .collect();
                (name_of[d["pkg"].as_str().unwrap()].to_string(), kinds)
            })
            .collect::<Vec<_>>();
        deps.entry(from).or_insert_with(Vec::new).extend(edges);
    }
    Graph { deps, members }
}

impl Graph {
    /// The shortest path from `from` to `to` over the edges a build of `from` links: its own
    /// normal, build and (with `with_dev`) dev dependencies, then their normal and build ones.
    fn path(&self, from: &str, to: &str, with_dev: bool) -> Option<Vec<String>> {
        let mut came_from: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = VecDeque::from([from.to_string()]);
        while let Some(at) = queue.pop_front() {
            if at == to {
                let mut path = vec![at.clone()];
                let mut cur = at;
                while let Some(prev) = came_from.get(&cur) {
                    path.push(prev.clone());
                    cur = prev.clone();
                }
                path.reverse();
                return Some(path);
            }
            for (dep, kinds) in self.deps.get(&at).into_iter().flatten() {
                let linked = kinds.iter().any(|k| k != "dev") || (with_dev && at == from);
                if linked && dep != from && !came_from.contains_key(dep) {
                    came_from.insert(dep.clone(), at.clone());
                    queue.push_back(dep.clone());
                }
            }
        }
        None
    }

    /// Whether `from` has `to` as a normal or build dependency of its own.
    fn direct(&self, from: &str, to: &str) -> bool {
        self.deps
            .get(from)
            .into_iter()
            .flatten()
            .any(|(dep, kinds)| dep == to && kinds.iter().any(|k| k != "dev"))
    }

    fn forbid(&self, from: &str, to: &str, problems: &mut Vec<String>) {
        assert!(
            self.members.contains(from),
            "{from} is not a workspace member"
        );
        if let Some(path) = self.path(from, to, true) {
            let problem = format!(
                "{from} must not reach {to}, but does: {}",
                path.join(" -> ")
            );
            if !problems.contains(&problem) {
                problems.push(problem);
            }
        }
    }
}

/// Our library crates (the harness's library too: its binary keeps typed errors).
const LIBRARIES: [&str; 7] = [
    "supervise",
    "swtpm",
    "eventlog",
    "bitlocker",
    "device",
    "portal-client",
    "harness",
];

/// Every forbidden edge of the graph, as sentences naming the offending path.
fn forbidden_edges(graph: &Graph) -> Vec<String> {
    let mut problems = Vec::new();
    for lower in ["eventlog", "bitlocker"] {
        for tpm in ["swtpm", "tss-esapi"] {
            graph.forbid(lower, tpm, &mut problems);
        }
    }
    for upper in ["harness", "portal-under-test"] {
        graph.forbid("portal-client", upper, &mut problems);
    }
    for member in &graph.members {
        if member != "benches" && member != "portal-under-test" {
            graph.forbid(member, "portal-under-test", &mut problems);
        }
    }
    // Each knows nothing of the other: `device` joins them.
    graph.forbid("eventlog", "bitlocker", &mut problems);
    graph.forbid("bitlocker", "eventlog", &mut problems);
    // The TPM crate offers mechanisms, never BitLocker or event-log meaning.
    for upper in [
        "eventlog",
        "bitlocker",
        "device",
        "portal-client",
        "harness",
    ] {
        graph.forbid("swtpm", upper, &mut problems);
    }
    // The portal knows nothing of TPMs or of the harness.
    for other in ["swtpm", "tss-esapi", "device", "portal-client", "harness"] {
        graph.forbid("portal-under-test", other, &mut problems);
    }
    // The harness's code reaches a TPM only through `device` (its tests may spawn their own).
    for upper in ["harness", "portal-client", "supervise"] {
        if graph.direct(upper, "swtpm") {
            problems.push(format!(
                "{upper} uses swtpm: only device may (a dev-dependency is fine)"
            ));
        }
    }
    // Libraries return typed errors; `anyhow` is for the portal's binary.
    for library in LIBRARIES {
        if graph.direct(library, "anyhow") {
            problems.push(format!("{library} uses anyhow: only the portal binary may"));
        }
    }
    if graph.path("swtpm", "supervise", false).is_none() {
        problems.push("swtpm must start its processes through supervise".to_string());
    }
    problems
}

#[test]
fn the_crate_graph_has_no_forbidden_edge() {
    let graph = metadata();
    let problems = forbidden_edges(&graph);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `swtpm` supervises only its own `swtpm` processes: the spawner, the death signal and
/// any re-export of them live in `supervise` (what `cargo metadata` cannot see).
#[test]
fn swtpm_offers_no_process_supervision() {
    let src = workspace_root().join("swtpm/src");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for needle in [
            ".pre_exec(",
            "libc::",
            "pub use supervise",
            "fn spawn_supervised",
        ] {
            assert!(
                !text.contains(needle),
                "{} contains `{needle}`: process supervision belongs to crates/supervise",
                path.display()
            );
        }
    }
}
