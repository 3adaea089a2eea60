//! `invoicing`: fiscal notes (`create_booking`) and invoices (`collect_payment`).
//!
//! One service, four operations from two sagas: any worker process running
//! `invoicing` handles all of them.

use super::{Service, ServiceEnv, bind, money, perform, prior_str, resource_id};
use crate::inputs::{BookingInput, PaymentInput};
use jetsaga_worker::{StepError, TaskContext, WorkerBuilder};
use serde_json::{Value, json};

/// The `invoicing` service.
pub const SERVICE: Service = Service {
    name: "invoicing",
    register,
};

fn register(b: WorkerBuilder, env: &ServiceEnv) -> WorkerBuilder {
    b.handler("create_nf", bind(env, create_nf))
        .compensation("cancel_nf", bind(env, cancel_nf))
        .handler("create_invoice", bind(env, create_invoice))
        .compensation("void_invoice", bind(env, void_invoice))
}

async fn create_nf(
    env: ServiceEnv,
    ctx: TaskContext,
    input: BookingInput,
) -> Result<Value, StepError> {
    if input.customer.tax_id.is_empty() {
        return Err(StepError::fatal(
            "a fiscal note needs the customer's tax id",
        ));
    }
    let nf_number = resource_id(&ctx, "nf");
    perform(
        &env,
        &ctx,
        format!(
            "issued fiscal note {nf_number} of {} to {} ({}) for booking {}",
            money(input.amount_cents, &input.currency),
            input.customer.name,
            input.customer.tax_id,
            input.booking_id
        ),
    )
    .await?;
    Ok(json!({
        "nf_number": nf_number,
        "amount_cents": input.amount_cents,
        "currency": input.currency,
    }))
}

async fn cancel_nf(
    env: ServiceEnv,
    ctx: TaskContext,
    input: BookingInput,
) -> Result<Value, StepError> {
    let nf_number =
        prior_str(&ctx, ctx.step_id(), "nf_number").unwrap_or_else(|| resource_id(&ctx, "nf"));
    perform(
        &env,
        &ctx,
        format!(
            "cancelled fiscal note {nf_number} of booking {}",
            input.booking_id
        ),
    )
    .await?;
    Ok(json!({ "nf_number": nf_number, "cancelled": true }))
}

async fn create_invoice(
    env: ServiceEnv,
    ctx: TaskContext,
    input: PaymentInput,
) -> Result<Value, StepError> {
    let charge_id =
        prior_str(&ctx, "process_payment", "charge_id").unwrap_or_else(|| "unknown-charge".into());
    let invoice_id = resource_id(&ctx, "inv");
    perform(
        &env,
        &ctx,
        format!(
            "created invoice {invoice_id} of {} for order {} (charge {charge_id})",
            money(input.amount_cents, &input.currency),
            input.order_id
        ),
    )
    .await?;
    Ok(json!({ "invoice_id": invoice_id, "charge_id": charge_id }))
}

async fn void_invoice(
    env: ServiceEnv,
    ctx: TaskContext,
    input: PaymentInput,
) -> Result<Value, StepError> {
    let invoice_id =
        prior_str(&ctx, ctx.step_id(), "invoice_id").unwrap_or_else(|| resource_id(&ctx, "inv"));
    perform(
        &env,
        &ctx,
        format!("voided invoice {invoice_id} of order {}", input.order_id),
    )
    .await?;
    Ok(json!({ "invoice_id": invoice_id, "voided": true }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Applied, read_dir};
    use crate::services::testing::{env, ok, run, task};
    use jetsaga_worker::protocol::TaskKind;
    use std::collections::BTreeMap;

    #[tokio::test]
    async fn serves_operations_of_both_sagas() {
        let dir = tempfile::tempdir().unwrap();
        let env = env(dir.path(), "invoicing");
        let nf = ok(run(
            SERVICE,
            &env,
            task(
                "invoicing",
                "create_nf",
                "create_nf",
                TaskKind::Action,
                1,
                json!({}),
                BTreeMap::new(),
            ),
        )
        .await);
        assert!(nf["nf_number"].as_str().unwrap().starts_with("nf_"));
        let mut context = BTreeMap::new();
        context.insert("process_payment".to_string(), json!({"charge_id": "ch_1"}));
        let inv = ok(run(
            SERVICE,
            &env,
            task(
                "invoicing",
                "create_invoice",
                "create_invoice",
                TaskKind::Action,
                1,
                json!({"amount_cents": 100}),
                context,
            ),
        )
        .await);
        assert_eq!(inv["charge_id"], "ch_1");
        assert_eq!(read_dir(dir.path()).len(), 2);
    }

    #[tokio::test]
    async fn a_repeated_attempt_is_suppressed_with_the_same_output() {
        let dir = tempfile::tempdir().unwrap();
        let env = env(dir.path(), "invoicing");
        let t1 = task(
            "invoicing",
            "create_nf",
            "create_nf",
            TaskKind::Action,
            1,
            json!({}),
            BTreeMap::new(),
        );
        let mut t2 = t1.clone();
        t2.attempt = 2;
        let a = ok(run(SERVICE, &env, t1).await);
        let b = ok(run(SERVICE, &env, t2).await);
        assert_eq!(a, b);
        let all = read_dir(dir.path());
        assert_eq!(all.len(), 2);
        assert!(!all[0].is_duplicate());
        assert!(all[1].is_duplicate());
        let again = env.ledger.apply(&all[0]).unwrap();
        assert_eq!(again, Applied::Duplicate);
    }
}
