//! `parser`: splits raw data into documents (`data_ingest_pipeline`).

use super::{Service, ServiceEnv, bind, perform, prior, prior_str, resource_id};
use crate::inputs::IngestInput;
use jetsaga_worker::{StepError, TaskContext, WorkerBuilder};
use serde::Deserialize;
use serde_json::{Value, json};

/// The `parser` service.
pub const SERVICE: Service = Service {
    name: "parser",
    register,
};

fn register(b: WorkerBuilder, env: &ServiceEnv) -> WorkerBuilder {
    b.handler("parse", bind(env, parse))
        .compensation("discard", bind(env, discard))
}

/// What `parse` needs from `ingest`.
#[derive(Debug, Deserialize)]
struct Fetched {
    object_key: String,
    bytes: u64,
}

async fn parse(env: ServiceEnv, ctx: TaskContext, input: IngestInput) -> Result<Value, StepError> {
    let Some(fetched) = prior::<Fetched>(&ctx, "ingest") else {
        return Err(StepError::fatal(
            "nothing to parse: the output of step `ingest` is missing",
        ));
    };
    if !matches!(
        input.format.as_str(),
        "csv" | "jsonl" | "pdf" | "html" | "md"
    ) {
        return Err(StepError::fatal(format!(
            "unsupported format {:?}",
            input.format
        )));
    }
    let chunk = u64::from(input.chunk_size.max(1));
    let documents = fetched.bytes.div_ceil(chunk);
    let parsed_key = format!(
        "parsed/{}/{}.jsonl",
        input.dataset,
        resource_id(&ctx, "doc")
    );
    perform(
        &env,
        &ctx,
        format!(
            "parsed {} into {documents} documents at {parsed_key}",
            fetched.object_key
        ),
    )
    .await?;
    Ok(json!({ "parsed_key": parsed_key, "documents": documents }))
}

async fn discard(
    env: ServiceEnv,
    ctx: TaskContext,
    input: IngestInput,
) -> Result<Value, StepError> {
    let parsed_key = prior_str(&ctx, ctx.step_id(), "parsed_key")
        .unwrap_or_else(|| format!("parsed/{}/*", input.dataset));
    perform(&env, &ctx, format!("discarded {parsed_key}")).await?;
    Ok(json!({ "parsed_key": parsed_key, "discarded": true }))
}
