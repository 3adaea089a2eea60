//! `environment`: the environment's lifecycle status (`deploy_environment`).

use super::{Service, ServiceEnv, bind, perform, prior_str};
use crate::inputs::DeployInput;
use jetsaga_worker::{StepError, TaskContext, WorkerBuilder};
use serde_json::{Value, json};

/// The `environment` service.
pub const SERVICE: Service = Service {
    name: "environment",
    register,
};

fn register(b: WorkerBuilder, env: &ServiceEnv) -> WorkerBuilder {
    b.handler("mark_ready", bind(env, mark_ready))
        .compensation("mark_environment_failed", bind(env, mark_failed))
}

async fn mark_ready(
    env: ServiceEnv,
    ctx: TaskContext,
    input: DeployInput,
) -> Result<Value, StepError> {
    let url = prior_str(&ctx, "configure_gateway", "url")
        .unwrap_or_else(|| format!("https://{}", input.host()));
    perform(
        &env,
        &ctx,
        format!("marked environment {} ready at {url}", input.environment),
    )
    .await?;
    Ok(json!({ "environment": input.environment, "status": "ready", "url": url }))
}

async fn mark_failed(
    env: ServiceEnv,
    ctx: TaskContext,
    input: DeployInput,
) -> Result<Value, StepError> {
    perform(
        &env,
        &ctx,
        format!("marked environment {} failed", input.environment),
    )
    .await?;
    Ok(json!({ "environment": input.environment, "status": "failed" }))
}
