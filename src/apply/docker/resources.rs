//! The engine's networks and volumes, as `fieldtrack check` asks about those the config names.

use bollard::query_parameters::InspectNetworkOptions;

use super::Docker;
use crate::apply::docker::client::not_found;
use crate::model::runtime::RuntimeError;

/// A network as the engine knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInfo {
    /// `bridge`, `overlay`, `macvlan` ...
    pub driver: String,
    /// `local` or `swarm`.
    pub scope: String,
}

impl Docker {
    /// The network called `name`, None when the engine has none.
    pub async fn network(&self, name: &str) -> Result<Option<NetworkInfo>, RuntimeError> {
        match self
            .client
            .inspect_network(name, None::<InspectNetworkOptions>)
            .await
        {
            Ok(network) => Ok(Some(NetworkInfo {
                driver: network.driver.unwrap_or_default(),
                scope: network.scope.unwrap_or_default(),
            })),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(self.classify(format!("inspect network {name}"), e)),
        }
    }

    /// Whether a volume called `name` exists.
    pub async fn volume_exists(&self, name: &str) -> Result<bool, RuntimeError> {
        match self.client.inspect_volume(name).await {
            Ok(_) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(self.classify(format!("inspect volume {name}"), e)),
        }
    }
}
