//! Resource amounts as the scheduler's `framework.Resource` keeps them: integer milli-CPU,
//! bytes of memory and ephemeral storage, an allowed pod count, and every other resource
//! (extended resources such as `nvidia.com/gpu`, `hugepages-*`) by name.

use super::quantity;
use crate::Result;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    /// Allowed pods (a node's allocatable `pods`); zero in a pod's requests.
    pub pods: i64,
    /// Everything else, by resource name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    /// From a `ResourceList` (requests, allocatable, overhead).
    pub fn from_list(list: &BTreeMap<String, Quantity>) -> Result<Resources> {
        let mut r = Resources::default();
        for (name, q) in list {
            r.set(name, &q.0)?;
        }
        Ok(r)
    }

    /// Sets one resource from its quantity text.
    pub fn set(&mut self, name: &str, q: &str) -> Result<()> {
        match name {
            "cpu" => self.milli_cpu = quantity::milli(q)?,
            "memory" => self.memory = quantity::units(q)?,
            "ephemeral-storage" => self.ephemeral_storage = quantity::units(q)?,
            "pods" => self.pods = quantity::units(q)?,
            other => {
                self.scalar.insert(other.to_string(), quantity::units(q)?);
            }
        }
        Ok(())
    }

    /// The amount of one resource by its Kubernetes name.
    pub fn get(&self, name: &str) -> i64 {
        match name {
            "cpu" => self.milli_cpu,
            "memory" => self.memory,
            "ephemeral-storage" => self.ephemeral_storage,
            "pods" => self.pods,
            other => self.scalar.get(other).copied().unwrap_or(0),
        }
    }

    pub fn add(&mut self, o: &Resources) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        self.ephemeral_storage += o.ephemeral_storage;
        self.pods += o.pods;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_insert(0) += v;
        }
    }

    pub fn sub(&mut self, o: &Resources) {
        self.milli_cpu -= o.milli_cpu;
        self.memory -= o.memory;
        self.ephemeral_storage -= o.ephemeral_storage;
        self.pods -= o.pods;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_insert(0) -= v;
        }
    }

    /// Per resource, the larger of the two (`maxResourceList`).
    pub fn max_with(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
        self.pods = self.pods.max(o.pods);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = (*e).max(*v);
        }
    }

    pub fn is_zero(&self) -> bool {
        self.milli_cpu == 0
            && self.memory == 0
            && self.ephemeral_storage == 0
            && self.scalar.values().all(|v| *v == 0)
    }

    /// The larger of the CPU and memory fractions of `of` (0 where `of` has none): the
    /// utilisation cluster-autoscaler ranks scale-down candidates by.
    pub fn dominant_share(&self, of: &Resources) -> f64 {
        let share = |a: i64, b: i64| if b > 0 { a as f64 / b as f64 } else { 0.0 };
        share(self.milli_cpu, of.milli_cpu).max(share(self.memory, of.memory))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
            .collect()
    }

    #[test]
    fn lists_become_integer_amounts() {
        let r = Resources::from_list(&list(&[
            ("cpu", "250m"),
            ("memory", "1Gi"),
            ("nvidia.com/gpu", "1"),
            ("pods", "110"),
        ]))
        .unwrap();
        assert_eq!(r.milli_cpu, 250);
        assert_eq!(r.memory, 1 << 30);
        assert_eq!(r.get("nvidia.com/gpu"), 1);
        assert_eq!(r.pods, 110);
        assert!(Resources::from_list(&list(&[("cpu", "much")])).is_err());
    }

    #[test]
    fn arithmetic_keeps_scalar_resources() {
        let mut a = Resources::from_list(&list(&[("cpu", "1"), ("example.com/x", "2")])).unwrap();
        let b = Resources::from_list(&list(&[("cpu", "2"), ("example.com/y", "1")])).unwrap();
        a.max_with(&b);
        assert_eq!(
            (a.milli_cpu, a.get("example.com/x"), a.get("example.com/y")),
            (2000, 2, 1)
        );
        a.sub(&b);
        assert_eq!((a.milli_cpu, a.get("example.com/y")), (0, 0));
        assert!(!a.is_zero());
    }
}
