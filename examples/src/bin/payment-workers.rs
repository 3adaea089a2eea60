//! `payment-workers`: workers of the collect_payment saga (payments, invoicing, email, analytics).

use jetsaga_examples::runner::{self, Binary};
use jetsaga_examples::services;

fn main() -> anyhow::Result<()> {
    runner::main(Binary {
        name: "payment-workers",
        about: "workers of the collect_payment saga (payments, invoicing, email, analytics)",
        services: services::PAYMENT,
    })
}
