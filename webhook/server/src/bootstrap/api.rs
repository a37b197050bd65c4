//! The Kubernetes API calls a bootstrap makes, as the webhook's own service account:
//! `tokenreviews: create`, `pods: get`, `events: create`, and nothing else.

use super::verify::Caller;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use std::time::Duration;

/// How long one API call may take before the bootstrap answers 503.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The permissions the code uses, as RBAC names them (for messages and the manifests).
pub const PERMISSIONS: [&str; 3] = [
    "create tokenreviews.authentication.k8s.io",
    "get pods",
    "create events.events.k8s.io",
];

/// The API server could not answer as needed; the caller should try again later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Trouble {
    /// The webhook's service account lacks a permission: an installation problem.
    #[error(
        "the webhook's service account may not {permission} ({message}); grant it in the webhook's ClusterRole"
    )]
    Permission {
        permission: &'static str,
        message: String,
    },
    #[error("the API server did not answer: {0}")]
    Unavailable(String),
    /// As many bootstraps as the webhook lets the API server see at once are under way.
    #[error("{0} bootstraps are being checked with the API server already")]
    Busy(usize),
}

impl Trouble {
    /// What an unauthenticated caller is told: what to fix, without the API server's own
    /// words (names, addresses, its errors), which go to the webhook's log.
    pub fn public(&self) -> String {
        match self {
            Trouble::Permission { permission, .. } => format!(
                "the webhook's service account may not {permission}; grant it in the webhook's ClusterRole (the webhook's log has the API server's answer)"
            ),
            Trouble::Unavailable(_) => {
                "the webhook cannot get an answer from the Kubernetes API server now; retry (the webhook's log says why)".to_string()
            }
            Trouble::Busy(_) => {
                "the webhook is checking as many bootstraps with the API server as it lets itself at once; retry".to_string()
            }
        }
    }
}

/// A Kubernetes API client for the bootstrap.
#[derive(Clone)]
pub struct KubeApi {
    client: kube::Client,
    /// Who reports the Events (the webhook's pod name, or its host).
    instance: String,
}

impl KubeApi {
    /// A client from the in-cluster service account, or `KUBECONFIG`.
    pub async fn infer() -> Result<KubeApi, String> {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| format!("no Kubernetes API access: {e}"))?;
        let instance = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "rayshape-webhook".into());
        Ok(KubeApi { client, instance })
    }

    /// Ask the API server about a token, for `audience`.
    pub async fn review(&self, token: &str, audience: &str) -> Result<TokenReviewStatus, Trouble> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![audience.to_string()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let done = call(api.create(&PostParams::default(), &review), PERMISSIONS[0]).await?;
        Ok(done.status.unwrap_or_default())
    }

    /// The pod, or `None` when it does not exist.
    pub async fn pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>, Trouble> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        match call(api.get(name), PERMISSIONS[1]).await {
            Ok(p) => Ok(Some(p)),
            Err(Trouble::Unavailable(m)) if m.starts_with(NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Record what happened to a bootstrap on the pod it was for.
    pub async fn event(&self, caller: &Caller, verified: bool, note: &str) -> Result<(), Trouble> {
        let (kind, reason) = if verified {
            ("Normal", "BootstrapVerified")
        } else {
            ("Warning", "BootstrapRefused")
        };
        // Events are limited to 1 KiB of note.
        let note: String = note.chars().take(1000).collect();
        // Named as Kubernetes names events: the object, a dot, a unique hex suffix
        // (a generateName ending in a dot is refused).
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let prefix: String = caller.pod.chars().take(200).collect();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{prefix}.{nanos:x}")),
                namespace: Some(caller.namespace.clone()),
                ..Default::default()
            },
            event_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            action: Some("Bootstrap".into()),
            reason: Some(reason.into()),
            note: Some(note),
            type_: Some(kind.into()),
            reporting_controller: Some("rayshape.io/webhook".into()),
            reporting_instance: Some(self.instance.clone()),
            regarding: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                namespace: Some(caller.namespace.clone()),
                name: Some(caller.pod.clone()),
                uid: Some(caller.pod_uid.clone()).filter(|u| !u.is_empty()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &caller.namespace);
        call(api.create(&PostParams::default(), &event), PERMISSIONS[2])
            .await
            .map(|_| ())
    }
}

const NOT_FOUND: &str = "not found: ";

/// Run one call within [`CALL_TIMEOUT`], sorting its failure.
async fn call<T>(
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
    permission: &'static str,
) -> Result<T, Trouble> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(kube::Error::Api(status))) => Err(match status.code {
            401 | 403 => Trouble::Permission {
                permission,
                message: status.message.clone(),
            },
            404 => Trouble::Unavailable(format!("{NOT_FOUND}{}", status.message)),
            code => Trouble::Unavailable(format!("{code} {}", status.message)),
        }),
        Ok(Err(e)) => Err(Trouble::Unavailable(e.to_string())),
        Err(_) => Err(Trouble::Unavailable(format!(
            "no answer within {}s",
            CALL_TIMEOUT.as_secs()
        ))),
    }
}
