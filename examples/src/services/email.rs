//! `email`: booking confirmations (`create_booking`) and receipts (`collect_payment`).

use super::{Service, ServiceEnv, bind, money, perform, prior_str, resource_id};
use crate::inputs::{BookingInput, PaymentInput};
use jetsaga_worker::{StepError, TaskContext, WorkerBuilder};
use serde_json::{Value, json};

/// The `email` service.
pub const SERVICE: Service = Service {
    name: "email",
    register,
};

fn register(b: WorkerBuilder, env: &ServiceEnv) -> WorkerBuilder {
    b.handler("send_email", bind(env, send_email))
        .compensation("send_email_correction", bind(env, send_email_correction))
        .handler("send_receipt", bind(env, send_receipt))
}

fn check_address(addr: &str) -> Result<(), StepError> {
    if addr.contains('@') {
        Ok(())
    } else {
        Err(StepError::fatal(format!("invalid e-mail address {addr:?}")))
    }
}

async fn send_email(
    env: ServiceEnv,
    ctx: TaskContext,
    input: BookingInput,
) -> Result<Value, StepError> {
    check_address(&input.customer.email)?;
    let nf = prior_str(&ctx, "create_nf", "nf_number").unwrap_or_else(|| "-".into());
    let message_id = resource_id(&ctx, "msg");
    perform(
        &env,
        &ctx,
        format!(
            "e-mailed {} the confirmation of {} at {} (fiscal note {nf})",
            input.customer.email, input.service_name, input.starts_at
        ),
    )
    .await?;
    Ok(json!({ "message_id": message_id, "to": input.customer.email }))
}

async fn send_email_correction(
    env: ServiceEnv,
    ctx: TaskContext,
    input: BookingInput,
) -> Result<Value, StepError> {
    let original =
        prior_str(&ctx, ctx.step_id(), "message_id").unwrap_or_else(|| resource_id(&ctx, "msg"));
    perform(
        &env,
        &ctx,
        format!(
            "e-mailed {} that booking {} was cancelled (corrects {original})",
            input.customer.email, input.booking_id
        ),
    )
    .await?;
    Ok(json!({ "corrects": original }))
}

async fn send_receipt(
    env: ServiceEnv,
    ctx: TaskContext,
    input: PaymentInput,
) -> Result<Value, StepError> {
    check_address(&input.customer.email)?;
    let invoice_id = prior_str(&ctx, "create_invoice", "invoice_id").unwrap_or_else(|| "-".into());
    let message_id = resource_id(&ctx, "msg");
    perform(
        &env,
        &ctx,
        format!(
            "e-mailed {} the receipt of {} for invoice {invoice_id}",
            input.customer.email,
            money(input.amount_cents, &input.currency)
        ),
    )
    .await?;
    Ok(json!({ "message_id": message_id, "to": input.customer.email }))
}
