//! The controller's writes to Node objects (RBAC: `patch` and `delete` on nodes, in
//! userdata/manifests/smartscale.yaml).
//!
//! Before a chosen node's instance is terminated it is tainted `NoSchedule` and cordoned, so
//! the scheduler places nothing new on it while the terminate call and the agent's drain run
//! (cluster-autoscaler's ToBeDeleted taint). If the termination fails, both are undone — but
//! only what the controller itself did (a node an operator cordoned stays cordoned).

use super::Actuator;
use crate::{Error, Result};
use k8s_openapi::api::core::v1::{Node, Taint};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::json;

/// The taint on a node the controller is removing; its value is the unix time it was set.
pub const TO_BE_DELETED_TAINT: &str = "smartscale.io/to-be-deleted";
/// Set when the controller cordoned the node (so it uncordons only its own cordon).
const CORDONED_BY_US: &str = "smartscale.io/cordoned-by-controller";

fn kube_err(what: String) -> impl FnOnce(kube::Error) -> Error {
    move |e| Error::Kubernetes(format!("{what}: {e}"))
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl Actuator {
    /// Taints `node` `smartscale.io/to-be-deleted:NoSchedule` and cordons it.
    #[tracing::instrument(skip(self))]
    pub async fn mark_for_deletion(&self, node: &str, now: i64) -> Result<()> {
        if self.dry_run {
            tracing::info!(node, "dry-run: not tainting or cordoning");
            return Ok(());
        }
        self.edit_node(node, |n| {
            let spec = n.spec.get_or_insert_with(Default::default);
            let taints = spec.taints.get_or_insert_with(Vec::new);
            if !taints.iter().any(|t| t.key == TO_BE_DELETED_TAINT) {
                taints.push(Taint {
                    key: TO_BE_DELETED_TAINT.into(),
                    value: Some(now.to_string()),
                    effect: "NoSchedule".into(),
                    time_added: None,
                });
            }
            let cordoned = spec.unschedulable.unwrap_or(false);
            let mut annotations = serde_json::Map::new();
            if !cordoned {
                spec.unschedulable = Some(true);
                annotations.insert(CORDONED_BY_US.into(), json!("true"));
            }
            annotations
        })
        .await
    }

    /// Undoes [`Actuator::mark_for_deletion`] after a failed termination.
    #[tracing::instrument(skip(self))]
    pub async fn unmark(&self, node: &str) -> Result<()> {
        if self.dry_run {
            return Ok(());
        }
        self.edit_node(node, |n| {
            let ours = n
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(CORDONED_BY_US));
            let spec = n.spec.get_or_insert_with(Default::default);
            if let Some(taints) = spec.taints.as_mut() {
                taints.retain(|t| t.key != TO_BE_DELETED_TAINT);
            }
            let mut annotations = serde_json::Map::new();
            if ours {
                spec.unschedulable = Some(false);
                annotations.insert(CORDONED_BY_US.into(), serde_json::Value::Null);
            }
            annotations
        })
        .await
    }

    /// Reads the node, lets `change` edit its spec (returning annotations to merge, `null` to
    /// remove), and writes spec and annotations back under the read resourceVersion; a
    /// concurrent change (the agent cordoning, the kubelet's status) makes it read again.
    async fn edit_node(
        &self,
        name: &str,
        change: impl Fn(&mut Node) -> serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.kube.clone());
        for _ in 0..5 {
            let mut node = nodes
                .get(name)
                .await
                .map_err(kube_err(format!("reading node {name}")))?;
            let annotations = change(&mut node);
            let spec = node.spec.clone().unwrap_or_default();
            let patch = json!({
                "metadata": {"resourceVersion": node.metadata.resource_version, "annotations": annotations},
                "spec": {"taints": spec.taints.unwrap_or_default(), "unschedulable": spec.unschedulable},
            });
            match nodes
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if conflict(&e) => continue,
                Err(e) => return Err(kube_err(format!("updating node {name}"))(e)),
            }
        }
        Err(Error::Kubernetes(format!(
            "node {name} kept changing while the controller edited it; gave up after 5 tries"
        )))
    }

    /// Deletes the Node `name`, only if it is still the object with `uid` (a new node of the same
    /// name — an instance that re-used the private IP — is left alone).
    #[tracing::instrument(skip(self))]
    pub async fn delete_node(&self, name: &str, uid: &str) -> Result<()> {
        if self.dry_run {
            tracing::info!(node = name, "dry-run: not deleting the Node");
            return Ok(());
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match Api::<Node>::all(self.kube.clone())
            .delete(name, &params)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(kube_err(format!("deleting node {name}"))(e)),
        }
    }
}
