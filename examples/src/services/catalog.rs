//! `catalog`: publishes a dataset to the data catalog (`data_ingest_pipeline`).

use super::{Service, ServiceEnv, bind, perform, prior_str};
use crate::inputs::IngestInput;
use jetsaga_worker::{StepError, TaskContext, WorkerBuilder};
use serde_json::{Value, json};

/// The `catalog` service.
pub const SERVICE: Service = Service {
    name: "catalog",
    register,
};

fn register(b: WorkerBuilder, env: &ServiceEnv) -> WorkerBuilder {
    b.handler("publish", bind(env, publish))
        .compensation("unpublish", bind(env, unpublish))
}

async fn publish(
    env: ServiceEnv,
    ctx: TaskContext,
    input: IngestInput,
) -> Result<Value, StepError> {
    let index = prior_str(&ctx, "embed", "index").unwrap_or_else(|| "-".into());
    let url = format!("https://catalog.example.dev/datasets/{}", input.dataset);
    perform(
        &env,
        &ctx,
        format!(
            "published dataset {} (index {index}) at {url}",
            input.dataset
        ),
    )
    .await?;
    Ok(json!({ "catalog_url": url, "index": index }))
}

async fn unpublish(
    env: ServiceEnv,
    ctx: TaskContext,
    input: IngestInput,
) -> Result<Value, StepError> {
    perform(
        &env,
        &ctx,
        format!("unpublished dataset {} from the catalog", input.dataset),
    )
    .await?;
    Ok(json!({ "dataset": input.dataset, "unpublished": true }))
}
