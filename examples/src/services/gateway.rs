//! `gateway`: routes public traffic to an environment (`deploy_environment`).

use super::{Service, ServiceEnv, bind, perform, prior_str, resource_id};
use crate::inputs::DeployInput;
use jetsaga_worker::{StepError, TaskContext, WorkerBuilder};
use serde_json::{Value, json};

/// The `gateway` service.
pub const SERVICE: Service = Service {
    name: "gateway",
    register,
};

fn register(b: WorkerBuilder, env: &ServiceEnv) -> WorkerBuilder {
    b.handler("configure_routes", bind(env, configure_routes))
        .compensation("remove_routes", bind(env, remove_routes))
}

async fn configure_routes(
    env: ServiceEnv,
    ctx: TaskContext,
    input: DeployInput,
) -> Result<Value, StepError> {
    let deployment_id = prior_str(&ctx, "deploy_containers", "deployment_id")
        .unwrap_or_else(|| "unknown-deployment".into());
    let route_id = resource_id(&ctx, "rt");
    let url = format!("https://{}", input.host());
    perform(
        &env,
        &ctx,
        format!("routed {url} to deployment {deployment_id} (route {route_id})"),
    )
    .await?;
    Ok(json!({ "route_id": route_id, "url": url }))
}

async fn remove_routes(
    env: ServiceEnv,
    ctx: TaskContext,
    input: DeployInput,
) -> Result<Value, StepError> {
    let route_id =
        prior_str(&ctx, ctx.step_id(), "route_id").unwrap_or_else(|| resource_id(&ctx, "rt"));
    perform(
        &env,
        &ctx,
        format!("removed route {route_id} for {}", input.host()),
    )
    .await?;
    Ok(json!({ "route_id": route_id, "removed": true }))
}
