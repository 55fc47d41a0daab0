//! First-fit-decreasing bin packing by resource requests: how many new nodes pending pods need,
//! and whether a node's pods fit on the others.

use super::Resources;

/// Number of empty nodes of size `node` that the `pods` need, packed first-fit decreasing
/// (the order cluster-autoscaler's estimator uses). Pods bigger than a node are returned
/// separately: no number of such nodes would help them.
pub fn nodes_needed(pods: &[Resources], node: Resources) -> (u32, usize) {
    let mut sorted: Vec<Resources> = Vec::with_capacity(pods.len());
    let mut too_big = 0;
    for p in pods {
        if p.fits_in(node) {
            sorted.push(*p);
        } else {
            too_big += 1;
        }
    }
    sort_decreasing(&mut sorted, node);
    let mut free: Vec<Resources> = Vec::new();
    for pod in sorted {
        match free.iter_mut().find(|f| pod.fits_in(**f)) {
            Some(slot) => *slot = slot.minus(pod),
            None => free.push(node.minus(pod)),
        }
    }
    (free.len() as u32, too_big)
}

/// Whether every pod fits into the given free capacities (first-fit decreasing). `free` is
/// consumed as pods are placed, so callers can chain checks.
pub fn fits_into(pods: &[Resources], free: &mut [Resources]) -> bool {
    let mut sorted = pods.to_vec();
    let scale = free
        .iter()
        .fold(Resources::ZERO, |acc, f| acc.max(*f))
        .max(Resources {
            cpu: 1.0,
            memory: 1.0,
        });
    sort_decreasing(&mut sorted, scale);
    sorted
        .iter()
        .all(|pod| match free.iter_mut().find(|f| pod.fits_in(**f)) {
            Some(slot) => {
                *slot = slot.minus(*pod);
                true
            }
            None => false,
        })
}

/// Sorts by the larger of a pod's CPU and memory shares of `scale`, biggest first; ties keep order.
fn sort_decreasing(pods: &mut [Resources], scale: Resources) {
    let key = |r: &Resources| r.dominant_share(scale);
    pods.sort_by(|a, b| key(b).total_cmp(&key(a)));
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: Resources = Resources {
        cpu: 2.0,
        memory: 4.0,
    };

    fn pods(cpu: f64, mem: f64, n: usize) -> Vec<Resources> {
        vec![Resources { cpu, memory: mem }; n]
    }

    #[test]
    fn packs_small_pods_densely() {
        assert_eq!(nodes_needed(&pods(0.5, 0.5, 8), NODE), (2, 0));
        assert_eq!(nodes_needed(&pods(0.5, 0.5, 9), NODE), (3, 0));
    }

    #[test]
    fn memory_can_be_the_binding_resource() {
        // 0.1 CPU but 3 GiB each: only one per 4 GiB node.
        assert_eq!(nodes_needed(&pods(0.1, 3.0, 3), NODE), (3, 0));
    }

    #[test]
    fn decreasing_order_beats_arrival_order() {
        // Arrival order 0.5,1.5,0.5,1.5 first-fit would still need 2; mix sizes to see FFD pack.
        let mut p = pods(0.6, 0.1, 3);
        p.extend(pods(1.4, 0.1, 3));
        assert_eq!(nodes_needed(&p, NODE), (3, 0));
    }

    #[test]
    fn oversized_pods_are_reported_not_packed() {
        let mut p = pods(3.0, 1.0, 1);
        p.extend(pods(1.0, 1.0, 1));
        assert_eq!(nodes_needed(&p, NODE), (1, 1));
    }

    #[test]
    fn fits_into_consumes_free_space() {
        let mut free = vec![
            Resources {
                cpu: 1.0,
                memory: 1.0,
            },
            Resources {
                cpu: 0.5,
                memory: 1.0,
            },
        ];
        assert!(fits_into(&pods(0.5, 0.5, 3), &mut free));
        assert!(!fits_into(&pods(0.5, 0.5, 1), &mut free));
    }
}
