//! Checks shared by parsing and re-validation: names are tokens, steps
//! exist and are unique, dependencies are in range and acyclic.

use jetsaga_protocol::validate_token;
use std::collections::HashMap;

use super::duration::check_duration;
use super::error::{DefinitionError, Place};
use super::policy::check_saga_policy;
use super::retry::check_policy;
use super::trigger::check_triggers;
use super::{DefinitionLimits, REQUEST_SOURCE, SagaDefinition};

/// Re-validates a definition that arrived already built (for example in a
/// request to the engine); errors name the source `request`.
///
/// Checks everything file validation checks that survives in the built
/// shape: names are tokens, at least one step, unique step ids, durations
/// positive and at most [`MAX_DURATION`](super::MAX_DURATION), retry policies in range,
/// dependencies in range and acyclic, and the default [`DefinitionLimits`].
pub fn validate(def: &SagaDefinition) -> Result<(), DefinitionError> {
    validate_in(REQUEST_SOURCE, def)
}

/// Like [`validate`], with errors naming `source_name`.
pub fn validate_in(source_name: &str, def: &SagaDefinition) -> Result<(), DefinitionError> {
    validate_within(source_name, def, &DefinitionLimits::default())
}

/// Like [`validate_in`], refusing a definition over `limits` (`E-DEF-TOO-LARGE`).
pub fn validate_within(
    source_name: &str,
    def: &SagaDefinition,
    limits: &DefinitionLimits,
) -> Result<(), DefinitionError> {
    let mut errs = Vec::new();
    let saga = Place::new(source_name).saga(&def.name);
    check_token(&saga, "saga name", &def.name, &mut errs);
    if let Some(timeout) = def.timeout {
        check_duration(&saga.field("timeout"), timeout, false, &mut errs);
    }
    if def.steps.is_empty() {
        errs.push(no_steps(&saga));
    }
    let mut first_by_id: HashMap<&str, usize> = HashMap::new();
    for (i, step) in def.steps.iter().enumerate() {
        let place = saga.step(step_label(&step.id, i));
        check_token(&place.field("id"), "step id", &step.id, &mut errs);
        if let Some(&first) = first_by_id.get(step.id.as_str()) {
            errs.push(duplicate_step(&place, &step.id, first, i));
        } else {
            first_by_id.insert(&step.id, i);
        }
        check_step_names(
            &place,
            &step.service,
            &step.operation,
            step.compensation.as_deref(),
            &mut errs,
        );
        check_duration(&place.field("timeout"), step.timeout, false, &mut errs);
        check_policy(&place, "retry.", &step.retry, &mut errs);
        for &dep in &step.depends_on {
            if dep >= def.steps.len() {
                errs.push(DefinitionError::DependencyOutOfRange {
                    place: Box::new(place.field("depends_on")),
                    index: dep,
                    steps: def.steps.len(),
                });
            }
        }
    }
    let deps: Vec<Vec<usize>> = def.steps.iter().map(|s| s.depends_on.clone()).collect();
    let labels: Vec<String> = def
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| step_label(&s.id, i))
        .collect();
    if let Some(cycle) = find_cycle(&deps) {
        errs.push(cycle_error(&saga, &cycle, &labels));
    }
    limits.check_saga(&saga, &deps, &labels, &mut errs);
    check_triggers(&saga, &def.triggers, &mut errs);
    check_saga_policy(&saga, &def.policy, &mut errs);
    if def.max_running == Some(0) {
        errs.push(invalid_limit(&saga, "0"));
    }
    DefinitionError::collect(errs)
}

/// `max_running` of saga `saga` is `value`, which is not a positive `u32`.
pub(super) fn invalid_limit(saga: &Place, value: &str) -> DefinitionError {
    DefinitionError::InvalidLimit {
        place: Box::new(saga.field("max_running")),
        reason: format!(
            "max_running is {value}; it must be a whole number from 1 to {} (leave it out for no limit)",
            u32::MAX
        ),
    }
}

pub(super) fn check_token(
    place: &Place,
    what: &'static str,
    value: &str,
    errs: &mut Vec<DefinitionError>,
) {
    if let Err(reason) = validate_token(value) {
        errs.push(DefinitionError::InvalidName {
            place: Box::new(place.clone()),
            what,
            reason,
        });
    }
}

pub(super) fn check_step_names(
    place: &Place,
    service: &str,
    operation: &str,
    compensation: Option<&str>,
    errs: &mut Vec<DefinitionError>,
) {
    check_token(&place.field("service"), "service", service, errs);
    check_token(&place.field("operation"), "operation", operation, errs);
    if let Some(compensation) = compensation {
        check_token(
            &place.field("compensation"),
            "compensation",
            compensation,
            errs,
        );
    }
}

/// How a step is named in messages: its id, or `#n` when the id is not a valid token.
pub(super) fn step_label(id: &str, index: usize) -> String {
    if validate_token(id).is_ok() {
        id.to_owned()
    } else {
        format!("#{}", index + 1)
    }
}

pub(super) fn no_steps(saga: &Place) -> DefinitionError {
    DefinitionError::Empty {
        place: Box::new(saga.field("steps")),
        reason: "the saga has no steps; add at least one".into(),
    }
}

pub(super) fn duplicate_step(
    place: &Place,
    id: &str,
    first: usize,
    second: usize,
) -> DefinitionError {
    DefinitionError::DuplicateStep {
        place: Box::new(place.field("id")),
        id: id.to_owned(),
        first: first + 1,
        second: second + 1,
    }
}

pub(super) fn cycle_error(saga: &Place, cycle: &[usize], labels: &[String]) -> DefinitionError {
    DefinitionError::Cycle {
        place: Box::new(saga.clone()),
        path: cycle
            .iter()
            .map(|&i| {
                labels
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("#{}", i + 1))
            })
            .collect(),
    }
}

/// The first dependency cycle a depth-first search meets, visiting steps
/// and their dependencies in order; the path repeats its first step at the
/// end. Iterative, so long chains cannot overflow the stack; indexes out of
/// range are ignored.
pub(super) fn find_cycle(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark = vec![Mark::New; deps.len()];
    for root in 0..deps.len() {
        if mark[root] != Mark::New {
            continue;
        }
        // (step, next dependency to look at)
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = Mark::OnPath;
        while let Some(top) = stack.last_mut() {
            let (node, next) = *top;
            let Some(&dep) = deps[node].get(next) else {
                mark[node] = Mark::Done;
                stack.pop();
                continue;
            };
            top.1 += 1;
            match mark.get(dep) {
                Some(Mark::New) => {
                    mark[dep] = Mark::OnPath;
                    stack.push((dep, 0));
                }
                Some(Mark::OnPath) => {
                    let start = stack.iter().position(|&(n, _)| n == dep).unwrap_or(0);
                    let mut path: Vec<usize> = stack[start..].iter().map(|&(n, _)| n).collect();
                    path.push(dep);
                    return Some(path);
                }
                Some(Mark::Done) | None => {}
            }
        }
    }
    None
}
