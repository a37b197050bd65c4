//! The vocabulary a pod speaks: its instance type, market type and zone, read from labels
//! (or annotations of the same key), checked, and written back as both, so that
//! `kubectl get pods -l` and rules selecting on either see the effective values.

use super::Denial;
use crate::config::Config;
use crate::config::instance_types::InstanceType;
use crate::config::settings::{Settings, is_label_value};
use crate::primitives::pod;
use rayshape_contract::keys;
use rayshape_json::Value;

/// Market types a pod may ask for.
pub const MARKET_TYPES: [&str; 3] = ["ON_DEMAND", "SPOT", "PREFER_SPOT"];

/// The effective vocabulary of one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Vocabulary<'c> {
    pub instance_type: Option<&'c InstanceType>,
    pub market: String,
    pub zone: Option<String>,
}

/// Read and check a pod's vocabulary.
pub fn read<'c>(obj: &Value, cfg: &'c Config) -> Result<Vocabulary<'c>, Denial> {
    let s = &cfg.settings;
    let type_key = s.key(keys::INSTANCE_TYPE);
    let instance_type = match pod::vocab(obj, &type_key) {
        None => None,
        Some(name) => match cfg.instance_types.get(name) {
            Some(t) => Some(t),
            None => {
                return Err(Denial::new(format!(
                    "unknown instance type {name:?} in {type_key}; known instance types: {}",
                    cfg.type_names()
                )));
            }
        },
    };
    let market_key = s.key(keys::MARKET_TYPE);
    let market = pod::vocab(obj, &market_key)
        .unwrap_or("ON_DEMAND")
        .to_string();
    if !MARKET_TYPES.contains(&market.as_str()) {
        return Err(Denial::new(format!(
            "{market_key}={market:?} is not a market type; accepted: {}",
            MARKET_TYPES.join(", ")
        )));
    }
    let zone_key = s.key(keys::ZONE);
    let zone = pod::vocab(obj, &zone_key).map(str::to_string);
    if let Some(z) = &zone
        && (z.is_empty() || !is_label_value(z))
    {
        return Err(Denial::new(format!(
            "{zone_key}={z:?} is not a zone name; expected a topology.kubernetes.io/zone value such as us-west-2a"
        )));
    }
    Ok(Vocabulary {
        instance_type,
        market,
        zone,
    })
}

impl Vocabulary<'_> {
    /// Write the effective values back as labels and annotations.
    pub fn write(&self, obj: &mut Value, s: &Settings) {
        pod::set_vocab(obj, &s.key(keys::MARKET_TYPE), &self.market);
        if let Some(z) = &self.zone {
            pod::set_vocab(obj, &s.key(keys::ZONE), z);
        }
        if let Some(t) = self.instance_type {
            pod::set_vocab(obj, &s.key(keys::INSTANCE_TYPE), &t.name);
            let acc_key = s.key(keys::ACCELERATOR_TYPE);
            match &t.accelerator {
                Some(a) => pod::set_vocab(obj, &acc_key, a),
                None => pod::remove_vocab(obj, &acc_key),
            }
        }
    }
}
