//! `manifest`: the environment registry (`deploy_environment`).

use super::{Service, ServiceEnv, bind, perform, prior_str, resource_id};
use crate::inputs::DeployInput;
use jetsaga_worker::{StepError, TaskContext, WorkerBuilder};
use serde_json::{Value, json};

/// The `manifest` service.
pub const SERVICE: Service = Service {
    name: "manifest",
    register,
};

fn register(b: WorkerBuilder, env: &ServiceEnv) -> WorkerBuilder {
    b.handler("register", bind(env, register_manifest))
        .compensation("deregister", bind(env, deregister_manifest))
}

async fn register_manifest(
    env: ServiceEnv,
    ctx: TaskContext,
    input: DeployInput,
) -> Result<Value, StepError> {
    if input.environment.is_empty() {
        return Err(StepError::fatal("environment name is empty"));
    }
    let manifest_id = resource_id(&ctx, "mf");
    perform(
        &env,
        &ctx,
        format!(
            "registered manifest {manifest_id} for {} ({} x{} in {})",
            input.environment, input.image, input.replicas, input.region
        ),
    )
    .await?;
    Ok(json!({ "manifest_id": manifest_id, "environment": input.environment }))
}

async fn deregister_manifest(
    env: ServiceEnv,
    ctx: TaskContext,
    input: DeployInput,
) -> Result<Value, StepError> {
    let manifest_id =
        prior_str(&ctx, ctx.step_id(), "manifest_id").unwrap_or_else(|| resource_id(&ctx, "mf"));
    perform(
        &env,
        &ctx,
        format!(
            "deregistered manifest {manifest_id} for {}",
            input.environment
        ),
    )
    .await?;
    Ok(json!({ "manifest_id": manifest_id, "deregistered": true }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{effects, read_dir};
    use crate::services::testing::{env, ok, run, task};
    use jetsaga_worker::protocol::{Outcome, TaskKind};
    use std::collections::BTreeMap;

    #[tokio::test]
    async fn register_then_deregister_records_both_effects() {
        let dir = tempfile::tempdir().unwrap();
        let env = env(dir.path(), "manifest");
        let input = json!({"environment": "pr-42"});
        let out = ok(run(
            SERVICE,
            &env,
            task(
                "manifest",
                "register_manifest",
                "register",
                TaskKind::Action,
                1,
                input.clone(),
                BTreeMap::new(),
            ),
        )
        .await);
        let id = out["manifest_id"].as_str().unwrap().to_string();
        assert!(id.starts_with("mf_"));
        assert_eq!(out["environment"], "pr-42");

        let mut context = BTreeMap::new();
        context.insert("register_manifest".to_string(), out.clone());
        let undo = ok(run(
            SERVICE,
            &env,
            task(
                "manifest",
                "register_manifest",
                "deregister",
                TaskKind::Compensation,
                1,
                input,
                context,
            ),
        )
        .await);
        assert_eq!(undo["manifest_id"], id.as_str());

        let all = read_dir(dir.path());
        let done = effects(&all, "saga-test-1", "register_manifest", TaskKind::Action);
        assert_eq!(done.len(), 1);
        assert!(done[0].effect.contains("pr-42"));
        let undone = effects(
            &all,
            "saga-test-1",
            "register_manifest",
            TaskKind::Compensation,
        );
        assert_eq!(undone.len(), 1);
        assert!(undone[0].effect.contains(&id));
    }

    #[tokio::test]
    async fn injected_failure_leaves_no_effect() {
        let dir = tempfile::tempdir().unwrap();
        let env = env(dir.path(), "manifest");
        let input = json!({"faults": {"register_manifest": {"fail": "retryable", "times": 1}}});
        let first = run(
            SERVICE,
            &env,
            task(
                "manifest",
                "register_manifest",
                "register",
                TaskKind::Action,
                1,
                input.clone(),
                BTreeMap::new(),
            ),
        )
        .await;
        assert!(matches!(first, Outcome::Retryable { .. }), "{first:?}");
        assert!(read_dir(dir.path()).is_empty());
        let second = run(
            SERVICE,
            &env,
            task(
                "manifest",
                "register_manifest",
                "register",
                TaskKind::Action,
                2,
                input,
                BTreeMap::new(),
            ),
        )
        .await;
        ok(second);
        assert_eq!(read_dir(dir.path()).len(), 1);
    }
}
