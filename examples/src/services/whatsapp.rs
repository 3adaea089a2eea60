//! `whatsapp`: booking confirmations over WhatsApp (`create_booking`).

use super::{Service, ServiceEnv, bind, perform, prior_str, resource_id};
use crate::inputs::BookingInput;
use jetsaga_worker::{StepError, TaskContext, WorkerBuilder};
use serde_json::{Value, json};

/// The `whatsapp` service.
pub const SERVICE: Service = Service {
    name: "whatsapp",
    register,
};

fn register(b: WorkerBuilder, env: &ServiceEnv) -> WorkerBuilder {
    b.handler("send_whatsapp", bind(env, send_whatsapp))
        .compensation("send_whatsapp_correction", bind(env, send_correction))
}

async fn send_whatsapp(
    env: ServiceEnv,
    ctx: TaskContext,
    input: BookingInput,
) -> Result<Value, StepError> {
    if !input.customer.phone.starts_with('+') {
        return Err(StepError::fatal(format!(
            "phone {:?} is not in E.164 form",
            input.customer.phone
        )));
    }
    let nf = prior_str(&ctx, "create_nf", "nf_number").unwrap_or_else(|| "-".into());
    let message_id = resource_id(&ctx, "wa");
    perform(
        &env,
        &ctx,
        format!(
            "sent WhatsApp to {}: {} booked for {} (fiscal note {nf})",
            input.customer.phone, input.service_name, input.starts_at
        ),
    )
    .await?;
    Ok(json!({ "message_id": message_id, "to": input.customer.phone }))
}

async fn send_correction(
    env: ServiceEnv,
    ctx: TaskContext,
    input: BookingInput,
) -> Result<Value, StepError> {
    let original =
        prior_str(&ctx, ctx.step_id(), "message_id").unwrap_or_else(|| resource_id(&ctx, "wa"));
    perform(
        &env,
        &ctx,
        format!(
            "sent WhatsApp to {}: booking {} cancelled (corrects {original})",
            input.customer.phone, input.booking_id
        ),
    )
    .await?;
    Ok(json!({ "corrects": original }))
}
