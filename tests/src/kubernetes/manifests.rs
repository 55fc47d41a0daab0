//! Applying manifests the way `kubectl apply --server-side` would: every document of a YAML file,
//! resolved through the API server's discovery. Kinds the world's cluster does not serve (K3s's
//! HelmChart, say: no Helm controller runs here) are skipped and named in the result.

use crate::{Error, Result};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::{Discovery, Scope};

/// What [`apply`] did: `Kind/namespace/name` applied, and kinds skipped as not served.
#[derive(Debug, Default, Clone)]
pub struct Applied {
    pub applied: Vec<String>,
    pub skipped: Vec<String>,
}

/// Applies every document in `yaml` with server-side apply (field manager `testworld`).
pub async fn apply(client: &kube::Client, yaml: &str) -> Result<Applied> {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(yaml)
        .map_err(|e| Error::Invalid(format!("the manifest is not valid YAML: {e}")))?;
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .map_err(|e| Error::Invalid(format!("API discovery: {e}")))?;
    let mut out = Applied::default();
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        let obj: DynamicObject = serde_json::from_value(doc)
            .map_err(|e| Error::Invalid(format!("a manifest document is not an object: {e}")))?;
        let types = obj
            .types
            .clone()
            .ok_or_else(|| Error::Invalid("a manifest document has no apiVersion/kind".into()))?;
        let (group, version) = match types.api_version.split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), types.api_version.clone()),
        };
        let gvk = kube::api::GroupVersionKind::gvk(&group, &version, &types.kind);
        let Some((resource, caps)) = discovery.resolve_gvk(&gvk) else {
            out.skipped.push(types.kind.clone());
            continue;
        };
        let name = obj
            .metadata
            .name
            .clone()
            .ok_or_else(|| Error::Invalid(format!("a {} has no name", types.kind)))?;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                obj.metadata.namespace.as_deref().unwrap_or("default"),
                &resource,
            ),
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        api.patch(
            &name,
            &PatchParams::apply("testworld").force(),
            &Patch::Apply(&obj),
        )
        .await
        .map_err(|e| Error::Invalid(format!("applying {} {name}: {e}", types.kind)))?;
        out.applied.push(format!(
            "{}/{}/{name}",
            types.kind,
            obj.metadata.namespace.as_deref().unwrap_or("")
        ));
    }
    Ok(out)
}
