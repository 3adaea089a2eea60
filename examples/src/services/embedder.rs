//! `embedder`: embeds documents into a vector index (`data_ingest_pipeline`).

use super::{Service, ServiceEnv, bind, perform, prior, prior_str};
use crate::inputs::IngestInput;
use jetsaga_worker::{StepError, TaskContext, WorkerBuilder};
use serde_json::{Value, json};

/// The `embedder` service.
pub const SERVICE: Service = Service {
    name: "embedder",
    register,
};

fn register(b: WorkerBuilder, env: &ServiceEnv) -> WorkerBuilder {
    b.handler("embed", bind(env, embed))
        .compensation("delete_vectors", bind(env, delete_vectors))
}

fn index_name(input: &IngestInput) -> String {
    format!("{}@{}", input.dataset, input.embedding_model)
}

async fn embed(env: ServiceEnv, ctx: TaskContext, input: IngestInput) -> Result<Value, StepError> {
    let documents = prior::<Value>(&ctx, "parse")
        .and_then(|v| v.get("documents").and_then(Value::as_u64))
        .unwrap_or(0);
    let index = index_name(&input);
    perform(
        &env,
        &ctx,
        format!(
            "embedded {documents} documents with {} into index {index}",
            input.embedding_model
        ),
    )
    .await?;
    Ok(json!({ "index": index, "vectors": documents }))
}

async fn delete_vectors(
    env: ServiceEnv,
    ctx: TaskContext,
    input: IngestInput,
) -> Result<Value, StepError> {
    let index = prior_str(&ctx, ctx.step_id(), "index").unwrap_or_else(|| index_name(&input));
    perform(&env, &ctx, format!("deleted the vectors of index {index}")).await?;
    Ok(json!({ "index": index, "deleted": true }))
}
