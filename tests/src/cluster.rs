//! A JetStream cluster of real nats-server processes on loopback.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use crate::log::POLL_INTERVAL;
use crate::nats::{ClusterSpec, NatsServer, NatsServerBuilder};
use crate::ports::free_port;

/// How long a cluster may take to elect a JetStream meta leader and bring
/// every node current.
pub const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A JetStream cluster of `n` nats-server nodes on 127.0.0.1, each with its
/// own client, route and monitoring port and its own store dir; every node
/// lists every route, as `deploy/nats/cluster-3` does.
///
/// Nodes are [`NatsServer`]s: kill, stop and restart them one by one through
/// [`node_mut`](Self::node_mut) or the shortcuts here.
#[derive(Debug)]
pub struct NatsCluster {
    /// The nodes, `n1` first.
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `n` nodes (named `n1`...), waits until each logs its ready line,
    /// then until JetStream has a meta leader and every node is current
    /// (`/healthz` answers 200 on each).
    ///
    /// Panics with the logs' tails when that takes longer than 60 s.
    pub fn start(n: usize) -> NatsCluster {
        assert!(n >= 1, "a cluster needs at least one node");
        let name = format!("jetsaga-test-{}", free_port());
        let route_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let nodes: Vec<NatsServer> = route_ports
            .iter()
            .enumerate()
            .map(|(i, &route_port)| {
                NatsServerBuilder::default()
                    .name(&format!("n{}", i + 1))
                    .ports(free_port(), Some(free_port()))
                    .cluster(ClusterSpec {
                        name: name.clone(),
                        port: route_port,
                        routes: route_ports.clone(),
                    })
                    .spawn()
            })
            .collect();
        for node in &nodes {
            if let Err(failure) = node.wait_ready(0) {
                node.fail_start(failure);
            }
        }
        let cluster = NatsCluster { nodes };
        cluster.wait_healthy(CLUSTER_READY_TIMEOUT);
        cluster
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes (never, after [`start`](Self::start)).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i` (0-based).
    pub fn node(&self, i: usize) -> &NatsServer {
        &self.nodes[i]
    }

    /// Node `i` (0-based), to kill, stop or restart it.
    pub fn node_mut(&mut self, i: usize) -> &mut NatsServer {
        &mut self.nodes[i]
    }

    /// All nodes.
    pub fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    /// The client URL of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// The client URLs joined with commas, the form the NATS CLI and
    /// `jetsaga --nats-url` take (`async_nats::connect` takes one URL or a
    /// `Vec`: use [`urls`](Self::urls) there).
    pub fn url_list(&self) -> String {
        self.urls().join(",")
    }

    /// A client that knows every node (and fails over between them).
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.urls())
            .await
            .unwrap_or_else(|e| panic!("jetsaga-tests: connect to {}: {e}", self.url_list()))
    }

    /// SIGKILL node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Restarts node `i` (same ports and store) and waits until the whole
    /// cluster is healthy again.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].restart();
        self.wait_healthy(CLUSTER_READY_TIMEOUT);
    }

    /// Waits until every running node answers `/healthz` with 200 (JetStream
    /// enabled, a meta leader known, the node current with it) and one of
    /// them reports a meta leader in `/jsz`.
    ///
    /// Panics with each node's `/jsz` and log tail on timeout.
    pub fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let running: Vec<&NatsServer> = self.nodes.iter().filter(|n| n.is_running()).collect();
            let healthy = running
                .iter()
                .all(|node| http_get(node, "/healthz").is_some_and(|(status, _)| status == 200));
            let leader = running.iter().find_map(|node| meta_leader(node));
            if healthy && leader.is_some() {
                tracing::debug!(leader = ?leader, "cluster healthy");
                return;
            }
            if Instant::now() >= deadline {
                let mut report = String::new();
                for node in &self.nodes {
                    report.push_str(&format!(
                        "--- {} (running: {}) /healthz: {:?}\n/jsz: {:?}\nlog {}:\n{}\n",
                        node.name(),
                        node.is_running(),
                        http_get(node, "/healthz"),
                        http_get(node, "/jsz"),
                        node.log_path().display(),
                        crate::log::tail_of(&node.log(), 30)
                    ));
                }
                panic!("jetsaga-tests: cluster not healthy within {timeout:?}\n{report}");
            }
            std::thread::sleep(POLL_INTERVAL.max(Duration::from_millis(50)));
        }
    }
}

/// The meta leader's name, as `node` sees it in `/jsz`.
fn meta_leader(node: &NatsServer) -> Option<String> {
    let (status, body) = http_get(node, "/jsz")?;
    if status != 200 {
        return None;
    }
    let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
    let leader = jsz.get("meta_cluster")?.get("leader")?.as_str()?;
    (!leader.is_empty()).then(|| leader.to_owned())
}

/// `GET path` on the node's monitoring port: status code and body. `None`
/// when the node does not answer.
pub(crate) fn http_get(node: &NatsServer, path: &str) -> Option<(u16, String)> {
    let port = node.http_port()?;
    let timeout = Duration::from_secs(2);
    let mut stream =
        TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    // HTTP/1.0: the server closes the connection after the response.
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    Some((status, body))
}
