//! From the raw file to the model: every retry policy resolved inline,
//! every duration checked, every dependency a step index.

use std::collections::HashMap;

use super::duration::resolve_duration;
use super::error::{DefinitionError, Place};
use super::policy::{build_saga_policy, check_saga_policy};
use super::raw::{RawFile, RawSaga};
use super::retry::RetryContext;
use super::service::build_services;
use super::trigger::{build_triggers, check_triggers};
use super::validate::{
    check_step_names, check_token, cycle_error, duplicate_step, find_cycle, invalid_limit,
    no_steps, step_label,
};
use super::{
    DEFAULT_STEP_TIMEOUT, DefinitionFile, DefinitionLimits, SagaDefinition, StepDefinition,
};

/// Builds and checks every saga and service policy of a parsed file,
/// reporting all problems at once.
pub(super) fn build_file(
    source_name: &str,
    raw: RawFile,
    limits: &DefinitionLimits,
) -> Result<DefinitionFile, DefinitionError> {
    let mut errs = Vec::new();
    let file = Place::new(source_name);

    let retry = RetryContext::new(&file, raw.retry_policies, &mut errs);

    if raw.sagas.0.is_empty() {
        errs.push(DefinitionError::Empty {
            place: Box::new(file.field("sagas")),
            reason: "the file defines no saga; add at least one under `sagas`".into(),
        });
    }
    let mut sagas = Vec::new();
    for (name, raw_saga) in raw.sagas.0 {
        if let Some(saga) = build_saga(&file.saga(&name), name, raw_saga, &retry, limits, &mut errs)
        {
            sagas.push(saga);
        }
    }
    let services = build_services(source_name, raw.services, &mut errs);
    DefinitionError::collect(errs)?;
    sagas.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(DefinitionFile { sagas, services })
}

/// Builds one saga; `None` if it has problems (pushed to `errs`).
fn build_saga(
    saga: &Place,
    name: String,
    raw: RawSaga,
    retry: &RetryContext,
    limits: &DefinitionLimits,
    errs: &mut Vec<DefinitionError>,
) -> Option<SagaDefinition> {
    let before = errs.len();
    check_token(saga, "saga name", &name, errs);
    let timeout = raw
        .timeout
        .and_then(|d| resolve_duration(&saga.field("timeout"), d, false, errs));
    if raw.steps.is_empty() {
        errs.push(no_steps(saga));
    }

    let labels: Vec<String> = raw
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| step_label(&s.id, i))
        .collect();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut known: Vec<String> = Vec::new();
    for (i, step) in raw.steps.iter().enumerate() {
        let place = saga.step(labels[i].clone());
        check_token(&place.field("id"), "step id", &step.id, errs);
        if let Some(&first) = index.get(step.id.as_str()) {
            errs.push(duplicate_step(&place, &step.id, first, i));
        } else {
            index.insert(&step.id, i);
            known.push(step.id.clone());
        }
    }

    // Dependencies as indexes; unknown ones are reported and dropped, so the
    // cycle check still runs on the rest.
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(raw.steps.len());
    for (i, step) in raw.steps.iter().enumerate() {
        let mut these = Vec::with_capacity(step.depends_on.len());
        for dep in &step.depends_on {
            match index.get(dep.as_str()) {
                Some(&j) => these.push(j),
                None => errs.push(DefinitionError::UnknownDependency {
                    place: Box::new(saga.step(labels[i].clone()).field("depends_on")),
                    dependency: dep.clone(),
                    known: known.clone(),
                }),
            }
        }
        these.sort_unstable();
        these.dedup();
        deps.push(these);
    }

    let mut steps = Vec::with_capacity(raw.steps.len());
    for ((step, label), depends_on) in raw.steps.into_iter().zip(&labels).zip(&deps) {
        let place = saga.step(label.clone());
        check_step_names(
            &place,
            &step.service,
            &step.operation,
            step.compensation.as_deref(),
            errs,
        );
        let timeout = match step.timeout {
            None => Some(DEFAULT_STEP_TIMEOUT),
            Some(raw) => resolve_duration(&place.field("timeout"), raw, false, errs),
        };
        let policy = retry.resolve(&place, step.retry, errs);
        if let (Some(timeout), Some(retry)) = (timeout, policy) {
            steps.push(StepDefinition {
                id: step.id,
                service: step.service,
                operation: step.operation,
                compensation: step.compensation,
                timeout,
                retry,
                depends_on: depends_on.clone(),
            });
        }
    }

    if let Some(cycle) = find_cycle(&deps) {
        errs.push(cycle_error(saga, &cycle, &labels));
    }
    limits.check_saga(saga, &deps, &labels, errs);
    let triggers = build_triggers(raw.triggers);
    let policy = build_saga_policy(saga, raw.policy, errs);
    check_triggers(saga, &triggers, errs);
    check_saga_policy(saga, &policy, errs);
    let max_running = raw.max_running.and_then(|n| match u32::try_from(n) {
        Ok(n) if n > 0 => Some(n),
        _ => {
            errs.push(invalid_limit(saga, &n.to_string()));
            None
        }
    });

    (errs.len() == before).then_some(SagaDefinition {
        name,
        version: 0,
        timeout,
        steps,
        triggers,
        policy,
        max_running,
        step_events: raw.step_events,
    })
}
