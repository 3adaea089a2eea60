//! `ingest`: fetches raw data into the lake (`data_ingest_pipeline`).

use super::{Service, ServiceEnv, bind, perform, prior_str, resource_id};
use crate::inputs::IngestInput;
use jetsaga_worker::{StepError, TaskContext, WorkerBuilder};
use serde_json::{Value, json};

/// The `ingest` service.
pub const SERVICE: Service = Service {
    name: "ingest",
    register,
};

fn register(b: WorkerBuilder, env: &ServiceEnv) -> WorkerBuilder {
    b.handler("fetch", bind(env, fetch))
        .compensation("purge", bind(env, purge))
}

async fn fetch(env: ServiceEnv, ctx: TaskContext, input: IngestInput) -> Result<Value, StepError> {
    if !input.source_url.contains("://") {
        return Err(StepError::fatal(format!(
            "source_url {:?} is not a URL",
            input.source_url
        )));
    }
    let object_key = format!(
        "raw/{}/{}.{}",
        input.dataset,
        resource_id(&ctx, "obj"),
        input.format
    );
    // A stand-in size, stable for the same dataset.
    let bytes = 1_000_000 + (input.dataset.len() as u64 * 7_919) % 500_000;
    perform(
        &env,
        &ctx,
        format!(
            "fetched {} ({bytes} bytes) into {object_key}",
            input.source_url
        ),
    )
    .await?;
    Ok(json!({ "object_key": object_key, "bytes": bytes }))
}

async fn purge(env: ServiceEnv, ctx: TaskContext, input: IngestInput) -> Result<Value, StepError> {
    let object_key = prior_str(&ctx, ctx.step_id(), "object_key")
        .unwrap_or_else(|| format!("raw/{}/*", input.dataset));
    perform(&env, &ctx, format!("purged {object_key}")).await?;
    Ok(json!({ "object_key": object_key, "purged": true }))
}
