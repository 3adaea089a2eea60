//! `analytics`: product analytics events (`collect_payment`). Tracking has no
//! compensation: an analytics event is not worth undoing.

use super::{Service, ServiceEnv, bind, perform, prior_str, resource_id};
use crate::inputs::PaymentInput;
use jetsaga_worker::{StepError, TaskContext, WorkerBuilder};
use serde_json::{Value, json};

/// The `analytics` service.
pub const SERVICE: Service = Service {
    name: "analytics",
    register,
};

fn register(b: WorkerBuilder, env: &ServiceEnv) -> WorkerBuilder {
    b.handler("track", bind(env, track))
}

async fn track(env: ServiceEnv, ctx: TaskContext, input: PaymentInput) -> Result<Value, StepError> {
    let invoice_id = prior_str(&ctx, "create_invoice", "invoice_id");
    let event_id = resource_id(&ctx, "ae");
    perform(
        &env,
        &ctx,
        format!(
            "tracked payment_collected for order {} ({} cents, invoice {})",
            input.order_id,
            input.amount_cents,
            invoice_id.as_deref().unwrap_or("-")
        ),
    )
    .await?;
    Ok(json!({ "event_id": event_id, "event": "payment_collected" }))
}
