//! Who the primary is, as the servers say it: the backend the replicas replicate from.

/// What the monitor last read of one backend.
#[derive(Debug, Clone)]
pub struct Node {
    /// As configured (`host:port`).
    pub address: String,
    pub read_only: Option<bool>,
    /// What it replicates from (`host:port`); `Some(None)`: no one; `None`: not known.
    pub source: Option<Option<String>>,
}

/// The index of the one backend that other backends replicate from, that is writable and
/// replicates from no one itself; `None` when the servers do not say (no replica follows a
/// configured backend) or say several things.
pub fn leader(nodes: &[Node]) -> Option<usize> {
    let followed = |at: usize| {
        nodes.iter().enumerate().any(|(other, n)| {
            other != at
                && n.source
                    .as_ref()
                    .and_then(Option::as_deref)
                    .is_some_and(|s| same_address(s, &nodes[at].address))
        })
    };
    let mut leaders = (0..nodes.len())
        .filter(|&at| followed(at) && nodes[at].read_only == Some(false) && nodes[at].source == Some(None));
    let leader = leaders.next()?;
    leaders.next().is_none().then_some(leader)
}

/// Whether two `host:port` addresses name the same server: the same port, and the same host or
/// two names of this machine's loopback.
fn same_address(a: &str, b: &str) -> bool {
    let split = |s: &str| {
        s.rsplit_once(':').map(|(h, p)| (h.trim_matches(['[', ']']).to_ascii_lowercase(), p.to_string()))
    };
    let (Some((host_a, port_a)), Some((host_b, port_b))) = (split(a), split(b)) else { return false };
    let local = |h: &str| matches!(h, "127.0.0.1" | "localhost" | "::1");
    port_a == port_b && (host_a == host_b || local(&host_a) && local(&host_b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(port: u16, read_only: Option<bool>, source: Option<Option<u16>>) -> Node {
        Node {
            address: format!("127.0.0.1:{port}"),
            read_only,
            source: source.map(|s| s.map(|p| format!("localhost:{p}"))),
        }
    }

    #[test]
    fn the_followed_writable_backend_leads() {
        let nodes = [
            node(1, Some(false), Some(None)),
            node(2, Some(true), Some(Some(1))),
            node(3, Some(true), Some(Some(1))),
        ];
        assert_eq!(leader(&nodes), Some(0));
    }

    #[test]
    fn a_stale_writable_primary_that_nobody_follows_does_not_lead() {
        // replica1 was promoted by hand; the old primary came back writable.
        let nodes = [
            node(1, Some(false), Some(None)),
            node(2, Some(false), Some(None)),
            node(3, Some(true), Some(Some(2))),
        ];
        assert_eq!(leader(&nodes), Some(1));
    }

    #[test]
    fn the_servers_say_nothing_or_contradict_themselves() {
        let silent = [node(1, Some(false), Some(None)), node(2, Some(false), Some(None))];
        assert_eq!(leader(&silent), None, "no replica follows anyone");
        let split = [
            node(1, Some(false), Some(None)),
            node(2, Some(false), Some(None)),
            node(3, Some(true), Some(Some(1))),
            node(4, Some(true), Some(Some(2))),
        ];
        assert_eq!(leader(&split), None, "two followed writable backends");
        let chained = [
            node(1, Some(false), Some(None)),
            node(2, Some(true), Some(Some(1))),
            node(3, Some(true), Some(Some(2))),
        ];
        assert_eq!(leader(&chained), Some(0), "an intermediate replica is not writable and follows someone");
        let read_only = [node(1, Some(true), Some(None)), node(2, Some(true), Some(Some(1)))];
        assert_eq!(leader(&read_only), None, "a read-only source is not a primary");
        let down = [node(1, None, None), node(2, Some(true), Some(Some(1)))];
        assert_eq!(leader(&down), None, "a source that does not answer is not known to be writable");
    }

    #[test]
    fn loopback_names_are_one_host() {
        assert!(same_address("127.0.0.1:3306", "localhost:3306"));
        assert!(same_address("db1:3306", "DB1:3306"));
        assert!(!same_address("127.0.0.1:3306", "127.0.0.1:3307"));
        assert!(!same_address("db1:3306", "db2:3306"));
        assert!(!same_address("nonsense", "127.0.0.1:1"));
    }
}
