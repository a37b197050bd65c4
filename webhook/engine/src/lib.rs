//! rayshape's shaping engine: an AdmissionReview (or an object) and a loaded configuration
//! in, a decision out. Pure: no async runtime, no network, no filesystem; the server and the
//! command line do the I/O.
//!
//! Data flows one way through the stages, each a module:
//! [`decode`] → [`classify`] → [`plan`](mod@plan) → [`apply`] → [`diff`] → [`review`],
//! built on the [`primitives`] and a [`config`].

pub mod apply;
pub mod classify;
pub mod config;
pub mod decode;
pub mod diff;
pub mod explain;
pub mod plan;
pub mod primitives;
pub mod review;

/// The JSON document the engine works on.
pub use rayshape_json as json;

use apply::Shaped;
use classify::Class;
use config::Config;
use decode::ReviewError;
use plan::{Denial, Plan};
use rayshape_json::Value;
use review::{Decision, Outcome};

/// Plan what to do to any object: Ray pods and KubeRay objects are planned, everything
/// else is left alone. `old` is the stored object on UPDATE; `namespace` is the request's,
/// for objects that do not name their own.
pub fn plan<'c>(
    obj: &Value,
    old: Option<&Value>,
    namespace: Option<&str>,
    cfg: &'c Config,
) -> Result<Plan<'c>, Denial> {
    Ok(match classify::classify(obj, namespace, &cfg.settings) {
        Class::NotRay(why) => Plan::Unchanged(why),
        Class::Invalid(message) => return Err(Denial::new(message)),
        Class::Ray(ray) => Plan::Pod(Box::new(plan::pod(obj, ray, cfg)?)),
        Class::Cluster(kind) => Plan::Cluster(plan::raycluster::plan(obj, old, kind, cfg)?),
    })
}

/// Shape a new object: classify, plan, apply.
pub fn shape(obj: &Value, namespace: Option<&str>, cfg: &Config) -> Result<Shaped, Denial> {
    shape_update(obj, None, namespace, cfg)
}

/// Shape an object; `old` is the stored one, on UPDATE.
pub fn shape_update(
    obj: &Value,
    old: Option<&Value>,
    namespace: Option<&str>,
    cfg: &Config,
) -> Result<Shaped, Denial> {
    let plan = plan(obj, old, namespace, cfg)?;
    Ok(apply::apply(obj, plan, cfg))
}

/// Decide one AdmissionReview: decode, shape, diff, and the decision to respond with.
pub fn decide(review: &Value, cfg: &Config) -> Result<Decision, ReviewError> {
    let req = decode::review(review)?;
    if !req.is_shaped() {
        let untouched = Shaped {
            object: Value::Null,
            warnings: Vec::new(),
            skipped: Some("not a CREATE"),
            failed_rules: Vec::new(),
        };
        return Ok(Decision::new(&req, unchanged(untouched)));
    }
    let object = req
        .object
        .ok_or_else(|| ReviewError::NoObject(req.operation.to_string()))?;
    let namespace = Some(req.namespace).filter(|n| !n.is_empty());
    let old = req.old_object.filter(|_| req.operation == "UPDATE");
    let outcome = match shape_update(object, old, namespace, cfg) {
        // An object that passed through untouched needs no diff against itself.
        Ok(shaped) if shaped.skipped.is_some() => unchanged(shaped),
        Ok(shaped) => {
            let (patch, ops) = diff::diff_json(object, &shaped.object);
            Outcome::Allowed { patch, ops, shaped }
        }
        Err(d) => Outcome::Denied(d),
    };
    Ok(Decision::new(&req, outcome))
}

fn unchanged(shaped: Shaped) -> Outcome {
    Outcome::Allowed {
        patch: b"[]".to_vec(),
        ops: 0,
        shaped,
    }
}

#[cfg(test)]
mod tests;
