//! The capacity model: the cluster as the Kubernetes scheduler sees it, and the two questions
//! the policy asks of it (DESIGN.md, "The capacity model"). Pure: no I/O, no clock, no async,
//! so the controller and the digital twin run the same code.
//!
//! - [`pod`], [`node`], [`volume`]: pods (requests with sidecars and overhead, node selector
//!   and affinity, tolerations, pod (anti-)affinity, topology spread, host ports, volumes,
//!   owner and drain-relevant facts), nodes and node-group templates (from a Ready node or the
//!   ASG's cluster-autoscaler tags, minus the DaemonSets that would land on them), each built
//!   from the API objects by a pure function.
//! - [`filters`]: one file per scheduler filter plugin, each with the scheduler's reasons.
//! - [`snapshot`]: nodes and pods that can be forked, changed and reverted
//!   (cluster-autoscaler's simulator), answering "can this pod go on this node" and "place
//!   these pods, in order".
//! - [`scale_up`]: which groups to grow for pending pods, and by how much; [`scale_down`]:
//!   whether a node is removable, and if not, which pod keeps it and why.
//! - [`cluster`]: everything above from what the watches hold.
//!
//! ```
//! use smartscale_controller::capacity::{self, ClusterObjects, Cluster, GroupSpec, NodeGroup};
//! use std::collections::BTreeSet;
//!
//! // From the watches (empty here): nodes, pods, PVs, claims, classes, PDBs, DaemonSets.
//! let mut cluster = Cluster::from_objects(&ClusterObjects::default()).unwrap();
//! // A group at zero: its template comes from its ASG's tags and instance type.
//! let spec = GroupSpec::new("general", "m5.large", &["us-east-1a"], 0, 10, 0);
//! let template = cluster.template(&spec, &[]).unwrap();
//! let groups = vec![NodeGroup { spec, template }];
//! let pending = cluster.pending.clone();
//! let up = capacity::scale_up::plan(&mut cluster.snapshot, &capacity::ScaleUpRequest {
//!     pending: &pending,
//!     groups: &groups,
//!     backoff: &BTreeSet::new(),
//!     expander: capacity::Expander::LeastWaste,
//! });
//! assert_eq!(up.nodes(), 0);
//! let candidates = capacity::scale_down::candidates(&cluster.snapshot);
//! let down = capacity::scale_down::find_removable(
//!     &mut cluster.snapshot, &candidates, &cluster.pdbs, &Default::default(), 50);
//! assert!(down.chosen.is_none());
//! ```

pub mod cluster;
pub mod filters;
pub mod instance_types;
pub mod node;
pub mod pod;
pub mod quantity;
pub mod resources;
pub mod scale_down;
pub mod scale_up;
pub mod selector;
pub mod snapshot;
#[cfg(test)]
mod tests;
pub mod volume;

pub use cluster::{Cluster, ClusterObjects, Pdb};
pub use filters::Reason;
pub use node::{DaemonSetSpec, GroupSpec, NodeInfo, NodeTemplate, Reserve};
pub use pod::PodSpec;
pub use resources::Resources;
pub use scale_down::{Blocker, Refusal, Removal, ScaleDownConfig};
pub use scale_up::{Expander, NodeGroup, ScaleUpPlan, ScaleUpRequest};
pub use snapshot::{NodeId, Snapshot, Unplaced};
