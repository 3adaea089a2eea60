//! Order and cycles of a dependency graph given as lists of indexes:
//! `deps[i]` lists the nodes node `i` depends on, the same shape saga
//! definitions use for their steps. Every index must be below `deps.len()`;
//! duplicate edges are allowed. Callers number their nodes in the order ties
//! should break (here: service names sorted), which makes every answer
//! deterministic.

use std::collections::{BTreeSet, VecDeque};

/// The result of Kahn's algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layering {
    /// Nodes in start-up order: each after everything it depends on; among
    /// the nodes ready at the same time, the lowest index first.
    pub(crate) order: Vec<usize>,
    /// Per node: 0 when it depends on nothing, else one more than the
    /// highest level among its dependencies (nodes of one level can start
    /// in parallel once the levels below are up). `None` for nodes Kahn's
    /// algorithm cannot place: those on a cycle and those depending on one.
    pub(crate) level: Vec<Option<usize>>,
}

/// Kahn's algorithm with a sorted ready set.
pub(crate) fn layering(deps: &[Vec<usize>]) -> Layering {
    let n = deps.len();
    let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents = vec![Vec::new(); n];
    for (node, node_deps) in deps.iter().enumerate() {
        for &dep in node_deps {
            dependents[dep].push(node);
        }
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut level = vec![None; n];
    let mut order = Vec::with_capacity(n);
    while let Some(node) = ready.pop_first() {
        level[node] = Some(
            deps[node]
                .iter()
                .filter_map(|&dep| level[dep])
                .map(|l: usize| l + 1)
                .max()
                .unwrap_or(0),
        );
        order.push(node);
        for &dependent in &dependents[node] {
            waiting[dependent] -= 1;
            if waiting[dependent] == 0 {
                ready.insert(dependent);
            }
        }
    }
    Layering { order, level }
}

/// Cycles that together cover every node lying on a cycle: for each such
/// node in index order that no cycle found so far passes through, the
/// shortest cycle through it (breadth-first, dependencies in list order).
/// Each path starts at that node, follows "depends on" edges and repeats the
/// node at the end; a self-dependency is `[i, i]`.
///
/// Every elementary cycle is not enumerated on purpose: a dense cluster of
/// k nodes has exponentially many, while this gives at most k cycles, each
/// elementary, with every member of every cluster on at least one.
pub(crate) fn cycle_cover(deps: &[Vec<usize>], layering: &Layering) -> Vec<Vec<usize>> {
    let mut covered = vec![false; deps.len()];
    let mut cycles = Vec::new();
    // Only nodes Kahn's algorithm could not place can be on a cycle.
    for node in (0..deps.len()).filter(|&i| layering.level[i].is_none()) {
        if covered[node] {
            continue;
        }
        if let Some(cycle) = shortest_cycle_through(deps, node) {
            for &member in &cycle {
                covered[member] = true;
            }
            cycles.push(cycle);
        }
    }
    cycles
}

/// The shortest path `start -> ... -> start`, if there is one.
fn shortest_cycle_through(deps: &[Vec<usize>], start: usize) -> Option<Vec<usize>> {
    let mut parent: Vec<Option<usize>> = vec![None; deps.len()];
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for &dep in &deps[node] {
            if dep == start {
                let mut back = vec![start];
                let mut at = node;
                while at != start {
                    back.push(at);
                    at = parent[at]?;
                }
                back.push(start);
                back.reverse();
                return Some(back);
            }
            if parent[dep].is_none() {
                parent[dep] = Some(node);
                queue.push_back(dep);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cycles(deps: &[Vec<usize>]) -> Vec<Vec<usize>> {
        cycle_cover(deps, &layering(deps))
    }

    #[test]
    fn ties_break_by_index_and_levels_count_the_longest_chain() {
        // 0 <- 2, 1 <- 2, 3 <- 0, 4 free; 2 depends on 0 and 1.
        let deps = vec![vec![3], vec![], vec![0, 1], vec![], vec![]];
        let l = layering(&deps);
        assert_eq!(l.order, vec![1, 3, 0, 2, 4]);
        assert_eq!(l.level, vec![Some(1), Some(0), Some(2), Some(0), Some(0)]);
    }

    #[test]
    fn duplicate_edges_are_harmless() {
        let deps = vec![vec![1, 1], vec![]];
        let l = layering(&deps);
        assert_eq!(l.order, vec![1, 0]);
        assert!(cycles(&deps).is_empty());
    }

    #[test]
    fn every_node_on_a_cycle_is_on_a_reported_one() {
        // Two cycles sharing node 1: 0 -> 1 -> 0 and 1 -> 2 -> 1; a
        // self-dependency at 3; 4 depends on the cluster but is on no cycle.
        let deps = vec![vec![1], vec![0, 2], vec![1], vec![3], vec![2]];
        let l = layering(&deps);
        assert!(l.order.is_empty());
        assert_eq!(
            cycles(&deps),
            vec![vec![0, 1, 0], vec![2, 1, 2], vec![3, 3]]
        );
    }

    #[test]
    fn the_shortest_cycle_through_a_node_is_chosen() {
        // 0 -> 1 -> 2 -> 0 and the shortcut 0 -> 2 -> 0.
        let deps = vec![vec![1, 2], vec![2], vec![0]];
        assert_eq!(cycles(&deps), vec![vec![0, 2, 0], vec![1, 2, 0, 1]]);
    }

    #[test]
    fn long_chains_and_rings_do_not_overflow_the_stack() {
        let n = 100_000;
        let chain: Vec<Vec<usize>> = (0..n)
            .map(|i| if i == 0 { vec![] } else { vec![i - 1] })
            .collect();
        assert_eq!(layering(&chain).level[n - 1], Some(n - 1));
        let ring: Vec<Vec<usize>> = (0..n).map(|i| vec![(i + 1) % n]).collect();
        let found = cycles(&ring);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].len(), n + 1);
    }
}
