//! NodePorts: a host port (protocol, port, host IP) already used on the node conflicts when
//! the protocol and port are the same and the IPs are equal or either is 0.0.0.0.

use super::Reason;
use crate::capacity::pod::PodSpec;
use crate::capacity::snapshot::{NodeId, Snapshot};

pub fn check(pod: &PodSpec, node: NodeId, snap: &Snapshot) -> Result<(), Reason> {
    let used = &snap.nodes[node].ports;
    if pod
        .host_ports
        .iter()
        .any(|want| used.iter().any(|u| u.conflicts(want)))
    {
        Err(Reason::HostPorts)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::capacity::pod::HostPort;

    fn port(ip: &str, protocol: &str, port: i32) -> HostPort {
        HostPort {
            ip: ip.into(),
            protocol: protocol.into(),
            port,
        }
    }

    // https://kubernetes.io/docs/concepts/configuration/overview/#services ("When you bind a Pod
    // to a hostPort, it limits the number of places the Pod can be scheduled, because each
    // <hostIP, hostPort, protocol> combination must be unique") and the scheduler's
    // HostPortInfo: 0.0.0.0 conflicts with every IP.
    #[test]
    fn host_ports_are_unique_per_ip_and_protocol() {
        let mut holder = pod("h", &[]);
        holder.host_ports = vec![port("10.0.0.1", "TCP", 8080), port("0.0.0.0", "UDP", 53)];
        let mut s = snapshot(vec![node("a", "z1"), node("b", "z1")], vec![(holder, "a")]);
        let with = |ports: Vec<HostPort>| {
            let mut p = pod("p", &[]);
            p.host_ports = ports;
            p
        };
        assert_eq!(
            fits(&mut s, with(vec![port("0.0.0.0", "TCP", 8080)])),
            vec!["b"]
        );
        assert_eq!(
            fits(&mut s, with(vec![port("10.0.0.1", "TCP", 8080)])),
            vec!["b"]
        );
        assert_eq!(
            fits(&mut s, with(vec![port("10.0.0.2", "TCP", 8080)])),
            vec!["a", "b"]
        );
        assert_eq!(
            fits(&mut s, with(vec![port("0.0.0.0", "UDP", 8080)])),
            vec!["a", "b"]
        );
        assert_eq!(
            fits(&mut s, with(vec![port("10.0.0.9", "UDP", 53)])),
            vec!["b"]
        );
        // The port is free again once its holder is gone.
        s.fork();
        let h = s.nodes[0].pods[0];
        s.remove_pod(h);
        assert_eq!(
            fits(&mut s, with(vec![port("0.0.0.0", "TCP", 8080)])).len(),
            2
        );
        s.revert();
        assert_eq!(
            fits(&mut s, with(vec![port("0.0.0.0", "TCP", 8080)])),
            vec!["b"]
        );
    }
}
