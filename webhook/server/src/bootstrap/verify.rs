//! What a bootstrap must prove, checked on what the API server said: pure functions over a
//! TokenReview's status and the pod, so every rule is testable on its own.
//!
//! As SPIRE's `k8s_psat`, Vault's Kubernetes auth and Istio's CSR flow do: the token must be
//! authenticated for rayshape's audience (and the audience must come back), belong to a
//! service account, and be bound to a pod; that pod must exist with the same UID, not be
//! going away, and have been shaped by the webhook. Nothing the caller sends besides the
//! token is trusted.

use k8s_openapi::api::authentication::v1::TokenReviewStatus;
use k8s_openapi::api::core::v1::Pod;
use rayshape_engine::config::settings::Settings;

const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const NODE_NAME: &str = "authentication.kubernetes.io/node-name";
const SA_PREFIX: &str = "system:serviceaccount:";

/// Who the token says the caller is, once the API server vouched for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub namespace: String,
    pub service_account: String,
    pub pod: String,
    pub pod_uid: String,
    /// The node the pod was bound to when the token was minted, if it was.
    pub node: Option<String>,
}

/// Why a bootstrap is refused. Reasons never contain the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The API server did not authenticate the token (expired, invalidated, not a token).
    Unauthenticated(String),
    /// Authenticated, but not for rayshape's audience.
    WrongAudience {
        want: String,
        got: Vec<String>,
    },
    /// Not a service account (a user, a node).
    NotServiceAccount(String),
    /// A service-account token not bound to a pod.
    NotPodBound,
    /// A namespace whose pods the webhook does not shape (`namespaces` of `webhook.yaml`).
    NamespaceNotManaged(String),
    NamespaceNotAllowed(String),
    ServiceAccountNotAllowed(String),
    /// The pod no longer exists.
    PodGone {
        pod: String,
    },
    /// A pod of that name exists, but it is another one.
    PodRecreated {
        pod: String,
        token_uid: String,
        pod_uid: String,
    },
    /// The pod is being deleted.
    PodDeleting {
        pod: String,
    },
    /// The pod did not go through the webhook.
    NotShaped {
        pod: String,
        annotation: String,
    },
    /// The pod runs as another service account than the token's.
    ServiceAccountMismatch {
        pod: String,
        token: String,
        pod_sa: String,
    },
}

impl Refused {
    /// 401 when the token proves nothing, 403 when it proves an identity that may not
    /// bootstrap.
    pub fn status(&self) -> u16 {
        match self {
            Refused::Unauthenticated(_) | Refused::WrongAudience { .. } => 401,
            _ => 403,
        }
    }

    /// The metric label.
    pub fn label(&self) -> &'static str {
        if self.status() == 401 {
            "unauthenticated"
        } else {
            "forbidden"
        }
    }

    /// What the caller is told: the reason, except the API server's own words about a token
    /// it did not authenticate (they can name its authenticators), which only our log gets.
    pub fn public(&self) -> String {
        match self {
            Refused::Unauthenticated(_) => "the token was not authenticated by the API server (the webhook's log has its reason); the sidecar re-reads its projected token and retries".into(),
            _ => self.reason(),
        }
    }

    /// What was wrong, for the sidecar's log, the Event and ours.
    pub fn reason(&self) -> String {
        match self {
            Refused::Unauthenticated(why) => format!(
                "the token was not authenticated by the API server ({why}); the sidecar re-reads its projected token and retries"
            ),
            Refused::WrongAudience { want, got } => format!(
                "the token is not for audience {want:?} (it is for {got:?}); the sidecar's projected token must have audience {want:?} (webhook.yaml sidecar.tokenAudience)"
            ),
            Refused::NotServiceAccount(user) => format!(
                "the token belongs to {user:?}, not to a service account of a pod"
            ),
            Refused::NotPodBound => "the token is not bound to a pod; use the projected token the webhook mounts, not a secret-based or TokenRequest token without a bound pod".into(),
            Refused::NamespaceNotManaged(ns) => format!(
                "namespace {ns:?} is not one whose pods the webhook shapes (webhook.yaml namespaces), so its pods may not bootstrap"
            ),
            Refused::NamespaceNotAllowed(ns) => format!(
                "namespace {ns:?} may not bootstrap (webhook.yaml bootstrap.namespaces)"
            ),
            Refused::ServiceAccountNotAllowed(sa) => format!(
                "service account {sa:?} may not bootstrap (webhook.yaml bootstrap.serviceAccounts)"
            ),
            Refused::PodGone { pod } => format!("pod {pod} no longer exists"),
            Refused::PodRecreated { pod, token_uid, pod_uid } => format!(
                "pod {pod} has UID {pod_uid}, but the token was issued to UID {token_uid}: the pod was deleted and recreated"
            ),
            Refused::PodDeleting { pod } => format!("pod {pod} is being deleted"),
            Refused::NotShaped { pod, annotation } => format!(
                "pod {pod} was not shaped by the rayshape webhook (no {annotation} annotation); is the webhook registered for it?"
            ),
            Refused::ServiceAccountMismatch { pod, token, pod_sa } => format!(
                "pod {pod} runs as service account {pod_sa:?}, but the token belongs to {token:?}"
            ),
        }
    }
}

/// Check a TokenReview's status for rayshape's `audience`: who the caller is.
pub fn token(status: &TokenReviewStatus, audience: &str) -> Result<Caller, Refused> {
    if status.authenticated != Some(true) {
        let why = status
            .error
            .clone()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "no reason given".into());
        return Err(Refused::Unauthenticated(why));
    }
    let audiences = status.audiences.clone().unwrap_or_default();
    if !audiences.iter().any(|a| a == audience) {
        return Err(Refused::WrongAudience {
            want: audience.to_string(),
            got: audiences,
        });
    }
    let user = status.user.as_ref();
    let username = user.and_then(|u| u.username.clone()).unwrap_or_default();
    let Some((namespace, sa)) = username
        .strip_prefix(SA_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
    else {
        return Err(Refused::NotServiceAccount(username));
    };
    let extra = |key: &str| {
        user.and_then(|u| u.extra.as_ref())
            .and_then(|e| e.get(key))
            .and_then(|v| v.first())
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let (Some(pod), Some(pod_uid)) = (extra(POD_NAME), extra(POD_UID)) else {
        return Err(Refused::NotPodBound);
    };
    Ok(Caller {
        namespace: namespace.to_string(),
        service_account: sa.to_string(),
        pod,
        pod_uid,
        node: extra(NODE_NAME),
    })
}

/// Check the caller against `webhook.yaml`: its namespace must be one the webhook shapes pods
/// in (anyone who can create a Ray pod there gets its configuration anyway, so a pod that
/// only carries a forged `shaped` annotation gains nothing), then the allow-lists.
pub fn allowed(caller: &Caller, settings: &Settings) -> Result<(), Refused> {
    if !settings.manages_namespace(Some(&caller.namespace)) {
        return Err(Refused::NamespaceNotManaged(caller.namespace.clone()));
    }
    let allow = &settings.bootstrap;
    if !allow.namespaces.is_empty() && !allow.namespaces.contains(&caller.namespace) {
        return Err(Refused::NamespaceNotAllowed(caller.namespace.clone()));
    }
    let qualified = format!("{}/{}", caller.namespace, caller.service_account);
    if !allow.service_accounts.is_empty() && !allow.service_accounts.contains(&qualified) {
        return Err(Refused::ServiceAccountNotAllowed(qualified));
    }
    Ok(())
}

/// What the pod itself says about the caller, once it is found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodFacts {
    pub ray_cluster: String,
    pub ray_node_type: String,
    pub node: String,
}

/// Check the pod the token is bound to (`None`: it does not exist); `shaped` is the
/// annotation the webhook writes on every pod it shaped.
pub fn pod(caller: &Caller, pod: Option<&Pod>, shaped: &str) -> Result<PodFacts, Refused> {
    let name = format!("{}/{}", caller.namespace, caller.pod);
    let Some(pod) = pod else {
        return Err(Refused::PodGone { pod: name });
    };
    let meta = &pod.metadata;
    let uid = meta.uid.clone().unwrap_or_default();
    if uid != caller.pod_uid {
        return Err(Refused::PodRecreated {
            pod: name,
            token_uid: caller.pod_uid.clone(),
            pod_uid: uid,
        });
    }
    if meta.deletion_timestamp.is_some() {
        return Err(Refused::PodDeleting { pod: name });
    }
    let pod_sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    if pod_sa != caller.service_account {
        return Err(Refused::ServiceAccountMismatch {
            pod: name,
            token: caller.service_account.clone(),
            pod_sa,
        });
    }
    if !meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(shaped))
    {
        return Err(Refused::NotShaped {
            pod: name,
            annotation: shaped.to_string(),
        });
    }
    let label = |k: &str| {
        meta.labels
            .as_ref()
            .and_then(|l| l.get(k))
            .cloned()
            .unwrap_or_default()
    };
    Ok(PodFacts {
        ray_cluster: label(rayshape_contract::keys::KUBERAY_CLUSTER),
        ray_node_type: label("ray.io/node-type"),
        node: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;
    use std::collections::BTreeMap;

    fn status(user: &str, audiences: &[&str], extra: &[(&str, &str)]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            user: Some(UserInfo {
                username: Some(user.into()),
                extra: Some(
                    extra
                        .iter()
                        .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..Default::default()
            }),
            error: None,
        }
    }

    fn bound() -> TokenReviewStatus {
        status(
            "system:serviceaccount:ml:ray",
            &["rayshape.io"],
            &[(POD_NAME, "w-1"), (POD_UID, "u-1")],
        )
    }

    #[test]
    fn a_pod_bound_service_account_token_is_a_caller() {
        let c = token(&bound(), "rayshape.io").unwrap();
        assert_eq!(
            (
                c.namespace.as_str(),
                c.service_account.as_str(),
                c.pod.as_str(),
                c.pod_uid.as_str()
            ),
            ("ml", "ray", "w-1", "u-1")
        );
    }

    #[test]
    fn every_way_a_token_falls_short() {
        let mut s = bound();
        s.authenticated = Some(false);
        s.error = Some("token has expired".into());
        let e = token(&s, "rayshape.io").unwrap_err();
        assert_eq!(e.status(), 401);
        assert!(e.reason().contains("token has expired"));
        assert!(!e.public().contains("expired") && e.public().contains("log"));
        let e = token(&bound(), "vault").unwrap_err();
        assert!(
            matches!(e, Refused::WrongAudience { .. }) && e.status() == 401,
            "{e:?}"
        );
        let s = status("jane@example.com", &["rayshape.io"], &[]);
        assert!(matches!(
            token(&s, "rayshape.io"),
            Err(Refused::NotServiceAccount(_))
        ));
        let s = status("system:serviceaccount:ml:ray", &["rayshape.io"], &[]);
        assert_eq!(token(&s, "rayshape.io"), Err(Refused::NotPodBound));
        let with = |yaml: &str| {
            let mut r = rayshape_engine::config::problems::Report::default();
            Settings::load(yaml, &mut r).expect("valid settings")
        };
        let caller = token(&bound(), "rayshape.io").unwrap();
        assert_eq!(
            allowed(&caller, &with("bootstrap: {namespaces: [other]}")),
            Err(Refused::NamespaceNotAllowed("ml".into()))
        );
        assert_eq!(
            allowed(&caller, &with("bootstrap: {serviceAccounts: [ml/other]}")),
            Err(Refused::ServiceAccountNotAllowed("ml/ray".into()))
        );
        assert_eq!(allowed(&caller, &Settings::default()), Ok(()));
        // Namespaces the webhook does not shape pods in may not bootstrap, allow-list or not.
        for yaml in [
            "namespaces: {exclude: [ml]}",
            "namespaces: {include: [other]}",
            "namespaces: {exclude: [ml]}\nbootstrap: {namespaces: [ml]}",
        ] {
            assert_eq!(
                allowed(&caller, &with(yaml)),
                Err(Refused::NamespaceNotManaged("ml".into())),
                "{yaml}"
            );
        }
        let mut system = caller.clone();
        system.namespace = "kube-system".into();
        assert_eq!(
            allowed(&system, &Settings::default()),
            Err(Refused::NamespaceNotManaged("kube-system".into()))
        );
    }

    fn a_pod(uid: &str, shaped: bool) -> Pod {
        let mut p = Pod::default();
        p.metadata.uid = Some(uid.into());
        p.metadata.labels = Some([("ray.io/cluster".to_string(), "rc".to_string())].into());
        if shaped {
            p.metadata.annotations =
                Some([("rayshape.io/shaped".to_string(), "{}".to_string())].into());
        }
        p.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            service_account_name: Some("ray".into()),
            node_name: Some("node-1".into()),
            ..Default::default()
        });
        p
    }

    #[test]
    fn every_way_a_pod_falls_short() {
        let c = token(&bound(), "rayshape.io").unwrap();
        let key = "rayshape.io/shaped";
        let facts = pod(&c, Some(&a_pod("u-1", true)), key).unwrap();
        assert_eq!(
            (facts.ray_cluster.as_str(), facts.node.as_str()),
            ("rc", "node-1")
        );
        assert!(matches!(pod(&c, None, key), Err(Refused::PodGone { .. })));
        assert!(matches!(
            pod(&c, Some(&a_pod("u-2", true)), key),
            Err(Refused::PodRecreated { .. })
        ));
        assert!(matches!(
            pod(&c, Some(&a_pod("u-1", false)), key),
            Err(Refused::NotShaped { .. })
        ));
        let mut deleting = a_pod("u-1", true);
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert!(matches!(
            pod(&c, Some(&deleting), key),
            Err(Refused::PodDeleting { .. })
        ));
        let mut other_sa = a_pod("u-1", true);
        if let Some(s) = other_sa.spec.as_mut() {
            s.service_account_name = Some("default".into());
        }
        assert!(matches!(
            pod(&c, Some(&other_sa), key),
            Err(Refused::ServiceAccountMismatch { .. })
        ));
    }
}
