//! `calendar`: the booking's calendar event (`create_booking`).

use super::{Service, ServiceEnv, bind, perform, prior_str, resource_id};
use crate::inputs::BookingInput;
use jetsaga_worker::{StepError, TaskContext, WorkerBuilder};
use serde_json::{Value, json};

/// The `calendar` service.
pub const SERVICE: Service = Service {
    name: "calendar",
    register,
};

fn register(b: WorkerBuilder, env: &ServiceEnv) -> WorkerBuilder {
    b.handler("add_event", bind(env, add_event))
        .compensation("remove_event", bind(env, remove_event))
}

async fn add_event(
    env: ServiceEnv,
    ctx: TaskContext,
    input: BookingInput,
) -> Result<Value, StepError> {
    // Both notifications went out before this step runs (it depends on both).
    let notified: Vec<String> = [("send_email", "to"), ("send_whatsapp", "to")]
        .iter()
        .filter_map(|(step, field)| prior_str(&ctx, step, field))
        .collect();
    let event_id = resource_id(&ctx, "evt");
    perform(
        &env,
        &ctx,
        format!(
            "added calendar event {event_id}: {} for {} at {} ({} min)",
            input.service_name, input.customer.name, input.starts_at, input.duration_min
        ),
    )
    .await?;
    Ok(json!({ "event_id": event_id, "notified": notified }))
}

async fn remove_event(
    env: ServiceEnv,
    ctx: TaskContext,
    input: BookingInput,
) -> Result<Value, StepError> {
    let event_id =
        prior_str(&ctx, ctx.step_id(), "event_id").unwrap_or_else(|| resource_id(&ctx, "evt"));
    perform(
        &env,
        &ctx,
        format!(
            "removed calendar event {event_id} of booking {}",
            input.booking_id
        ),
    )
    .await?;
    Ok(json!({ "event_id": event_id, "removed": true }))
}
