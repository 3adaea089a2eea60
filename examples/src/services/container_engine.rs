//! `container-engine`: runs the environment's containers (`deploy_environment`).

use super::{Service, ServiceEnv, bind, perform, prior_str, resource_id};
use crate::inputs::DeployInput;
use jetsaga_worker::{StepError, TaskContext, WorkerBuilder};
use serde_json::{Value, json};

/// The `container-engine` service.
pub const SERVICE: Service = Service {
    name: "container-engine",
    register,
};

fn register(b: WorkerBuilder, env: &ServiceEnv) -> WorkerBuilder {
    b.handler("deploy", bind(env, deploy))
        .compensation("stop", bind(env, stop))
}

async fn deploy(env: ServiceEnv, ctx: TaskContext, input: DeployInput) -> Result<Value, StepError> {
    if input.replicas == 0 {
        return Err(StepError::fatal("replicas must be at least 1"));
    }
    let manifest_id = prior_str(&ctx, "register_manifest", "manifest_id")
        .unwrap_or_else(|| "unregistered".into());
    let deployment_id = resource_id(&ctx, "dep");
    let containers: Vec<String> = (1..=input.replicas)
        .map(|i| format!("{}-web-{i}", input.environment))
        .collect();
    perform(
        &env,
        &ctx,
        format!(
            "started {} container(s) of {} for manifest {manifest_id} as {deployment_id}",
            input.replicas, input.image
        ),
    )
    .await?;
    Ok(json!({
        "deployment_id": deployment_id,
        "manifest_id": manifest_id,
        "containers": containers,
    }))
}

async fn stop(env: ServiceEnv, ctx: TaskContext, input: DeployInput) -> Result<Value, StepError> {
    let deployment_id =
        prior_str(&ctx, ctx.step_id(), "deployment_id").unwrap_or_else(|| resource_id(&ctx, "dep"));
    perform(
        &env,
        &ctx,
        format!(
            "stopped and removed deployment {deployment_id} of {}",
            input.environment
        ),
    )
    .await?;
    Ok(json!({ "deployment_id": deployment_id, "stopped": true }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::testing::{env, ok, run, task};
    use jetsaga_worker::protocol::{Outcome, TaskKind};
    use std::collections::BTreeMap;

    #[tokio::test]
    async fn deploy_reads_the_manifest_id_of_the_previous_step() {
        let dir = tempfile::tempdir().unwrap();
        let env = env(dir.path(), "container-engine");
        let mut context = BTreeMap::new();
        context.insert(
            "register_manifest".to_string(),
            json!({"manifest_id": "mf_0123456789ab"}),
        );
        let out = ok(run(
            SERVICE,
            &env,
            task(
                "container-engine",
                "deploy_containers",
                "deploy",
                TaskKind::Action,
                1,
                json!({"replicas": 3}),
                context,
            ),
        )
        .await);
        assert_eq!(out["manifest_id"], "mf_0123456789ab");
        assert_eq!(out["containers"].as_array().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn zero_replicas_is_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let env = env(dir.path(), "container-engine");
        let out = run(
            SERVICE,
            &env,
            task(
                "container-engine",
                "deploy_containers",
                "deploy",
                TaskKind::Action,
                1,
                json!({"replicas": 0}),
                BTreeMap::new(),
            ),
        )
        .await;
        assert!(matches!(out, Outcome::Fatal { .. }), "{out:?}");
    }
}
