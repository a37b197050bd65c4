//! Placement, proven by the real kube-scheduler: for each placement profile, with the fake
//! Nodes of that provider (`tests/cluster/nodes.sh`), Ray pods of each market type, in a
//! zone, and with an accelerator are bound only to a Node of the matching pool, and the
//! scheduler finds no other Node for them; a shape no Node can hold stays Pending with the
//! scheduler's reason.

use rayshape_e2e::{Cluster, exclusive, wait_until};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const PROFILES: [&str; 5] = ["generic", "eks", "karpenter", "gke", "aks"];

/// An instance type no fake Node (16 CPUs, 64Gi) can hold.
const HUGE: &str = "huge-64CPU-512GB";

/// Puts the cluster back as up.sh left it (its profile's Nodes and settings, no extra
/// instance types), also when the test fails.
struct Restore<'c> {
    c: &'c Cluster,
    instance_types: Option<String>,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        let restored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.c.use_nodes(&self.c.nodes, None);
            self.c.set_webhook_settings(&self.c.default_settings());
            self.c
                .set_webhook_file("instance_types.yaml", self.instance_types.as_deref());
        }));
        // A second panic while the test's own unwinds would abort the whole run.
        if restored.is_err() && !std::thread::panicking() {
            panic!(
                "the cluster could not be restored to its {} profile",
                self.c.nodes
            );
        }
    }
}

/// One placement to check: a Ray pod's labels, and the pool (and zone) it must land in.
struct Case {
    name: &'static str,
    labels: Value,
    pool: &'static str,
    zone: Option<String>,
    /// Pools the pod may also use when its own has no room (PREFER_SPOT: on-demand).
    fallback: &'static [&'static str],
    /// How many such pods (a preference is only seen across several).
    replicas: usize,
}

impl Case {
    fn names(&self) -> Vec<String> {
        (0..self.replicas)
            .map(|i| match i {
                0 => self.name.to_string(),
                i => format!("{}-{i}", self.name),
            })
            .collect()
    }
}

/// A Ray pod of this run: it tolerates and requires the run's Nodes (`Cluster::use_nodes`),
/// and `away` adds requirements to its node-affinity term, which the profile's own are
/// ANDed into.
fn pod(run: &str, name: &str, labels: &Value, away: Option<Value>) -> Value {
    let mut term = vec![json!({"key": "rayshape.test/run", "operator": "In", "values": [run]})];
    if let Some(Value::Array(more)) = away {
        term.extend(more);
    }
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "containers": [{"name": "ray", "image": "rayproject/ray:2.52.0",
                "command": ["/bin/bash", "-c", "--"], "args": ["ray start --address=head:6379 --block"]}],
            "tolerations": [{"key": "rayshape.test/run", "operator": "Equal", "value": run, "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [{"matchExpressions": term}]}}}}})
}

/// The pod's PodScheduled condition, once the scheduler has tried.
fn scheduled_condition(c: &Cluster, ns: &str, name: &str) -> Option<Value> {
    let p = c.json(&["get", "pod", name, "-n", ns]);
    p["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|x| x["type"] == "PodScheduled")
        .cloned()
}

/// Wait until the scheduler has given up on a pod; its message.
fn unschedulable(c: &Cluster, ns: &str, name: &str) -> String {
    let mut message = String::new();
    wait_until(
        Duration::from_secs(60),
        &format!("the scheduler to find no node for {ns}/{name}"),
        || match scheduled_condition(c, ns, name) {
            Some(cond) if cond["status"] == "False" && cond["reason"] == "Unschedulable" => {
                message = cond["message"].as_str().unwrap_or_default().to_string();
                true
            }
            Some(cond) if cond["status"] == "True" => panic!(
                "{ns}/{name} was bound to {}, which it must not be",
                c.ok(
                    &[
                        "get",
                        "pod",
                        name,
                        "-n",
                        ns,
                        "-o",
                        "jsonpath={.spec.nodeName}"
                    ],
                    None
                )
            ),
            _ => false,
        },
    );
    assert_eq!(
        c.ok(
            &[
                "get",
                "pod",
                name,
                "-n",
                ns,
                "-o",
                "jsonpath={.spec.nodeName}"
            ],
            None
        ),
        ""
    );
    message
}

fn node_labels(c: &Cluster) -> BTreeMap<String, Value> {
    let nodes = c.json(&["get", "nodes", "-l", "rayshape.test/fake-node=true"]);
    nodes["items"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["metadata"]["name"].as_str().unwrap().to_string(),
                n["metadata"]["labels"].clone(),
            )
        })
        .collect()
}

/// Every placement of one profile; the problems found.
fn check_profile(c: &Cluster, profile: &str, stamp: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let run = format!("{profile}-{stamp}");
    let run = run.as_str();
    c.use_nodes(profile, Some(run));
    c.set_webhook_settings(&format!("profile: {profile}\n"));
    let nodes = node_labels(c);
    // The zones, read from the Nodes themselves.
    let mut zones: Vec<String> = nodes
        .values()
        .filter_map(|l| {
            l["topology.kubernetes.io/zone"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    zones.sort();
    zones.dedup();
    assert_eq!(zones.len(), 2, "{profile}: zones {zones:?}");
    let ns = c.namespace(&format!("sched-{profile}"));
    let typed = |t: &str, more: Value| {
        let mut l = json!({"rayshape.io/instance-type": t});
        l.as_object_mut()
            .unwrap()
            .extend(more.as_object().cloned().unwrap_or_default());
        l
    };
    let cases = vec![
        Case {
            name: "default-market",
            labels: typed("2CPU-8GB", json!({})),
            pool: "on-demand",
            zone: None,
            fallback: &[],
            replicas: 1,
        },
        Case {
            name: "on-demand",
            labels: typed("2CPU-8GB", json!({"rayshape.io/market-type": "ON_DEMAND"})),
            pool: "on-demand",
            zone: None,
            fallback: &[],
            replicas: 1,
        },
        Case {
            name: "spot",
            labels: typed("2CPU-8GB", json!({"rayshape.io/market-type": "SPOT"})),
            pool: "spot",
            zone: None,
            fallback: &[],
            replicas: 1,
        },
        Case {
            name: "prefer-spot",
            labels: typed(
                "2CPU-8GB",
                json!({"rayshape.io/market-type": "PREFER_SPOT"}),
            ),
            pool: "spot",
            zone: None,
            fallback: &["on-demand"],
            // All on spot while spot has room: a preference that is not there would put
            // each on either pool.
            replicas: 4,
        },
        Case {
            name: "on-demand-zone",
            labels: typed(
                "4CPU-16GB",
                json!({"rayshape.io/market-type": "ON_DEMAND", "rayshape.io/zone": zones[1]}),
            ),
            pool: "on-demand",
            zone: Some(zones[1].clone()),
            fallback: &[],
            replicas: 1,
        },
        Case {
            name: "spot-zone",
            labels: typed(
                "4CPU-16GB",
                json!({"rayshape.io/market-type": "SPOT", "rayshape.io/zone": zones[0]}),
            ),
            pool: "spot",
            zone: Some(zones[0].clone()),
            fallback: &[],
            replicas: 1,
        },
        // One GPU per fake GPU Node: one pod in each zone.
        Case {
            name: "gpu-zone-a",
            labels: typed("8CPU-32GB-1xT4", json!({"rayshape.io/zone": zones[0]})),
            pool: "gpu",
            zone: Some(zones[0].clone()),
            fallback: &[],
            replicas: 1,
        },
        Case {
            name: "gpu-zone-b",
            labels: typed("8CPU-32GB-1xT4", json!({"rayshape.io/zone": zones[1]})),
            pool: "gpu",
            zone: Some(zones[1].clone()),
            fallback: &[],
            replicas: 1,
        },
    ];
    for case in &cases {
        for name in case.names() {
            c.ok(
                &["create", "-n", &ns, "-f", "-"],
                Some(&pod(run, &name, &case.labels, None).to_string()),
            );
        }
        // The same pod, kept away from its pool (and zone): the scheduler must find no
        // other node for it. Its own term is ANDed with what the profile adds.
        let mut allowed: Vec<&str> = vec![case.pool];
        allowed.extend(case.fallback);
        let away = json!([{"key": "rayshape.test/pool", "operator": "NotIn", "values": allowed}]);
        c.ok(
            &["create", "-n", &ns, "-f", "-"],
            Some(
                &pod(
                    run,
                    &format!("{}-elsewhere", case.name),
                    &case.labels,
                    Some(away),
                )
                .to_string(),
            ),
        );
        if let Some(z) = &case.zone {
            let other_zone =
                json!([{"key": "topology.kubernetes.io/zone", "operator": "NotIn", "values": [z]}]);
            c.ok(
                &["create", "-n", &ns, "-f", "-"],
                Some(
                    &pod(
                        run,
                        &format!("{}-other-zone", case.name),
                        &case.labels,
                        Some(other_zone),
                    )
                    .to_string(),
                ),
            );
        }
    }
    for case in &cases {
        for name in case.names() {
            let mut node = String::new();
            let bound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                wait_until(
                    Duration::from_secs(60),
                    &format!("{profile}: {ns}/{name} to be bound"),
                    || {
                        node = c.ok(
                            &[
                                "get",
                                "pod",
                                &name,
                                "-n",
                                &ns,
                                "-o",
                                "jsonpath={.spec.nodeName}",
                            ],
                            None,
                        );
                        !node.is_empty()
                    },
                );
            }));
            if bound.is_err() {
                let cond = scheduled_condition(c, &ns, &name);
                problems.push(format!(
                    "{profile}/{name}: not bound: {}",
                    cond.map_or_else(|| "no PodScheduled condition".into(), |c| c.to_string())
                ));
                continue;
            }
            let labels = &nodes[&node];
            let pool = labels["rayshape.test/pool"].as_str().unwrap_or_default();
            if pool != case.pool {
                problems.push(format!(
                    "{profile}/{name}: bound to {node} of pool {pool}, not {} (labels {})",
                    case.pool, case.labels
                ));
            }
            if let Some(z) = &case.zone
                && labels["topology.kubernetes.io/zone"] != json!(z)
            {
                problems.push(format!(
                    "{profile}/{name}: bound to {node} in zone {}, not {z}",
                    labels["topology.kubernetes.io/zone"]
                ));
            }
        }
        let message = unschedulable(c, &ns, &format!("{}-elsewhere", case.name));
        if !message.contains("0/6 nodes are available") {
            problems.push(format!(
                "{profile}/{}-elsewhere: unexpected scheduler message {message:?}",
                case.name
            ));
        }
        if case.zone.is_some() {
            unschedulable(c, &ns, &format!("{}-other-zone", case.name));
        }
    }
    // A shape no node can hold: Pending, with the scheduler's reason.
    c.ok(
        &["create", "-n", &ns, "-f", "-"],
        Some(&pod(run, "huge", &typed(HUGE, json!({})), None).to_string()),
    );
    let message = unschedulable(c, &ns, "huge");
    if !(message.contains("Insufficient cpu") && message.contains("Insufficient memory")) {
        problems.push(format!(
            "{profile}/huge: the scheduler's reason does not name the shape: {message:?}"
        ));
    }
    let events = c.json(&[
        "get",
        "events",
        "-n",
        &ns,
        "--field-selector",
        "involvedObject.name=huge,reason=FailedScheduling",
    ]);
    if events["items"].as_array().is_none_or(Vec::is_empty) {
        problems.push(format!("{profile}/huge: no FailedScheduling Event"));
    }
    // Done with this profile's pods: the scheduler need not retry them on every new Node.
    c.ok(
        &[
            "delete",
            "pods",
            "--all",
            "-n",
            &ns,
            "--force",
            "--grace-period=0",
            "--wait=false",
        ],
        None,
    );
    problems
}

#[test]
fn every_profile_places_ray_pods_only_on_the_matching_pool() {
    let c = Cluster::get();
    let _x = exclusive();
    let instance_types = c.set_webhook_file(
        "instance_types.yaml",
        Some(&format!(
            "{}{HUGE}:\n  resources: {{CPU: 64, memory: 512Gi}}\n",
            DEFAULT_TYPES
        )),
    );
    let _restore = Restore {
        c: &c,
        instance_types,
    };
    let stamp = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            & 0xff_ffff
    );
    let mut problems = Vec::new();
    for profile in PROFILES {
        problems.extend(check_profile(&c, profile, &stamp));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The Anyscale chart's defaults, which the built-in configuration has too.
const DEFAULT_TYPES: &str = "\
2CPU-8GB:
  resources: {CPU: 2, memory: 8Gi}
4CPU-16GB:
  resources: {CPU: 4, memory: 16Gi}
8CPU-32GB:
  resources: {CPU: 8, memory: 32Gi}
8CPU-32GB-1xT4:
  resources: {CPU: 8, GPU: 1, memory: 32Gi, accelerators: [T4]}
";
