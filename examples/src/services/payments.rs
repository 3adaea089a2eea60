//! `payments`: card charges and refunds (`collect_payment`).

use super::{Service, ServiceEnv, bind, money, perform, prior_str, resource_id};
use crate::inputs::PaymentInput;
use jetsaga_worker::{StepError, TaskContext, WorkerBuilder};
use serde_json::{Value, json};

/// The `payments` service.
pub const SERVICE: Service = Service {
    name: "payments",
    register,
};

fn register(b: WorkerBuilder, env: &ServiceEnv) -> WorkerBuilder {
    b.handler("charge", bind(env, charge))
        .compensation("refund", bind(env, refund))
}

async fn charge(
    env: ServiceEnv,
    ctx: TaskContext,
    input: PaymentInput,
) -> Result<Value, StepError> {
    if input.amount_cents == 0 {
        return Err(StepError::fatal("amount_cents must be positive"));
    }
    let charge_id = resource_id(&ctx, "ch");
    perform(
        &env,
        &ctx,
        format!(
            "charged {} to {} of {} for order {} ({charge_id})",
            money(input.amount_cents, &input.currency),
            input.payment_method,
            input.customer.name,
            input.order_id
        ),
    )
    .await?;
    Ok(json!({
        "charge_id": charge_id,
        "amount_cents": input.amount_cents,
        "currency": input.currency,
    }))
}

async fn refund(
    env: ServiceEnv,
    ctx: TaskContext,
    input: PaymentInput,
) -> Result<Value, StepError> {
    let charge_id =
        prior_str(&ctx, ctx.step_id(), "charge_id").unwrap_or_else(|| resource_id(&ctx, "ch"));
    let refund_id = resource_id(&ctx, "re");
    perform(
        &env,
        &ctx,
        format!(
            "refunded {} of charge {charge_id} ({refund_id})",
            money(input.amount_cents, &input.currency)
        ),
    )
    .await?;
    Ok(json!({ "refund_id": refund_id, "charge_id": charge_id }))
}
